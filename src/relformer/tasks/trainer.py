"""The Python trainer: train a model you hold on data you hold, or a task object, in one call.

    trainer = Trainer(model=net, train_data=(x, y), eval_data=(x_val, y_val),
                      loss=lambda model, batch: F.cross_entropy(model(batch[0]), batch[1]),
                      metrics={"accuracy": lambda model, batch: (model(batch[0]).argmax(-1) == batch[1]).float()},
                      epochs=3, batch_size=32, lr=1e-3, out_dir="runs/mine")
    net = trainer.fit()          # the trained model; trainer.run_dir holds the run folder

It builds a :class:`ObjectTask` (or takes ``task=``, a task object, a :class:`Recipe` or a
recipe name) and runs it with the engine (:class:`relformer.train.engine.Engine`): the same
loop, checkpoints, logs, report and resume as ``relformer train``. Keyword options are recipe
fields (``epochs``, ``batch_size``, ``max_steps``, ``accumulate_grad_batches``, ``init_from``,
``early_stopping={"patience": 3}``, ``optim={...}``, ``seed``, ``device``, ...); ``lr`` is a
shortcut for ``optim={"lr": ...}``.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Literal, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..train.callbacks import Callback
from ..train.distributed import barrier, shutdown
from ..train.engine import Engine
from ..train.recipe import ModelSection, Recipe, recipe_from_dict, recipe_to_dict
from .base import TaskBase
from .registry import build_task, resolve_recipe

__all__ = ["Trainer", "ObjectTask", "ObjectRecipe", "TensorBatches"]

LossFn = Callable[[nn.Module, Any], "Tensor | tuple[Tensor, dict[str, Tensor]]"]
MetricFn = Callable[[nn.Module, Any], Tensor]


class TensorBatches(Dataset):
    """Tensors of equal length ``N`` (e.g. ``images, labels``); ``__getitems__`` indexes them all
    at once, so a batch is a tuple of tensors."""

    def __init__(self, *tensors: Tensor) -> None:
        if not tensors or not all(isinstance(t, Tensor) for t in tensors):
            raise TypeError("TensorBatches needs one or more tensors")
        if len({len(t) for t in tensors}) != 1:
            raise ValueError(f"the tensors differ in length: {[len(t) for t in tensors]}")
        self.tensors = tensors

    def __len__(self) -> int:
        return len(self.tensors[0])

    def __getitem__(self, index: int) -> tuple[Tensor, ...]:
        return tuple(t[index] for t in self.tensors)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.tensors)


def as_dataset(data: Any, name: str) -> Dataset:
    """A map-style dataset from a Dataset, a tuple of equal-length tensors, or a list of samples."""
    if isinstance(data, tuple) and data and all(isinstance(t, Tensor) for t in data):
        return TensorBatches(*data)
    if isinstance(data, Tensor):
        return TensorBatches(data)
    if hasattr(data, "__getitem__") and hasattr(data, "__len__"):
        return data
    raise TypeError(f"{name} must be a Dataset, a tuple of tensors or a list of samples, got {type(data).__name__}")


@dataclass
class ObjectRecipe(Recipe):
    """The recipe of a run over Python objects (its model and data are not in the YAML)."""

    task: str = "python"


class ObjectTask(TaskBase):
    """A task from objects: ``loss(model, batch)`` returns the scalar loss (or ``(loss, logs)``);
    each ``metrics[name](model, batch)`` a batch mean (or per-sample values, averaged). Evaluation reports the batch-size-weighted
    mean of ``loss`` and of every metric over the whole eval set."""

    recipe_type = ObjectRecipe

    def __init__(self, recipe: ObjectRecipe, *, model: nn.Module, train_data: Any, eval_data: Any, loss: LossFn,
                 metrics: Mapping[str, MetricFn] | None = None, main_metric: str | None = None,
                 mode: Literal["max", "min"] | None = None, collate: Callable | None = None) -> None:
        super().__init__(recipe)
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not callable(loss):
            raise TypeError(f"loss must be a callable (model, batch) -> loss, got {type(loss).__name__}")
        self.metric_fns = dict(metrics or {})
        self.model, self.loss_fn, self.collate_fn = model, loss, collate
        self.train_set, self.eval_set = as_dataset(train_data, "train_data"), as_dataset(eval_data, "eval_data")
        self.metric_names = ("loss", *self.metric_fns)
        self.main_metric = main_metric or next(iter(self.metric_fns), "loss")
        if self.main_metric not in self.metric_names:
            raise ValueError(f"main_metric {self.main_metric!r} is not among the metrics {self.metric_names}")
        self.mode = mode or ("min" if self.main_metric == "loss" else "max")

    @property
    def eval_description(self) -> str:
        return f"the {len(self.eval_set):,} samples of eval_data"

    def build_model(self) -> nn.Module:
        return self.model

    def train_dataset(self) -> Dataset:
        return self.train_set

    def eval_dataset(self) -> Dataset:
        return self.eval_set

    def collate(self, samples: Any) -> Any:
        return self.collate_fn(samples) if self.collate_fn is not None else super().collate(samples)

    def loss(self, model: nn.Module, batch: Any) -> tuple[Tensor, dict[str, Tensor]]:
        out = self.loss_fn(model, batch)
        return out if isinstance(out, tuple) else (out, {})

    def eval_step(self, model: nn.Module, batch: Any) -> dict[str, Tensor]:
        n = float(self.batch_size_of(batch))
        sums = {"count": torch.tensor(n), "loss": self.loss(model, batch)[0].detach().float() * n}
        for name, fn in self.metric_fns.items():
            sums[name] = torch.as_tensor(fn(model, batch)).detach().float().mean() * n
        return sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {name: sums[name] / sums["count"] for name in self.metric_names}


class _WithModel:
    """A task object whose ``build_model`` returns a given model (everything else is the task's)."""

    def __init__(self, task: Any, model: nn.Module) -> None:
        self._task, self._model = task, model

    def __getattr__(self, name: str) -> Any:
        return getattr(self._task, name)

    def build_model(self) -> nn.Module:
        return self._model


def _merge(base: dict, options: Mapping[str, Any]) -> dict:
    """``base`` with ``options`` applied; a mapping merges into a mapping (``optim={"lr": 1e-3}``)."""
    out = dict(base)
    for key, value in options.items():
        out[key] = _merge(out[key], value) if isinstance(value, Mapping) and isinstance(out.get(key), dict) else value
    return out


class Trainer:
    """Train ``model`` on ``train_data`` with ``loss`` (and ``metrics``), or a ``task``; see the
    module's docstring. With a ``task``, ``model`` is a module to train instead of the task's, or
    a mapping: the recipe's model section (``{"options": {"depth": 2}}``). ``callbacks``: :class:`~relformer.train.callbacks.Callback` objects;
    ``resume``: continue the run in ``out_dir``. :meth:`fit` returns the trained model."""

    def __init__(self, model: nn.Module | None = None, task: Any = None, *, train_data: Any = None,
                 eval_data: Any = None, loss: LossFn | None = None, metrics: Mapping[str, MetricFn] | None = None,
                 main_metric: str | None = None, mode: Literal["max", "min"] | None = None,
                 collate: Callable | None = None, callbacks: Sequence[Callback] = (), resume: bool = False,
                 **options: Any) -> None:
        if isinstance(model, Mapping):  # the recipe's model section (name / options), not a module
            options["model"], model = model, None
        if model is not None and not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module (or a recipe model section), got {type(model).__name__}")
        if "lr" in options:
            options["optim"] = {**dict(options.get("optim") or {}), "lr": options.pop("lr")}
        if task is None:
            missing = [n for n, v in (("model", model), ("train_data", train_data), ("eval_data", eval_data),
                                      ("loss", loss)) if v is None]
            if missing:
                raise TypeError(f"Trainer needs task=, or model=, train_data=, eval_data= and loss= "
                                f"(missing {', '.join(missing)})")
            base = recipe_to_dict(ObjectRecipe(name="python", model=ModelSection(f"python:{type(model).__name__}")))
            recipe = recipe_from_dict(_merge(base, options), ObjectRecipe)
            task = ObjectTask(recipe, model=model, train_data=train_data, eval_data=eval_data, loss=loss,
                              metrics=metrics, main_metric=main_metric, mode=mode, collate=collate)
        else:
            task = self._task(task, options)
            if model is not None:
                task = _WithModel(task, model)
        self.task, self.callbacks, self.resume = task, list(callbacks), resume
        self.engine: Engine | None = None

    @staticmethod
    def _task(task: Any, options: Mapping[str, Any]) -> Any:
        """A task object from a task object, a Recipe or a recipe name / YAML path, with ``options``."""
        if isinstance(task, str):
            task = resolve_recipe(task)
        if isinstance(task, Recipe):
            return build_task(recipe_from_dict(_merge(recipe_to_dict(task), options), type(task)))
        if not isinstance(getattr(task, "recipe", None), Recipe):
            raise TypeError(f"task must be a task object (with a .recipe), a Recipe or a recipe name, "
                            f"got {type(task).__name__}")
        if options:
            task = copy.copy(task)
            task.recipe = recipe_from_dict(_merge(recipe_to_dict(task.recipe), options), type(task.recipe))
        return task

    @property
    def recipe(self) -> Recipe:
        return self.task.recipe

    @property
    def run_dir(self) -> Path:
        """The run folder (recipe.yaml, metrics.csv, checkpoints/, report.md)."""
        return self.recipe.run_dir()

    @property
    def best_checkpoint(self) -> Path:
        return self.run_dir / "checkpoints" / "best"

    def fit(self) -> nn.Module:
        """Train; returns the model with its final weights (the best are in :attr:`best_checkpoint`)."""
        try:
            self.engine = Engine(self.task, resume=self.resume, callbacks=self.callbacks)
            self.engine.fit()
            barrier()
            return self.engine.model
        finally:
            shutdown()

