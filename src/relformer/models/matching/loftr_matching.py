"""LoFTR's matching stages (Sun et al. 2021, sec. 3.3-3.5), as functions of tensors:

* :func:`dual_softmax` -- the coarse confidence ``P = softmax_rows(S) * softmax_cols(S)`` (eq. 2) with
  ``S = <f0, f1> / (C tau)``, padded cells left out;
* :func:`mutual_matches` -- coarse matches: mutual nearest neighbours above a threshold, off the border;
* :func:`crop_windows` -- the ``W x W`` fine-map windows around coarse matches;
* :func:`window_expectation` -- the sub-pixel position in window 1 of window 0's centre: the expectation
  of the grid under a softmax over feature correlations (sec. 3.4), run as one attention step;
* :func:`coarse_focal_loss` / :func:`fine_l2_loss` -- the training terms of sec. 3.5.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ...attention import attend

__all__ = ["dual_softmax", "mutual_matches", "inside_border", "crop_windows", "window_expectation",
           "coarse_focal_loss", "fine_l2_loss"]


def dual_softmax(feat0: Tensor, feat1: Tensor, temperature: float, valid0: Tensor | None = None,
                 valid1: Tensor | None = None) -> Tensor:
    """Confidence ``(B, L, S)`` of coarse tokens ``feat0 (B, L, C)`` and ``feat1 (B, S, C)``; ``valid0 (B, L)``,
    ``valid1 (B, S)`` bool mark real (not padded) cells, whose pairs alone get a non-zero confidence."""
    scale = feat0.shape[-1] ** 0.5
    sim = (feat0 / scale) @ (feat1 / scale).transpose(1, 2) / temperature  # (B, L, S)
    invalid = None
    if valid0 is not None or valid1 is not None:
        v0 = valid0 if valid0 is not None else sim.new_ones(sim.shape[:2], dtype=torch.bool)
        v1 = valid1 if valid1 is not None else sim.new_ones((sim.shape[0], sim.shape[2]), dtype=torch.bool)
        invalid = ~(v0[:, :, None] & v1[:, None, :])
        sim = sim.masked_fill(invalid, torch.finfo(sim.dtype).min)  # finite: an all-padded row stays NaN-free
    conf = F.softmax(sim, dim=1) * F.softmax(sim, dim=2)
    return conf.masked_fill(invalid, 0.0) if invalid is not None else conf


def inside_border(grid: tuple[int, int], extents: Tensor, border: int) -> Tensor:
    """``(B, h * w)`` bool: cells of a ``grid = (h, w)`` coarse map at least ``border`` cells inside each
    image's valid ``extents (B, 2)`` (rows, columns of real cells; LoFTR's border removal with padding)."""
    h, w = grid
    rows = torch.arange(h, device=extents.device)[None, :, None]
    cols = torch.arange(w, device=extents.device)[None, None, :]
    h_end, w_end = extents[:, 0, None, None], extents[:, 1, None, None]
    keep = (rows >= border) & (cols >= border) & (rows < h_end - border) & (cols < w_end - border)
    return keep.reshape(extents.shape[0], h * w)


@torch.no_grad()
def mutual_matches(conf: Tensor, threshold: float, inside0: Tensor, inside1: Tensor
                   ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Coarse matches of ``conf (B, L, S)``: pairs ``(i, j)`` where ``j`` is the first maximum of row ``i``,
    the confidence is also the maximum of column ``j`` (mutual nearest neighbours), exceeds
    ``max(threshold, 0)``, and both cells are inside the border (``inside0 (B, L)``, ``inside1 (B, S)``).
    Returns ``batch_indexes, i_ids, j_ids, confidence``, each ``(M,)``."""
    row_max, j_of_row = conf.max(dim=2)  # (B, L)
    col_max = conf.amax(dim=1)  # (B, S)
    keep = ((row_max > max(threshold, 0.0)) & (col_max.gather(1, j_of_row) == row_max)
            & inside0 & inside1.gather(1, j_of_row))
    b_ids, i_ids = keep.nonzero(as_tuple=True)
    return b_ids, i_ids, j_of_row[b_ids, i_ids], row_max[b_ids, i_ids]


