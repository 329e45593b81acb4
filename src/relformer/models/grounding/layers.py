"""TransRefer3D's layers (He et al. 2021, ACM MM): Entity-aware Attention (EA), Relation-aware Attention
(RA) and the Entity-and-Relation aware Contextual Block (ERCB), on packed scenes.

Notation (per scene): objects ``o_i`` ``(n, D)``, words ``w_t`` ``(T, D)``, boxes ``b_i`` (centre, size).
Every attention is :func:`relformer.attend` through :class:`relformer.nn.Attention`, on rows of whole
scenes (:mod:`.layout`); ``MHA(q, kv)`` is multi-head attention ``softmax(q W_q (kv W_k)^T / sqrt(d)) kv W_v``.
The formulas are written in the form of the authors' code (``referit3d/models/coattention_net.py`` of
luo-junyu/TransRefer3D: post-norm residuals, max pooling over pairs, the fusion of EA and RA); the paper's
own equation numbers were not at hand when this was written, so none are cited.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...nn import MLP, Attention
from ...relations.geometry3d import Pair3DBias, pair_features
from .layout import ElementSet, SceneLayout

__all__ = ["cross_attend", "CoAttention", "EntityAwareAttention", "RelationAwareAttention", "ERCB"]


def cross_attend(attn: Attention, x_q: Tensor, q_set: ElementSet, x_kv: Tensor, kv_set: ElementSet) -> Tensor:
    """``attn`` (a cross :class:`Attention`) of the ``q_set`` elements ``x_q (Mq, C)`` over the elements
    ``x_kv (Mk, C)`` of the same item: rows gathered, attended, scattered back ``(Mq, C)``."""
    out = attn(q_set.gather(x_q), q_set.relation(kv_set), context=kv_set.gather(x_kv))  # (R, Wq, C)
    return q_set.scatter(out)


class CoAttention(nn.Module):
    """A post-norm attention block (the authors' ``SA`` / ``GA`` modules):
    ``x = LN(x + MHA(x, kv))``, ``x = LN(x + FFN(x))``; ``kv`` is ``x`` itself (self) or the other modality."""

    def __init__(self, dim: int, heads: int, hidden: int, dropout: float, cross: bool, backend: str) -> None:
        super().__init__()
        self.cross = cross
        self.attn = Attention(dim, heads, cross=cross, backend=backend, attn_dropout=dropout)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = MLP(dim, hidden, act=nn.ReLU, dropout=dropout)

    def forward(self, x: Tensor, x_set: ElementSet, context: Tensor | None = None,
                context_set: ElementSet | None = None, relation=None) -> Tensor:
        if self.cross:
            h = cross_attend(self.attn, x, x_set, context, context_set)
        else:
            h = self.attn(x, x_set.relation() if relation is None else relation, rows=x_set.rows)
        x = self.norm1(x + h)
        return self.norm2(x + self.ffn(x))


class EntityAwareAttention(nn.Module):
    """EA: visual entity features query the linguistic entity features,
    ``e_i = MHA(o_i, {w_t})`` -- each object gathers the words that describe it."""

    def __init__(self, dim: int, heads: int, dropout: float, backend: str) -> None:
        super().__init__()
        self.attn = Attention(dim, heads, cross=True, backend=backend, attn_dropout=dropout)

    def forward(self, objects: Tensor, words: Tensor, layout: SceneLayout) -> Tensor:
        return cross_attend(self.attn, objects, layout.objects, words, layout.words)  # (M_obj, D)


class RelationAwareAttention(nn.Module):
    """RA: pairwise visual relation features query the linguistic relation features, pooled
    over the partner::

        r_ij = LN(W_d (o_j - o_i) + MLP_g(g_ij))       g_ij = pair_features(b_i, b_j)  (10 geometry features)
        a_i  = max_j MHA(r_ij, {w_t})                   j over the objects of i's scene

    (the authors' code uses the feature difference ``o_j - o_i`` alone; ``g_ij`` adds the pair's 3-D
    geometry from :func:`relformer.relations.pair_features`).
    """

    def __init__(self, dim: int, heads: int, pair_hidden: int, dropout: float, backend: str) -> None:
        super().__init__()
        self.diff = nn.Linear(dim, dim)
        self.geometry = MLP(10, pair_hidden, dim)
        self.norm = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, cross=True, backend=backend, attn_dropout=dropout)

    def forward(self, objects: Tensor, words: Tensor, layout: SceneLayout, geometry: Tensor) -> Tensor:
        i, j = layout.pair_i, layout.pair_j
        r = self.norm(self.diff(objects[j] - objects[i]) + self.geometry(geometry))  # (Q, D)
        e = cross_attend(self.attn, r, layout.pairs, words, layout.words)          # (Q, D)
        e = e.masked_fill(~layout.objects.valid[j, None], float("-inf"))
        out = e.new_zeros(objects.shape)
        return out.scatter_reduce_(0, i[:, None].expand_as(e), e, "amax", include_self=False)  # (M_obj, D)


class ERCB(nn.Module):
    """Entity-and-Relation aware Contextual Block: self-attention within each modality, then
    the language attends the objects while the objects get EA and RA, fused::

        w = SA(w);  o = SA(o)  (biased by Pair3DBias(b_i, b_j) when relation="pair")
        w' = GA(w, o)
        x_n = LN(o + EA(o, w));  x_e = LN(o + RA(o, w));  o' = LN(x_n + FFN([x_n; x_e]))

    ``relation="plain"`` (the ablation) replaces RA by plain self-attention among the scene's objects and
    drops the geometry bias.
    """

    def __init__(self, dim: int, heads: int, hidden: int, pair_hidden: int, dropout: float, relation: str,
                 backend: str) -> None:
        super().__init__()
        self.relation = relation
        self.lang_sa = CoAttention(dim, heads, hidden, dropout, False, backend)
        self.obj_sa = CoAttention(dim, heads, hidden, dropout, False, backend)
        self.lang_ga = CoAttention(dim, heads, hidden, dropout, True, backend)
        self.ea = EntityAwareAttention(dim, heads, dropout, backend)
        if relation == "pair":
            self.ra = RelationAwareAttention(dim, heads, pair_hidden, dropout, backend)
            self.bias = Pair3DBias(heads, pair_hidden)
        else:
            self.ra = Attention(dim, heads, backend=backend, attn_dropout=dropout)
        self.norm_n, self.norm_e, self.norm = nn.LayerNorm(dim), nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.ffn = MLP(2 * dim, hidden, dim, act=nn.ReLU, dropout=dropout)

    def forward(self, objects: Tensor, words: Tensor, layout: SceneLayout, boxes: tuple[Tensor, Tensor, Tensor]
                ) -> tuple[Tensor, Tensor]:
        """``objects (M_obj, D)``, ``words (M_word, D)``; ``boxes``: the object rows' centres and sizes
        ``(R, W, 3)`` and the pairs' geometry ``(Q, 10)``."""
        o_set = layout.objects
        words = self.lang_sa(words, layout.words)
        if self.relation == "pair":
            bias = self.bias.bind(centres=boxes[0], sizes=boxes[1], segment_ids=o_set.segments)
            objects = self.obj_sa(objects, o_set, relation=bias)
            edge = self.ra(objects, words, layout, boxes[2])
        else:
            objects = self.obj_sa(objects, o_set)
            edge = self.ra(objects, o_set.relation(), rows=o_set.rows)
        new_words = self.lang_ga(words, layout.words, objects, o_set)
        x_n = self.norm_n(objects + self.ea(objects, words, layout))
        x_e = self.norm_e(objects + edge)
        return self.norm(x_n + self.ffn(torch.cat([x_n, x_e], -1))), new_words


def pair_geometry(centres: Tensor, sizes: Tensor, layout: SceneLayout) -> Tensor:
    """``(Q, 10)`` :func:`pair_features` of every object pair of the layout (slots' boxes)."""
    i, j = layout.pair_i, layout.pair_j
    return pair_features(centres[i], sizes[i], centres[j], sizes[j])
