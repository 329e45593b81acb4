"""Packed variable-size batches: one type for sentences, patches, graph nodes and query sets.

``Packed(values, offsets)`` holds ``n`` items concatenated along dim 0 (``values (N, ...)``)
with ``offsets (n + 1,)`` like PyG's ``ptr``: item ``i`` is ``values[offsets[i]:offsets[i+1]]``.
Linear layers and MLPs run on ``values`` directly (no padding); attention runs either on
one packed sequence with a :class:`~relformer.relations.Documents` relation, or on
fixed-width *rows* (:meth:`Packed.to_rows`), which on CPU is the faster layout: each row
holds several whole items and a 4-D block-diagonal mask keeps them apart.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from ..relations.sequence import Documents

__all__ = ["Packed", "Rows", "plan_rows", "lengths_to_offsets"]


def lengths_to_offsets(lengths: Tensor) -> Tensor:
    """Item lengths ``(n,)`` -> offsets ``(n + 1,)`` (PyG's ``ptr``): ``[0, l0, l0 + l1, ...]``."""
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)])


def _check_offsets(offsets: Tensor, n_values: int) -> Tensor:
    if not isinstance(offsets, Tensor) or offsets.dtype not in (torch.int32, torch.int64) or offsets.dim() != 1:
        raise ValueError("offsets must be a 1-D integer tensor (n_items + 1,)")
    if offsets.numel() == 0 or offsets[0].item() != 0 or offsets[-1].item() != n_values:
        raise ValueError(f"offsets must start at 0 and end at len(values) = {n_values}, got {offsets.tolist()[:3]}...")
    if (offsets[1:] < offsets[:-1]).any():
        raise ValueError("offsets must be non-decreasing")
    return offsets.long()


@dataclass(frozen=True)
class Packed:
    """``n`` variable-length items concatenated: ``values (N, ...)``, ``offsets (n + 1,)``."""

    values: Tensor
    offsets: Tensor

    def __post_init__(self):
        if not isinstance(self.values, Tensor) or self.values.dim() < 1:
            raise ValueError("values must be a tensor with at least one dim (N, ...)")
        object.__setattr__(self, "offsets", _check_offsets(self.offsets, self.values.shape[0]).to(self.values.device))

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_list(cls, items: list[Tensor]) -> "Packed":
        if len(items) == 0:
            raise ValueError("cannot pack an empty list of items")
        return cls(torch.cat(items, 0), lengths_to_offsets(torch.tensor([t.shape[0] for t in items])))

    @classmethod
    def from_padded(cls, padded: Tensor, lengths: Tensor | None = None, mask: Tensor | None = None) -> "Packed":
        """From ``padded (B, L, ...)`` and either ``lengths (B,)`` or a left-aligned bool ``mask (B, L)``."""
        if (lengths is None) == (mask is None):
            raise ValueError("give exactly one of lengths or mask")
        B, L = padded.shape[:2]
        if mask is None:
            lengths = torch.as_tensor(lengths, device=padded.device)
            if lengths.shape != (B,) or (lengths < 0).any() or (lengths > L).any():
                raise ValueError(f"lengths must be (B,) = ({B},) with values in [0, {L}]")
            mask = torch.arange(L, device=padded.device) < lengths[:, None]
        elif mask.shape != (B, L) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape (B, L) = {(B, L)}")
        return cls(padded[mask], lengths_to_offsets(mask.sum(1)))

    # ---- views ------------------------------------------------------------------------
    @property
    def num_items(self) -> int:
        return self.offsets.numel() - 1

    @property
    def lengths(self) -> Tensor:
        return self.offsets[1:] - self.offsets[:-1]

    def segment_ids(self) -> Tensor:
        """``(N,)`` item index of every value."""
        return torch.repeat_interleave(torch.arange(self.num_items, device=self.values.device), self.lengths)

    def positions(self) -> Tensor:
        """``(N,)`` position of every value inside its item (restarts at 0 per item)."""
        return torch.arange(self.values.shape[0], device=self.values.device) - self.offsets[self.segment_ids()]

    def with_values(self, values: Tensor) -> "Packed":
        """Same layout, new values (e.g. after a linear layer)."""
        if values.shape[0] != self.values.shape[0]:
            raise ValueError(f"values has {values.shape[0]} rows, layout has {self.values.shape[0]}")
        return Packed(values, self.offsets)

    def unpack(self) -> list[Tensor]:
        return list(torch.split(self.values, self.lengths.tolist()))

    def to_padded(self, pad_value: float = 0.0, max_len: int | None = None) -> tuple[Tensor, Tensor]:
        """``(padded (n, Lmax, ...), mask (n, Lmax))``."""
        L = int(self.lengths.max().item()) if max_len is None else max_len
        mask = torch.arange(L, device=self.values.device) < self.lengths[:, None]
        padded = self.values.new_full((self.num_items, L, *self.values.shape[1:]), pad_value)
        padded[mask] = self.values
        return padded, mask

    def relation(self) -> Documents:
        """The mask for attention over all values as ONE sequence ``(1, N)``: items stay apart."""
        return Documents(self.segment_ids()[None])

    def to_rows(self, row_len: int | None = None, plan: list[list[int]] | None = None) -> "Rows":
        """Pack whole items into rows of ``row_len`` slots, as :func:`plan_rows` assigns them (first-fit
        decreasing) or as ``plan`` (a list of rows, each a list of item indices, every item once) says.

        ``row_len`` defaults to the longest item (to the fullest row of a ``plan``); an item longer
        than ``row_len`` is an error.
        """
        lengths = self.lengths.tolist()
        if plan is None:
            row_len = _row_len(lengths, row_len)
            plan = plan_rows(lengths, row_len)
        else:
            row_len = _check_plan(plan, lengths, row_len)
        placement = [(0, 0)] * len(lengths)  # item -> (row, start slot)
        for r, items in enumerate(plan):
            start = 0
            for i in items:
                placement[i] = (r, start)
                start += lengths[i]
        dev = self.values.device
        seg, starts = self.segment_ids(), torch.tensor(placement, dtype=torch.long, device=dev).view(-1, 2)
        row = starts[seg, 0] if seg.numel() else seg
        slot = starts[seg, 1] + self.positions() if seg.numel() else seg
        n_rows = max(len(plan), 1)
        index = torch.full((n_rows, row_len), -1, dtype=torch.long, device=dev)
        index[row, slot] = torch.arange(self.values.shape[0], device=dev)
        segments = torch.full_like(index, -1)
        segments[row, slot] = seg
        positions = torch.zeros_like(index)
        positions[row, slot] = self.positions()
        return Rows(index=index, segment_ids=segments, positions=positions, num_values=self.values.shape[0])


