"""Graph regression on the ZINC-like dataset (:mod:`relformer.data.zinc`), and its recipes.

The model trains on the train split with the L1 loss (the ZINC benchmark's metric is the mean
absolute error). Every epoch the engine evaluates the val AND test splits together: ``val_mae``
picks the best checkpoint, ``test_mae`` is reported beside it, so the test error of the best-val
epoch is read off the report without a second pass. The graphs and their encodings (LapPE,
RWSE) are built once and cached by :func:`relformer.data.zinc.build_zinc` /
:func:`~relformer.data.zinc.with_encodings`, sized from the model's config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import nn
from torch.utils.data import Dataset

from ..data.zinc import build_zinc, with_encodings
from ..interop import pyg as _pyg_baselines  # noqa: F401  (registers the pyg_gps_* model variants)
from ..models import model_config
from ..train.recipe import ModelSection, OptimSection, Recipe, RecipeError
from .graph import GraphTask
from .registry import register_recipe, register_task
from .splits import train_subset

__all__ = ["GraphRegressionTask", "GraphRegressionRecipe", "ZincSection"]


@dataclass
class ZincSection:
    """``variant``: ``"12k"`` (10k/1k/1k) or ``"100k"``; ``root``: the cache root (None: the default);
    ``train_subset``: the first N training graphs only (None = all); ``limit``: build other
    ``(train, val, test)`` sizes instead (smoke tests; not the documented dataset)."""

    variant: Literal["12k", "100k"] = "12k"
    root: str | None = None
    train_subset: int | None = None
    limit: tuple[int, int, int] | None = None


@dataclass
class GraphRegressionRecipe(Recipe):
    task: Literal["graph_regression"] = "graph_regression"
    data: ZincSection = field(default_factory=ZincSection)

    def validate(self) -> None:
        super().validate()
        if self.data.variant not in ("12k", "100k"):
            raise RecipeError(f"data.variant must be '12k' or '100k', got {self.data.variant!r}")
        if self.data.train_subset is not None and self.data.train_subset < 1:
            raise RecipeError(f"data.train_subset must be >= 1 or null (all), got {self.data.train_subset}")


@register_task("graph_regression")
class GraphRegressionTask(GraphTask):
    """ZINC-like penalized-logP regression: the generic :class:`~relformer.tasks.graph.GraphTask` on
    the built-in dataset, evaluated on its val and test splits (``val_mae`` picks the checkpoint)."""

    recipe_type = GraphRegressionRecipe
    eval_splits = ("val", "test")
    target_name = "penalized logP"

    def graph_target(self) -> tuple[str, str, int | None]:
        return "regression", "l1", None

    @property
    def eval_description(self) -> str:
        d = self.recipe.data
        sizes = "1,000 molecules each" if d.limit is None else f"{d.limit[1]:,} and {d.limit[2]:,} molecules"
        return (f"the val and test splits of the ZINC-like {d.variant} dataset ({sizes}, all of them): val_mae "
                "picks the best checkpoint, test_mae is reported beside it")

    def build_model(self) -> nn.Module:
        return self.recipe.model.build()  # the variants are sized for ZINC's atom and bond types

    def build_splits(self) -> tuple[Dataset, dict[str, Dataset]]:
        """The three splits with the encodings the model needs (built and cached once)."""
        cfg = model_config(self.recipe.model.name, **self.recipe.model.options)
        d = self.recipe.data
        data = with_encodings(build_zinc(d.variant, d.root, limit=d.limit), lap_k=getattr(cfg, "lap_k", 0),
                              rwse_k=getattr(cfg, "rwse_k", 0), spd=False)
        return train_subset(data["train"], d.train_subset, "graphs"), {"val": data["val"], "test": data["test"]}

    def augment(self, batch, generator: torch.Generator):
        return batch  # LapPE signs are flipped inside the model while training


# ---------------------------------------------------------------------------------------------
# Recipes: 50 epochs fit a 30-minute budget on 2 CPU cores for gps-zinc, pyg-gps-zinc and gt-zinc
# (bench/results/graph.md has the measured wall times); tune with --set
# ---------------------------------------------------------------------------------------------
def _zinc(name: str, model: str, lr: float = 1e-3, epochs: int = 50, **options) -> GraphRegressionRecipe:
    return GraphRegressionRecipe(
        name=name, model=ModelSection(model, options),
        optim=OptimSection(lr=lr, min_lr=1e-5, weight_decay=1e-5, warmup_epochs=1.0, clip_grad=5.0),
        data=ZincSection(), epochs=epochs, batch_size=32, eval_batch_size=250, checkpoint_every=500, log_every=50)


@register_recipe("gps-zinc")
def gps_zinc() -> GraphRegressionRecipe:
    """GraphGPS's ZINC model (GINE + Transformer, 10 layers of 64, RWSE 20) on ZINC-like 12k, L1 loss."""
    return _zinc("gps-zinc", "gps_zinc")


@register_recipe("pyg-gps-zinc")
def pyg_gps_zinc() -> GraphRegressionRecipe:
    """The baseline of gps-zinc: the same model, weights at init and schedule, with PyG's GPSConv layers
    (model variant ``pyg_gps_zinc``, registered by :mod:`relformer.interop.pyg`)."""
    return _zinc("pyg-gps-zinc", "pyg_gps_zinc")


@register_recipe("gt-zinc")
def gt_zinc() -> GraphRegressionRecipe:
    """Dwivedi & Bresson's Graph Transformer (10 layers of 64, LapPE 8, edge features) on ZINC-like 12k."""
    return _zinc("gt-zinc", "gt_zinc")


@register_recipe("graphormer-zinc")
def graphormer_zinc() -> GraphRegressionRecipe:
    """Graphormer-slim (12 layers of 80) on ZINC-like 12k, L1 loss."""
    return _zinc("graphormer-zinc", "graphormer_zinc", lr=2e-4)
