"""Where the elements of packed scenes meet in attention: objects, words, object pairs and points,
laid out once per forward and shared by every layer.

The model keeps every element kind as one flat state ``(M, C)`` (``M`` = its count); an item
(a scene with its utterance, or an object with its points) owns ``offsets[b]:offsets[b + 1]``.
Attention runs on rows of whole items (:meth:`relformer.data.Packed.to_rows`), one row plan shared by
objects, words and pairs so that row ``r`` of each holds the same scenes; a
:class:`~relformer.relations.Documents` relation keeps the items of a row apart.

The padded twin (``padded=True``, for the speed comparison and the packed == padded test) gives
every item the slots of the largest one (``valid`` marks the real ones), one item per row: the same
code then runs every per-element layer on the padding too.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...data.packed import Packed, Rows, lengths_to_offsets, plan_rows
from ...relations import Documents

__all__ = ["ElementSet", "SceneLayout", "element_set", "pair_index"]


@dataclass(frozen=True)
class ElementSet:
    """One element kind in the state: item ``b`` owns slots ``offsets[b]:offsets[b + 1]`` of the ``M``
    slots; ``valid (M,)`` is False on the padding slots of the padded twin; ``rows`` lays the slots out
    for attention and ``segments (R, W)`` is the item of each row slot (``-1``: empty or padding)."""

    offsets: Tensor
    valid: Tensor
    rows: Rows
    segments: Tensor

    @property
    def num_items(self) -> int:
        return self.offsets.numel() - 1

    def item_ids(self) -> Tensor:
        """``(M,)`` the item of every slot (padding slots included)."""
        return Packed(self.valid, self.offsets).segment_ids()

    def relation(self, other: "ElementSet | None" = None) -> Documents:
        """Elements attend only elements of their own item (``other``: cross-attention to its rows)."""
        return Documents(self.segments, None if other is None else other.segments)

    def gather(self, x: Tensor) -> Tensor:
        """``(M, ...) -> (R, W, ...)`` rows (zeros in empty slots)."""
        return self.rows.gather(x)

    def scatter(self, rows: Tensor) -> Tensor:
        return self.rows.scatter(rows)


def element_set(counts: Tensor, padded: bool, plan: list[list[int]] | None = None) -> tuple[ElementSet, Tensor]:
    """The slots of items with ``counts (n,)`` real elements, and ``index (M,)``: for every slot the
    index of its element among the ``sum(counts)`` packed ones (``-1`` on padding). Packed: ``M =
    sum(counts)``, rows by ``plan`` (default first-fit decreasing); padded: ``M = n * max(counts)``, one
    item per row."""
    device = counts.device
    n = counts.numel()
    if padded:
        width = max(int(counts.max()), 1) if n else 1
        offsets = torch.arange(n + 1, device=device) * width
        local = torch.arange(width, device=device).expand(n, width)
        valid = (local < counts[:, None]).flatten()
        index = torch.full((n * width,), -1, dtype=torch.long, device=device)
        index[valid] = torch.arange(int(counts.sum()), device=device)
        plan = [[b] for b in range(n)]
    else:
        offsets = lengths_to_offsets(counts)
        valid = torch.ones(int(counts.sum()), dtype=torch.bool, device=device)
        index = torch.arange(valid.numel(), device=device)
        plan = plan if plan is not None else plan_rows(counts.tolist())
    rows = Packed(valid, offsets).to_rows(plan=plan)
    segments = rows.segment_ids.masked_fill(~rows.gather(valid[:, None]).squeeze(-1), -1)
    return ElementSet(offsets, valid, rows, segments), index


def pair_index(objects: ElementSet) -> tuple[Tensor, Tensor, Tensor]:
    """Every ordered pair ``(i, j)`` of slots of the same item: ``i``, ``j (Q,)`` slot indices and the
    ``(n,)`` pair count of every item (``Q = sum(count ** 2)``), pairs of item ``b`` first by ``i``."""
    sizes = objects.offsets.diff()
    item = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes * sizes)
    local = Packed(item, lengths_to_offsets(sizes * sizes)).positions()
    start, size = objects.offsets[item], sizes[item]
    return start + local // size, start + local % size, sizes * sizes


@dataclass(frozen=True)
class SceneLayout:
    """The scene-level layout of one batch: ``objects``, ``words`` and ``pairs`` (object pairs ``(pair_i,
    pair_j)``) of the same scenes, rows planned once (by object counts) and shared."""

    objects: ElementSet
    words: ElementSet
    pairs: ElementSet
    pair_i: Tensor
    pair_j: Tensor
    object_index: Tensor  # (M_obj,) packed object of every object slot, -1 on padding
    word_index: Tensor    # (M_word,) packed word of every word slot, -1 on padding

    @classmethod
    def build(cls, object_counts: Tensor, word_counts: Tensor, padded: bool = False,
              with_pairs: bool = True) -> "SceneLayout":
        plan = None if padded else plan_rows(object_counts.tolist())
        objects, object_index = element_set(object_counts, padded, plan)
        words, word_index = element_set(word_counts, padded, plan)
        if with_pairs:
            pair_i, pair_j, pair_counts = pair_index(objects)
            pairs, _ = element_set(pair_counts, False, [[b] for b in range(len(pair_counts))] if padded else plan)
        else:
            pair_i = pair_j = object_counts.new_zeros(0)
            pairs = objects
        return cls(objects, words, pairs, pair_i, pair_j, object_index, word_index)
