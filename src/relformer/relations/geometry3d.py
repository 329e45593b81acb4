"""Relations between 3-D objects: the geometry of each object pair (relative centre offsets, distances, log
size ratios, horizontal direction) as a per-head attention bias, for relation-aware attention over the
objects of a scene in 3-D visual grounding (the setting of TransRefer3D, He et al. 2021, and ReferIt3D,
Achlioptas et al. 2020); packed scenes are kept apart by segment ids. The bias form -- pair features, a
small network, one value per head -- follows Relation-DETR's position relation (Hou et al. 2024, see
:class:`~relformer.relations.BoxRelationBias`), here with 3-D boxes and an MLP."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention.relation import Relation, check_int
from .sequence import _check_heads

__all__ = ["Pair3DBias", "pair_features", "PAIR_FEATURES"]

#: the names of the ``F`` features of :func:`pair_features`, in order
PAIR_FEATURES = ("dx", "dy", "dz", "distance", "horizontal_distance", "log_size_x", "log_size_y", "log_size_z",
                 "sin_azimuth", "cos_azimuth")


def _safe_sqrt(x2: Tensor) -> tuple[Tensor, Tensor]:
    """``(sqrt(x2), x2 > 0)`` with a finite gradient at 0 (the root of 0 is 0, its gradient 0)."""
    nonzero = x2 > 0
    return torch.where(nonzero, torch.where(nonzero, x2, 1.0).sqrt(), 0.0), nonzero


def pair_features(centres_i: Tensor, sizes_i: Tensor, centres_j: Tensor | None = None,
                  sizes_j: Tensor | None = None, eps: float = 1e-3) -> Tensor:
    """Geometry of object ``j`` seen from object ``i`` in the room frame (z up), ``(..., F)`` with ``F = 10``
    (:data:`PAIR_FEATURES`)::

        d = c_j - c_i                                  relative centre offset (dx, dy, dz; dz: vertical offset)
        |d|, |d_xy|                                    distance, horizontal distance
        log((s_j + eps) / (s_i + eps))                 size ratios per axis (log)
        d_y / |d_xy|, d_x / |d_xy|                     sin / cos of the azimuth (0, 0 when |d_xy| = 0)

    Called with one set, ``pair_features(centres (N, 3), sizes (N, 3))`` gives every pair, ``(N, N, F)``;
    with two, the inputs broadcast like ``c_j - c_i`` (``(..., 3)`` each). Sizes are box edge lengths
    (non-negative). Every feature has a finite gradient, coincident centres included.
    """
    if centres_j is None:
        if sizes_j is not None:
            raise ValueError("give centres_j and sizes_j together")
        for name, t in (("centres", centres_i), ("sizes", sizes_i)):
            if not isinstance(t, Tensor) or t.dim() != 2 or t.shape[-1] != 3 or not t.is_floating_point():
                raise ValueError(f"{name} must be a float (N, 3) tensor, got {getattr(t, 'shape', type(t))}")
        if centres_i.shape != sizes_i.shape:
            raise ValueError(f"centres {tuple(centres_i.shape)} and sizes {tuple(sizes_i.shape)} must match")
        centres_i, sizes_i, centres_j, sizes_j = centres_i[:, None], sizes_i[:, None], centres_i[None], sizes_i[None]
    elif sizes_j is None:
        raise ValueError("give centres_j and sizes_j together")
    d = centres_j - centres_i                                   # (..., 3)
    dxy2 = d[..., 0] ** 2 + d[..., 1] ** 2
    dist, _ = _safe_sqrt(dxy2 + d[..., 2] ** 2)
    dist_xy, moved = _safe_sqrt(dxy2)
    r = torch.where(moved, dist_xy, 1.0)
    sin, cos = torch.where(moved, d[..., 1] / r, 0.0), torch.where(moved, d[..., 0] / r, 0.0)
    log_ratio = torch.log((sizes_j + eps) / (sizes_i + eps))   # (..., 3)
    return torch.cat([d, dist[..., None], dist_xy[..., None], log_ratio, sin[..., None], cos[..., None]], -1)


class Pair3DBias(Relation):
    """Additive per-head attention bias from the 3-D geometry of each object pair, masked to pairs of
    the same scene: ``bias[b, h, i, j] = MLP(pair_features(box_i, box_j))[h]`` where
    ``segment_ids[b, i] == segment_ids[b, j] >= 0``, ``-inf`` elsewhere.

    ``MLP = Linear(F, hidden) -> ReLU -> Linear(hidden, num_heads)`` with ``F = 10`` features of
    :func:`pair_features`. Per-batch data via ``.bind(centres=(B, L, 3), sizes=(B, L, 3),
    segment_ids=(B, L))``: the objects of several scenes packed in one sequence (``segment_ids``:
    the scene of each slot, ``-1`` an empty slot; None: one scene per row, every pair attends), e.g.
    ``Packed.to_rows()`` rows or one ``(1, N)`` sequence. Gradients reach the MLP and, when they
    require grad, the centres and sizes. Like :class:`~relformer.relations.BoxRelationBias`, the bias is
    computed per tile (``chunked`` never builds ``L x L``); :meth:`flex_view` precomputes the dense
    ``(B, H, L, L)`` bias, which Flex indexes.
    """

    has_bias = True
    has_mask = True

    def __init__(self, num_heads: int, hidden: int = 32, eps: float = 1e-3, centres: Tensor | None = None,
                 sizes: Tensor | None = None, segment_ids: Tensor | None = None) -> None:
        super().__init__()
        num_heads, hidden = check_int("num_heads", num_heads), check_int("hidden", hidden)
        self.eps = float(eps)
        self.mlp = nn.Sequential(nn.Linear(len(PAIR_FEATURES), hidden), nn.ReLU(), nn.Linear(hidden, num_heads))
        self.tile_cost = 1.0 + 2.0 * (len(PAIR_FEATURES) + hidden) / num_heads
        self.register_buffer("heads", torch.arange(num_heads), persistent=False)
        self.centres, self.sizes, self.segment_ids = centres, sizes, segment_ids
        self.dense: Tensor | None = None  # set only on the view Flex uses, see flex_view()

    @property
    def num_heads(self) -> int:
        return self.mlp[-1].out_features

    def pair_bias(self, centres_i: Tensor, sizes_i: Tensor, centres_j: Tensor, sizes_j: Tensor) -> Tensor:
        """``(..., 3)`` boxes of ``i`` and ``j`` (broadcasting) -> ``(..., H)`` biases for every head."""
        feats = pair_features(centres_i, sizes_i, centres_j, sizes_j, self.eps)  # (..., F)
        return self.mlp(feats.to(self.mlp[0].weight.dtype))

    def mask_mod(self, b, h, q_idx, kv_idx):
        if self.segment_ids is None:
            return torch.ones_like(q_idx - kv_idx, dtype=torch.bool)
        s_q = self.segment_ids[b, q_idx]
        return (s_q == self.segment_ids[b, kv_idx]) & (s_q >= 0)

    def bias_mod(self, b, h, q_idx, kv_idx):
        if self.dense is not None:
            return self.dense[b, h, q_idx, kv_idx]
        c, s = self.centres, self.sizes
        bias = self.pair_bias(c[b, q_idx], s[b, q_idx], c[b, kv_idx], s[b, kv_idx])  # (B, 1, Lq, Lk, H)
        # pick head h by comparison, so h may have any broadcastable shape -> (B, H, Lq, Lk)
        return torch.where(self.heads == h.unsqueeze(-1), bias, 0.0).sum(-1)

    def flex_view(self) -> "Pair3DBias":
        """Forward-only copy for Flex, holding the precomputed ``dense (B, H, L, L)`` bias."""
        new = self.detached()
        c, s = new.centres, new.sizes
        with torch.no_grad():
            dense = new.pair_bias(c[:, :, None], s[:, :, None], c[:, None], s[:, None]).permute(0, 3, 1, 2)
        object.__setattr__(new, "dense", dense.contiguous())
        return new

    def bind(self, **data) -> "Pair3DBias":
        """A copy reading new ``centres``, ``sizes`` and ``segment_ids``, their values checked here (once per
        batch, not on every attend call): finite, sizes non-negative, integer segment ids."""
        new = super().bind(**data)
        for name in ("centres", "sizes"):
            t = getattr(new, name)
            if t is None:
                continue
            if not isinstance(t, Tensor) or not t.is_floating_point() or t.dim() != 3 or t.shape[-1] != 3:
                raise ValueError(f"{name} must be a float (B, L, 3) tensor, got {getattr(t, 'dtype', type(t))} "
                                 f"{tuple(getattr(t, 'shape', ()))}")
            if not torch.isfinite(t).all():
                raise ValueError(f"{name} must be finite")
        if new.sizes is not None and (new.sizes < 0).any():
            raise ValueError("sizes must be non-negative box edge lengths")
        ids = new.segment_ids
        if ids is not None and (not isinstance(ids, Tensor) or ids.dtype not in (torch.int32, torch.int64)
                                or ids.dim() != 2):
            raise ValueError(f"segment_ids must be an integer (B, L) tensor, got {getattr(ids, 'dtype', type(ids))} "
                             f"{tuple(getattr(ids, 'shape', ()))}")
        return new

    def check(self, B, H, Lq, Lk):
        if self.centres is None or self.sizes is None:
            raise ValueError("centres and sizes are not set: use Pair3DBias(...).bind(centres=..., sizes=...)")
        _check_heads(self.num_heads, H)
        for name, t in (("centres", self.centres), ("sizes", self.sizes)):
            if t.shape != (B, Lq, 3) or Lq != Lk:
                raise ValueError(f"{name} must be (B, L, 3) with L = Lq = Lk, expected {(B, Lq, 3)} (Lk = {Lk}), "
                                 f"got {tuple(t.shape)}")
        if self.segment_ids is not None and self.segment_ids.shape != (B, Lq):
            raise ValueError(f"segment_ids must be (B, L) = {(B, Lq)}, got {tuple(self.segment_ids.shape)}")

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}, hidden={self.mlp[0].out_features}, eps={self.eps}"
