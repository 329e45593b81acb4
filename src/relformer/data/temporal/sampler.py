"""Temporal neighbour sampling without a Python loop per query (TGN, Rossi et al. 2020; DyGLib's
``NeighborSampler``, Yu et al. 2023).

For queries ``(node (B,), time (B,))`` the history of a node is its interactions strictly before
``time`` (an event at the query time itself is excluded: no leakage from the current step).
``"recent"`` returns the ``k`` most recent of them, ``"uniform"`` ``k`` draws with replacement among
all of them (DyGLib's ``uniform``), both in time order. The result is **packed** like
:class:`relformer.data.packed.Packed`: query ``i`` owns entries ``offsets[i]:offsets[i+1]``.

The index is a CSR over nodes: every event appears in the lists of both endpoints (``undirected``,
as DyGLib) or of its source only, each list sorted by time. One ``searchsorted`` on the key
``node * (U + 1) + rank(time)`` (``U`` distinct times, exact in int64) finds where each history ends.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..packed import lengths_to_offsets
from .events import EventStream

__all__ = ["TemporalNeighbors", "TemporalNeighborSampler"]


@dataclass(frozen=True)
class TemporalNeighbors:
    """Packed neighbourhoods of ``B`` queries, ``M`` entries in all, oldest first within a query.

    ``nodes (M,)`` neighbour ids, ``edge_ids (M,)`` event indices into the sampler's stream,
    ``times (M,)`` event times, ``offsets (B + 1,)`` (PyG's ``ptr``)."""

    nodes: Tensor
    edge_ids: Tensor
    times: Tensor
    offsets: Tensor

    @property
    def counts(self) -> Tensor:
        """``(B,)`` entries per query."""
        return self.offsets[1:] - self.offsets[:-1]

    @property
    def num_queries(self) -> int:
        return self.offsets.numel() - 1

    def query_ids(self) -> Tensor:
        """``(M,)`` the query each entry belongs to."""
        return torch.repeat_interleave(torch.arange(self.num_queries, device=self.offsets.device), self.counts)

    def to_padded(self, k: int | None = None, pad_id: int = -1) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """For peers that want rectangles: ``(nodes (B, k), edge_ids (B, k), times (B, k), mask (B, k))``,
        right-padded with ``pad_id`` (times with 0); ``k`` defaults to the largest count."""
        counts = self.counts
        width = int(counts.max()) if k is None and counts.numel() else (k or 0)
        if counts.numel() and int(counts.max()) > width:
            raise ValueError(f"k={width} is smaller than the largest neighbourhood ({int(counts.max())})")
        B = self.num_queries
        mask = torch.arange(width, device=counts.device) < counts[:, None]
        out = []
        for values, fill in ((self.nodes, pad_id), (self.edge_ids, pad_id), (self.times, 0)):
            padded = values.new_full((B, width), fill)
            padded[mask] = values
            out.append(padded)
        return out[0], out[1], out[2], mask


class TemporalNeighborSampler:
    """Index of ``stream`` for temporal neighbour queries (see the module docstring).

    ``sample(nodes (B,), times (B,), k, strategy="recent" | "uniform", generator=None)`` ->
    :class:`TemporalNeighbors`."""

    def __init__(self, stream: EventStream, undirected: bool = True) -> None:
        if not isinstance(stream, EventStream):
            raise TypeError(f"stream must be an EventStream, got {type(stream).__name__}")
        E, n = len(stream), stream.num_nodes
        eid = torch.arange(E, device=stream.device)
        # event-major (e0's source entry, e0's destination entry, e1's ...): the stream is time sorted,
        # so a stable sort by owner leaves every node's list in time order
        owner = torch.stack([stream.src, stream.dst], 1).flatten() if undirected else stream.src
        other = torch.stack([stream.dst, stream.src], 1).flatten() if undirected else stream.dst
        eids = eid.repeat_interleave(2) if undirected else eid
        order = torch.sort(owner, stable=True).indices
        self.num_nodes = n
        self.stream = stream
        self.neighbors = other[order]  # (2E,) or (E,)
        self.edge_ids = eids[order]
        self.times = stream.t[self.edge_ids]
        self.ptr = lengths_to_offsets(torch.bincount(owner, minlength=n))  # (n + 1,)
        self._unique_times = torch.unique(stream.t)  # sorted (U,)
        rank = torch.searchsorted(self._unique_times, self.times)
        self._key = owner[order] * (self._unique_times.numel() + 1) + rank  # sorted (node, time) keys

    def _check(self, nodes: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
        if not isinstance(nodes, Tensor) or nodes.dim() != 1 or nodes.dtype not in (torch.int32, torch.int64):
            raise ValueError("nodes must be a 1-D integer tensor (B,) of node ids")
        if not isinstance(times, Tensor) or times.shape != nodes.shape:
            raise ValueError(f"times must be a tensor of the same shape as nodes {tuple(nodes.shape)}")
        if nodes.numel() and (int(nodes.min()) < 0 or int(nodes.max()) >= self.num_nodes):
            raise ValueError(f"nodes holds ids outside [0, {self.num_nodes})")
        if times.is_floating_point() and not bool(torch.isfinite(times).all()):
            raise ValueError("times holds NaN or inf")
        return nodes.long().to(self.ptr.device), times.to(self.times.device)

    def history_bounds(self, nodes: Tensor, times: Tensor) -> tuple[Tensor, Tensor]:
        """``(start (B,), end (B,))``: the node's whole history before ``time`` is CSR slots ``[start, end)``."""
        nodes, times = self._check(nodes, times)
        ut = self._unique_times
        if times.dtype != ut.dtype:  # e.g. float queries on integer times: compare in float64
            ut, times = ut.double(), times.double()
        r = torch.searchsorted(ut, times)  # number of distinct times < query time
        end = torch.searchsorted(self._key, nodes * (self._unique_times.numel() + 1) + r)
        return self.ptr[nodes], end

    def sample(self, nodes: Tensor, times: Tensor, k: int, strategy: str = "recent",
               generator: torch.Generator | None = None) -> TemporalNeighbors:
        """``k`` neighbours per query strictly before its time (fewer only where the history is shorter
        for ``"recent"``; exactly ``k`` or none for ``"uniform"``); ``generator`` seeds ``"uniform"``."""
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        if strategy not in ("recent", "uniform"):
            raise ValueError(f"strategy must be 'recent' or 'uniform', got {strategy!r}")
        start, end = self.history_bounds(nodes, times)
        available = end - start
        if strategy == "recent":
            counts = available.clamp(max=k)
            offsets = lengths_to_offsets(counts)
            shift = torch.repeat_interleave(end - counts - offsets[:-1], counts)  # slot of entry j: j + shift
            slot = torch.arange(shift.numel(), device=shift.device) + shift
        else:
            has = available > 0
            counts = has.long() * k
            offsets = lengths_to_offsets(counts)
            u = torch.rand((int(has.sum()), k), generator=generator, dtype=torch.float64).to(start.device)
            draw = (u * available[has, None]).long().clamp(max=available[has, None] - 1)  # (B', k)
            slot = (start[has, None] + draw.sort(1).values).flatten()  # CSR order = time order
        return TemporalNeighbors(nodes=self.neighbors[slot], edge_ids=self.edge_ids[slot], times=self.times[slot],
                                 offsets=offsets)
