"""Relations between boxes: Relation-DETR's position relation bias for object queries."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention.relation import Relation, check_float, check_int
from .sequence import _check_heads

__all__ = ["BoxRelationBias", "box_pair_features", "sine_embed"]


def box_pair_features(boxes_i: Tensor, boxes_j: Tensor, eps: float = 1e-5) -> Tensor:
    """Relation-DETR's pairwise box encoding (Hou et al. 2024), broadcasting ``(..., 4)`` boxes
    ``(cx, cy, w, h)`` of query ``i`` against key ``j`` to ``(..., 4)``::

        [log(|cx_i - cx_j| / (w_i + eps) + 1), log(|cy_i - cy_j| / (h_i + eps) + 1),
         log((w_i + eps) / (w_j + eps)),       log((h_i + eps) / (h_j + eps))]
    """
    xy_i, wh_i = boxes_i[..., :2], boxes_i[..., 2:]
    xy_j, wh_j = boxes_j[..., :2], boxes_j[..., 2:]
    delta_xy = torch.log((xy_i - xy_j).abs() / (wh_i + eps) + 1.0)
    delta_wh = torch.log((wh_i + eps) / (wh_j + eps))
    return torch.cat([delta_xy, delta_wh], -1)


def sine_embed(x: Tensor, dim_t: Tensor, scale: float) -> Tensor:
    """DETR's sine embedding of each value of ``x (..., n)`` -> ``(..., n * len(dim_t))``: feature ``k``
    is ``sin`` (even ``k``) or ``cos`` (odd ``k``) of ``x * scale / dim_t[k]``."""
    arg = x.unsqueeze(-1) * scale / dim_t  # (..., n, E)
    return torch.stack((arg[..., 0::2].sin(), arg[..., 1::2].cos()), -1).flatten(-3)


class BoxRelationBias(Relation):
    """Relation-DETR's position relation (Hou et al. 2024, "Relation DETR: Exploring Explicit
    Position Relation Prior for Object Detection") as an attention bias between
    object queries: ``bias[b, :, i, j] = ReLU(W · sine(e(box_i, box_j)) + c)``.

    ``e`` is :func:`box_pair_features` (4 values), each embedded by :func:`sine_embed` into
    ``embed_dim`` features (``dim_t[k] = temperature ** (2 * (k // 2) / embed_dim)``, times
    ``scale``), then ``proj = nn.Linear(4 * embed_dim, num_heads)`` (Relation-DETR's 1x1 Conv2d)
    and ReLU. Per-batch ``boxes (B, Q, 4)`` in ``(cx, cy, w, h)`` via ``.bind(boxes=...)``;
    gradients reach ``proj`` and, when they require grad, the boxes (Relation-DETR itself
    computes the features under ``no_grad``; detach the boxes for that behaviour).

    The bias is computed from the boxes of each query/key tile directly (``chunked`` never
    builds the ``Q x Q`` bias). Flex's compiled kernel cannot run the per-pair linear layer
    (a reduction over ``4 * embed_dim`` features), so :meth:`detached` (the forward-only view
    Flex uses) precomputes the dense ``(B, H, Q, Q)`` bias once and indexes it.
    """

    has_bias = True

    def __init__(self, num_heads: int, embed_dim: int = 16, temperature: float = 10000.0, scale: float = 100.0,
                 boxes: Tensor | None = None) -> None:
        super().__init__()
        num_heads = check_int("num_heads", num_heads)
        if check_int("embed_dim", embed_dim) % 2:
            raise ValueError(f"embed_dim must be a positive even number (sin/cos pairs), got {embed_dim}")
        self.embed_dim = int(embed_dim)
        self.temperature = check_float("temperature", temperature, positive=True)
        self.scale = check_float("scale", scale)
        # per pair: 4*embed_dim features, their sin/cos and the linear output, shared by the H heads
        self.tile_cost = 1.0 + 3.0 * 4 * self.embed_dim / num_heads
        self.proj = nn.Linear(4 * self.embed_dim, num_heads)
        k = torch.arange(self.embed_dim, dtype=torch.float32)
        self.register_buffer("dim_t", temperature ** (2 * torch.div(k, 2, rounding_mode="floor") / self.embed_dim),
                             persistent=False)
        self.register_buffer("heads", torch.arange(num_heads), persistent=False)
        self.boxes = boxes
        self.dense: Tensor | None = None  # set only on the view Flex uses, see flex_view()

    def pair_bias(self, boxes_i: Tensor, boxes_j: Tensor) -> Tensor:
        """``(..., 4)`` box pairs -> ``(..., H)`` biases for every head."""
        feats = sine_embed(box_pair_features(boxes_i, boxes_j), self.dim_t, self.scale)  # (..., 4 * E)
        return torch.relu(self.proj(feats))

    def bias_mod(self, b, h, q_idx, kv_idx):
        if self.dense is not None:
            return self.dense[b, h, q_idx, kv_idx]
        bias = self.pair_bias(self.boxes[b, q_idx], self.boxes[b, kv_idx])  # (B, 1, Lq, Lk, H)
        # pick head h by comparison, so h may have any broadcastable shape -> (B, H, Lq, Lk)
        return torch.where(self.heads == h.unsqueeze(-1), bias, 0.0).sum(-1)

    def flex_view(self) -> "BoxRelationBias":
        """Forward-only copy for Flex, holding the precomputed ``dense (B, H, Q, Q)`` bias."""
        new = self.detached()
        with torch.no_grad():
            dense = new.pair_bias(new.boxes[:, :, None], new.boxes[:, None, :]).permute(0, 3, 1, 2)  # (B, H, Q, Q)
        object.__setattr__(new, "dense", dense.contiguous())
        return new

    def check(self, B, H, Lq, Lk):
        if self.boxes is None:
            raise ValueError("boxes is not set: use BoxRelationBias(...).bind(boxes=...)")
        _check_heads(self.proj.out_features, H)
        if not self.boxes.is_floating_point() or self.boxes.shape != (B, Lq, 4) or Lq != Lk:
            raise ValueError(f"boxes must be a float (B, Q, 4) tensor with Q = Lq = Lk = {(B, Lq, Lk)}, "
                             f"got {self.boxes.dtype} {tuple(self.boxes.shape)}")

    def extra_repr(self) -> str:
        return (f"num_heads={self.proj.out_features}, embed_dim={self.embed_dim}, "
                f"temperature={self.temperature}, scale={self.scale}")
