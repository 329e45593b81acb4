"""The RT-DETR decoder (Zhao et al. 2024, "DETRs Beat YOLOs on Real-time Object Detection", sec. 4.1):
a Deformable-DETR decoder with iterative box refinement over the hybrid encoder's multi-scale memory.

Layer ``i`` (post-norm, as RT-DETR), queries ``h (B, Q, C)``, reference boxes ``r_i (B, Q, 4)``
(``cx, cy, w, h`` in ``[0, 1]``), query positions ``pos_i = query_pos_head(r_i)``::

    h = LN(h + SelfAttn(q = k = h + pos_i, v = h; relation))     # attend(); the denoising mask as a Relation
    h = LN(h + MSDeformAttn(h + pos_i, r_i, memory))              # Zhu et al. 2021, eq. 3, 4-d reference boxes
    h = LN(h + FFN(h))
    b_i = sigmoid(bbox_embed[i](h) + inverse_sigmoid(r_i));  logits_i = class_embed[i](h)
    r_{i+1} = b_i.detach()                                        # iterative refinement, gradient stopped

``r_0 = sigmoid(reference_points)`` (the query selection's unsigmoided boxes). With ``rank=True``
(Rank-DETR's rank-oriented architecture, :mod:`.rank`, Sec. 3.1) a :class:`~.rank.QueryRankLayer` sorts
the matching queries ``h`` and their boxes ``r_i`` by layer ``i - 1``'s scores and fuses rank embeddings
into ``h`` before every layer ``i >= 1`` (the positions ``pos_i`` are rebuilt from the sorted boxes), and
the class heads are :class:`~.rank.RankAdaptiveClassHead` s (a learned logit bias per rank); the first
``num_fixed`` (denoising) queries are never sorted nor biased. The self-attention
relation is any :class:`~relformer.attention.Relation` over ``(Q, Q)`` pairs; RT-DETR's denoising mask
(matching queries do not see the denoising groups, groups do not see each other) is a boolean pair mask:
``GraphAdjacency(allowed (B, Q, Q), self_loops=False)`` from :mod:`relformer.relations`.

Parameter names are those of HF transformers' ``RTDetrDecoder`` with the detection head's per-layer
``class_embed`` / ``bbox_embed`` attached, so its ``state_dict`` loads strictly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...attention import Relation, attend
from ...attention.deformable import describe
from ...attention.relation import check_float, check_int
from ...nn import MLP, Linear, MultiScaleDeformableAttention
from ..outputs import ModelOutput
from .rank import QueryRankLayer, RankAdaptiveClassHead

__all__ = ["RTDetrDecoder", "RTDetrDecoderLayer", "RTDetrDecoderOutput", "PositionalSelfAttention", "MLPHead",
           "inverse_sigmoid"]


def inverse_sigmoid(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``log(x / (1 - x))`` with ``x`` clamped to ``[0, 1]`` and both terms to ``>= eps`` (RT-DETR's, HF's)."""
    x = x.clamp(min=0, max=1)
    return torch.log(x.clamp(min=eps) / (1 - x).clamp(min=eps))


