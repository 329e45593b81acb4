"""Graph layers on packed nodes ``(N, C)``: :class:`GINE` message passing, the :class:`GPSLayer`
(called like PyG's ``GPSConv``), the edge-gated :class:`GraphTransformerLayer`, and the
:class:`FeatureEncoder` of node / edge inputs.

Layers take their norm as a type (``norm_layer=TokenBatchNorm``, timm's habit); a config's string
is resolved once, by the model builder, with :func:`resolve_norm`.
"""
from __future__ import annotations

import math
from typing import Callable, Literal

import torch
from torch import Tensor, nn

from ...nn import MLP, Attention, Linear, TokenBatchNorm
from ...relations import EdgeBias
from .layout import ROW_LEN, GraphLayout, drop_in_layout

__all__ = ["NORM_LAYERS", "resolve_norm", "edge_softmax", "GINE", "GPSLayer", "GraphTransformerLayer",
           "FeatureEncoder"]

NormLayer = Callable[[int], nn.Module]

#: the norms a config names: ``"batch"`` BatchNorm over the packed nodes (PyG ``GPSConv``'s
#: default), ``"layer"`` LayerNorm per node, ``"none"`` identity
NORM_LAYERS: dict[str, NormLayer] = {"batch": TokenBatchNorm, "layer": nn.LayerNorm, "none": nn.Identity}


def resolve_norm(kind: str) -> NormLayer:
    """The norm type a config's ``norm`` string names (:data:`NORM_LAYERS`)."""
    if kind not in NORM_LAYERS:
        raise ValueError(f"norm must be one of {tuple(NORM_LAYERS)}, got {kind!r}")
    return NORM_LAYERS[kind]


def edge_softmax(logits: Tensor, index: Tensor, num_nodes: int) -> Tensor:
    """Softmax of ``logits (E, H)`` over the edges that share a target ``index (E,)``: ``(E, H)``.

    Shifted by each target's maximum (taken without gradient: the softmax does not depend on it),
    so no score is clamped (Dwivedi & Bresson clamp to [-5, 5] before ``exp`` instead)."""
    H = logits.shape[1]
    with torch.no_grad():
        top = logits.new_full((num_nodes, H), float("-inf"))
        top.scatter_reduce_(0, index[:, None].expand(-1, H), logits, "amax")
    p = (logits - top[index]).exp()
    return p / logits.new_zeros(num_nodes, H).index_add_(0, index, p)[index]


class GINE(nn.Module):
    """GINE convolution (Hu et al. 2020, "Strategies for Pre-training Graph Neural Networks"; PyG's
    ``GINEConv``): ``h_i' = mlp((1 + eps) h_i + sum_{j -> i} ReLU(h_j + W e_ji))``.

    ``mlp`` defaults to ``Linear(dim, dim), ReLU, Linear(dim, dim)`` (GraphGPS). ``edge_dim``: ``W`` is
    ``Linear(edge_dim, dim)``; None: edge features already have width ``dim`` and are added as they
    are (or there are none: ``ReLU(h_j)``). ``train_eps``: learn ``eps``.
    ``forward(x (N, C), edge_index (2, E), edge_attr (E, D) | None) -> (N, C_out)``.
    """

    def __init__(self, dim: int, mlp: nn.Module | None = None, edge_dim: int | None = None, eps: float = 0.0,
                 train_eps: bool = False) -> None:
        super().__init__()
        self.mlp = mlp if mlp is not None else nn.Sequential(Linear(dim, dim), nn.ReLU(), Linear(dim, dim))
        self.lin = Linear(edge_dim, dim) if edge_dim is not None else None
        eps_t = torch.tensor([float(eps)])
        if train_eps:
            self.eps = nn.Parameter(eps_t)
        else:
            self.register_buffer("eps", eps_t)

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None) -> Tensor:
        j, i = edge_index  # source, target
        msg = x.index_select(0, j)  # (E, C); backward: a dense index_add_ (x[j] accumulates slowly)
        if edge_attr is not None:
            msg = msg + (self.lin(edge_attr) if self.lin is not None else edge_attr)
        elif self.lin is not None:
            raise ValueError("this GINE has an edge projection (edge_dim): pass edge_attr")
        agg = torch.zeros_like(x).index_add_(0, i, msg.relu())  # (N, C)
        return self.mlp(agg + (1 + self.eps) * x)


