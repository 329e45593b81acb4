"""LightGlue's pieces (Lindenberger, Sarlin and Pollefeys 2023, "LightGlue: Local Feature Matching at
Light Speed", ICCV), on packed tokens: the config, the learned Fourier keypoint encoding, the self
and cross layers (all attention through :func:`relformer.attend`), and the log-assignment head.

Tokens are packed: every image of every pair concatenated, ``x (N, C)``, with the image
boundaries ``bounds`` (a list of ``(start, stop)``); the linear layers run on all tokens at once,
attention on each image (self) or pair (cross) with no mask and no padding. The fused input
projections go through :func:`relformer.nn.linear` (the GEMM measured faster on this CPU).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention import attend
from ...nn import linear
from ...relations.rotary import Rotary
from ..checks import check_positive

__all__ = ["LightGlueConfig", "FourierPositions", "MessageMLP", "SelfLayer", "CrossLayer", "AssignmentHead",
           "log_assignment", "mutual_matches", "confidence_threshold"]


@dataclass(frozen=True)
class LightGlueConfig:
    """LightGlue hyper-parameters (defaults: the paper's, ``input_dim`` the descriptor width).

    ``depth_confidence``: adaptive depth, a pair stops once more than this fraction of its points
    is confident (sec. 3.3, eq. 9); ``width_confidence``: adaptive width, a point is pruned when its
    matchability is below ``1 - width_confidence`` and it is confident (eq. 10); ``<= 0`` turns either
    off (the reference's ``-1``). ``filter_threshold``: the assignment score a match must exceed.
    ``prune_min_points``: an image prunes only while it has more points than this (the reference's
    CPU rule, ``-1``: always; it uses 1024 / 1536 on CUDA). ``backend``: passed to ``attend``.
    """

    input_dim: int = 256
    descriptor_dim: int = 256
    n_layers: int = 9
    num_heads: int = 4
    depth_confidence: float = 0.95
    width_confidence: float = 0.99
    filter_threshold: float = 0.1
    prune_min_points: int = -1
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, "input_dim", "descriptor_dim", "n_layers", "num_heads")
        if self.descriptor_dim % self.num_heads or (self.descriptor_dim // self.num_heads) % 2:
            raise ValueError(f"LightGlueConfig.descriptor_dim ({self.descriptor_dim}) must be num_heads "
                             f"({self.num_heads}) times an even head width")
        for name in ("depth_confidence", "width_confidence", "filter_threshold"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ValueError(f"LightGlueConfig.{name} must be a finite number, got {value!r}")
        if isinstance(self.prune_min_points, bool) or not isinstance(self.prune_min_points, int):
            raise ValueError(f"LightGlueConfig.prune_min_points must be an int, got {self.prune_min_points!r}")

    @property
    def head_dim(self) -> int:
        return self.descriptor_dim // self.num_heads


def confidence_threshold(layer: int, n_layers: int) -> float:
    """The confidence a point needs after layer ``layer`` (eq. 9): ``0.8 + 0.1 exp(-4 l / L)``, in [0, 1]."""
    return min(max(0.8 + 0.1 * math.exp(-4.0 * layer / n_layers), 0.0), 1.0)


class FourierPositions(nn.Module):
    """Learned Fourier features of normalised keypoints (eq. 4): angles ``W_r p``, ``p (N, 2) -> (N, D/2)``,
    used as the per-token angles of a :class:`~relformer.relations.rotary.Rotary` on q and k (eq. 3)."""

    def __init__(self, head_dim: int, in_dim: int = 2) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(head_dim // 2, in_dim))  # W_r (D/2, 2), N(0, 1) as gamma = 1

    def forward(self, points: Tensor) -> Rotary:
        return Rotary(F.linear(points, self.weight))


class MessageMLP(nn.Module):
    """The update of eq. 1: ``x + MLP([x | m])`` with ``MLP = Linear(2C, 2C), LayerNorm, GELU, Linear(2C, C)``,
    where the message ``m = proj(o)`` is the output projection of the attention output ``o``.

    The first product is split over ``[x | m]`` (two ``addmm`` into one buffer), so ``[x | m]`` is never
    concatenated; with more than ``2C`` tokens the projection is folded into it,
    ``W_m (W_p o + b_p) = (W_m W_p) o + W_m b_p``: a ``(2C, C) x (C, C)`` product instead of ``N x C x C``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.fc1 = nn.Linear(2 * dim, 2 * dim)
        self.norm = nn.LayerNorm(2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)

    def forward(self, x: Tensor, attended: Tensor, proj: nn.Linear) -> Tensor:
        w_x, w_m = self.fc1.weight[:, :self.dim], self.fc1.weight[:, self.dim:]
        if x.shape[0] > 2 * self.dim:
            w, b = w_m @ proj.weight, torch.addmv(self.fc1.bias, w_m, proj.bias)  # (2C, C), (2C,)
            h = torch.addmm(b, x, w_x.t()).addmm_(attended, w.t())  # (N, 2C)
        else:
            h = torch.addmm(self.fc1.bias, x, w_x.t()).addmm_(F.linear(attended, proj.weight, proj.bias), w_m.t())
        return torch.addmm(x, F.gelu(self.norm(h)), self.fc2.weight.t()).add_(self.fc2.bias)


def _heads(t: Tensor) -> Tensor:
    """``(L, H, D)`` token-major slice -> ``(1, H, L, D)`` view for ``attend``."""
    return t.transpose(0, 1)[None]


def _merge(outs: list[Tensor], n: int) -> Tensor:
    """Per-image ``attend`` outputs ``(1, H, L, D)`` -> ``(N, H * D)`` in token order."""
    flat = [o[0].transpose(0, 1).reshape(o.shape[2], -1) for o in outs]
    return flat[0] if len(flat) == 1 else torch.cat(flat)


class _MessageLayer(nn.Module):
    """An attention layer of eq. 1: a fused input projection of ``projections * C`` rows, the output
    projection ``proj`` and the update :class:`MessageMLP`."""

    projections = 3

    def __init__(self, dim: int, num_heads: int, backend: str = "auto") -> None:
        super().__init__()
        self.dim, self.num_heads, self.backend = dim, num_heads, backend
        self.qkv = nn.Linear(dim, self.projections * dim)
        self.proj = nn.Linear(dim, dim)
        self.ffn = MessageMLP(dim)


class SelfLayer(_MessageLayer):
    """Self-attention within each image (eq. 1-3): rotary q / k from the keypoint angles, SDPA per image.

    ``qkv`` is laid out ``[q; k; v]``, heads major, with half-split rotary pairs (the reference's
    interleaved layout is permuted when its weights load: :mod:`.lightglue_weights`)."""

    projections = 3  # q, k, v

    def forward(self, x: Tensor, rotary: Rotary, bounds: list[tuple[int, int]]) -> Tensor:
        N, H = x.shape[0], self.num_heads
        qkv = linear(x, self.qkv.weight, self.qkv.bias)  # (N, 3C)
        qk = rotary.apply(qkv[:, :2 * self.dim].view(N, 2 * H, -1))  # (N, 2H, D): q heads, then k heads
        v = qkv[:, 2 * self.dim:].view(N, H, -1)  # (N, H, D)
        outs = [attend(_heads(qk[a:b, :H]), _heads(qk[a:b, H:]), _heads(v[a:b]), backend=self.backend)
                for a, b in bounds]
        return self.ffn(x, _merge(outs, N), self.proj)


class CrossLayer(_MessageLayer):
    """Bidirectional cross-attention between the two images of each pair (eq. 2, 5): one shared
    projection for queries and keys (``qk``) and one for values, ``qkv = [qk; v]``; image A reads B
    and B reads A. The reference materialises the ``(H, M, N)`` similarity once for both softmaxes;
    here each direction is one fused SDPA call, so nothing of size ``M x N`` is kept."""

    projections = 2  # qk, v

    def forward(self, x: Tensor, bounds: list[tuple[int, int]]) -> Tensor:
        N, H = x.shape[0], self.num_heads
        qkv = linear(x, self.qkv.weight, self.qkv.bias).view(N, 2 * H, -1)  # (N, 2H, D)
        qk, v = qkv[:, :H], qkv[:, H:]
        outs = []
        for (a0, b0), (a1, b1) in zip(bounds[0::2], bounds[1::2]):
            q0, q1 = _heads(qk[a0:b0]), _heads(qk[a1:b1])
            outs.append(attend(q0, q1, _heads(v[a1:b1]), backend=self.backend))
            outs.append(attend(q1, q0, _heads(v[a0:b0]), backend=self.backend))
        return self.ffn(x, _merge(outs, N), self.proj)


class AssignmentHead(nn.Module):
    """Per-layer heads: ``proj`` for the pairwise scores (eq. 6) and ``matchability`` (eq. 7)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, dim)
        self.matchability = nn.Linear(dim, 1)


def _log_sum_exps(sim: Tensor) -> tuple[Tensor, Tensor]:
    """Row and column log-sum-exps of ``sim (M, N)`` from ONE exponential, shifted by the global maximum;
    where a row or column sum falls below ``UNDERFLOW`` (a row far below the global maximum), torch's
    own ``logsumexp`` per direction instead."""
    top = sim.max()
    e = (sim - top).exp_()  # (M, N) in (0, 1]
    rows, cols = e.sum(1), e.sum(0)
    if bool(rows.min() < UNDERFLOW) or bool(cols.min() < UNDERFLOW):
        return torch.logsumexp(sim, 1), torch.logsumexp(sim, 0)
    return rows.log_().add_(top), cols.log_().add_(top)


UNDERFLOW = 1e-30  # well above float32's smallest normal (1.2e-38): the shifted sums keep full precision


def log_assignment(sim: Tensor, z0: Tensor, z1: Tensor) -> Tensor:
    """The log assignment ``(M, N)`` of eq. 8 without its dustbin row / column:
    ``log softmax_j(S) + log softmax_i(S) + log sigma(z0_i) + log sigma(z1_j)``.

    ``sim (M, N)``: scores ``S`` of eq. 6; ``z0 (M,)``, ``z1 (N,)``: matchability logits (eq. 7). Written
    as ``2 S + r_i + c_j`` with the row / column log-sum-exps folded into ``r`` and ``c``, so the
    only ``M x N`` temporaries are ``S``, one exponential and the result."""
    lse_rows, lse_cols = _log_sum_exps(sim)
    row = F.logsigmoid(z0) - lse_rows  # (M,)
    col = F.logsigmoid(z1) - lse_cols  # (N,)
    return torch.add(col[None, :], sim, alpha=2.0).add_(row[:, None])


def mutual_matches(scores: Tensor, threshold: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Mutual nearest neighbours of a log assignment ``(M, N)`` above ``threshold`` (sec. 3.2, "Inference").

    Returns ``matches0 (M,)`` / ``matches1 (N,)`` (index in the other image, ``-1`` when unmatched) and
    ``scores0 (M,)`` / ``scores1 (N,)``: the assignment probability of every mutual pair (also those
    below the threshold, as the reference reports), else 0. Row ``i`` and its best column ``j`` are
    mutual when ``scores[i, j]`` is also column ``j``'s maximum: one arg-max (rows) and one max
    (columns), and image 1's results are scattered from image 0's (each mutual column has one row)."""
    best0, m0 = scores.max(1)  # (M,)
    mutual0 = best0 == scores.amax(0)[m0]
    zero = best0.new_zeros(())
    scores0 = torch.where(mutual0, best0.exp(), zero)
    valid0 = mutual0 & (scores0 > threshold)
    rows = torch.arange(m0.shape[0], device=m0.device)
    matches1 = torch.full((scores.shape[1],), -1, dtype=torch.long, device=m0.device)
    matches1[m0[valid0]] = rows[valid0]
    scores1 = scores.new_zeros(scores.shape[1])
    scores1[m0[mutual0]] = scores0[mutual0]
    return torch.where(valid0, m0, -1), matches1, scores0, scores1
