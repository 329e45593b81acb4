"""A tiny synthetic task for the kill harness: a 2-layer MLP regressing a fixed linear map, 64
training samples, batches of 8, a few milliseconds an epoch, with dropout so that the per-step
reseeding matters. Importing this module registers the task ``tiny`` and the recipe ``tiny-kill``."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from relformer.tasks import register_recipe, register_task
from relformer.tasks.classification import ImageBatches
from relformer.train.recipe import OptimSection, Recipe


@dataclass
class TinySection:
    train: int = 64
    eval: int = 32


@dataclass
class TinyRecipe(Recipe):
    task: Literal["tiny"] = "tiny"
    data: TinySection = field(default_factory=TinySection)


def _samples(n: int, seed: int) -> ImageBatches:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    w = torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    return ImageBatches(x, (x @ w).squeeze(-1) + 0.1 * torch.randn(n, generator=g))


@register_task("tiny")
class TinyTask:
    recipe_type = TinyRecipe
    main_metric, mode = "mse", "min"
    log_names = ("mse",)
    metric_names = ("mse", "samples")
    eval_description = "32 fixed synthetic samples"

    def __init__(self, recipe: TinyRecipe) -> None:
        self.recipe = recipe

    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 1))

    def train_dataset(self) -> ImageBatches:
        return _samples(self.recipe.data.train, 1)

    def eval_dataset(self) -> ImageBatches:
        return _samples(self.recipe.data.eval, 2)

    def collate(self, batch):
        return batch

    def augment(self, batch, generator: torch.Generator):
        x, y = batch
        return x + 0.01 * torch.randn(x.shape, generator=generator), y

    def batch_size_of(self, batch) -> int:
        return len(batch[1])

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        x, y = batch
        loss = F.mse_loss(model(x).squeeze(-1), y)
        return loss, {"mse": loss.detach()}

    def eval_step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        x, y = batch
        return {"count": torch.tensor(float(len(y))), "sq": ((model(x).squeeze(-1) - y) ** 2).sum()}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        return {"mse": sums["sq"] / sums["count"], "samples": sums["count"]}

    def report_figures(self, model: nn.Module, run_dir: Path) -> list:
        return []


@register_recipe("tiny-kill")
def tiny_kill() -> TinyRecipe:
    """The kill harness's run: 3 epochs of 8 steps, a checkpoint every 3 steps, best on eval MSE."""
    return TinyRecipe(name="tiny-kill", optim=OptimSection(lr=3e-2, warmup_epochs=0.5, min_lr=1e-4), epochs=3,
                      batch_size=8, eval_batch_size=16, checkpoint_every=3, keep_checkpoints=2, log_every=2,
                      device="cpu", deterministic=True)
