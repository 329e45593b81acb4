"""GraphGPS (Rampášek et al. 2022, "Recipe for a General, Powerful, Scalable Graph Transformer"):
:class:`GPSConfig`, the :class:`GPS` model and its registered variants."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from ...data.graph import GraphBatch
from ..registry import builds, register_model
from .base import MICRO, ZINC_INPUTS, GraphOutput, _as_batch, _GraphModel, _pool, _PooledConfig
from .layers import GINE, GPSLayer, resolve_norm
from .layout import GraphLayout

__all__ = ["GPSConfig", "GPS"]


@dataclass(frozen=True)
class GPSConfig(_PooledConfig):
    """GraphGPS (defaults: the paper's ZINC model, 10 layers of width 64, 4 heads, GINE + Transformer,
    BatchNorm, sum pooling). ``local``: ``"gine"`` or ``"none"`` (attention only). The same model
    with PyG's ``GPSConv`` layers, the baseline of the ZINC comparison, is registered by
    :mod:`relformer.interop.pyg` (``pyg_gps_zinc``)."""

    local: Literal["gine", "none"] = "gine"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_choice("local", ("gine", "none"))


@builds(GPSConfig)
class GPS(_GraphModel):
    """GraphGPS (Rampášek et al. 2022): node / edge embeddings + LapPE / RWSE, ``depth`` :class:`GPSLayer`
    with a :class:`GINE` local model, sum or mean pooling, an MLP head.

    ``forward(graph, row_len=None) -> GraphOutput``: ``graph`` a :class:`GraphBatch` (or PyG
    ``Data`` / ``Batch``); ``row_len`` overrides the config's attention row width.
    """

    def __init__(self, config: GPSConfig) -> None:
        super().__init__(config)
        c = config
        norm = resolve_norm(c.norm)
        self.layers = nn.ModuleList(
            GPSLayer(c.dim, c.num_heads, GINE(c.dim) if c.local == "gine" else None, dropout=c.dropout,
                     attn_dropout=c.attn_dropout, norm_layer=norm, backend=c.backend, row_len=c.row_len)
            for _ in range(c.depth))

    def forward(self, graph: GraphBatch, row_len: int | None = None) -> GraphOutput:
        graph = _as_batch(graph)
        h, e = self._encode_nodes(graph), self._encode_edges(graph)
        h = self._layers(h, e, graph, row_len or self.config.row_len)
        return self._output(h, _pool(h, graph, self.config.pooling))

    def _layers(self, h: Tensor, e: Tensor | None, graph: GraphBatch, row_len: int) -> Tensor:
        """``h (N, C)`` through the layers, all on one :class:`GraphLayout`."""
        layout = GraphLayout.build(graph.ptr, graph.edge_index, row_len)
        for layer in self.layers:
            h = layer(h, graph.edge_index, edge_attr=e, layout=layout)
        return h


@register_model
def gps_zinc() -> GPSConfig:
    """GraphGPS's ZINC model (Rampášek et al. 2022, Table B.1): GINE + Transformer, 10 layers of width
    64, 4 heads, attention dropout 0.5, RWSE with 20 steps, BatchNorm, sum pooling."""
    return GPSConfig(**ZINC_INPUTS, dim=64, depth=10, num_heads=4, attn_dropout=0.5, rwse_k=20)


@register_model
def gps_micro() -> GPSConfig:
    """A tiny GPS for tests: 2 layers of width 32, LapPE (k = 4) and RWSE (4 steps)."""
    return GPSConfig(**MICRO, lap_k=4, rwse_k=4)
