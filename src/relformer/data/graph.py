"""Packed graph batches: PyG's ``Batch`` layout (nodes concatenated, ``ptr`` offsets, edges as
``edge_index`` of global node ids), validated once, without PyG.

``GraphBatch(x, edge_index, ptr, edge_attr, y, lap_pe, rwse)`` holds ``G`` graphs: graph ``g``
owns nodes ``ptr[g]:ptr[g+1]`` and the edges between them. Edges follow PyG: ``edge_index[0]``
is the source ``j``, ``edge_index[1]`` the target ``i`` (messages flow ``j -> i``); undirected
graphs store both directions. Build one from tensors, from a list of graphs
(:meth:`GraphBatch.from_list`) or from a PyG ``Data`` / ``Batch`` (:meth:`GraphBatch.from_pyg`;
duck-typed, PyG itself is not imported). :func:`check_graph` is the validation, shared with
layers that are called PyG-style on raw tensors.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor

from ..relations.graph import check_edge_index
from .packed import Packed, lengths_to_offsets

__all__ = ["GraphBatch", "check_features", "check_graph", "check_ptr", "ptr_from_batch"]

_INT = (torch.int32, torch.int64)


def _all_finite(t: Tensor) -> bool:
    """No NaN / inf in ``t``: its minimum and maximum are finite (both propagate NaN). One reduction
    pass without a boolean temporary, several times cheaper than ``isfinite(t).all()``."""
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def check_features(name: str, t: Tensor, rows: int | None, what: str) -> None:
    """``t (rows, ...)``: a tensor with 1 or 2 dims, finite if floating point, >= 0 if integer.
    ``what`` names the rows in messages (``"N nodes"``, ``"E edges"``)."""
    if not isinstance(t, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(t).__name__}")
    if t.dim() not in (1, 2):
        raise ValueError(f"{name} must be ({what},) or ({what}, F), got shape {tuple(t.shape)}")
    if rows is not None and t.shape[0] != rows:
        raise ValueError(f"{name} has {t.shape[0]} rows but there are {rows} {what.split()[-1]}")
    if t.is_floating_point():
        if t.numel() and not _all_finite(t):
            raise ValueError(f"{name} holds NaN or inf values")
    elif t.dtype in _INT:
        if t.numel() and int(t.min()) < 0:
            raise ValueError(f"{name} holds negative category ids (min {int(t.min())})")
    else:
        raise ValueError(f"{name} must be floating point (features) or int32/int64 (categories), got {t.dtype}")


def ptr_from_batch(batch: Tensor | None, num_nodes: int) -> Tensor:
    """PyG's ``batch (N,)`` graph id per node (sorted, as PyG's collate makes it) -> ``ptr (G + 1,)``;
    ``None`` means one graph."""
    if batch is None:
        return torch.tensor([0, num_nodes], dtype=torch.long)
    if not isinstance(batch, Tensor) or batch.dtype not in _INT or batch.dim() != 1:
        raise ValueError("batch must be a 1-D integer tensor (N,) of graph ids")
    if batch.shape[0] != num_nodes:
        raise ValueError(f"batch has {batch.shape[0]} entries but x has {num_nodes} nodes")
    if num_nodes == 0:
        return torch.zeros(1, dtype=torch.long, device=batch.device)
    if int(batch[0]) < 0:
        raise ValueError(f"batch holds negative graph ids (min {int(batch.min())})")
    if bool((batch[1:] < batch[:-1]).any()):
        raise ValueError("batch must be sorted (nodes of a graph contiguous, graphs in order), as PyG collates them")
    return lengths_to_offsets(torch.bincount(batch.long()))


def check_ptr(ptr: Tensor, num_nodes: int) -> Tensor:
    """``ptr (G + 1,)`` node offsets: int32/int64, starting at 0, non-decreasing, ending at
    ``num_nodes``; returned as long."""
    if not isinstance(ptr, Tensor):
        raise TypeError(f"ptr must be a tensor (G + 1,) of node offsets, got {type(ptr).__name__}")
    if ptr.dtype not in _INT or ptr.dim() != 1 or ptr.numel() == 0:
        raise ValueError(f"ptr must be a non-empty 1-D int32/int64 tensor (G + 1,), got {ptr.dtype} {tuple(ptr.shape)}")
    if int(ptr[0]) != 0 or int(ptr[-1]) != num_nodes:
        raise ValueError(f"ptr: node offsets must start at 0 and end at len(x) = {num_nodes}, got "
                         f"{int(ptr[0])} .. {int(ptr[-1])}")
    if bool((ptr[1:] < ptr[:-1]).any()):
        raise ValueError("ptr: node offsets must be non-decreasing")
    return ptr.long()


def check_graph(x: Tensor, edge_index: Tensor, ptr: Tensor, edge_attr: Tensor | None = None) -> Tensor:
    """Validate a packed graph batch; return ``ptr`` as long. Raises ``ValueError`` naming the argument:
    wrong dtypes or shapes, NaN / inf features, negative or out-of-range node ids, an ``edge_attr``
    whose length is not the number of edges, an edge joining two graphs."""
    check_features("x", x, None, "N nodes")
    N = x.shape[0]
    check_edge_index(edge_index, N)
    E = edge_index.shape[1]
    if edge_attr is not None:
        check_features("edge_attr", edge_attr, E, "E edges")
    ptr = check_ptr(ptr, N)
    if E and ptr.numel() > 2:
        graph = torch.bucketize(edge_index, ptr[1:-1], right=True)  # (2, E) graph of each end
        crossing = (graph[0] != graph[1]).nonzero().flatten()
        if crossing.numel():
            e = int(crossing[0])
            raise ValueError(f"edge_index joins nodes of different graphs ({crossing.numel()} edges, e.g. edge {e}: "
                             f"{int(edge_index[0, e])} -> {int(edge_index[1, e])})")
    return ptr


@dataclass(frozen=True)
class GraphBatch:
    """``G`` graphs packed along the node axis (PyG's ``Batch`` layout), validated on construction.

    Fields: ``x`` node features ``(N, F)`` float or categories ``(N,)`` / ``(N, F)`` long;
    ``edge_index (2, E)`` long, global node ids, source row 0, target row 1; ``ptr (G + 1,)`` node
    offsets; ``edge_attr`` ``(E, D)`` float or ``(E,)`` / ``(E, D)`` long, or None; ``y`` targets
    ``(G, ...)`` or None; ``lap_pe (N, k)`` Laplacian eigenvectors and ``rwse (N, k)`` random-walk
    encodings when precomputed (models compute missing ones on the fly, per batch).
    """

    x: Tensor
    edge_index: Tensor
    ptr: Tensor
    edge_attr: Tensor | None = None
    y: Tensor | None = None
    lap_pe: Tensor | None = None
    rwse: Tensor | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "ptr", check_graph(self.x, self.edge_index, self.ptr, self.edge_attr))
        object.__setattr__(self, "edge_index", self.edge_index.long())
        for name in ("lap_pe", "rwse"):
            value = getattr(self, name)
            if value is not None:
                check_features(name, value, self.num_nodes, "N nodes")
                if not value.is_floating_point() or value.dim() != 2:
                    raise ValueError(f"{name} must be a float (N, k) tensor, got {value.dtype} {tuple(value.shape)}")
        if self.y is not None and (not isinstance(self.y, Tensor) or self.y.dim() == 0
                                   or self.y.shape[0] != self.num_graphs):
            raise ValueError(f"y must be a tensor with one row per graph ({self.num_graphs}), got "
                             f"{tuple(self.y.shape) if isinstance(self.y, Tensor) else type(self.y).__name__}")

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_list(cls, graphs: Sequence[Mapping[str, Any]]) -> "GraphBatch":
        """Collate graphs given as mappings with ``x``, ``edge_index`` (local node ids) and optional
        ``edge_attr``, ``y``, ``lap_pe``, ``rwse`` (each present in all graphs or in none)."""
        if len(graphs) == 0:
            raise ValueError("cannot collate an empty list of graphs")
        sizes = [int(g["x"].shape[0]) for g in graphs]
        ptr = torch.tensor([0, *sizes]).cumsum(0)
        edge_index = torch.cat([g["edge_index"].long() + int(ptr[k]) for k, g in enumerate(graphs)], dim=1)

        def cat(key: str, stack: bool = False) -> Tensor | None:
            present = [key in g and g[key] is not None for g in graphs]
            if not any(present):
                return None
            if not all(present):
                raise ValueError(f"{key} is given for some graphs but not all")
            items = [torch.as_tensor(g[key]) for g in graphs]
            return torch.stack(items) if stack and items[0].dim() == 0 else torch.cat(items)

        return cls(cat("x"), edge_index, ptr.to(edge_index.device), cat("edge_attr"), cat("y", stack=True),
                   cat("lap_pe"), cat("rwse"))

    @classmethod
    def from_pyg(cls, data) -> "GraphBatch":
        """From a PyG ``Data`` (one graph) or ``Batch``: ``x``, ``edge_index``, ``edge_attr``, ``y``,
        ``ptr`` (else ``batch``), and PyG's ``laplacian_eigenvector_pe`` / ``random_walk_pe``
        (``AddLaplacianEigenvectorPE`` / ``AddRandomWalkPE``) when present."""
        def get(name: str):
            return getattr(data, name, None) if name in data else None

        x, edge_index = get("x"), get("edge_index")
        if x is None or edge_index is None:
            raise ValueError("the PyG graph needs x and edge_index")
        ptr = get("ptr")
        if ptr is None:
            ptr = ptr_from_batch(get("batch"), x.shape[0]).to(x.device)
        return cls(x, edge_index, ptr, get("edge_attr"), get("y"), get("laplacian_eigenvector_pe"),
                   get("random_walk_pe"))

    # ---- views ----------------------------------------------------------------------------
    @property
    def num_nodes(self) -> int:
        return self.x.shape[0]

    @property
    def num_edges(self) -> int:
        return self.edge_index.shape[1]

    @property
    def num_graphs(self) -> int:
        return self.ptr.numel() - 1

    @property
    def sizes(self) -> Tensor:
        """``(G,)`` nodes per graph."""
        return self.ptr[1:] - self.ptr[:-1]

    @cached_property
    def batch(self) -> Tensor:
        """``(N,)`` graph id of every node (PyG's ``batch``)."""
        return torch.repeat_interleave(torch.arange(self.num_graphs, device=self.x.device), self.sizes)

    def packed(self, values: Tensor | None = None) -> Packed:
        """Node values (default ``x``) as a :class:`~relformer.data.Packed` batch of ``G`` items."""
        return Packed(self.x if values is None else values, self.ptr)

    def to(self, device) -> "GraphBatch":
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        return GraphBatch(**{k: (v.to(device) if isinstance(v, Tensor) else v) for k, v in moved.items()})
