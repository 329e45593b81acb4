"""Dataset views shared by the tasks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..train.recipe import RecipeError

__all__ = ["First", "EvalSplits", "train_subset", "gather_objects"]


class EvalSplits(Dataset):
    """Named eval splits one after another (e.g. val then test, evaluated in one pass):
    ``__getitems__`` returns one batch per split, in order, None for a split the indices miss.
    ``prefix(name)``: the split's metric prefix, ``""`` when there is one split (``"AP"``), else
    ``"name_"`` (``"val_AP"``, ``"test_AP"``)."""

    def __init__(self, splits: dict[str, Dataset]) -> None:
        if not splits:
            raise ValueError("EvalSplits needs at least one split")
        self.splits = dict(splits)
        self.names = tuple(self.splits)
        self._starts, n = [], 0
        for part in self.splits.values():
            self._starts.append(n)
            n += len(part)
        self._len = n

    def prefix(self, name: str) -> str:
        return "" if len(self.names) == 1 else f"{name}_"

    def __len__(self) -> int:
        return self._len

    def __getitems__(self, indices: Sequence[int]) -> tuple:
        out = []
        for start, part in zip(self._starts, self.splits.values()):
            local = [i - start for i in indices if start <= i < start + len(part)]
            out.append(part.__getitems__(local) if local else None)
        return tuple(out)


class First(Dataset):
    """The first ``n`` items of a dataset, keeping its batched ``__getitems__``."""

    def __init__(self, data: Dataset, n: int) -> None:
        self.data, self.n = data, n

    def __len__(self) -> int:
        return self.n

    def __getitems__(self, indices: Sequence[int]):
        return self.data.__getitems__(list(indices))


def train_subset(train: Dataset, n: int | None, items: str) -> Dataset:
    """``train`` itself (``n`` None) or its first ``n`` ``items``; more than it holds is a RecipeError
    naming ``data.train_subset``."""
    if n is not None and n > len(train):
        raise RecipeError(f"data.train_subset = {n} exceeds the {len(train)} training {items}")
    return train if n is None else First(train, n)


def gather_objects(items: list) -> list:
    """Every rank's ``items``, concatenated in rank order (the list itself when not distributed)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return items
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, items)
    return [x for part in parts for x in part]
