"""Todyformer's pieces on packed temporal neighbourhoods (see :mod:`.todyformer` for the model).

* :func:`patch_ids` -- the patchifier: a query's history (oldest first) cut into ``min(n, M)``
  consecutive patches of equal size (sizes differ by at most one), in time order.
* :class:`PatchGraph` -- the per-patch interaction subgraphs of a batch of queries as packed tokens:
  per query and patch one token for the query node and one per distinct neighbour, the edges between
  them, and the *groups* (a node's tokens across the patches of one query) that global attention
  runs over, laid out in attention rows by :func:`group_rows`.
* :class:`LocalBlock` (message passing inside each patch, :class:`~relformer.models.graph.GINE`) and
  :class:`GlobalBlock` (a pre-norm transformer block over each group, :func:`relformer.attend` on
  rows with a :class:`~relformer.relations.Documents` mask).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...data.packed import Rows, lengths_to_offsets
from ...data.temporal import TemporalNeighbors
from ...nn import MLP, Attention, Linear
from ..graph import GINE

__all__ = ["patch_ids", "PatchGraph", "group_rows", "LocalBlock", "GlobalBlock"]


def patch_ids(counts: Tensor, num_patches: int) -> Tensor:
    """Patch of every packed entry: query ``q`` with ``n_q`` entries (oldest first) has
    ``P_q = min(n_q, num_patches)`` patches, entry ``j`` lies in patch ``floor(j * P_q / n_q)``
    (Todyformer's patchifier: equal edge counts per patch, in time order). ``counts (Q,) -> (M,)``."""
    offsets = lengths_to_offsets(counts)
    q = torch.repeat_interleave(torch.arange(counts.numel(), device=counts.device), counts)
    j = torch.arange(q.numel(), device=counts.device) - offsets[q]
    n = counts[q]
    return torch.div(j * n.clamp(max=num_patches), n, rounding_mode="floor")


@dataclass(frozen=True, eq=False)
class PatchGraph:
    """The interaction subgraphs of ``Q`` queries' patches as ``T`` packed tokens.

    Tokens are ordered by group: first the query nodes' tokens (query ``q`` owns ``P_q`` tokens, one
    per patch, ``P_q = max(1, min(n_q, M))``: a query without history keeps one empty patch), then one
    token per distinct ``(query, neighbour, patch)``, sorted by ``(query, neighbour, patch)``.

    * ``token_node (T,)`` node id; ``token_query (T,)``; ``token_patch (T,)``; ``token_time (T,)``:
      the time of the latest event of the token's patch (the query time for an empty patch);
    * ``is_center (T,)`` bool: the token of a query node;
    * ``group_offsets (G + 1,)``: the tokens of group ``g`` (one node's tokens across one query's
      patches, oldest patch first) are ``group_offsets[g]:group_offsets[g + 1]``;
    * ``edge_index (2, 2M)``: for every sampled event ``e`` of query ``q`` in patch ``p``, the edges
      neighbour token -> query token and back (PyG's source row 0, target row 1);
      ``edge_entry (2M,)``: the sampled entry each edge comes from;
    * ``readout (Q,)``: the token of each query node's latest patch.
    """

    token_node: Tensor
    token_query: Tensor
    token_patch: Tensor
    token_time: Tensor
    is_center: Tensor
    group_offsets: Tensor
    edge_index: Tensor
    edge_entry: Tensor
    readout: Tensor
    num_patches: int

    @classmethod
    def build(cls, nodes: Tensor, times: Tensor, nb: TemporalNeighbors, num_patches: int) -> "PatchGraph":
        """From the queries ``nodes (Q,)``, ``times (Q,)`` and their sampled neighbours ``nb``
        (packed, oldest first) -- vectorised, no loop over queries."""
        dev, M = nodes.device, num_patches
        Q, E = nodes.numel(), nb.nodes.numel()
        counts = nb.counts.to(dev)
        q_e = torch.repeat_interleave(torch.arange(Q, device=dev), counts)  # (E,)
        p_e = patch_ids(counts, M)  # (E,)
        P = counts.clamp(min=1, max=M)  # (Q,) patches per query
        c_off = lengths_to_offsets(P)  # (Q + 1,) query tokens of q: c_off[q] : c_off[q + 1]
        C = int(c_off[-1])
        c_query = torch.repeat_interleave(torch.arange(Q, device=dev), P)
        c_patch = torch.arange(C, device=dev) - c_off[c_query]
        c_tok_e = c_off[q_e] + p_e  # (E,) query token of each entry
        t_e = nb.times.to(dev)
        c_time = times.to(t_e.dtype).repeat_interleave(P).scatter_reduce(0, c_tok_e, t_e, "amax", include_self=False)
        # neighbour tokens: one per distinct (query, neighbour, patch), sorted so groups are contiguous
        N = int(nb.nodes.max()) + 1 if E else 1
        key = (q_e * N + nb.nodes.to(dev)) * M + p_e
        uniq, n_tok_e = torch.unique(key, return_inverse=True)  # sorted by (query, node, patch)
        n_query, rest = torch.div(uniq, N * M, rounding_mode="floor"), uniq % (N * M)
        n_node, n_patch = torch.div(rest, M, rounding_mode="floor"), rest % M
        n_time = c_time[c_off[n_query] + n_patch]
        _, n_group_len = torch.unique_consecutive(torch.div(uniq, M, rounding_mode="floor"), return_counts=True)
        n_tok_e = n_tok_e + C
        edge_index = torch.stack([torch.cat([n_tok_e, c_tok_e]), torch.cat([c_tok_e, n_tok_e])])
        entry = torch.arange(E, device=dev)
        return cls(token_node=torch.cat([nodes.repeat_interleave(P), n_node]),
                   token_query=torch.cat([c_query, n_query]),
                   token_patch=torch.cat([c_patch, n_patch]), token_time=torch.cat([c_time, n_time]),
                   is_center=torch.arange(C + uniq.numel(), device=dev) < C,
                   group_offsets=lengths_to_offsets(torch.cat([P, n_group_len])), edge_index=edge_index,
                   edge_entry=torch.cat([entry, entry]), readout=c_off[1:] - 1, num_patches=M)

    @property
    def num_tokens(self) -> int:
        return self.token_node.numel()


def group_rows(group_offsets: Tensor, row_len: int, padded: bool = False) -> Rows:
    """Groups (``group_offsets (G + 1,)``, each at most ``row_len`` tokens, tokens contiguous by
    group) in attention rows of ``row_len`` slots, vectorised: groups of length ``L`` go
    ``row_len // L`` to a row, in order (rows filled per length; no loop over groups).
    ``padded=True`` gives every group a row of its own (what padding to ``row_len`` computes)."""
    lengths = group_offsets[1:] - group_offsets[:-1]
    dev = lengths.device
    if lengths.numel() and int(lengths.max()) > row_len:
        raise ValueError(f"row_len={row_len} is shorter than the longest group ({int(lengths.max())})")
    order = torch.argsort(lengths, stable=True)  # by length, then group id
    sorted_len = lengths[order]
    first = torch.searchsorted(sorted_len, sorted_len, right=False)  # first slot of each group's bucket
    rank = torch.arange(order.numel(), device=dev) - first  # rank inside its length bucket
    n_len = torch.bincount(sorted_len, minlength=row_len + 1)  # (row_len + 1,) groups of each length
    cap = torch.div(row_len, torch.arange(row_len + 1, device=dev).clamp(min=1), rounding_mode="floor")
    if padded:
        cap = torch.ones_like(cap)  # groups of each length per row
    pr = cap[sorted_len]
    bucket_rows = torch.div(n_len + cap - 1, cap, rounding_mode="floor")  # rows of each length's bucket
    base = lengths_to_offsets(bucket_rows)[:-1]  # first row of each length's bucket
    row = base[sorted_len] + torch.div(rank, pr, rounding_mode="floor")
    start = (rank % pr) * sorted_len
    R = max(int(bucket_rows.sum()), 1)
    # token placement: token i of group g sits at (row[g], start[g] + i)
    g_row = torch.empty_like(row).scatter_(0, order, row)
    g_start = torch.empty_like(start).scatter_(0, order, start)
    gid = torch.repeat_interleave(torch.arange(lengths.numel(), device=dev), lengths)
    pos = torch.arange(gid.numel(), device=dev) - group_offsets[gid]
    index = torch.full((R, row_len), -1, dtype=torch.long, device=dev)
    segments = torch.full_like(index, -1)
    positions = torch.zeros_like(index)
    r, s = g_row[gid], g_start[gid] + pos
    index[r, s] = torch.arange(gid.numel(), device=dev)
    segments[r, s] = gid
    positions[r, s] = pos
    return Rows(index=index, segment_ids=segments, positions=positions, num_values=gid.numel())


class LocalBlock(nn.Module):
    """Message passing inside every patch (the structure-aware tokenizer, and the local half of each
    alternating block): ``h' = norm(h + drop(GINE(h, edge_index, e)))`` with GINE (Hu et al. 2020)
    ``mlp((1 + eps) h_i + sum_{j -> i} ReLU(h_j + W e_ji))`` and edge inputs ``e`` = [edge features |
    phi(t_query - t_event)]. ``forward(h (T, C), edge_index (2, E'), edge_attr (E', F)) -> (T, C)``."""

    def __init__(self, dim: int, edge_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.conv = GINE(dim, edge_dim=edge_dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, h: Tensor, edge_index: Tensor, edge_attr: Tensor) -> Tensor:
        return self.norm(h + self.drop(self.conv(h, edge_index, edge_attr)))


class GlobalBlock(nn.Module):
    """Transformer over each node's tokens across patches (pre-norm, Vaswani et al. 2017), with the
    temporal positional encoding ``pe`` projected to ``C`` (added to the attention input):
    ``h = h + drop(attn(LN(h) + W pe))`` inside each group, ``h = h + drop(mlp(LN(h)))``. ``forward(h (T, C),
    pe (T, pe_dim), rows, documents) -> (T, C)``: projections and the MLP on the packed tokens, attention
    on ``rows`` (:func:`group_rows`) with the :class:`~relformer.relations.Documents` mask."""

    def __init__(self, dim: int, num_heads: int, pe_dim: int, dropout: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, backend=backend)
        self.mlp = MLP(dim, 2 * dim, act=nn.GELU)
        self.pos = Linear(pe_dim, dim)
        self.drop = nn.Dropout(dropout)  # on the two branch outputs (CPU dropout is costly: not on the 2C hidden)

    def forward(self, h: Tensor, pe: Tensor, rows: Rows, documents) -> Tensor:
        h = h + self.drop(self.attn(self.norm1(h) + self.pos(pe), documents, rows=rows))
        return h + self.drop(self.mlp(self.norm2(h)))
