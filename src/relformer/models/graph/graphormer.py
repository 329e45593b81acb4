"""Graphormer (Ying et al. 2021, "Do Transformers Really Perform Bad for Graph Representation?"):
full attention inside each graph, biased by shortest-path distance and the edges along a shortest
path, degree (centrality) embeddings, one graph token. :class:`GraphormerConfig`,
:class:`Graphormer`, registered variants."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor, nn

from ...attention import Relation
from ...data.graph import GraphBatch
from ...nn import MLP, Encoder
from ...relations import EdgePathBias, ShortestPathBias
from ...relations.graph import dense_shortest_path_edges, dense_shortest_paths
from ..registry import builds, register_model
from .base import MICRO, ZINC_INPUTS, GraphOutput, _as_batch, _GraphConfig, _GraphModel
from .layout import GraphLayout

__all__ = ["GraphormerConfig", "Graphormer"]


@dataclass(frozen=True)
class GraphormerConfig(_GraphConfig):
    """Graphormer (defaults: Graphormer-slim for ZINC, Ying et al. 2021: 12 pre-LN layers of width 80,
    8 heads, FFN 80, dropout 0.1). ``max_degree``: degrees are clipped to it (centrality
    encoding); ``max_distance``: shortest-path distances are clipped to it (spatial encoding);
    ``edge_hops``: edges encoded along the first ``edge_hops`` steps of a shortest path
    (``multi_hop_max_dist``; 0: no edge encoding)."""

    dim: int = 80
    depth: int = 12
    num_heads: int = 8
    mlp_hidden: int = 80
    dropout: float = 0.1
    attn_dropout: float = 0.1
    max_degree: int = 64
    max_distance: int = 32
    edge_hops: int = 5

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("mlp_hidden", "max_degree", "max_distance"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"GraphormerConfig.{key} must be a positive int, got {value!r}")
        if not (isinstance(self.edge_hops, int) and self.edge_hops >= 0):
            raise ValueError(f"GraphormerConfig.edge_hops must be an int >= 0, got {self.edge_hops!r}")
        if self.edge_hops and self.edge_in_dim == 0:
            raise ValueError("GraphormerConfig.edge_hops > 0 needs edge inputs (edge_in_dim > 0)")


@builds(GraphormerConfig)
class Graphormer(_GraphModel):
    """Graphormer (Ying et al. 2021): node embedding + in- and out-degree embeddings (centrality
    encoding, Eq. 5), one learned graph token in front of every graph ([VNode], sec. 3.1.3),
    pre-LN Transformer blocks whose attention inside each graph is biased by

    * the spatial encoding ``b_phi(i, j)`` (Eq. 6): :class:`~relformer.relations.ShortestPathBias`
      on hop distances clipped to ``max_distance``; pairs with the graph token read their own
      learned entry (the paper's ``t``), unreachable pairs another;
    * the edge encoding ``c_ij`` (Eq. 7): :class:`~relformer.relations.EdgePathBias`, the per-hop
      weighted mean of edge embeddings along one shortest path (first ``edge_hops`` edges).

    One relation serves every layer (as in Graphormer, the biases are computed once per batch).
    Shortest paths come from scipy per attention row, on CPU, each forward. Readout: the graph
    token after the final LayerNorm, then the MLP head. ``forward(graph, row_len=None) -> GraphOutput``.
    """

    def __init__(self, config: GraphormerConfig) -> None:
        super().__init__(config, edge_width=config.num_heads)
        c = config
        if not c.edge_hops:
            self.edge_encoder = None
        self.in_degree = nn.Embedding(c.max_degree + 1, c.dim)
        self.out_degree = nn.Embedding(c.max_degree + 1, c.dim)
        self.graph_token = nn.Parameter(torch.randn(1, c.dim) * 0.02)
        # distances 0..max_distance, max_distance + 1 for pairs with the graph token, + 2 unreachable
        self.spatial = ShortestPathBias(c.num_heads, c.max_distance + 1)
        self.edge_path = EdgePathBias(c.num_heads, c.edge_hops) if c.edge_hops else None
        self.encoder = Encoder(c.dim, c.depth, c.num_heads, mlp_hidden=c.mlp_hidden, final_norm=True,
                               mlp_layer=partial(MLP, act=nn.GELU), dropout=c.dropout, attn_dropout=c.attn_dropout,
                               backend=c.backend)

    def _relation(self, graph: GraphBatch, layout: GraphLayout, tokens: Tensor, edge_index: Tensor) -> Relation:
        """The attention relation of the token rows: graphs apart, spatial bias, edge-path bias."""
        c = self.config
        R, W = layout.shape
        node_row, node_pos = layout.slots
        if self.edge_path is not None:
            spd, paths = dense_shortest_path_edges(edge_index, node_row, node_pos, R, W, c.edge_hops)
        else:
            spd = dense_shortest_paths(edge_index, node_row, node_pos, R, W)
        virtual = torch.zeros(R, W, dtype=torch.bool, device=spd.device)
        virtual[node_row[tokens], node_pos[tokens]] = True
        spd = torch.where(virtual[:, :, None] | virtual[:, None, :], c.max_distance + 1, spd.clamp(max=c.max_distance))
        relation = layout.documents & self.spatial.bind(spd=spd)
        if self.edge_path is not None:
            relation = relation & self.edge_path.bind_paths(paths, self._encode_edges(graph))
        return relation

    def forward(self, graph: GraphBatch, row_len: int | None = None) -> GraphOutput:
        graph = _as_batch(graph)
        c = self.config
        N, G = graph.num_nodes, graph.num_graphs
        ei = graph.edge_index
        h = self._encode_nodes(graph)
        h = h + self.in_degree(torch.bincount(ei[1], minlength=N).clamp(max=c.max_degree))
        h = h + self.out_degree(torch.bincount(ei[0], minlength=N).clamp(max=c.max_degree))
        # token sequence: graph g is [graph token, its nodes...]
        ptr = graph.ptr + torch.arange(G + 1, device=ei.device)  # (G + 1,) token offsets
        node_tok = torch.arange(N, device=ei.device) + graph.batch + 1  # (N,) token index of each node
        tokens = ptr[:-1]  # (G,) token index of each graph token
        order = torch.empty(N + G, dtype=torch.long, device=ei.device)
        order[node_tok] = torch.arange(N, device=ei.device)
        order[tokens] = torch.arange(N, N + G, device=ei.device)
        x = torch.cat([h, self.graph_token.expand(G, -1)])[order]  # (N + G, C)
        edge_index = node_tok[ei]
        layout = GraphLayout.build(ptr, edge_index, row_len or c.row_len)
        relation = self._relation(graph, layout, tokens, edge_index)
        x = self.encoder(x, relation, rows=layout.rows)
        return self._output(x[node_tok], x[tokens])


@register_model
def graphormer_zinc() -> GraphormerConfig:
    """Graphormer-slim for ZINC (Ying et al. 2021, sec. 4.1): 12 layers of width 80, 8 heads, FFN 80,
    edge encoding over 5 hops, dropout and attention dropout 0.1."""
    return GraphormerConfig(**ZINC_INPUTS)


@register_model
def graphormer_micro() -> GraphormerConfig:
    """A tiny Graphormer for tests: 2 layers of width 32, 4 heads, FFN 64, edge encoding over 3 hops."""
    return GraphormerConfig(**MICRO, mlp_hidden=64, max_degree=8, max_distance=6, edge_hops=3, dropout=0.0,
                            attn_dropout=0.0)
