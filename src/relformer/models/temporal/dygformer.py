"""DyGFormer (Yu et al. 2023, "Towards Better Dynamic Graph Learning: New Architecture and Unified
Library", NeurIPS; DyGLib's ``models/DyGFormer.py``), packed.

For a candidate link ``(u, v, t)`` each end's sequence is the node itself (elapsed time 0, no edge)
followed by its ``num_neighbors`` most recent interactions strictly before ``t``, oldest first
(DyGLib's ``max_input_sequence_length = num_neighbors + 1``; the context's sampler). Every entry
carries four channels (the paper's "Encode Neighbors, Links, and Time Intervals" and "Neighbor
Co-occurrence Encoding Scheme"):

* the neighbour's node features and the interaction's edge features (zeros for the node itself);
* the time encoding ``cos((t - t_j) w)`` (:class:`~.time_encoding.TimeEncoder`);
* the **neighbour co-occurrence encoding**: ``C_u[j] = [#j in S_u, #j in S_v]``, how often the
  entry's node appears in ``u``'s and in ``v``'s sequence, encoded as ``f(C[:, 0]) + f(C[:, 1])`` with
  ``f = Linear(1, d) -> ReLU -> Linear(d, d)``.

**Patching** ("Patching Technique"): ``patch_size`` consecutive entries become one token, the
``patch_size * F`` values of each channel projected to ``channel_dim``; a partial last patch is filled as DyGLib pads
(zero features, zero counts). The four channels concatenated, ``(4 channel_dim)`` wide, of both
ends' patches go through ``depth`` pre-norm Transformer blocks ("Transformer Encoder"; DyGLib's
``TransformerEncoder``: LayerNorm, attention, GELU MLP of 4x, no final norm) as **one packed item
per pair**: ``u``'s tokens and ``v``'s tokens attend each other and nothing else. Each end's tokens
are averaged and projected to ``output_dim``, then :class:`~.base.MergeLayer` scores the pair.

Differences from DyGLib. Padding: DyGLib pads every sequence of a batch to the longest and lets the
padding patches attend and be averaged; here nothing is padded (rows of whole pairs, a block-diagonal
mask), so a pair's output does not depend on the other pairs of its batch (pair by pair the two
agree: the tests). Dropout: DyGLib also drops the MLP's hidden activations; :class:`~relformer.nn.Block`
drops the attention probabilities and both branch outputs. Time: DyGLib learns the frequencies
(``time_trainable=True``); they are fixed by default here.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...data.packed import Packed, lengths_to_offsets, plan_rows
from ...nn import Encoder, Linear
from ..checks import check_count, check_positive, check_rate
from ..registry import PretrainedMixin, builds, register_model
from .base import MergeLayer, TemporalContext, TemporalLinkPredictor
from .time_encoding import TimeEncoder

__all__ = ["DyGFormerConfig", "DyGFormer", "PairSequences", "NeighborCooccurrence", "cooccurrence_counts",
           "patch_tokens"]


@dataclass(frozen=True)
class DyGFormerConfig:
    """DyGFormer (defaults: DyGLib's for UCI and the contact networks: sequences of 32 = the node and
    31 neighbours, patch size 1, time encoding 100, channels 50, 2 layers, 2 heads, dropout 0.1, output
    172). ``num_nodes`` and the feature widths are the stream's (``0``: the stream has none); the
    link-prediction task fills them in from the data. ``row_len``: attention row width (0: the
    longest pair of the batch)."""

    num_nodes: int = 1
    node_feature_dim: int = 0
    edge_feature_dim: int = 0
    num_neighbors: int = 31
    patch_size: int = 1
    time_dim: int = 100
    channel_dim: int = 50
    depth: int = 2
    num_heads: int = 2
    dropout: float = 0.1
    output_dim: int = 172
    time_trainable: bool = False
    row_len: int = 0
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, "num_nodes", "num_neighbors", "patch_size", "time_dim", "channel_dim", "depth",
                       "num_heads", "output_dim")
        check_count(self, "node_feature_dim", "edge_feature_dim", "row_len")
        check_rate(self, "dropout")
        if (4 * self.channel_dim) % self.num_heads:
            raise ValueError(f"DyGFormerConfig: 4 * channel_dim ({4 * self.channel_dim}) must be divisible by "
                             f"num_heads ({self.num_heads})")


@register_model
def dygformer() -> DyGFormerConfig:
    """DyGFormer as DyGLib runs it on UCI and the contact networks (the node + 31 neighbours, patch 1)."""
    return DyGFormerConfig()


@register_model
def dygformer_micro() -> DyGFormerConfig:
    """A tiny DyGFormer for tests: 20 nodes, 7 neighbours in patches of 2, channels of 8, one layer."""
    return DyGFormerConfig(num_nodes=20, num_neighbors=7, patch_size=2, time_dim=8, channel_dim=8, depth=1,
                           output_dim=16, dropout=0.0)


def cooccurrence_counts(nodes: Tensor, pair: Tensor, side: Tensor, num_nodes: int) -> Tensor:
    """The co-occurrence counts: for each entry ``(M,)`` of pair ``pair`` on side ``side`` (0: source, 1:
    destination), how often its node appears in the source's and in the destination's sequence of
    that pair: ``(M, 2)`` float. One ``unique`` over ``pair * num_nodes + node`` and two bincounts."""
    key = pair * num_nodes + nodes
    uniq, inverse = torch.unique(key, return_inverse=True)
    in_src = torch.bincount(inverse[side == 0], minlength=uniq.numel())
    in_dst = torch.bincount(inverse[side == 1], minlength=uniq.numel())
    return torch.stack([in_src[inverse], in_dst[inverse]], 1).float()


def patch_tokens(values: Tensor, slot: Tensor, num_tokens: int, patch_size: int) -> Tensor:
    """Patching: entries ``values (M, F)`` at flat slots ``slot (M,)`` (``token * patch_size +
    place in the patch``) -> ``(num_tokens, patch_size * F)``, zeros in empty slots."""
    grid = values.new_zeros(num_tokens * patch_size, values.shape[-1])
    grid = grid.index_put((slot,), values)
    return grid.view(num_tokens, patch_size * values.shape[-1])


class NeighborCooccurrence(nn.Module):
    """The co-occurrence encoder: counts ``(..., 2) -> f(c_0) + f(c_1) (..., dim)``,
    ``f = Linear(1, dim) -> ReLU -> Linear(dim, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc1, self.fc2 = Linear(1, dim), Linear(dim, dim)

    def forward(self, counts: Tensor) -> Tensor:
        return self.fc2(torch.relu(self.fc1(counts.unsqueeze(-1)))).sum(-2)


class _Constant(nn.Module):
    """The projection of a channel the stream has no features for (width 0): its bias alone, ``(T, 0) -> (T, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.bias.expand(x.shape[0], -1)


def _projection(width: int, dim: int) -> nn.Module:
    return Linear(width, dim) if width else _Constant(dim)


@dataclass(frozen=True)
class PairSequences:
    """The packed sequences and patch tokens of ``B`` pairs (queries ``0..B-1`` the sources, ``B..2B-1``
    the destinations).

    * entries ``(M,)``: ``nodes``, ``edge_ids`` (``-1`` for the node itself), ``dt`` (float64 elapsed
      time), ``query``, ``slot`` (flat patch slot ``token * patch_size + place``);
    * ``patches (2B,)`` tokens per query; ``item_offsets (B + 1,)`` tokens per pair (the source's, then
      the destination's); ``token_query (T,)`` the query each token belongs to."""

    nodes: Tensor
    edge_ids: Tensor
    dt: Tensor
    query: Tensor
    slot: Tensor
    patches: Tensor
    item_offsets: Tensor
    token_query: Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.item_offsets[-1])


@builds(DyGFormerConfig)
class DyGFormer(PretrainedMixin, TemporalLinkPredictor):
    """DyGFormer (see the module): ``forward(src, dst, t, ctx) -> logits (B,)``;
    ``embed_pairs(src, dst, t, ctx) -> (h_src, h_dst)``, each ``(B, output_dim)``."""

    def __init__(self, config: DyGFormerConfig) -> None:
        super().__init__()
        self.config = c = config
        P, C = c.patch_size, c.channel_dim
        self.time_encoder = TimeEncoder(c.time_dim, trainable=c.time_trainable)
        self.cooccurrence = NeighborCooccurrence(C)
        self.projection = nn.ModuleDict({
            "node": _projection(P * c.node_feature_dim, C), "edge": _projection(P * c.edge_feature_dim, C),
            "time": Linear(P * c.time_dim, C), "cooccurrence": Linear(P * C, C)})
        width = 4 * C
        self.encoder = Encoder(width, c.depth, c.num_heads, mlp_ratio=4.0, dropout=c.dropout,
                               attn_dropout=c.dropout, backend=c.backend, final_norm=False)
        self.output = Linear(width, c.output_dim)
        self.head = MergeLayer(c.output_dim)

    # -- inputs ----------------------------------------------------------------------------------
    def _check(self, src: Tensor, dst: Tensor, t: Tensor, ctx: TemporalContext) -> None:
        c = self.config
        if not isinstance(ctx, TemporalContext):
            raise TypeError(f"ctx must be a TemporalContext, got {type(ctx).__name__}")
        for name, x in (("src", src), ("dst", dst)):
            if x.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"{name} must hold integer node ids, got {x.dtype}")
            if x.numel() and (int(x.min()) < 0 or int(x.max()) >= c.num_nodes):
                raise ValueError(f"{name} holds ids outside [0, num_nodes = {c.num_nodes})")
        if src.numel() == 0:
            raise ValueError("src, dst and t are empty: a batch needs at least one candidate link")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError("t holds NaN or inf")
        s = ctx.stream
        for name, x, want in (("node_features", s.node_features, c.node_feature_dim),
                              ("edge_features", s.edge_features, c.edge_feature_dim)):
            have = 0 if x is None else x.shape[1]
            if have != want:
                raise ValueError(f"the context's stream has {name} of width {have}, DyGFormerConfig."
                                 f"{name.replace('features', 'feature_dim')} = {want}")

    def sequences(self, src: Tensor, dst: Tensor, t: Tensor, ctx: TemporalContext) -> PairSequences:
        """Both ends' sequences (the node, then its recent history) and their patch layout, packed."""
        B, P = src.shape[0], self.config.patch_size
        nodes, times = torch.cat([src, dst]).long(), torch.cat([t, t])  # (2B,) queries
        nb = ctx.sampler.sample(nodes, times, self.config.num_neighbors, "recent")
        lengths = nb.counts + 1  # the node itself first
        offsets = lengths_to_offsets(lengths)
        M = int(offsets[-1])
        query = torch.repeat_interleave(torch.arange(2 * B, device=nodes.device), lengths)  # (M,)
        pos = torch.arange(M, device=nodes.device) - offsets[query]
        history = pos > 0
        entry_nodes = nodes[query].clone()
        entry_nodes[history] = nb.nodes
        edge_ids = torch.full((M,), -1, dtype=torch.long, device=nodes.device)
        edge_ids[history] = nb.edge_ids
        t_query = times[query].double()
        t_entry = t_query.clone()
        t_entry[history] = nb.times.double()
        patches = (lengths + P - 1) // P  # (2B,)
        item_offsets = lengths_to_offsets(patches[:B] + patches[B:])
        first = torch.cat([item_offsets[:-1], item_offsets[:-1] + patches[:B]])  # (2B,) first token per query
        order = torch.stack([torch.arange(B, device=nodes.device), torch.arange(B, 2 * B, device=nodes.device)], 1)
        token_query = torch.repeat_interleave(order.flatten(), patches[order.flatten()])  # (T,) in token order
        slot = (first[query] + pos // P) * P + pos % P
        return PairSequences(entry_nodes, edge_ids, t_query - t_entry, query, slot, patches, item_offsets, token_query)

    def tokens(self, seq: PairSequences, ctx: TemporalContext) -> Tensor:
        """The patch tokens ``(T, 4 channel_dim)``: node, edge, time and co-occurrence channels."""
        c, P, T = self.config, self.config.patch_size, seq.num_tokens
        B = seq.patches.numel() // 2
        s = ctx.stream
        dev = seq.nodes.device
        M = seq.nodes.numel()
        node_x = s.node_features[seq.nodes].float() if c.node_feature_dim else torch.zeros(M, 0, device=dev)
        edge_x = torch.zeros(M, c.edge_feature_dim, device=dev)
        if c.edge_feature_dim:
            has = seq.edge_ids >= 0
            edge_x[has] = s.edge_features[seq.edge_ids[has]].float()
        time_x = self.time_encoder(seq.dt)  # (M, time_dim); the node itself: cos(0 w + b)
        counts = cooccurrence_counts(seq.nodes, seq.query % B, (seq.query >= B).long(), c.num_nodes)
        count_grid = patch_tokens(counts, seq.slot, T, P).view(T, P, 2)  # empty slots: zero counts, as DyGLib
        channels = [self.projection["node"](patch_tokens(node_x, seq.slot, T, P)),
                    self.projection["edge"](patch_tokens(edge_x, seq.slot, T, P)),
                    self.projection["time"](patch_tokens(time_x, seq.slot, T, P)),
                    self.projection["cooccurrence"](self.cooccurrence(count_grid).flatten(1))]
        return torch.cat(channels, -1)  # (T, 4C)

    def encode(self, x: Tensor, seq: PairSequences) -> Tensor:
        """Tokens ``(T, 4C)`` -> the Transformer over each pair's tokens (rows of whole pairs) -> ``(T, 4C)``."""
        lengths = (seq.item_offsets[1:] - seq.item_offsets[:-1]).tolist()
        row_len = max([self.config.row_len, *lengths])
        rows = Packed(x, seq.item_offsets).to_rows(plan=plan_rows(lengths, row_len))
        return self.encoder(x, rows.relation(), rows=rows)

    def embed_pairs(self, src: Tensor, dst: Tensor, t: Tensor, ctx: TemporalContext) -> tuple[Tensor, Tensor]:
        self._check(src, dst, t, ctx)
        seq = self.sequences(src, dst, t, ctx)
        x = self.encode(self.tokens(seq, ctx), seq)  # (T, 4C)
        B2 = seq.patches.numel()
        mean = x.new_zeros(B2, x.shape[-1]).index_add_(0, seq.token_query, x) / seq.patches[:, None].to(x.dtype)
        h = self.output(mean)  # (2B, output_dim)
        return h[: B2 // 2], h[B2 // 2:]
