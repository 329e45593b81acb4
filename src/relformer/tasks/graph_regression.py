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
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.zinc import build_zinc, with_encodings
from ..interop import pyg as _pyg_baselines  # noqa: F401  (registers the pyg_gps_* model variants)
from ..models import model_config
from ..train.recipe import ModelSection, OptimSection, Recipe, RecipeError
from .base import TaskBase
from .registry import register_recipe, register_task
from .splits import ValTest, train_subset

__all__ = ["GraphRegressionTask", "GraphRegressionRecipe", "ZincSection", "ValTest"]


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
class GraphRegressionTask(TaskBase):
    """ZINC-like penalized-logP regression; see :class:`relformer.tasks.Task` for the protocol."""

    recipe_type = GraphRegressionRecipe
    main_metric, mode = "val_mae", "min"
    log_names = ("mae",)
    metric_names = ("val_mae", "test_mae", "val_graphs", "test_graphs")

    def __init__(self, recipe: GraphRegressionRecipe) -> None:
        self.recipe = recipe
        self._splits: dict | None = None

    @property
    def eval_description(self) -> str:
        d = self.recipe.data
        sizes = "1,000 molecules each" if d.limit is None else f"{d.limit[1]:,} and {d.limit[2]:,} molecules"
        return (f"the val and test splits of the ZINC-like {d.variant} dataset ({sizes}, all of them): val_mae "
                "picks the best checkpoint, test_mae is reported beside it")

    def build_model(self) -> nn.Module:
        return self.recipe.model.build()

    def splits(self) -> dict:
        """The three splits with the encodings the model needs (built and cached once)."""
        if self._splits is None:
            cfg = model_config(self.recipe.model.name, **self.recipe.model.options)
            d = self.recipe.data
            data = build_zinc(d.variant, d.root, limit=d.limit)
            self._splits = with_encodings(data, lap_k=getattr(cfg, "lap_k", 0), rwse_k=getattr(cfg, "rwse_k", 0),
                                          spd=False)
        return self._splits

    def train_dataset(self) -> Dataset:
        return train_subset(self.splits()["train"], self.recipe.data.train_subset, "graphs")

    def eval_dataset(self) -> Dataset:
        return ValTest(self.splits()["val"], self.splits()["test"])

    def collate(self, batch):
        return batch  # __getitems__ already packs the graphs

    def augment(self, batch, generator: torch.Generator):
        return batch  # LapPE signs are flipped inside the model while training

    def batch_size_of(self, batch) -> int:
        if isinstance(batch, tuple):
            return sum(b.num_graphs for b in batch if b is not None)
        return batch.num_graphs

    @staticmethod
    def _predict(model: nn.Module, batch) -> Tensor:
        return model(batch).logits.float().squeeze(-1)  # (G,)

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        loss = F.l1_loss(self._predict(model, batch), batch.y.float())
        return loss, {"mae": loss.detach()}

    def eval_step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        out = {}
        for name, part in zip(("val", "test"), batch):
            err = (self._predict(model, part) - part.y.float()).abs().sum() if part is not None else torch.zeros(())
            out[f"{name}_abs"] = err
            out[f"{name}_count"] = torch.tensor(float(part.num_graphs if part is not None else 0))
        return out

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"val_mae": sums["val_abs"] / max(sums["val_count"], 1), "val_graphs": sums["val_count"],
                "test_mae": sums["test_abs"] / max(sums["test_count"], 1), "test_graphs": sums["test_count"]}

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        """Predicted vs true penalized logP on the test split."""
        from matplotlib.figure import Figure  # optional, heavy: only when a report is written

        test = self.splits()["test"]
        model.eval()
        with torch.no_grad():
            batch = test.__getitems__(list(range(len(test))))
            pred = self._predict(model, batch).cpu()
        y = batch.y.float()
        fig = Figure(figsize=(4.5, 4.5))
        ax = fig.add_subplot()
        ax.scatter(y, pred, s=4, alpha=0.5)
        lo, hi = float(min(y.min(), pred.min())), float(max(y.max(), pred.max()))
        ax.plot([lo, hi], [lo, hi], color="k", lw=0.8)
        ax.set(xlabel="true penalized logP", ylabel="predicted",
               title=f"test, MAE {float((pred - y).abs().mean()):.3f}")
        path = run_dir / "plots" / "test_predictions.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        return [("Predicted vs true on the test split", path)]


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
