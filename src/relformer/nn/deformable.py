"""The multi-scale deformable attention module (Zhu et al. 2021, "Deformable DETR", eq. 3), on
:func:`relformer.attention.multi_scale_deformable_attend`.

For a query ``z_q`` with reference point ``p_q`` the module predicts, per head ``h``, level ``l`` and
point ``k``, a sampling offset ``dp_{hlqk} = sampling_offsets(z_q)`` and a weight
``A_{hlqk} = softmax_{l,k}(attention_weights(z_q))``; the value rows are ``value_proj(x)`` and the
result goes through ``output_proj``. Sampling locations (the paper's ``phi_l(p_q) + dp``):

* 2-d reference points ``(x, y)``: ``p + dp / (w_l, h_l)`` (offsets in pixels of level ``l``);
* 4-d reference boxes ``(cx, cy, w, h)`` (Deformable DETR's two-stage / RT-DETR):
  ``(cx, cy) + dp / P * (w, h) * 0.5``.

Parameter names and initialisation are those of HF transformers' ``RTDetrMultiscaleDeformableAttention``
(offsets start on a ring of ``H`` directions, ``k + 1`` steps out for point ``k``; uniform weights).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention.deformable import describe, multi_scale_deformable_attend
from ..attention.relation import check_int
from .gemm import Linear

__all__ = ["MultiScaleDeformableAttention"]


class MultiScaleDeformableAttention(nn.Module):
    """Multi-scale deformable attention (module doc).

    ``forward(hidden_states (B, Q, C), reference_points (B, Q, L|1, 2|4), value_states (B, S, C),
    spatial_shapes (L, 2), level_start_index (L,) | None, value_mask (B, S) bool | None,
    position_embeddings (B, Q, C) | None) -> (B, Q, C)``. ``value_mask`` is True at real positions
    (padding rows are zeroed before sampling); ``position_embeddings`` are added to the queries.
    """

    def __init__(self, dim: int, num_heads: int = 8, num_levels: int = 4, num_points: int = 4) -> None:
        super().__init__()
        dim, num_heads = check_int("dim", dim), check_int("num_heads", num_heads)
        self.num_levels, self.num_points = check_int("num_levels", num_levels), check_int("num_points", num_points)
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.sampling_offsets = Linear(dim, num_heads * num_levels * num_points * 2)
        self.attention_weights = Linear(dim, num_heads * num_levels * num_points)
        self.value_proj = Linear(dim, dim)
        self.output_proj = Linear(dim, dim)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """HF's / Deformable DETR's initialisation (module doc)."""
        H, L, P = self.num_heads, self.num_levels, self.num_points
        nn.init.zeros_(self.sampling_offsets.weight)
        thetas = torch.arange(H, dtype=torch.int64).to(torch.get_default_dtype()) * (2.0 * math.pi / H)
        grid = torch.stack([thetas.cos(), thetas.sin()], -1)
        grid = (grid / grid.abs().max(-1, keepdim=True)[0]).view(H, 1, 1, 2).repeat(1, L, P, 1)
        grid *= torch.arange(1, P + 1, dtype=grid.dtype).view(1, 1, P, 1)
        self.sampling_offsets.bias.copy_(grid.view(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for proj in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _check(self, hidden_states: Tensor, reference_points: Tensor, value_states: Tensor,
               value_mask: Tensor | None, position_embeddings: Tensor | None) -> None:
        for name, t in (("hidden_states", hidden_states), ("value_states", value_states)):
            if not isinstance(t, Tensor) or t.dim() != 3 or t.shape[-1] != self.dim:
                raise ValueError(f"{name} must be (B, L, {self.dim}), got {describe(t)}")
        B, Q, _ = hidden_states.shape
        if value_states.shape[0] != B:
            raise ValueError(f"value_states has batch {value_states.shape[0]}, hidden_states {B}")
        if not isinstance(reference_points, Tensor) or reference_points.dim() != 4 \
                or reference_points.shape[:2] != (B, Q) or reference_points.shape[2] not in (1, self.num_levels) \
                or reference_points.shape[3] not in (2, 4):
            raise ValueError(f"reference_points must be (B, Q, L|1, 2|4) = ({B}, {Q}, {self.num_levels}|1, 2|4), "
                             f"got {describe(reference_points)}")
        if position_embeddings is not None and (not isinstance(position_embeddings, Tensor)
                                                or position_embeddings.shape != hidden_states.shape):
            raise ValueError(f"position_embeddings must be (B, Q, C) = {tuple(hidden_states.shape)}, got "
                             f"{describe(position_embeddings)}")
        if value_mask is not None and (not isinstance(value_mask, Tensor) or value_mask.dtype != torch.bool
                                       or value_mask.shape != value_states.shape[:2]):
            raise ValueError(f"value_mask must be a bool (B, S) = {tuple(value_states.shape[:2])} tensor "
                             f"(True = real), got {describe(value_mask)}")

    def forward(self, hidden_states: Tensor, reference_points: Tensor, value_states: Tensor, spatial_shapes: Tensor,
                level_start_index: Tensor | None = None, value_mask: Tensor | None = None,
                position_embeddings: Tensor | None = None) -> Tensor:
        self._check(hidden_states, reference_points, value_states, value_mask, position_embeddings)
        if not hasattr(spatial_shapes, "__len__") or len(spatial_shapes) != self.num_levels:
            raise ValueError(f"spatial_shapes must have num_levels = {self.num_levels} rows (h, w), "
                             f"got {spatial_shapes!r}")
        H, L, P, D = self.num_heads, self.num_levels, self.num_points, self.head_dim
        B, Q, _ = hidden_states.shape
        S = value_states.shape[1]
        query = hidden_states if position_embeddings is None else hidden_states + position_embeddings
        value = self.value_proj(value_states)
        if value_mask is not None:
            value = value.masked_fill(~value_mask[..., None], 0.0)
        value = value.view(B, S, H, D)
        offsets = self.sampling_offsets(query).view(B, Q, H, L, P, 2)
        weights = F.softmax(self.attention_weights(query).view(B, Q, H, L * P), -1).view(B, Q, H, L, P)
        ref = reference_points[:, :, None, :, None, :]  # (B, Q, 1, L|1, 1, 2|4)
        if reference_points.shape[-1] == 2:
            shapes = torch.as_tensor(spatial_shapes, device=value.device)
            normalizer = torch.stack([shapes[..., 1], shapes[..., 0]], -1).to(offsets.dtype)  # (L, 2) as (w, h)
            locations = ref + offsets / normalizer[:, None, :]
        else:
            locations = ref[..., :2] + offsets / P * ref[..., 2:] * 0.5
        out = multi_scale_deformable_attend(value, spatial_shapes, locations, weights, level_start_index)
        return self.output_proj(out)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, num_heads={self.num_heads}, num_levels={self.num_levels}, num_points={self.num_points}"