def crop_windows(fine: Tensor, b_ids: Tensor, cell_ids: Tensor, coarse_width: int, window: int,
                 stride: int) -> Tensor:
    """The ``window x window`` cells of the fine map ``fine (B, C, Hf, Wf)`` centred on fine cell
    ``stride * (row, col)`` of coarse cell ``cell_ids (M,)`` (row-major in a ``coarse_width``-wide grid),
    zeros beyond the map. ``(M, window * window, C)``, row-major within the window."""
    r = window // 2
    padded = F.pad(fine, (r, r, r, r))
    offsets = torch.arange(window, device=fine.device)
    rows = (cell_ids // coarse_width * stride)[:, None] + offsets  # (M, W) in padded coordinates
    cols = (cell_ids % coarse_width * stride)[:, None] + offsets
    win = padded[b_ids[:, None, None], :, rows[:, :, None], cols[:, None, :]]  # (M, W, W, C)
    return win.reshape(cell_ids.shape[0], window * window, fine.shape[1])


def window_grid(window: int, device=None, dtype=torch.float32) -> Tensor:
    """``(W * W, 4)``: ``x, y, x^2, y^2`` of every window cell (row-major), ``x, y`` in ``[-1, 1]``."""
    t = torch.linspace(-1.0, 1.0, window, device=device, dtype=dtype)
    y, x = torch.meshgrid(t, t, indexing="ij")
    xy = torch.stack([x.reshape(-1), y.reshape(-1)], dim=-1)
    return torch.cat([xy, xy * xy], dim=-1)


def window_expectation(win0: Tensor, win1: Tensor, backend: str = "auto") -> tuple[Tensor, Tensor]:
    """Sub-pixel position of ``win0``'s centre token in ``win1`` (both ``(M, W*W, C)``): the heatmap
    ``softmax_k(<f0_centre, f1_k> / sqrt(C))`` over window 1 weights the cell positions (LoFTR sec. 3.4) --
    one attention query whose values are the positions. Returns ``xy (M, 2)`` in window units ``[-1, 1]``
    and ``std (M,)``, the summed standard deviations of the heatmap along x and y."""
    M, WW, C = win1.shape
    window = int(round(WW ** 0.5))
    q = win0[:, WW // 2][:, None, None, :]  # (M, 1, 1, C)
    grid = window_grid(window, win1.device, win1.dtype).expand(M, 1, WW, 4)
    moments = attend(q, win1[:, None], grid, backend=backend)[:, 0, 0]  # (M, 4): E[x], E[y], E[x^2], E[y^2]
    xy = moments[:, :2]
    var = moments[:, 2:] - xy * xy
    var = var.to(torch.promote_types(var.dtype, torch.float32))
    std = var.clamp_min(1e-10).sqrt().sum(-1)  # the floor keeps sqrt's gradient finite
    return xy, std.to(xy.dtype)


def coarse_focal_loss(conf: Tensor, positive: Tensor, valid: Tensor | None = None, alpha: float = 0.25,
                      gamma: float = 2.0) -> Tensor:
    """LoFTR's coarse term (sec. 3.5, the focal loss of Lin et al. 2017 on the dual-softmax confidence):
    ``mean_pos(-alpha (1-p)^gamma log p) + mean_neg(-alpha p^gamma log(1-p))``; ``positive (B, L, S)`` bool
    ground-truth matches, ``valid (B, L, S)`` bool pairs that count (padding excluded)."""
    p = conf.clamp(1e-6, 1 - 1e-6)
    negative = ~positive if valid is None else valid & ~positive
    pos = -alpha * (1 - p[positive]) ** gamma * p[positive].log()
    neg = -alpha * p[negative] ** gamma * (1 - p[negative]).log()
    zero = conf.sum() * 0.0  # keeps the graph (and the dtype) when a set is empty
    return (pos.mean() if pos.numel() else zero) + (neg.mean() if neg.numel() else zero)


def fine_l2_loss(xy: Tensor, std: Tensor, target: Tensor) -> Tensor:
    """LoFTR's fine term (sec. 3.5): ``sum ||xy - target||^2 / sigma`` over matches whose ground truth
    lies inside the window (``|target| < 1``), weights ``1/sigma`` normalised to mean 1 and detached."""
    correct = target.abs().amax(-1) < 1.0
    if not correct.any():
        return xy.sum() * 0.0
    inv_std = 1.0 / std[correct].clamp_min(1e-10)
    weight = (inv_std / inv_std.mean()).detach()
    return (((xy[correct] - target[correct]) ** 2).sum(-1) * weight).mean()
