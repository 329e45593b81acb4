"""The engine's small pieces: optimizer groups, the LR schedule, per-step seeds, device moves,
running sums, and the index batches of an epoch (:mod:`relformer.train.engine` uses them)."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DistributedSampler

from .distributed import all_reduce_sum
from .recipe import RecipeError

__all__ = ["param_groups", "WarmupCosine", "step_seed", "move_to", "configure_determinism", "RUN_ENTRIES", "Sums",
           "epoch_batches", "eval_batches", "prepare_folder"]

NO_DECAY_KEYWORDS = ("token", "pos_embed", "position", "bias_table", "norm")
#: what a run writes in its folder; anything else there is the user's and is never touched
RUN_ENTRIES = frozenset({"recipe.yaml", "metrics.csv", "report.md", "tb", "plots", "checkpoints"})


def step_seed(seed: int, step: int, rank: int, stream: int = 0) -> int:
    """A well-mixed 63-bit seed for ``(seed, step, rank, stream)``."""
    words = np.random.SeedSequence([seed, step, rank, stream]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def configure_determinism(enabled: bool) -> None:
    """Deterministic kernels (errors on ops that have none) and cuDNN without autotuning."""
    if enabled:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(enabled)
    torch.backends.cudnn.deterministic = enabled
    torch.backends.cudnn.benchmark = False


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed matrices, and undecayed biases, norms, 1-D parameters, tokens and
    position tables (plus any name ``model.no_weight_decay()`` returns)."""
    extra = set(model.no_weight_decay()) if hasattr(model, "no_weight_decay") else set()
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        skip = param.ndim <= 1 or name.endswith(".bias") or name in extra or any(k in name for k in NO_DECAY_KEYWORDS)
        (no_decay if skip else decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


class WarmupCosine:
    """LambdaLR factor: linear warmup ``(step + 1) / warmup`` then cosine from 1 to ``min_ratio``.
    ``time_fraction`` (set by the engine under a wall-clock budget: the share of it spent) moves the
    cosine on when time runs out before the steps do; it is part of the scheduler's state."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio
        self.time_fraction = 0.0

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        progress = max(progress, min(1.0, self.time_fraction))
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def move_to(batch: Any, device: torch.device) -> Any:
    """Tensors (inside tuples, lists, dicts, or objects with ``.to``) moved to ``device``."""
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to(b, device) for b in batch)
    if isinstance(batch, dict):
        return {k: move_to(v, device) for k, v in batch.items()}
    return batch.to(device) if callable(getattr(batch, "to", None)) else batch


class Sums:
    """Running float64 sums on the device (no host sync per step). :meth:`state` is their total
    over the ranks (for the checkpoint), which one rank alone loads back on resume."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.values = device, {}

    def add(self, name: str, value: Tensor | float) -> None:
        value = torch.as_tensor(value, device=self.device).detach().to(torch.float64)
        self.values[name] = self.values[name] + value if name in self.values else value

    def state(self) -> dict[str, float]:
        return {k: v.item() for k, v in all_reduce_sum(self.values).items()}

    def load(self, state: dict[str, float]) -> None:
        self.values = {k: torch.tensor(v, dtype=torch.float64, device=self.device) for k, v in state.items()}

    def reduce(self) -> dict[str, float]:
        """The sums over all ranks, as floats, and reset."""
        out = {k: v.item() for k, v in all_reduce_sum(self.values).items()}
        self.values = {}
        return out


def epoch_batches(sampler: DistributedSampler, epoch: int, batch_size: int) -> list[list[int]]:
    """This rank's index batches for ``epoch`` (full batches only)."""
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [indices[i:i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]


def eval_batches(n: int, rank: int, world_size: int, batch_size: int) -> list[list[int]]:
    """This rank's contiguous shard of ``range(n)`` (shards cover it once: no padding, no repeats)."""
    start, stop = n * rank // world_size, n * (rank + 1) // world_size
    return [list(range(i, min(i + batch_size, stop))) for i in range(start, stop, batch_size)]


def prepare_folder(run_dir: Path, resume: bool) -> None:
    """Create the run folder; refuse a file, an uncreatable path, or (fresh) somebody else's folder."""
    if run_dir.exists() and not run_dir.is_dir():
        raise RecipeError(f"out_dir {run_dir} is a file, not a folder")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecipeError(f"out_dir {run_dir}: cannot create the run folder ({e.strerror or e})") from None
    entries = {p.name for p in run_dir.iterdir()}
    if not resume and entries and not entries & RUN_ENTRIES:
        raise RecipeError(f"out_dir {run_dir} is not empty and is not a run folder (it holds "
                          f"{', '.join(sorted(entries)[:3])}{', ...' if len(entries) > 3 else ''}); pick a new or "
                          "empty folder")
