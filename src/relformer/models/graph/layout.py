"""Whole graphs in attention rows: :class:`GraphLayout`, and the layouts of PyG-style calls.

Global attention runs on whole graphs placed into rows of ``row_len`` slots, kept apart by a 4-D
block-diagonal mask -- never padded to the largest graph, and never one long block-diagonal
sequence (5-9x slower than rows, DESIGN.md). A model builds one layout per forward and passes it
to every layer. A layer called like PyG (``layer(x, edge_index, batch)``) gets its layout from
:func:`drop_in_layout`, which builds it once per batch and hands the same object to every layer
that sees the same ``edge_index`` / ``batch`` tensors.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ...attention import Relation, attend
from ...data.graph import check_features, check_graph, ptr_from_batch
from ...data.packed import Packed, Rows, plan_rows
from ...relations import Documents, GraphAdjacency
from ...relations.graph import edge_id_matrix, node_layout

__all__ = ["GraphLayout", "ROW_LEN", "drop_in_layout", "clear_drop_in_layouts"]

#: default row width. Every slot pair of a row is scored, masked or not, so a row costs ``W^2`` scores:
#: rows about as wide as the graphs compute the fewest. 32 slots keep one molecule-sized graph (or a
#: few small ones) per row; a larger graph widens the rows to its size. On ZINC-like batches (9-27
#: atoms) rows of 64 scored 2.3x as many pairs as PyG's padding, rows of 32 as many (bench/graph.py's
#: ``scores per head`` column).
ROW_LEN = 32


@dataclass(frozen=True, eq=False)
class GraphLayout:
    """Where packed nodes meet in attention, built once per forward and shared by every layer.

    ``rows``: whole graphs in ``(R, W)`` slots (:meth:`build`); ``edge_index``: the batch's edges
    (global node ids). The relations are built on first use and cached here, so every layer reuses
    them and the 4-D SDPA mask each one caches: :attr:`documents` keeps graphs of a row apart
    (global attention), :attr:`adjacency` lets a node attend its in-neighbours (edge ``j -> i``).
    """

    rows: Rows
    edge_index: Tensor

    @classmethod
    def build(cls, ptr: Tensor, edge_index: Tensor, row_len: int = ROW_LEN) -> "GraphLayout":
        """Graphs (``ptr (G + 1,)`` node offsets) into rows of at most ``max(row_len, largest graph)``
        slots by first-fit decreasing (:func:`~relformer.data.plan_rows`); the rows are as wide as
        the fullest one, so a small batch is not padded to ``row_len``. A batch without nodes has
        nothing to attend: ``ValueError``."""
        num_nodes = int(ptr[-1])
        if num_nodes == 0:
            raise ValueError("the graph batch has no nodes (ptr ends at 0): a graph model needs at least one node")
        lengths = (ptr[1:] - ptr[:-1]).tolist()
        plan = plan_rows(lengths, max([row_len, *lengths]))
        rows = Packed(ptr.new_empty(num_nodes, 0, dtype=torch.float32), ptr).to_rows(plan=plan)
        return cls(rows, edge_index)

    @property
    def shape(self) -> tuple[int, int]:
        """``(R, W)``: rows and slots per row."""
        return tuple(self.rows.index.shape)

    @cached_property
    def slots(self) -> tuple[Tensor, Tensor]:
        """``(node_row, node_pos)``, each ``(N,)``: the row and slot of every node."""
        return node_layout(self.rows.index)

    @cached_property
    def documents(self) -> Documents:
        return self.rows.relation()

    @cached_property
    def adjacency(self) -> GraphAdjacency:
        return GraphAdjacency.from_edges(self.edge_index, *self.slots, *self.shape, self_loops=False)

    @cached_property
    def edge_ids(self) -> Tensor:
        """``(R, W, W)`` id of the edge ``j -> i`` at ``[row, slot i, slot j]``, ``-1`` where none."""
        return edge_id_matrix(self.edge_index, *self.slots, *self.shape)

    def attend(self, q: Tensor, k: Tensor, v: Tensor, relation: Relation, backend: str = "auto",
               dropout_p: float = 0.0) -> Tensor:
        """Packed heads ``q, k, v (N, H, D)`` -> attention on the rows -> packed ``(N, H, D)``."""
        q, k, v = (self.rows.gather(t).transpose(1, 2) for t in (q, k, v))  # (R, H, W, D)
        out = attend(q, k, v, relation, backend=backend, dropout_p=dropout_p)  # (R, H, W, D)
        return self.rows.scatter(out.transpose(1, 2))  # (N, H, D)


# ---------------------------------------------------------------------------------------------
# PyG-style calls: one layout per batch, shared by the layers
# ---------------------------------------------------------------------------------------------
def _check_call(x: Tensor, edge_index: Tensor, edge_attr: Tensor | None) -> None:
    """What changes from layer to layer of a PyG-style stack: ``x`` and ``edge_attr``."""
    if not (isinstance(x, Tensor) and x.is_floating_point() and x.dim() == 2):
        raise ValueError(f"x must be a float (N, C) tensor, got "
                         f"{(x.dtype, tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__}")
    check_features("x", x, None, "N nodes")
    if edge_attr is not None:
        check_features("edge_attr", edge_attr, edge_index.shape[1], "E edges")


def _version(t: Tensor | None) -> int | None:
    return None if t is None else t._version


class _Entry:
    """A layout, the tensors it was built from, and the last ``edge_attr`` validated with it (all held,
    so their identity cannot be reused; the layers of a stack pass the same ``edge_attr``, which is
    then checked once)."""

    def __init__(self, edge_index: Tensor, batch: Tensor | None, edge_attr: Tensor | None,
                 layout: GraphLayout) -> None:
        self.edge_index, self.batch, self.layout = edge_index, batch, layout
        self.versions = (edge_index._version, _version(batch))
        self.edge_attr, self.edge_attr_version = edge_attr, _version(edge_attr)

    def serves(self, edge_index: Tensor, batch: Tensor | None) -> bool:
        return (self.edge_index is edge_index and self.batch is batch
                and self.versions == (edge_index._version, _version(batch)))

    def check(self, x: Tensor, edge_attr: Tensor | None) -> None:
        """Validate a later call's ``x`` (every call) and ``edge_attr`` (when not the one validated last)."""
        known = edge_attr is self.edge_attr and _version(edge_attr) == self.edge_attr_version
        _check_call(x, self.edge_index, None if known else edge_attr)
        if not known and _versioned(edge_attr):
            self.edge_attr, self.edge_attr_version = edge_attr, _version(edge_attr)


