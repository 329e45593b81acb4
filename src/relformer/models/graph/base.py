"""What the graph models share: configs' common fields, input encoders, pooling and the output."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ...data.graph import GraphBatch
from ...nn import MLP, Linear, laplacian_eigenvectors, random_sign_flip, random_walk_encoding
from ..outputs import ModelOutput
from ..registry import PretrainedMixin
from .layers import NORM_LAYERS, FeatureEncoder
from .layout import ROW_LEN

__all__ = ["GraphOutput"]

NORMS = tuple(NORM_LAYERS)
POOLINGS = ("sum", "mean")
# categorical atom / bond types with room to spare; attention rows of 32 slots: the ZINC-like molecules
# have at most 27 atoms (+ Graphormer's graph token), and a row no wider than needed scores fewer
# masked pairs (32 slots also gave faster gps_zinc training steps than 64)
ZINC_INPUTS = dict(node_types=64, edge_types=8, row_len=32)
# a tiny size for the test variants
MICRO = dict(node_types=16, edge_types=4, dim=32, depth=2, num_heads=4)


@dataclass
class GraphOutput(ModelOutput):
    """``last_hidden_state (N, C)``: the packed node states after the last layer; ``pooler_output
    (G, C)``: one vector per graph (sum / mean pooling, or Graphormer's graph token); ``logits (G,
    num_outputs)``: the head's output (regression values or class scores)."""

    last_hidden_state: Tensor
    pooler_output: Tensor
    logits: Tensor


@dataclass(frozen=True)
class _GraphConfig:
    """Fields shared by the graph models. Inputs: ``node_types > 0`` embeds categorical ``x`` (``(N,)``
    or ``(N, node_in_dim)`` long), ``node_types = 0`` projects float ``x (N, node_in_dim)``; edges
    likewise with ``edge_types`` / ``edge_in_dim`` (``edge_in_dim = 0``: edge features unused).
    ``lap_k`` / ``rwse_k``: LapPE eigenvectors / RWSE steps (0: off), each projected to ``dim`` and
    added to the node embedding (GraphGPS concatenates a slice instead; a sum of projections is a
    projection of the concatenation). ``row_len``: attention row width (whole graphs per row).
    ``num_outputs``: the head's width (1 for ZINC regression)."""

    node_types: int = 0
    node_in_dim: int = 1
    edge_types: int = 0
    edge_in_dim: int = 1
    num_outputs: int = 1
    dim: int = 64
    depth: int = 10
    num_heads: int = 4
    dropout: float = 0.0
    attn_dropout: float = 0.0
    lap_k: int = 0
    rwse_k: int = 0
    row_len: int = ROW_LEN
    backend: str = "auto"

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("node_in_dim", "num_outputs", "dim", "depth", "num_heads", "row_len"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name}.{key} must be a positive int, got {value!r}")
        for key in ("node_types", "edge_types", "edge_in_dim", "lap_k", "rwse_k"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value >= 0):
                raise ValueError(f"{name}.{key} must be an int >= 0, got {value!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"{name}.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        for key in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ValueError(f"{name}.{key} must be in [0, 1), got {getattr(self, key)!r}")

    def _check_choice(self, key: str, options: tuple) -> None:
        if getattr(self, key) not in options:
            raise ValueError(f"{type(self).__name__}.{key} must be one of {options}, got {getattr(self, key)!r}")


@dataclass(frozen=True)
class _PooledConfig(_GraphConfig):
    """Models with norms in every layer and a pooled readout: ``norm``: ``"batch"``, ``"layer"`` or
    ``"none"``; ``pooling``: ``"sum"`` or ``"mean"`` over each graph's nodes."""

    norm: Literal["batch", "layer", "none"] = "batch"
    pooling: Literal["sum", "mean"] = "sum"

    def __post_init__(self) -> None:
        super().__post_init__()
        self._check_choice("norm", NORMS)
        self._check_choice("pooling", POOLINGS)


def _as_batch(graph) -> GraphBatch:
    """A model's input as a :class:`GraphBatch` with at least one node (a batch without nodes has
    nothing to attend or pool: ``ValueError`` here, not an index error deep in the layout)."""
    if not isinstance(graph, GraphBatch):
        if not hasattr(graph, "edge_index"):
            raise TypeError(f"graph must be a GraphBatch or a PyG Data / Batch, got {type(graph).__name__}")
        graph = GraphBatch.from_pyg(graph)
    if graph.num_nodes == 0:
        raise ValueError(f"graph has no nodes ({graph.num_graphs} graphs of 0 nodes): a graph model needs at "
                         "least one node per batch")
    return graph


def _pool(x: Tensor, graph: GraphBatch, mode: str) -> Tensor:
    """``(N, C)`` -> ``(G, C)``: sum or mean over each graph's nodes (an empty graph gives zeros)."""
    out = x.new_zeros(graph.num_graphs, x.shape[1]).index_add_(0, graph.batch, x)
    return out / graph.sizes.clamp_min(1).unsqueeze(1).to(x.dtype) if mode == "mean" else out


class _GraphModel(PretrainedMixin, nn.Module):
    """Shared input encoders (nodes, edges, LapPE, RWSE) and the prediction head."""

    def __init__(self, config: _GraphConfig, edge_width: int | None = None) -> None:
        super().__init__()
        c = self.config = config
        self.node_encoder = FeatureEncoder(c.dim, c.node_types, c.node_in_dim, "x")
        self.edge_encoder = (FeatureEncoder(edge_width or c.dim, c.edge_types, c.edge_in_dim, "edge_attr", "edge_types")
                             if c.edge_in_dim else None)
        self.lap = Linear(c.lap_k, c.dim) if c.lap_k else None
        self.rwse = Linear(c.rwse_k, c.dim) if c.rwse_k else None
        self.head = MLP(c.dim, c.dim, out=c.num_outputs, act=nn.ReLU)

    def _encoding(self, graph: GraphBatch, name: str, k: int) -> Tensor:
        """``graph.<name>``'s first ``k`` columns, computed for this batch when it carries none."""
        pe = getattr(graph, name)
        if pe is None:
            fn = laplacian_eigenvectors if name == "lap_pe" else random_walk_encoding
            with torch.no_grad():
                return fn(graph.edge_index, graph.num_nodes, k, graph.batch).to(graph.x.device)
        if pe.shape[1] < k:
            raise ValueError(f"graph.{name} has {pe.shape[1]} columns, the model needs {k}")
        return pe[:, :k]

    def _encode_nodes(self, graph: GraphBatch) -> Tensor:
        """``(N, dim)``: node embedding + LapPE (random sign flip per graph while training) + RWSE."""
        c = self.config
        h = self.node_encoder(graph.x)
        if self.lap is not None:
            pe = self._encoding(graph, "lap_pe", c.lap_k)
            h = h + self.lap(random_sign_flip(pe, graph.batch) if self.training else pe)
        if self.rwse is not None:
            h = h + self.rwse(self._encoding(graph, "rwse", c.rwse_k))
        return h

    def _encode_edges(self, graph: GraphBatch) -> Tensor | None:
        if self.edge_encoder is None:
            return None
        if graph.edge_attr is None:
            raise ValueError("this model reads edge features: the graph batch needs edge_attr")
        return self.edge_encoder(graph.edge_attr)

    def _output(self, nodes: Tensor, pooled: Tensor) -> GraphOutput:
        return GraphOutput(nodes, pooled, self.head(pooled))
