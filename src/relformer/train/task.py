"""The contract between the engine and a task (as Lightning's Trainer and its LightningModule).

The engine (:mod:`relformer.train.engine`) knows nothing about images, graphs or boxes; it is
handed a task object that supplies all of that through :class:`Task`. Tasks live one layer up
(:mod:`relformer.tasks`), import this module, and are found by name there.

Randomness: the engine reseeds torch's global RNG before every training step from
``(seed, global step, rank)`` and hands :meth:`Task.augment` a generator seeded the same way;
a task draws random numbers from nothing else, so a resumed run repeats an uninterrupted one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from .recipe import Recipe

__all__ = ["Task"]


@runtime_checkable
class Task(Protocol):
    """What the engine asks of a task. Batches are whatever the task likes (tensors, tuples,
    dicts, objects with ``.to(device)``); the engine only moves them to the device."""

    recipe: Recipe                 # the recipe this task was built from (an instance of recipe_type)
    recipe_type: type              # the task's Recipe subclass
    main_metric: str               # the key of metrics() that picks the best checkpoint
    mode: Literal["max", "min"]    # whether a larger or a smaller main_metric is better
    log_names: tuple[str, ...]     # the names loss() returns in its logs, besides the loss
    metric_names: tuple[str, ...]  # the keys metrics() returns
    eval_description: str          # what the eval set is, one line for the report
    # optional: ``shuffle_train = False`` keeps the training samples in dataset order (default: shuffled)

    def build_model(self) -> nn.Module:
        """The model, freshly initialised (the engine seeds torch first)."""

    def train_dataset(self) -> Dataset:
        """Map-style; ``__getitems__(indices)`` lets a whole batch be fetched in one call."""

    def eval_dataset(self) -> Dataset:
        """Evaluated in full every epoch: no sample dropped nor repeated."""

    def collate(self, samples: Any) -> Any:
        """What the dataset returned for one list of indices -> a batch."""

    def augment(self, batch: Any, generator: torch.Generator) -> Any:
        """Training-time random transforms of a (CPU) batch, drawing only from ``generator``."""

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        """The scalar training loss and ``{name: batch mean}`` for each of ``log_names``."""

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        """Scalar sums over the batch (counts, correct, summed loss); the engine adds them up over
        batches and ranks."""

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """The summed ``eval_step`` outputs -> ``{name: value}`` for each of ``metric_names``."""

    def batch_size_of(self, batch: Any) -> int:
        """The number of samples in ``batch``."""

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        """Task-specific PNGs for the report, written under ``run_dir``: ``[(title, path)]``."""

    def on_step(self, model: nn.Module, share: float) -> None:
        """Optional. Called before every training step with the share of training done (0 to 1: steps or the
        ``max_minutes`` budget, whichever is further along), for schedules inside the model or loss
        (Rank-DETR's late high-order matching cost)."""
