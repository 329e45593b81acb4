"""The base class for your own task: write the data, the model, the loss and the metrics; the
rest has defaults.

A task tells the engine (:mod:`relformer.train.engine`) everything it must know about one job;
the full contract is :class:`relformer.train.task.Task`. Subclass :class:`TaskBase`, give it a
``recipe_type`` (a :class:`~relformer.train.recipe.Recipe` subclass with your own sections),
register both, and train it from Python or ``relformer train --import my_module recipe.yaml``::

    @register_task("my_regression")
    class MyTask(TaskBase):
        recipe_type = MyRecipe
        main_metric, mode = "mse", "min"
        metric_names = ("mse",)

        def build_model(self): return nn.Linear(4, 1)
        def train_dataset(self): return TensorDataset(x, y)
        def eval_dataset(self): return TensorDataset(x_val, y_val)
        def loss(self, model, batch):
            x, y = batch
            loss = F.mse_loss(model(x).squeeze(-1), y)
            return loss, {}
        def eval_step(self, model, batch):
            x, y = batch
            return {"sq": ((model(x).squeeze(-1) - y) ** 2).sum(), "count": torch.tensor(float(len(y)))}
        def metrics(self, sums): return {"mse": sums["sq"] / sums["count"]}

Defaults: :meth:`collate` stacks samples with torch's ``default_collate`` (a dataset whose
``__getitems__`` already returns a batch is passed through), :meth:`augment` changes nothing,
:meth:`batch_size_of` is the length of the batch's first tensor, :meth:`report_figures` adds
none, ``log_names`` is empty, ``eval_description`` names the class.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, default_collate

from ..train.recipe import Recipe

__all__ = ["TaskBase", "batch_size_of"]


def batch_size_of(batch: Any) -> int:
    """The number of samples of a batch: its ``num_graphs``, or the length of its first tensor
    (searched through tuples, lists and dicts)."""
    if hasattr(batch, "num_graphs"):
        return int(batch.num_graphs)
    if isinstance(batch, Tensor):
        return len(batch)
    parts = batch.values() if isinstance(batch, dict) else batch if isinstance(batch, (list, tuple)) else ()
    for part in parts:
        try:
            return batch_size_of(part)
        except TypeError:
            continue
    raise TypeError(f"cannot tell the batch size of a {type(batch).__name__}; override Task.batch_size_of")


class TaskBase:
    """A :class:`relformer.train.task.Task` with defaults. Subclasses set ``recipe_type``,
    ``main_metric``, ``mode``, ``metric_names`` and implement ``build_model``, ``train_dataset``,
    ``eval_dataset``, ``loss``, ``eval_step`` and ``metrics``."""

    recipe_type: type = Recipe
    main_metric: str = "loss"
    mode: Literal["max", "min"] = "min"
    log_names: tuple[str, ...] = ()
    metric_names: tuple[str, ...] = ()

    def __init__(self, recipe: Recipe) -> None:
        if not isinstance(recipe, self.recipe_type):
            raise TypeError(f"{type(self).__name__} needs a {self.recipe_type.__name__}, got {type(recipe).__name__}")
        self.recipe = recipe

    @property
    def eval_description(self) -> str:
        return f"the eval set of {type(self).__name__}"

    def build_model(self) -> nn.Module:
        """The recipe's model (``create_model(model.name, **model.options)``)."""
        return self.recipe.model.build()

    def train_dataset(self) -> Dataset:
        raise NotImplementedError(f"{type(self).__name__}.train_dataset")

    def eval_dataset(self) -> Dataset:
        raise NotImplementedError(f"{type(self).__name__}.eval_dataset")

    def collate(self, samples: Any) -> Any:
        """A list of samples -> ``default_collate``; anything else (a batch that ``__getitems__``
        built already) unchanged."""
        return default_collate(samples) if isinstance(samples, list) else samples

    def augment(self, batch: Any, generator: torch.Generator) -> Any:
        return batch

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        raise NotImplementedError(f"{type(self).__name__}.loss")

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        raise NotImplementedError(f"{type(self).__name__}.eval_step")

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        raise NotImplementedError(f"{type(self).__name__}.metrics")

    def batch_size_of(self, batch: Any) -> int:
        return batch_size_of(batch)

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        return []

    def on_step(self, model: nn.Module, share: float) -> None:
        """Hand the share of training done to the model's ``set_training_progress``, if it has one."""
        hook = getattr(model, "set_training_progress", None)
        if callable(hook):
            hook(share)
