"""The object encoder of the grounding models: each object's own points, packed (a variable number per
object), to one feature vector -- a PointNet-style shared MLP (Qi et al. 2017) followed by
point-transformer blocks whose attention stays inside each object (a
:class:`~relformer.relations.Documents` relation over rows of whole objects), max-pooled."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...data import Packed
from ...data.packed import lengths_to_offsets
from ...nn import MLP, Block
from .layout import ElementSet, element_set

__all__ = ["ObjectEncoder", "subsample", "to_slots", "segment_max"]


def subsample(point_offsets: Tensor, per_object: int) -> tuple[Tensor, Tensor]:
    """A deterministic stride subsample of at most ``per_object`` points of each object:
    ``index (S,)`` into the ``P`` points and the new ``counts (N,)``. Object ``o`` with ``n`` points keeps
    points ``floor(k * n / m)``, ``k < m = min(n, per_object)``."""
    n = point_offsets.diff()
    if (n <= 0).any():
        raise ValueError(f"every object needs at least one point; objects {(n <= 0).nonzero().flatten()[:5].tolist()} "
                         "have none")
    m = n.clamp(max=per_object)
    packed = Packed(torch.empty(int(m.sum()), device=n.device), lengths_to_offsets(m))
    obj = packed.segment_ids()
    return point_offsets[obj] + packed.positions() * n[obj] // m[obj], m


def to_slots(x: Tensor, index: Tensor, valid: Tensor, padded: bool) -> Tensor:
    """Packed ``x (N, ...)`` in the slots of a layout (``index``/``valid`` of :func:`element_set`): itself
    when packed, zeros on the padding slots when padded."""
    if not padded:
        return x
    out = x[index.clamp_min(0)]
    return out.masked_fill(~valid.view(-1, *([1] * (x.dim() - 1))), 0)


def segment_max(x: Tensor, items: ElementSet) -> Tensor:
    """``(M, C) -> (n, C)``: the channel-wise maximum over each item's valid slots."""
    ids = items.item_ids()
    x = x.masked_fill(~items.valid[:, None], float("-inf"))
    out = x.new_zeros(items.num_items, x.shape[-1])
    return out.scatter_reduce_(0, ids[:, None].expand_as(x), x, "amax", include_self=False)


class ObjectEncoder(nn.Module):
    """``points (P, 6)`` xyz + rgb of ``N`` objects packed by ``point_offsets (N + 1,)``, with their boxes
    ``centres``/``sizes (N, 3)`` -> ``(N, point_dim)``.

    Each object's points are centred on its box and scaled by its largest edge (ReferIt3D's unit-ball
    normalisation); ``rgb - 0.5``; a shared MLP ``6 -> point_dim``; ``layers`` pre-norm blocks of
    self-attention among the object's own points; max pooling. ``padded=True`` runs the same weights on
    objects padded to the largest point count (the speed twin).
    """

    def __init__(self, point_dim: int, layers: int, heads: int, per_object: int, backend: str = "auto") -> None:
        super().__init__()
        self.per_object = per_object
        self.mlp = MLP(6, point_dim, point_dim)
        self.blocks = nn.ModuleList(Block(point_dim, heads, mlp_ratio=2.0, backend=backend) for _ in range(layers))
        self.norm = nn.LayerNorm(point_dim)

    def forward(self, points: Tensor, point_offsets: Tensor, centres: Tensor, sizes: Tensor,
                padded: bool = False) -> Tensor:
        if not (isinstance(points, Tensor) and points.dim() == 2 and points.shape[-1] == 6
                and points.is_floating_point()):
            raise ValueError(f"points must be a float (P, 6) tensor (xyz + rgb), got {getattr(points, 'shape', points)}")
        index, counts = subsample(point_offsets, self.per_object)
        obj = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
        p = points[index]
        scale = sizes.amax(-1).clamp_min(1e-2)[obj, None]
        feats = torch.cat([(p[:, :3] - centres[obj]) / scale, p[:, 3:] - 0.5], -1)  # (S, 6)
        items, slot_index = element_set(counts, padded)
        x = self.mlp(to_slots(feats, slot_index, items.valid, padded))  # (M, C)
        relation = items.relation()
        for block in self.blocks:
            x = block(x, relation, rows=items.rows)
        return segment_max(self.norm(x), items)  # (N, C)
