"""The Graph Transformer of Dwivedi & Bresson 2021 ("A Generalization of Transformer Networks to
Graphs"): attention over graph neighbours only, edge features gating the scores and updated
alongside the nodes, LapPE. :class:`GTConfig`, :class:`GraphTransformer`, registered variants."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import nn

from ...data.graph import GraphBatch
from ..registry import builds, register_model
from .base import MICRO, ZINC_INPUTS, GraphOutput, _as_batch, _GraphModel, _pool, _PooledConfig
from .layers import GraphTransformerLayer, resolve_norm
from .layout import GraphLayout

__all__ = ["GTConfig", "GraphTransformer"]


@dataclass(frozen=True)
class GTConfig(_PooledConfig):
    """Graph Transformer of Dwivedi & Bresson (defaults: their ZINC model, 10 layers of width 64,
    8 heads, BatchNorm, LapPE with 8 eigenvectors, edge features, mean pooling). ``attention``:
    ``"sparse"`` or ``"dense"`` (see :class:`GraphTransformerLayer`)."""

    num_heads: int = 8
    lap_k: int = 8
    pooling: Literal["sum", "mean"] = "mean"
    edge_features: bool = True
    attention: Literal["sparse", "dense"] = "sparse"
    qkv_bias: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_choice("attention", ("sparse", "dense"))
        if self.edge_features and self.edge_in_dim == 0:
            raise ValueError("GTConfig.edge_features=True needs edge inputs (edge_in_dim > 0)")


@builds(GTConfig)
class GraphTransformer(_GraphModel):
    """Graph Transformer (Dwivedi & Bresson 2021): node / edge embeddings + LapPE (sign-flipped while
    training), ``depth`` :class:`GraphTransformerLayer` (the last one does not update the edges, whose
    output would go unread), mean (or sum) pooling, an MLP head.
    ``forward(graph, row_len=None) -> GraphOutput`` (``row_len``: rows of the dense attention form)."""

    def __init__(self, config: GTConfig) -> None:
        super().__init__(config)
        c = config
        if not c.edge_features:
            self.edge_encoder = None
        self.layers = nn.ModuleList(
            GraphTransformerLayer(c.dim, c.num_heads, c.edge_features, dropout=c.dropout, norm_layer=resolve_norm(c.norm),
                                  attention=c.attention, backend=c.backend, qkv_bias=c.qkv_bias, row_len=c.row_len,
                                  update_edges=k < c.depth - 1)
            for k in range(c.depth))

    def forward(self, graph: GraphBatch, row_len: int | None = None) -> GraphOutput:
        graph = _as_batch(graph)
        c = self.config
        h, e = self._encode_nodes(graph), self._encode_edges(graph)
        layout = (GraphLayout.build(graph.ptr, graph.edge_index, row_len or c.row_len)
                  if c.attention == "dense" else None)
        for layer in self.layers:
            h, e = layer(h, graph.edge_index, e, layout=layout)
        return self._output(h, _pool(h, graph, c.pooling))


@register_model
def gt_zinc() -> GTConfig:
    """Dwivedi & Bresson's ZINC model: 10 layers of width 64, 8 heads, BatchNorm, LapPE (k = 8),
    edge features, mean pooling."""
    return GTConfig(**ZINC_INPUTS, dim=64, depth=10, num_heads=8, lap_k=8)


@register_model
def gt_micro() -> GTConfig:
    """A tiny Graph Transformer for tests: 2 layers of width 32, 4 heads, LapPE (k = 4)."""
    return GTConfig(**MICRO, lap_k=4)