class MLPHead(nn.Module):
    """``num_layers`` linear layers, ReLU between them: ``(..., in_dim) -> (..., out_dim)`` (RT-DETR's
    ``MLP`` prediction head: the query position head and the box head)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int) -> None:
        super().__init__()
        widths = [in_dim] + [hidden_dim] * (check_int("num_layers", num_layers) - 1) + [out_dim]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


class PositionalSelfAttention(nn.Module):
    """Multi-head self-attention with positions added to queries and keys, not values (DETR's):
    ``o_proj(attend(q_proj(x + pos), k_proj(x + pos), v_proj(x), relation))``. ``x, pos (B, L, C)``."""

    def __init__(self, dim: int, num_heads: int, attn_dropout: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dropout, self.backend = check_float("attn_dropout", attn_dropout), backend
        self.q_proj, self.k_proj, self.v_proj, self.o_proj = (Linear(dim, dim) for _ in range(4))

    def forward(self, x: Tensor, pos: Tensor | None = None, relation: Relation | None = None) -> Tensor:
        B, L, C = x.shape
        qk = x if pos is None else x + pos
        q, k, v = (proj(t).view(B, L, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, L, D)
                   for proj, t in ((self.q_proj, qk), (self.k_proj, qk), (self.v_proj, x)))
        out = attend(q, k, v, relation, backend=self.backend, dropout_p=self.attn_dropout if self.training else 0.0)
        return self.o_proj(out.transpose(1, 2).reshape(B, L, C))


class RTDetrDecoderLayer(nn.Module):
    """One RT-DETR decoder layer (module doc): self-attention, deformable cross-attention, FFN, each
    followed by dropout, the residual sum and a LayerNorm.

    ``forward(hidden_states (B, Q, C), position_embeddings (B, Q, C), reference_points (B, Q, L|1, 4),
    encoder_hidden_states (B, S, C), spatial_shapes (L, 2), level_start_index=None, attention_mask:
    Relation | None = None, value_mask (B, S) bool | None = None) -> (B, Q, C)``. ``dropout`` acts on
    the three residual branches and inside the FFN (after its activation).
    """

    def __init__(self, dim: int = 256, num_heads: int = 8, num_levels: int = 3, num_points: int = 4,
                 ffn_dim: int = 1024, dropout: float = 0.0, attn_dropout: float = 0.0, layer_norm_eps: float = 1e-5,
                 act: type[nn.Module] = nn.ReLU, backend: str = "auto") -> None:
        super().__init__()
        self.dropout = check_float("dropout", dropout)
        self.self_attn = PositionalSelfAttention(dim, num_heads, attn_dropout, backend)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.encoder_attn = MultiScaleDeformableAttention(dim, num_heads, num_levels, num_points)
        self.encoder_attn_layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.mlp = MLP(dim, ffn_dim, act=act, dropout=dropout)
        self.final_layer_norm = nn.LayerNorm(dim, eps=layer_norm_eps)
        self.drop = nn.Dropout(dropout)

    def forward(self, hidden_states: Tensor, position_embeddings: Tensor | None, reference_points: Tensor,
                encoder_hidden_states: Tensor, spatial_shapes: Tensor, level_start_index: Tensor | None = None,
                attention_mask: Relation | None = None, value_mask: Tensor | None = None) -> Tensor:
        h = hidden_states
        h = self.self_attn_layer_norm(h + self.drop(self.self_attn(h, position_embeddings, attention_mask)))
        cross = self.encoder_attn(h, reference_points, encoder_hidden_states, spatial_shapes, level_start_index,
                                  value_mask, position_embeddings)
        h = self.encoder_attn_layer_norm(h + self.drop(cross))
        return self.final_layer_norm(h + self.mlp(h))


@dataclass
class RTDetrDecoderOutput(ModelOutput):
    """Per decoder layer, stacked on dim 1 (HF's ``intermediate_*`` layout): ``logits (B, layers, Q,
    num_classes)``, ``boxes (B, layers, Q, 4)`` (the refined ``b_i``, ``cx, cy, w, h`` in ``[0, 1]``),
    ``hidden_states (B, layers, Q, C)``; ``last_hidden_state (B, Q, C)``."""

    last_hidden_state: Tensor | None = None
    hidden_states: Tensor | None = None
    logits: Tensor | None = None
    boxes: Tensor | None = None


class RTDetrDecoder(nn.Module):
    """RT-DETR's decoder with per-layer heads (module doc).

    Args: ``dim`` (C), ``num_layers``, ``num_heads``, ``num_levels`` (L), ``num_points`` (P per head and
    level), ``ffn_dim``, ``num_classes`` (sigmoid classes, no "no object" column), ``dropout``,
    ``attn_dropout``, ``layer_norm_eps``, ``prior_prob`` (the class bias starts at ``-log((1 - p) / p)``;
    default ``1 / (num_classes + 1)``), ``backend`` (of the self-attention's :func:`~relformer.attend`);
    ``rank``: Rank-DETR's architecture (module doc) for ``num_queries`` matching queries.

    ``forward(inputs_embeds (B, N + Q, C), reference_points (B, N + Q, 4) unsigmoided, encoder_hidden_states
    (B, S, C), spatial_shapes (L, 2), level_start_index (L,) | None, attention_mask: Relation | None,
    value_mask (B, S) bool | None, num_fixed=N) -> RTDetrDecoderOutput``; ``N``: the denoising queries
    placed first (only read with ``rank``).
    """

    def __init__(self, dim: int = 256, num_layers: int = 6, num_heads: int = 8, num_levels: int = 3,
                 num_points: int = 4, ffn_dim: int = 1024, num_classes: int = 80, dropout: float = 0.0,
                 attn_dropout: float = 0.0, layer_norm_eps: float = 1e-5, prior_prob: float | None = None,
                 backend: str = "auto", rank: bool = False, num_queries: int = 300) -> None:
        super().__init__()
        self.dim, self.num_levels = check_int("dim", dim), check_int("num_levels", num_levels)
        num_layers, num_classes = check_int("num_layers", num_layers), check_int("num_classes", num_classes)
        self.layers = nn.ModuleList(
            RTDetrDecoderLayer(dim, num_heads, num_levels, num_points, ffn_dim, dropout, attn_dropout, layer_norm_eps,
                               backend=backend) for _ in range(num_layers))
        self.query_pos_head = MLPHead(4, 2 * dim, dim, num_layers=2)
        self.rank = bool(rank)
        if self.rank:
            self.query_rank = nn.ModuleList(QueryRankLayer(dim, num_queries) for _ in range(num_layers - 1))
            self.class_embed = nn.ModuleList(RankAdaptiveClassHead(dim, num_classes, num_queries)
                                             for _ in range(num_layers))
        else:
            self.class_embed = nn.ModuleList(Linear(dim, num_classes) for _ in range(num_layers))
        self.bbox_embed = nn.ModuleList(MLPHead(dim, dim, 4, num_layers=3) for _ in range(num_layers))
        p = 1.0 / (num_classes + 1) if prior_prob is None else check_float("prior_prob", prior_prob)
        if not 0.0 < p < 1.0:
            raise ValueError(f"prior_prob must be in (0, 1), got {p}")
        self.reset_heads(p)

    @torch.no_grad()
    def reset_heads(self, prior_prob: float) -> None:
        """RT-DETR's head initialisation: class layers Xavier-uniform with the prior-probability bias, the
        last box layer zero (the first refinement keeps the reference boxes)."""
        for head in self.class_embed:
            layer = head.linear if isinstance(head, RankAdaptiveClassHead) else head
            nn.init.xavier_uniform_(layer.weight)
            nn.init.constant_(layer.bias, -math.log((1 - prior_prob) / prior_prob))
        for head in self.bbox_embed:
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

    def forward(self, inputs_embeds: Tensor, reference_points: Tensor, encoder_hidden_states: Tensor,
                spatial_shapes: Tensor, level_start_index: Tensor | None = None,
                attention_mask: Relation | None = None, value_mask: Tensor | None = None,
                num_fixed: int = 0) -> RTDetrDecoderOutput:
        if not isinstance(inputs_embeds, Tensor) or inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.dim:
            raise ValueError(f"inputs_embeds must be (B, Q, {self.dim}), got {describe(inputs_embeds)}")
        if not isinstance(reference_points, Tensor) or reference_points.shape != (*inputs_embeds.shape[:2], 4):
            raise ValueError(f"reference_points must be (B, Q, 4) = {(*inputs_embeds.shape[:2], 4)} unsigmoided "
                             f"boxes, got {describe(reference_points)}")
        if attention_mask is not None and not isinstance(attention_mask, Relation):
            raise ValueError(f"attention_mask must be a relformer Relation or None, got {describe(attention_mask)}")
        h, ref = inputs_embeds, reference_points.sigmoid()  # (B, Q, C), (B, Q, 4)
        states, logits, boxes = [], [], []
        for i, (layer, class_embed, bbox_embed) in enumerate(zip(self.layers, self.class_embed, self.bbox_embed)):
            if self.rank and i > 0:  # Rank-DETR's query rank layer: sort by the previous layer's scores
                h, _, (ref,) = self.query_rank[i - 1](h, logits[-1], ref, num_fixed=num_fixed)
            h = layer(h, self.query_pos_head(ref), ref.unsqueeze(2), encoder_hidden_states, spatial_shapes,
                      level_start_index, attention_mask, value_mask)
            refined = torch.sigmoid(bbox_embed(h) + inverse_sigmoid(ref))
            ref = refined.detach()
            states.append(h)
            boxes.append(refined)
            logits.append(class_embed(h, num_fixed) if self.rank else class_embed(h))
        return RTDetrDecoderOutput(last_hidden_state=h, hidden_states=torch.stack(states, 1),
                                   logits=torch.stack(logits, 1), boxes=torch.stack(boxes, 1))
