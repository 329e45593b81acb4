"""PyG's TGN (Rossi et al. 2020, "Temporal Graph Networks for Deep Learning on Dynamic Graphs") as a
:class:`~relformer.models.temporal.TemporalLinkPredictor`: the peer temporal model users know,
registered as the model variant ``pyg_tgn`` (:class:`PyGTGN`; importing this module registers it).

It is PyG's ``examples/tgn.py`` made to follow the contract:

* memory: ``torch_geometric.nn.models.TGNMemory`` with ``IdentityMessage`` and ``LastAggregator``
  (TGN Eq. 1-3: raw messages ``[s_i | s_j | phi(t - t_i^-) | e_ij]``, the last one per node, a GRU),
  updated in :meth:`PyGTGN.observe` with the batch's positive events (then detached, as the example
  does after each step) and reset in :meth:`PyGTGN.reset_state`;
* embedding: the example's ``GraphAttentionEmbedding`` (TGN's graph attention embedding, Sec. 3.1):
  a ``TransformerConv(memory_dim, embedding_dim // heads, heads, dropout, edge_dim)`` from the memory
  of each query's sampled neighbours to the query node's memory, edge inputs ``[phi(t - t_j) | e_j]``
  with ``phi`` the memory's ``TimeEncoder`` (``cos(Linear(1, time_dim))``);
* score: the contract's :class:`~relformer.models.temporal.MergeLayer` on the two embeddings.

What differs from the example: neighbours come from the context's sampler (the ``num_neighbors``
most recent events strictly before each query's own time, the data every model of the contract
sees) instead of ``LastNeighborLoader`` (the last ``size`` neighbours inserted before the batch);
each query is embedded at its own time, so the time encoding is of ``t - t_j`` (the query's time
minus the event's; the example encodes ``last_update[j] - t_j``); the example's ``LinkPredictor`` is
replaced by the contract's merge head. The memory is state, not weights: a saved model holds none
(the task replays the stream after :meth:`PyGTGN.reset_state`). Times enter the memory as int64
(PyG's memory keeps integer ``last_update``); a float64 stream is truncated.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..models.checks import check_count, check_positive, check_rate
from ..models.registry import PretrainedMixin, builds, register_model
from ..models.temporal import MergeLayer, TemporalContext, TemporalLinkPredictor
from ..models.temporal.todyformer import check_context

__all__ = ["PyGTGNConfig", "PyGTGN"]


@dataclass(frozen=True)
class PyGTGNConfig:
    """PyG's TGN example (defaults: its sizes, 100-wide memory, time encoding and embedding, 2 heads,
    dropout 0.1, 10 neighbours). ``num_nodes``: the stream's; ``edge_feature_dim``: the width of the raw
    messages (the stream's edge features; 0: none, then each event sends one zero)."""

    num_nodes: int = 1899  # UCI's; the task passes the stream's
    edge_feature_dim: int = 0
    memory_dim: int = 100
    time_dim: int = 100
    embedding_dim: int = 100
    num_neighbors: int = 10
    num_heads: int = 2
    dropout: float = 0.1

    def __post_init__(self) -> None:
        check_positive(self, "num_nodes", "memory_dim", "time_dim", "embedding_dim", "num_neighbors", "num_heads")
        check_count(self, "edge_feature_dim")
        check_rate(self, "dropout")
        if self.embedding_dim % self.num_heads:
            raise ValueError(f"{type(self).__name__}.embedding_dim ({self.embedding_dim}) must be divisible by "
                             f"num_heads ({self.num_heads})")


@builds(PyGTGNConfig)
class PyGTGN(PretrainedMixin, TemporalLinkPredictor):
    """PyG's TGN behind the temporal contract (see the module docstring): ``memory`` (``TGNMemory``),
    ``conv`` (``TransformerConv``), ``head`` (:class:`MergeLayer`).
    ``embed(nodes (Q,), times (Q,), ctx) -> (Q, embedding_dim)``."""

    def __init__(self, config: PyGTGNConfig) -> None:
        from torch_geometric.nn import TransformerConv
        from torch_geometric.nn.models import TGNMemory
        from torch_geometric.nn.models.tgn import IdentityMessage, LastAggregator

        super().__init__()
        c = self.config = config
        # PyG's message store drops empty message tensors, so a stream without edge features sends one
        # zero per event (DyGLib gives UCI zero edge features too)
        self.msg_dim = max(c.edge_feature_dim, 1)
        self.memory = TGNMemory(c.num_nodes, self.msg_dim, c.memory_dim, c.time_dim,
                                message_module=IdentityMessage(self.msg_dim, c.memory_dim, c.time_dim),
                                aggregator_module=LastAggregator())
        for name in ("memory", "last_update", "_assoc"):  # state, not weights: rebuilt by replaying a stream
            self.memory.register_buffer(name, getattr(self.memory, name), persistent=False)
        self.conv = TransformerConv(c.memory_dim, c.embedding_dim // c.num_heads, heads=c.num_heads,
                                    dropout=c.dropout, edge_dim=self.msg_dim + c.time_dim)
        self.head = MergeLayer(c.embedding_dim)

    def _messages(self, ctx: TemporalContext, edge_ids: Tensor) -> Tensor:
        """``(E, msg_dim)`` raw messages of the events ``edge_ids`` (one zero each without features)."""
        dev = self.memory.device
        if ctx.stream.edge_features is None:
            return torch.zeros(edge_ids.numel(), 1, device=dev)
        return ctx.stream.edge_features.to(dev)[edge_ids.to(dev)].float()

    def embed(self, nodes: Tensor, times: Tensor, ctx: TemporalContext) -> Tensor:
        c = self.config
        check_context(ctx, c.num_nodes, None, c.edge_feature_dim, "this PyGTGN")
        nb = ctx.sampler.sample(nodes, times, c.num_neighbors)  # validates nodes and times
        dev = self.memory.device
        nodes, nb_nodes = nodes.long().to(dev), nb.nodes.to(dev)
        Q = nodes.numel()
        n_id, inv = torch.unique(torch.cat([nodes, nb_nodes]), return_inverse=True)  # TGNMemory wants unique ids
        z, _ = self.memory(n_id)  # (n, memory_dim), the memory with the stored messages applied
        q_e = nb.query_ids().to(dev)
        rel_t = times.to(dev)[q_e] - nb.times.to(dev)  # t - t_j >= 1
        edge_attr = torch.cat([self.memory.time_enc(rel_t.to(z.dtype)), self._messages(ctx, nb.edge_ids)], -1)
        edge_index = torch.stack([torch.arange(q_e.numel(), device=dev), q_e])  # neighbour entry -> query
        return self.conv((z[inv[Q:]], z[inv[:Q]]), edge_index, edge_attr)  # (Q, embedding_dim)

    def embed_pairs(self, src: Tensor, dst: Tensor, t: Tensor, ctx: TemporalContext) -> tuple[Tensor, Tensor]:
        h = self.embed(torch.cat([src, dst]), torch.cat([t, t]), ctx)
        return h[: src.numel()], h[src.numel():]

    def observe(self, src: Tensor, dst: Tensor, t: Tensor, edge_ids: Tensor, ctx: TemporalContext) -> None:
        """TGN's memory update with the batch's positive events (the example's ``update_state``), then
        ``detach``: the next batch's loss trains the GRU through the stored messages."""
        if not (src.shape == dst.shape == t.shape == edge_ids.shape and src.dim() == 1):
            raise ValueError(f"src, dst, t and edge_ids must be (B,) alike, got {tuple(src.shape)}, "
                             f"{tuple(dst.shape)}, {tuple(t.shape)}, {tuple(edge_ids.shape)}")
        for name, ids in (("src", src), ("dst", dst)):
            if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.config.num_nodes):
                raise ValueError(f"{name} holds ids outside [0, {self.config.num_nodes})")
        dev = self.memory.device
        self.memory.update_state(src.long().to(dev), dst.long().to(dev), t.to(dev).long(),
                                 self._messages(ctx, edge_ids))
        self.memory.detach()

    def train(self, mode: bool = True) -> "PyGTGN":
        """PyG's memory applies its stored messages when it enters evaluation mode; the result is
        detached, so no graph outlives the training phase."""
        super().train(mode)
        self.memory.detach()
        return self

    def reset_state(self) -> None:
        """Zero memory, last updates and stored messages (before each pass over a split)."""
        self.memory.reset_state()


@register_model
def pyg_tgn() -> PyGTGNConfig:
    """PyG's TGN example (memory, time encoding and embedding of width 100, 2 heads, 10 neighbours);
    pass the stream's ``num_nodes`` and ``edge_feature_dim``."""
    return PyGTGNConfig()
