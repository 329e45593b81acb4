"""Dataset views shared by the tasks."""
from __future__ import annotations

from typing import Sequence

import torch
from torch.utils.data import Dataset

from ..train.recipe import RecipeError

__all__ = ["First", "ValTest", "train_subset", "gather_objects"]


class ValTest(Dataset):
    """val followed by test: ``__getitems__`` returns ``(val batch | None, test batch | None)``."""

    def __init__(self, val: Dataset, test: Dataset) -> None:
        self.val, self.test = val, test

    def __len__(self) -> int:
        return len(self.val) + len(self.test)

    def __getitems__(self, indices: Sequence[int]):
        n = len(self.val)
        v = [i for i in indices if i < n]
        t = [i - n for i in indices if i >= n]
        return (self.val.__getitems__(v) if v else None, self.test.__getitems__(t) if t else None)


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