def _row_len(lengths: list[int], row_len: int | None) -> int:
    longest = max(lengths) if lengths else 0
    row_len = longest if row_len is None else int(row_len)
    if longest > row_len:
        raise ValueError(f"row_len={row_len} is shorter than the longest item ({longest})")
    return max(row_len, 1)


def _check_plan(plan: list[list[int]], lengths: list[int], row_len: int | None) -> int:
    placed = sorted(i for items in plan for i in items)
    if placed != list(range(len(lengths))):
        raise ValueError(f"plan must place every item index 0..{len(lengths) - 1} exactly once")
    return _row_len([sum(lengths[i] for i in items) for items in plan], row_len)


def plan_rows(lengths: list[int], row_len: int | None = None) -> list[list[int]]:
    """Assign items to rows of ``row_len`` slots by first-fit decreasing (Johnson 1973): items are
    taken longest first, each into the first row with room, else a new row.

    ``lengths``: item lengths; ``row_len`` defaults to the longest. Returns the rows as lists of
    item indices (longest first within a row); ``Packed.to_rows(plan=...)`` lays them out.
    """
    lengths = [int(n) for n in lengths]
    row_len = _row_len(lengths, row_len)
    rows: list[list[int]] = []
    free: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        r = next((r for r, f in enumerate(free) if f >= lengths[i]), len(rows))
        if r == len(rows):
            rows.append([])
            free.append(row_len)
        rows[r].append(i)
        free[r] -= lengths[i]
    return rows


@dataclass(frozen=True)
class Rows:
    """A packed layout in ``(R, row_len)`` slots; ``index == -1`` marks an empty slot.

    ``gather`` turns packed ``(N, ...)`` values into ``(R, row_len, ...)`` rows (zeros in empty
    slots), ``scatter`` brings rows back; ``relation()`` keeps items apart inside a row.
    """

    index: Tensor        # (R, row_len) value index or -1
    segment_ids: Tensor  # (R, row_len) item id or -1
    positions: Tensor    # (R, row_len) position inside the item (0 in empty slots)
    num_values: int

    @property
    def valid(self) -> Tensor:
        return self.index >= 0

    def gather(self, values: Tensor) -> Tensor:
        if values.shape[0] != self.num_values:
            raise ValueError(f"values has {values.shape[0]} rows, layout has {self.num_values}")
        # index_select, not values[index]: its backward is a dense index_add_, where advanced
        # indexing's accumulating index_put_ was the slowest op of a GPS layer's backward
        source, empty = self._sources
        out = values.index_select(0, source).view(*self.index.shape, *values.shape[1:])
        return out.masked_fill(empty.view(*empty.shape, *([1] * (values.dim() - 1))), 0)

    def scatter(self, rows: Tensor) -> Tensor:
        """``(R, row_len, ...) -> (N, ...)``, the values in their packed order."""
        return rows.flatten(0, 1).index_select(0, self._slots)

    @cached_property
    def _sources(self) -> tuple[Tensor, Tensor]:
        """``(R * row_len,)`` value index of every slot (0 in empty slots) and the ``(R, row_len)``
        empty-slot mask (computed once: one layout serves every layer)."""
        return self.index.clamp_min(0).flatten(), ~self.valid

    @cached_property
    def _slots(self) -> Tensor:
        """``(N,)`` flat slot of every value (computed once: one layout serves every layer)."""
        flat = self.index.flatten()
        slots = torch.empty(self.num_values, dtype=torch.long, device=flat.device)
        valid = flat >= 0
        slots[flat[valid]] = torch.nonzero(valid).flatten()
        return slots

    def relation(self) -> Documents:
        return Documents(self.segment_ids)