class _LayoutCache:
    """The last few layouts of PyG-style calls, keyed on the identity of ``edge_index`` and ``batch``
    and checked against their version counters (``t._version``, bumped by every in-place edit), so a
    changed graph is never served a stale layout."""

    def __init__(self, size: int = 4) -> None:
        self.size = size
        self._entries: OrderedDict[tuple, _Entry] = OrderedDict()

    def get(self, x: Tensor, edge_index: Tensor, batch: Tensor | None, edge_attr: Tensor | None,
            row_len: int) -> GraphLayout:
        cacheable = _versioned(edge_index) and (batch is None or _versioned(batch))
        key = (id(edge_index), id(batch), x.shape[0] if isinstance(x, Tensor) else None, row_len)
        entry = self._entries.get(key) if cacheable else None
        if entry is not None and entry.serves(edge_index, batch):
            entry.check(x, edge_attr)
            self._entries.move_to_end(key)
            return entry.layout
        layout = _build_checked(x, edge_index, batch, edge_attr, row_len)
        if cacheable:
            self._entries[key] = _Entry(edge_index, batch, edge_attr if _versioned(edge_attr) else None, layout)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return layout

    def clear(self) -> None:
        self._entries.clear()


def _versioned(t) -> bool:
    """A tensor with a version counter (inference tensors have none: their layouts are not cached)."""
    return isinstance(t, Tensor) and not t.is_inference()


def _build_checked(x: Tensor, edge_index: Tensor, batch: Tensor | None, edge_attr: Tensor | None,
                   row_len: int) -> GraphLayout:
    """Validate a PyG-style call ``(x, edge_index, batch, edge_attr)`` and lay its graphs out."""
    _check_call(x, edge_index, None)
    if x.shape[0] == 0:
        raise ValueError("x has no rows (no nodes): a graph layer needs at least one node")
    ptr = check_graph(x, edge_index, ptr_from_batch(batch, x.shape[0]).to(x.device), edge_attr)
    return GraphLayout.build(ptr, edge_index, row_len)


_DROP_IN = _LayoutCache()


def drop_in_layout(x: Tensor, edge_index: Tensor, batch: Tensor | None = None, edge_attr: Tensor | None = None,
                   row_len: int = ROW_LEN) -> GraphLayout:
    """The layout of a PyG-style call ``layer(x, edge_index, batch, edge_attr=...)``.

    The first layer of a stack validates the graph and builds the layout; the next layers, called
    with the same ``edge_index`` and ``batch`` tensors, get the same layout (and the masks its
    relations cached) after checking only ``x`` and ``edge_attr``. An in-place edit of either tensor
    bumps its version counter and rebuilds the layout; assigning through ``.data`` bypasses the
    counter and is not seen. Inference tensors (``torch.inference_mode``) carry no counter and are
    laid out on every call."""
    return _DROP_IN.get(x, edge_index, batch, edge_attr, int(row_len))


def clear_drop_in_layouts() -> None:
    """Forget the cached layouts of PyG-style calls (they hold their batch's index tensors)."""
    _DROP_IN.clear()
