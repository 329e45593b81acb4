"""The ZINC-like splits as torch datasets: :class:`ZincDataset` (one split, items as dicts of
tensors) and :class:`ZincBatch` (a :class:`~relformer.data.graph.GraphBatch` gathered straight from
the packed storage, plus what this dataset adds)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..graph import GraphBatch
from ..packed import lengths_to_offsets
from .storage import _SPD_UNREACHABLE, _read

__all__ = ["ZincDataset", "ZincBatch", "ENCODINGS"]

#: the encodings a split can carry (:func:`relformer.data.zinc.with_encodings`)
ENCODINGS = ("lap_pe", "lap_eigvals", "rwse", "spd")


@dataclass(frozen=True)
class ZincBatch(GraphBatch):
    """A :class:`relformer.data.graph.GraphBatch` (``x``, ``edge_index``, ``ptr``, ``edge_attr``,
    ``y``, ``lap_pe``, ``rwse``; ``batch`` derived) with what this dataset adds: ``edge_ptr (B + 1,)``
    edge offsets, ``lap_eigvals (N, k)`` (each node carries its graph's eigenvalues) and cached
    shortest-path distances ``spd``, packed per graph as row-major ``n_g x n_g`` blocks,
    ``(sum n_g^2,)`` long at offsets ``spd_ptr (B + 1,)`` (``-1``: unreachable; see :meth:`spd_dense`)."""

    edge_ptr: Tensor | None = None
    lap_eigvals: Tensor | None = None
    spd: Tensor | None = None
    spd_ptr: Tensor | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.lap_eigvals is not None and self.lap_eigvals.shape[0] != self.num_nodes:
            raise ValueError(f"lap_eigvals has {self.lap_eigvals.shape[0]} rows for {self.num_nodes} nodes")
        if (self.spd is None) != (self.spd_ptr is None):
            raise ValueError("give spd and spd_ptr together")
        if self.spd is not None and int(self.spd_ptr[-1]) != self.spd.numel():
            raise ValueError(f"spd holds {self.spd.numel()} distances, spd_ptr says {int(self.spd_ptr[-1])}")

    def positions(self) -> Tensor:
        """``(N,)`` index of every node inside its graph."""
        return torch.arange(self.num_nodes, device=self.x.device) - self.ptr[self.batch]

    def spd_dense(self, node_row: Tensor | None = None, node_pos: Tensor | None = None, B: int | None = None,
                  L: int | None = None) -> Tensor:
        """Cached shortest-path distances laid out as ``(B, L, L)`` long, ``-1`` between nodes of
        different graphs and at empty slots: the same tensor as
        :func:`relformer.relations.graph.dense_shortest_paths` for this layout, without a search.
        Nodes sit at ``(node_row, node_pos)`` (default: one graph per row, ``L`` = the largest graph)."""
        if self.spd is None:
            raise ValueError("this batch has no shortest-path distances: use with_encodings(..., spd=True)")
        sizes = self.sizes  # (num_graphs,)
        if node_row is None:
            node_row, node_pos = self.batch, self.positions()
            B = self.num_graphs if B is None else B
            L = (int(sizes.max()) if self.num_graphs else 0) if L is None else L
        elif node_pos is None or B is None or L is None:
            raise ValueError("give node_row, node_pos, B and L together")
        graph = torch.repeat_interleave(torch.arange(self.num_graphs, device=sizes.device), sizes * sizes)
        k = torch.arange(self.spd.numel(), device=sizes.device) - self.spd_ptr[graph]  # index in its block
        u, v = self.ptr[graph] + k // sizes[graph], self.ptr[graph] + k % sizes[graph]  # global node pairs
        if (node_row[u] != node_row[v]).any():
            raise ValueError("node_row splits a graph over several rows")
        out = torch.full((B, L, L), -1, dtype=torch.long, device=self.spd.device)
        out[node_row[u].long(), node_pos[u].long(), node_pos[v].long()] = self.spd
        return out

    def _map(self, fn: Callable[[Tensor], Tensor]) -> "ZincBatch":
        return replace(self, **{f.name: fn(getattr(self, f.name)) for f in fields(self)
                                if getattr(self, f.name) is not None})

    def to(self, *args, **kwargs) -> "ZincBatch":
        return self._map(lambda t: t.to(*args, **kwargs))

    def pin_memory(self) -> "ZincBatch":
        return self._map(Tensor.pin_memory)


def _ranges(start: Tensor, length: Tensor) -> Tensor:
    """``cat([arange(s, s + n) for s, n in zip(start, length)])`` without a Python loop."""
    offsets = torch.cumsum(length, 0) - length  # exclusive prefix sum
    return torch.repeat_interleave(start - offsets, length) + torch.arange(int(length.sum()))


def _spd_values(stored: Tensor) -> Tensor:
    out = stored.long()
    return out.masked_fill_(stored == _SPD_UNREACHABLE, -1)


class ZincDataset(Dataset):
    """One split, indexable like a torch ``Dataset``: ``ds[i]`` is one molecule as a dict of
    tensors, ``x (n,)``, ``edge_index (2, 2m)`` (ids ``0..n-1``), ``edge_attr (2m,)`` long, ``y ()``
    float32, and after :func:`with_encodings` ``lap_pe``/``lap_eigvals (n, k)``, ``rwse (n, k)``
    float32 and ``spd (n, n)`` long (``-1``: unreachable): the mapping that
    :meth:`relformer.data.graph.GraphBatch.from_list` packs. ``ds.__getitems__(indices)`` (used by
    ``DataLoader``) gathers a :class:`ZincBatch` directly from the packed storage:

        loader = DataLoader(ds, batch_size=128, shuffle=True, collate_fn=ZincDataset.collate)

    Holds the packed tensors of the cache file (compact dtypes; items come out as long/float32).
    """

    def __init__(self, tensors: dict[str, Tensor], metadata: dict[str, str], path: Path | None = None,
                 encodings: dict[str, Tensor] | None = None) -> None:
        self._t = tensors
        self.metadata = metadata
        self.path = path
        self.encodings = dict(encodings or {})
        self._node_ptr = tensors["node_ptr"].tolist()
        self._edge_ptr = tensors["edge_ptr"].tolist()
        if "spd" in self.encodings:
            self._spd_ptr = lengths_to_offsets((tensors["node_ptr"][1:] - tensors["node_ptr"][:-1]) ** 2)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "ZincDataset":
        tensors, metadata = _read(Path(path))
        return cls(tensors, metadata, Path(path))

    # ---- facts --------------------------------------------------------------------------------
    @property
    def split(self) -> str:
        return self.metadata.get("split", "")

    @property
    def skipped(self) -> dict[str, int]:
        """SMILES passed over while sampling this split: ``unparsable``, ``duplicate``, ``overlap``
        (val and test are drawn together and report the same counts)."""
        return json.loads(self.metadata.get("skipped", "{}"))

    @property
    def content_hash(self) -> str:
        return self.metadata["content"]

    @property
    def y(self) -> Tensor:
        return self._t["y"]

    @property
    def num_nodes(self) -> Tensor:
        """``(G,)`` atoms per molecule."""
        return self._t["node_ptr"][1:] - self._t["node_ptr"][:-1]

    @property
    def smiles(self) -> list[str]:
        return bytes(self._t["smiles"].numpy()).decode().split("\n")

    def terms(self) -> dict[str, Tensor]:
        """The parts of ``y``: ``logp``, ``sa`` and ``ring_penalty``, each ``(G,)`` float32."""
        return {k: self._t[k] for k in ("logp", "sa", "ring_penalty")}

    def __len__(self) -> int:
        return len(self._node_ptr) - 1

    def __repr__(self) -> str:
        extra = f", encodings={sorted(self.encodings)}" if self.encodings else ""
        return f"ZincDataset(split={self.split!r}, graphs={len(self)}, nodes={len(self._t['x'])}{extra})"

    # ---- access -------------------------------------------------------------------------------
    def _index(self, i: int) -> int:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"index {i} out of range for {n} graphs")
        return i % n

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        i = self._index(int(i))
        n0, n1, e0, e1 = self._node_ptr[i], self._node_ptr[i + 1], self._edge_ptr[i], self._edge_ptr[i + 1]
        item = {"x": self._t["x"][n0:n1].long(), "edge_index": self._t["edge_index"][:, e0:e1].long(),
                "edge_attr": self._t["edge_attr"][e0:e1].long(), "y": self._t["y"][i]}
        for key in ("lap_pe", "lap_eigvals", "rwse"):
            if key in self.encodings:
                item[key] = self.encodings[key][n0:n1]
        if "spd" in self.encodings:
            s0, n = int(self._spd_ptr[i]), n1 - n0
            item["spd"] = _spd_values(self.encodings["spd"][s0:s0 + n * n]).view(n, n)
        return item

    def __getitems__(self, indices: Sequence[int]) -> ZincBatch:
        idx = torch.as_tensor(list(indices), dtype=torch.long)
        n = len(self)
        if idx.numel() and (idx.min() < -n or idx.max() >= n):
            raise IndexError(f"indices out of range for {n} graphs")
        idx = idx % max(n, 1)
        node_ptr, edge_ptr = self._t["node_ptr"], self._t["edge_ptr"]
        n_len, e_len = node_ptr[idx + 1] - node_ptr[idx], edge_ptr[idx + 1] - edge_ptr[idx]  # (B,)
        nodes, edges = _ranges(node_ptr[idx], n_len), _ranges(edge_ptr[idx], e_len)          # (N,), (E,)
        ptr = lengths_to_offsets(n_len)
        edge_index = self._t["edge_index"][:, edges].long() + torch.repeat_interleave(ptr[:-1], e_len)
        enc = {key: self.encodings[key][nodes] for key in ("lap_pe", "lap_eigvals", "rwse") if key in self.encodings}
        if "spd" in self.encodings:
            enc["spd"] = _spd_values(self.encodings["spd"][_ranges(self._spd_ptr[idx], n_len * n_len)])
            enc["spd_ptr"] = lengths_to_offsets(n_len * n_len)
        return ZincBatch(x=self._t["x"][nodes].long(), edge_index=edge_index, ptr=ptr,
                         edge_attr=self._t["edge_attr"][edges].long(), y=self._t["y"][idx],
                         edge_ptr=lengths_to_offsets(e_len), **enc)

    @staticmethod
    def collate(batch: ZincBatch | Sequence[dict[str, Tensor]]) -> ZincBatch:
        """``DataLoader`` collate function: a :class:`ZincBatch` (from ``__getitems__``) passes
        through; a list of items (``ds[i]``) is packed into the same batch."""
        if isinstance(batch, ZincBatch):
            return batch
        items = list(batch)
        base = GraphBatch.from_list(items)  # x, edge_index, ptr, edge_attr, y, lap_pe, rwse
        extra = {"edge_ptr": lengths_to_offsets(torch.tensor([g["edge_index"].shape[1] for g in items]))}
        if "lap_eigvals" in items[0]:
            extra["lap_eigvals"] = torch.cat([g["lap_eigvals"] for g in items])
        if "spd" in items[0]:
            extra["spd"] = torch.cat([g["spd"].flatten() for g in items])
            extra["spd_ptr"] = lengths_to_offsets(base.sizes ** 2)
        return ZincBatch(**{f.name: getattr(base, f.name) for f in fields(GraphBatch)}, **extra)

    def with_encodings(self, encodings: dict[str, Tensor]) -> "ZincDataset":
        """The same split with more encodings attached (shares the graph tensors)."""
        unknown = set(encodings) - set(ENCODINGS)
        if unknown:
            raise ValueError(f"unknown encodings {sorted(unknown)}; known: {ENCODINGS}")
        return ZincDataset(self._t, self.metadata, self.path, {**self.encodings, **encodings})

    def graph_edges(self, i: int) -> tuple[int, Tensor]:
        """``(n, local edge_index (2, 2m) long)`` of graph ``i`` (no copies of features)."""
        i = self._index(i)
        e0, e1 = self._edge_ptr[i], self._edge_ptr[i + 1]
        return self._node_ptr[i + 1] - self._node_ptr[i], self._t["edge_index"][:, e0:e1].long()
