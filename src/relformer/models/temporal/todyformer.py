"""Todyformer (Biparva et al. 2024, "Todyformer: Towards Holistic Dynamic Graph Transformers with
Structure-Aware Tokenization") as a :class:`~.base.TemporalLinkPredictor`.

The paper's four parts, on each query's sampled history (``k`` most recent events strictly before the
query time, from the context's sampler), all on packed tokens:

1. **Patchify** (the paper's patchifier): the history is cut, in time order, into
   ``P = min(n, num_patches)`` patches of equal event counts (:func:`~.todyformer_layers.patch_ids`).
2. **Structure-aware tokenization**: each patch is an interaction subgraph (the query node, its
   neighbours of that patch, one edge per event carrying the edge features and the time encoding of
   ``t - t_e``); a message-passing network over it gives every node a token per patch
   (:class:`~.todyformer_layers.PatchGraph`, :class:`~.todyformer_layers.LocalBlock`).
3. **Transformer over a node's tokens across patches** with a temporal positional encoding (the
   time encoding of ``t`` minus the time of the patch's latest event), through
   :func:`relformer.attend` on rows of whole token groups kept apart by a ``Documents`` mask
   (:class:`~.todyformer_layers.GlobalBlock`, :func:`~.todyformer_layers.group_rows`): a node has
   as many tokens as patches it appears in, nothing is padded.
4. **Alternating** local (MPNN) and global (transformer) blocks, ``num_blocks`` times; the query
   node's token of its latest patch, layer-normed, is its embedding; DyGLib's
   :class:`~.base.MergeLayer` scores the pair.

Simplified, and what differs from the paper: the paper patchifies one input window of the whole
stream shared by a batch and tokenizes with DyG2Vec's attention MPNN; here every query has its own
window (its ``k`` sampled events, the same data every model of the contract sees), the MPNN is
GINE (Hu et al. 2020) with edge inputs, and node ids are embedded (``node_embeddings``, zero-
initialised: an unseen node starts like a featureless one). The paper gives its transformer a
dedicated mask; here every token lies strictly before the query time, so nothing is masked but the
other groups. The hyper-parameters of the variants are relformer's choices, not the paper's, and the
parts follow the paper's description of its method (the patchifier, tokenizer, encoder and their
alternation) without equation numbers: only summaries of the paper were available offline.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor, nn

from ..checks import check_count, check_positive, check_rate
from ..registry import PretrainedMixin, builds, register_model
from .base import MergeLayer, TemporalContext, TemporalLinkPredictor
from .time_encoding import TimeEncoder
from .todyformer_layers import GlobalBlock, LocalBlock, PatchGraph, group_rows

__all__ = ["TodyformerConfig", "Todyformer"]

LAYOUTS = ("packed", "padded")


@dataclass(frozen=True)
class TodyformerConfig:
    """Todyformer. ``num_nodes``: node ids ``[0, num_nodes)`` (the stream's); ``node_feature_dim`` /
    ``edge_feature_dim``: widths of the stream's node / edge features (0: none). ``num_neighbors``:
    ``k`` sampled events per query; ``num_patches``: patches per history (also the attention row
    width); ``num_blocks``: alternating local + global blocks. ``layout``: ``"packed"`` (groups
    share attention rows, events as sampled) or ``"padded"`` (each group alone in a row of
    ``num_patches`` slots and the events padded to ``k``: the same result at a padded model's cost)."""

    num_nodes: int = 1899  # UCI's; the task passes the stream's
    node_feature_dim: int = 0
    edge_feature_dim: int = 0
    dim: int = 64
    time_dim: int = 64
    num_neighbors: int = 32
    num_patches: int = 8
    num_blocks: int = 2
    num_heads: int = 4
    dropout: float = 0.1
    node_embeddings: bool = True
    layout: Literal["packed", "padded"] = "packed"
    backend: str = "auto"

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(self, "num_nodes", "dim", "time_dim", "num_neighbors", "num_patches", "num_blocks", "num_heads")
        check_count(self, "node_feature_dim", "edge_feature_dim")
        check_rate(self, "dropout")
        if self.num_patches > self.num_neighbors:
            raise ValueError(f"{name}.num_patches ({self.num_patches}) must be <= num_neighbors ({self.num_neighbors})")
        if self.dim % self.num_heads:
            raise ValueError(f"{name}.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.layout not in LAYOUTS:
            raise ValueError(f"{name}.layout must be one of {LAYOUTS}, got {self.layout!r}")


def check_context(ctx: TemporalContext, num_nodes: int, node_feature_dim: int | None, edge_feature_dim: int,
                  owner: str) -> None:
    """The context's stream fits a model built for ``num_nodes`` and these feature widths
    (``node_feature_dim=None``: node features unused, not checked)."""
    if not isinstance(ctx, TemporalContext):
        raise TypeError(f"ctx must be a TemporalContext, got {type(ctx).__name__}")
    s = ctx.stream
    if s.num_nodes > num_nodes:
        raise ValueError(f"the stream has {s.num_nodes} nodes but {owner} was built for num_nodes={num_nodes}")
    for what, x, want in (("edge", s.edge_features, edge_feature_dim), ("node", s.node_features, node_feature_dim)):
        have = 0 if x is None else x.shape[1]
        if want is not None and have != want:
            raise ValueError(f"the stream's {what} features have width {have} but {owner} was built for "
                             f"{what}_feature_dim={want}")


@builds(TodyformerConfig)
class Todyformer(PretrainedMixin, TemporalLinkPredictor):
    """Todyformer (see the module docstring). ``embed(nodes (Q,), times (Q,), ctx) -> (Q, dim)``;
    ``forward(src, dst, t, ctx) -> logits (B,)`` (the contract's)."""

    def __init__(self, config: TodyformerConfig) -> None:
        super().__init__()
        c = self.config = config
        self.node_embedding = nn.Embedding(c.num_nodes, c.dim) if c.node_embeddings else None
        if self.node_embedding is not None:
            nn.init.zeros_(self.node_embedding.weight)
        self.node_proj = nn.Linear(c.node_feature_dim, c.dim) if c.node_feature_dim else None
        self.kind = nn.Embedding(2, c.dim)  # neighbour token / query-node token
        self.time_encoding = TimeEncoder(c.time_dim)
        edge_dim = c.edge_feature_dim + c.time_dim
        self.local_blocks = nn.ModuleList(LocalBlock(c.dim, edge_dim, c.dropout) for _ in range(c.num_blocks))
        self.global_blocks = nn.ModuleList(GlobalBlock(c.dim, c.num_heads, c.time_dim, c.dropout, c.backend)
                                           for _ in range(c.num_blocks))
        self.norm = nn.LayerNorm(c.dim)
        self.head = MergeLayer(c.dim)

    def embed(self, nodes: Tensor, times: Tensor, ctx: TemporalContext) -> Tensor:
        """``(Q, dim)`` embeddings of ``nodes`` at ``times`` from their history strictly before."""
        c = self.config
        check_context(ctx, c.num_nodes, c.node_feature_dim, c.edge_feature_dim, "this Todyformer")
        nb = ctx.sampler.sample(nodes, times, c.num_neighbors)  # validates nodes and times
        dev = self.kind.weight.device
        nodes, times = nodes.long().to(dev), times.to(dev)
        g = PatchGraph.build(nodes, times, nb, c.num_patches)
        h = self.kind(g.is_center.long())  # (T, C)
        if self.node_embedding is not None:
            h = h + self.node_embedding(g.token_node)
        if self.node_proj is not None:
            h = h + self.node_proj(ctx.stream.node_features.to(dev)[g.token_node])
        q_e = nb.query_ids().to(dev)
        e_attr = self.time_encoding(times[q_e] - nb.times.to(dev))  # (E, time_dim): phi(t - t_e)
        if c.edge_feature_dim:
            e_attr = torch.cat([ctx.stream.edge_features.to(dev)[nb.edge_ids.to(dev)], e_attr], 1)
        edge_index, edge_attr = g.edge_index, e_attr[g.edge_entry]  # both directions of every event
        padded = c.layout == "padded"
        if padded:  # the events padded to k: messages of the padding go to a dummy token, then dropped
            pad = 2 * (nodes.numel() * c.num_neighbors - nb.nodes.numel())
            sink = torch.full((pad,), g.num_tokens, dtype=torch.long, device=dev)
            edge_index = torch.cat([edge_index, torch.stack([torch.zeros_like(sink), sink])], 1)
            edge_attr = torch.cat([edge_attr, edge_attr.new_zeros(pad, edge_attr.shape[1])])
        pe = self.time_encoding(times[g.token_query] - g.token_time)  # (T, time_dim)
        rows = group_rows(g.group_offsets, c.num_patches, padded=padded)
        documents = rows.relation()
        for local, glob in zip(self.local_blocks, self.global_blocks):
            if padded:
                h = local(torch.cat([h, h.new_zeros(1, h.shape[1])]), edge_index, edge_attr)[:-1]
            else:
                h = local(h, edge_index, edge_attr)
            h = glob(h, pe, rows, documents)
        return self.norm(h[g.readout])

    def embed_pairs(self, src: Tensor, dst: Tensor, t: Tensor, ctx: TemporalContext) -> tuple[Tensor, Tensor]:
        h = self.embed(torch.cat([src, dst]), torch.cat([t, t]), ctx)
        return h[: src.numel()], h[src.numel():]


@register_model
def todyformer() -> TodyformerConfig:
    """Todyformer for the UCI-sized streams: width 64, 2 alternating blocks of 4 heads, k = 32 events
    in 8 patches (relformer's defaults; pass the stream's ``num_nodes`` and feature widths)."""
    return TodyformerConfig()


@register_model
def todyformer_micro() -> TodyformerConfig:
    """A tiny Todyformer for tests: width 32, 2 blocks of 2 heads, k = 8 events in 4 patches."""
    return TodyformerConfig(num_nodes=100, dim=32, time_dim=16, num_neighbors=8, num_patches=4, num_heads=2,
                            dropout=0.0)