class GPSLayer(nn.Module):
    """One GPS layer (Rampášek et al. 2022, Eq. 6-11; PyG ``GPSConv``, op for op)::

        h_M = norm1(x + drop(local(x, edge_index, edge_attr)))     # message passing
        h_T = norm2(x + drop(attn(x)))                              # global attention per graph
        out = h_M + h_T
        out = norm3(out + mlp(out))         # mlp: Linear(C, 2C), act, Dropout, Linear(2C, C), Dropout

    Args:
        dim, num_heads: width and attention heads.
        local: the message-passing layer, called ``local(x, edge_index, edge_attr)`` (e.g.
            :class:`GINE`), or None for attention only.
        dropout: on both branch outputs and inside the MLP; attn_dropout: on attention probabilities.
        norm_layer: the norm type, called ``norm_layer(dim)`` (default :class:`~relformer.nn.TokenBatchNorm`,
            as PyG; :data:`NORM_LAYERS` has the named ones). act: the MLP's activation class.
        backend: passed to :func:`relformer.attend`. row_len: row width when the layer builds its
            own layout (a PyG-style call).

    ``forward(x (N, C), edge_index (2, E), batch (N,) | None, edge_attr=None, layout=None) -> (N, C)``:
    called like PyG's ``GPSConv``; ``batch`` must be sorted (PyG's). Such calls share one layout per
    batch across the layers of a stack (:func:`~relformer.models.graph.layout.drop_in_layout`); a
    model passes its own :class:`GraphLayout` to every layer instead (and validates its batch once).
    """

    def __init__(self, dim: int, num_heads: int, local: nn.Module | None = None, dropout: float = 0.0,
                 attn_dropout: float = 0.0, norm_layer: NormLayer = TokenBatchNorm, act: type[nn.Module] = nn.ReLU,
                 backend: str = "auto", row_len: int = ROW_LEN) -> None:
        super().__init__()
        self.local, self.row_len = local, int(row_len)
        self.attn = Attention(dim, num_heads, backend=backend, attn_dropout=attn_dropout)
        self.drop = nn.Dropout(dropout)
        self.mlp = MLP(dim, 2 * dim, act=act, dropout=dropout)
        self.norm1, self.norm2, self.norm3 = norm_layer(dim), norm_layer(dim), norm_layer(dim)

    def forward(self, x: Tensor, edge_index: Tensor, batch: Tensor | None = None, edge_attr: Tensor | None = None,
                layout: GraphLayout | None = None) -> Tensor:
        if layout is None:
            layout = drop_in_layout(x, edge_index, batch, edge_attr, self.row_len)
        h_attn = self.norm2(x + self.drop(self.attn(x, layout.documents, rows=layout.rows)))  # (N, C)
        if self.local is None:
            out = h_attn
        else:
            out = self.norm1(x + self.drop(self.local(x, edge_index, edge_attr))) + h_attn
        return self.norm3(out + self.mlp(out))


class GraphTransformerLayer(nn.Module):
    """Graph Transformer layer with edge features (Dwivedi & Bresson 2021, Eq. 4-12; their
    ``GraphTransformerLayer`` / ``GraphTransformerEdgeLayer``)::

        s_ij  = (Q h_i) * (K h_j) / sqrt(D) * (E e_ij)          per head, per channel  (E, H, D)
        w_ij  = softmax over the in-neighbours j of i of  sum_D s_ij
        h_i'  = norm1(h_i + O_h(drop(sum_j w_ij V h_j)))  ;  h' = norm2(h' + ffn_h(h'))
        e_ij' = norm1_e(e_ij + O_e(drop(s_ij)))            ;  e' = norm2_e(e' + ffn_e(e'))

    Without edge features (``edge_features=False``) the ``E e_ij`` factor and the edge stream are
    dropped; ``update_edges=False`` keeps the gating but returns no new edge features (a model's last
    layer, whose edge output no one reads). A node without in-edges gets a zero attention output.
    FFNs are ``Linear(C, 2C)``, ReLU, ``Linear(2C, C)`` with dropout after each linear (relformer's
    :class:`~relformer.nn.MLP`); ``norm_layer``: the norm type, called ``norm_layer(dim)``.

    ``attention``: ``"sparse"`` (default) computes the softmax over the edge list with
    :func:`edge_softmax` (``scatter_reduce_`` / ``index_add_``): O(E H D) work, and the per-channel
    edge gating is exact. ``"dense"`` runs :func:`relformer.attend` on the rows of a
    :class:`GraphLayout` with the :class:`~relformer.relations.GraphAdjacency` mask and, with edge
    features, an :class:`~relformer.relations.EdgeBias` carrying ``sum_D (Q h_i)(K h_j)(E e_ij - 1)
    / sqrt(D)`` per edge (so that ``q.k / sqrt(D)`` plus the bias is the gated score). Both give the
    same result; sparse is the default because on molecule-sized graphs a node has ~2-3
    neighbours, so dense rows compute ~50x more scores than there are edges, and with edge features
    the bias requires grad, which takes SDPA off its fused kernel. The dense form needs at most one
    edge per ordered pair of nodes.

    ``forward(x (N, C), edge_index (2, E), edge_attr (E, C) | None, batch=None, layout=None)`` ->
    ``(x', edge_attr')`` (``edge_attr'`` None without edge features or with ``update_edges=False``).
    """

    def __init__(self, dim: int, num_heads: int, edge_features: bool = True, dropout: float = 0.0,
                 norm_layer: NormLayer = TokenBatchNorm, attention: Literal["sparse", "dense"] = "sparse",
                 backend: str = "auto", qkv_bias: bool = False, row_len: int = ROW_LEN,
                 update_edges: bool = True) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        if attention not in ("sparse", "dense"):
            raise ValueError(f"attention must be 'sparse' or 'dense', got {attention!r}")
        self.num_heads, self.attention, self.backend, self.row_len = num_heads, attention, backend, int(row_len)
        self.qkv = Linear(dim, 3 * dim, bias=qkv_bias)  # [Q; K; V]
        self.out_h = Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.norm1_h, self.norm2_h = norm_layer(dim), norm_layer(dim)
        self.ffn_h = MLP(dim, 2 * dim, act=nn.ReLU, dropout=dropout)
        self.edge_proj = self.out_e = self.norm1_e = self.norm2_e = self.ffn_e = None
        if edge_features:
            self.edge_proj = Linear(dim, dim, bias=qkv_bias)
        if edge_features and update_edges:
            self.out_e = Linear(dim, dim)
            self.norm1_e, self.norm2_e = norm_layer(dim), norm_layer(dim)
            self.ffn_e = MLP(dim, 2 * dim, act=nn.ReLU, dropout=dropout)
        self.edge_bias = EdgeBias(num_heads)  # the dense form's gating term

    def forward(self, x: Tensor, edge_index: Tensor, edge_attr: Tensor | None = None, batch: Tensor | None = None,
                layout: GraphLayout | None = None) -> tuple[Tensor, Tensor | None]:
        N, C = x.shape
        H = self.num_heads
        D = C // H
        edges = self.edge_proj is not None
        if edges and edge_attr is None:
            raise ValueError("this layer has edge features: pass edge_attr (E, C)")
        q, k, v = self.qkv(x).view(N, 3, H, D).unbind(1)  # (N, H, D) each
        j, i = edge_index  # source, target
        qk = q[i] * k[j] * (1.0 / math.sqrt(D))  # (E, H, D)
        gate = self.edge_proj(edge_attr).view(-1, H, D) if edges else None
        score = qk * gate if edges else qk  # (E, H, D)
        if self.attention == "sparse":
            w = edge_softmax(score.sum(-1), i, N)  # (E, H)
            h = x.new_zeros(N, H, D).index_add_(0, i, w.unsqueeze(-1) * v[j])  # (N, H, D)
        else:
            if layout is None:
                layout = drop_in_layout(x, edge_index, batch, edge_attr, self.row_len)
            relation = layout.adjacency
            if edges:
                relation = relation & self.edge_bias.bind_values(layout.edge_ids, (qk * (gate - 1)).sum(-1))
            h = layout.attend(q, k, v, relation, self.backend)  # (N, H, D)
        h = self.norm1_h(x + self.out_h(self.drop(h.reshape(N, C))))
        h = self.norm2_h(h + self.ffn_h(h))
        if self.out_e is None:
            return h, None
        e = self.norm1_e(edge_attr + self.out_e(self.drop(score.reshape(-1, C))))
        return h, self.norm2_e(e + self.ffn_e(e))


class FeatureEncoder(nn.Module):
    """Node or edge inputs -> ``(n, dim)``. Categorical (``num_types > 0``): ``(n,)`` or ``(n, in_dim)``
    long ids in ``[0, num_types)``, one embedding table per column, summed (OGB's ``AtomEncoder``);
    otherwise ``(n, in_dim)`` float features through ``Linear(in_dim, dim)``. ``name`` / ``option``
    name the input and the config field in error messages."""

    def __init__(self, dim: int, num_types: int, in_dim: int, name: str = "x", option: str = "node_types") -> None:
        super().__init__()
        self.num_types, self.in_dim, self.name, self.option = int(num_types), int(in_dim), name, option
        if self.num_types:
            self.embed = nn.Embedding(self.num_types * self.in_dim, dim)
            self.register_buffer("offsets", torch.arange(self.in_dim) * self.num_types, persistent=False)
        else:
            self.linear = Linear(self.in_dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        cols = x.view(-1, 1) if x.dim() == 1 else x
        if cols.dim() != 2 or cols.shape[1] != self.in_dim:
            raise ValueError(f"{self.name} must have {self.in_dim} column(s), got shape {tuple(x.shape)}")
        if not self.num_types:
            if not x.is_floating_point():
                raise ValueError(f"{self.name} holds integer categories but the model takes float features "
                                 f"({self.option}=0)")
            return self.linear(cols)
        if x.is_floating_point():
            raise ValueError(f"{self.name} must hold integer categories ({self.option}={self.num_types}), "
                             f"got {x.dtype}")
        if cols.numel() and int(cols.max()) >= self.num_types:
            raise ValueError(f"{self.name} holds category {int(cols.max())}, outside the model's "
                             f"{self.option}={self.num_types}")
        if self.in_dim == 1:
            return self.embed(cols[:, 0])
        return self.embed(cols + self.offsets).sum(1)

