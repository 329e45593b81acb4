"""The generic training loop: ``train(task)`` for any :class:`relformer.train.task.Task` object.

The engine is handed a built task (``relformer.tasks.build_task(recipe)``, or
``relformer.tasks.train(recipe)`` for both steps) and reads the recipe from ``task.recipe``; it
never looks a task up by name.

AdamW (no decay on biases, norms, 1-D parameters, tokens and position tables), linear warmup
then cosine per step, gradient clipping, optional bf16 autocast and ``torch.compile``, a full
evaluation every epoch, best-checkpoint tracking on the task's main metric, DDP under torchrun.

Reproducibility: every random number is a function of ``(seed, epoch, step, rank)``. The sample
order is a :class:`DistributedSampler` (also with one process, so one and two processes see the
same global batches) with ``set_epoch(epoch)``; torch's global RNG (dropout, drop-path) is
reseeded before every step from ``(seed, global step, rank)`` and augmentation draws from a
generator seeded the same way. A resumed run skips the batches its checkpoint had done, so
killing a run and resuming it gives bit-identical weights.

The run folder: a fresh run writes only its own entries (:data:`RUN_ENTRIES`) and refuses a
non-empty folder that holds none of them (somebody else's folder); ``--resume`` continues from the
newest intact checkpoint (:meth:`~relformer.train.checkpoint.CheckpointDir.resume_point`), refuses
a recipe that differs from the one stored in that checkpoint, and repairs ``best/``.
"""
from __future__ import annotations

import dataclasses
import math
import os
import platform
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..utils import atomic_write_text
from .checkpoint import CheckpointDir, CheckpointError, read_checkpoint, read_state
from .distributed import Dist, all_reduce_sum, barrier, init_distributed, shutdown
from .logger import RunLogger
from .recipe import Recipe, RecipeError, recipe_diff, recipe_from_dict, recipe_to_dict, recipe_to_yaml
from .report import write_report
from .task import Task

__all__ = ["train", "Trainer", "Progress", "param_groups", "WarmupCosine", "step_seed", "move_to",
           "configure_determinism", "RUN_ENTRIES"]

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
    """LambdaLR factor: linear warmup ``(step + 1) / warmup`` then cosine from 1 to ``min_ratio``."""

    def __init__(self, warmup_steps: int, total_steps: int, min_ratio: float) -> None:
        self.warmup_steps, self.total_steps, self.min_ratio = warmup_steps, total_steps, min_ratio

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
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


class _Sums:
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


@dataclass
class Progress:
    """Where a run is; stored in ``trainer_state.json``. ``epoch`` counts finished epochs."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0
    best_metric: float | None = None
    best_epoch: int | None = None
    best_step: int | None = None
    history: list[dict] = field(default_factory=list)
    log_sums: dict[str, float] = field(default_factory=dict)
    epoch_sums: dict[str, float] = field(default_factory=dict)
    train_seconds: float = 0.0
    train_samples: int = 0
    wall_seconds: float = 0.0


def _epoch_batches(sampler: DistributedSampler, epoch: int, batch_size: int) -> list[list[int]]:
    """This rank's index batches for ``epoch`` (full batches only)."""
    sampler.set_epoch(epoch)
    indices = list(sampler)
    return [indices[i:i + batch_size] for i in range(0, len(indices) - batch_size + 1, batch_size)]


def _eval_batches(n: int, rank: int, world_size: int, batch_size: int) -> list[list[int]]:
    """This rank's contiguous shard of ``range(n)`` (shards cover it once: no padding, no repeats)."""
    start, stop = n * rank // world_size, n * (rank + 1) // world_size
    return [list(range(i, min(i + batch_size, stop))) for i in range(start, stop, batch_size)]


def _prepare_folder(run_dir: Path, resume: bool) -> None:
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


class Trainer:
    """One run of ``task.recipe``: build everything in the constructor, then :meth:`fit`."""

    def __init__(self, task: Task, *, resume: bool = False) -> None:
        recipe = getattr(task, "recipe", None)
        if not isinstance(recipe, Recipe):
            raise TypeError(f"Trainer needs a task object with a .recipe (a Recipe), got {type(task).__name__}; "
                            "relformer.tasks.build_task(recipe) builds one")
        recipe.validate()
        self.task, self.recipe, r = task, recipe, recipe
        self.dist: Dist = init_distributed(r.device)
        self.device = self.dist.device
        if r.batch_size % self.dist.world_size:
            raise RecipeError(f"batch_size = {r.batch_size} (global) is not divisible by the "
                              f"{self.dist.world_size} processes")
        self.per_rank_batch = r.batch_size // self.dist.world_size
        configure_determinism(r.deterministic)
        torch.manual_seed(r.seed)
        self.model: nn.Module = self.task.build_model().to(self.device)  # the plain module: saved and loaded
        self.run_dir = r.run_dir()
        self.checkpoints = CheckpointDir(self.run_dir / "checkpoints", keep=r.keep_checkpoints)
        resume_from = self._check_run_dir(resume)
        self._build_data()
        self._build_optimizer()
        self.progress = Progress()
        if resume_from is not None:
            self.progress = Progress(**read_checkpoint(resume_from, self.model, self.optimizer, self.scheduler))
            if self.dist.is_main:
                self._repair_best()
        self._log_sums, self._epoch_sums = _Sums(self.device), _Sums(self.device)
        if self.dist.is_main:  # the saved sums are totals over the ranks: one rank carries them on
            self._log_sums.load(self.progress.log_sums)
            self._epoch_sums.load(self.progress.epoch_sums)
        self._wall_start, self._resumed_wall = time.perf_counter(), self.progress.wall_seconds
        self._last_lr: float = self.optimizer.param_groups[0]["lr"]
        self._wrap_model()

        if self.dist.is_main:
            atomic_write_text(self.run_dir / "recipe.yaml", recipe_to_yaml(self.recipe))
        columns = ["lr", "samples_per_s", "train_loss", *(f"train_{k}" for k in self.task.log_names),
                   *(f"eval_{k}" for k in self.task.metric_names)]
        self.logger = RunLogger(self.run_dir, columns, enabled=self.dist.is_main, total_steps=self.total_steps,
                                resume_step=None if resume_from is None else self.progress.global_step)
        if resume_from is not None:
            self.logger.message(f"resuming from {resume_from} (epoch {self.progress.epoch + 1}, "
                                f"step {self.progress.global_step})")

    # -- setup helpers ---------------------------------------------------------------------------
    def _check_run_dir(self, resume: bool) -> Path | None:
        """The checkpoint to resume from; errors for a resume without one, a changed recipe, or a
        fresh start that would clobber a run."""
        if self.dist.is_main:
            _prepare_folder(self.run_dir, resume)
            self.checkpoints.clean()  # hidden leftovers only: the other ranks may read meanwhile
        if not resume:
            if self.checkpoints.has_checkpoints():
                raise RecipeError(f"{self.run_dir} already holds checkpoints; pass --resume to continue that run, "
                                  "or --out DIR for a new one")
            return None
        try:
            latest = self.checkpoints.resume_point()
        except CheckpointError as e:
            raise RecipeError(f"--resume: {e}") from None
        if latest is None:
            raise RecipeError(f"--resume: no checkpoint in {self.checkpoints.root} (no 'latest' file)")
        saved = read_state(latest).get("recipe")
        if not isinstance(saved, dict):
            raise RecipeError(f"--resume: {latest} does not record its recipe")
        differ = [k for k in recipe_diff(recipe_from_dict(saved, type(self.recipe)), self.recipe) if k != "out_dir"]
        if differ:
            raise RecipeError(f"--resume: the recipe differs from the one {latest} was trained with in "
                              f"{', '.join(differ)}; a resumed run must use the recipe it started with")
        return latest

    def _repair_best(self) -> None:
        """``best/`` made the copy of the step the resumed state calls best (a kill can leave it behind)."""
        try:
            repaired = self.checkpoints.repair_best(self.progress.best_step)
        except CheckpointError as e:
            warnings.warn(f"cannot repair {self.checkpoints.best}: {e}", stacklevel=2)
            return
        if repaired:
            warnings.warn(repaired, stacklevel=2)

    def _build_data(self) -> None:
        """Datasets, this rank's sampler (full global batches only) and the step counts."""
        r, world = self.recipe, self.dist.world_size
        self.train_set: Dataset = self.task.train_dataset()
        self.eval_set: Dataset = self.task.eval_dataset()
        self.sampler = DistributedSampler(self.train_set, num_replicas=world, rank=self.dist.rank, shuffle=True,
                                          seed=r.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // self.per_rank_batch
        if self.steps_per_epoch == 0:
            raise RecipeError(f"batch_size = {r.batch_size} exceeds the {len(self.train_set)} training samples")
        if len(self.eval_set) < world:
            raise RecipeError(f"the eval set has {len(self.eval_set)} samples, fewer than the {world} processes")
        self.total_steps = r.epochs * self.steps_per_epoch

    def _build_optimizer(self) -> None:
        o = self.recipe.optim
        self.optimizer = torch.optim.AdamW(param_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps,
                                           foreach=True)
        warmup = round(o.warmup_epochs * self.steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, WarmupCosine(warmup, self.total_steps, min(1.0, o.min_lr / o.lr)))

    def _wrap_model(self) -> None:
        """``train_net``: DDP (several processes) and/or compiled; ``eval_net``: compiled or plain.
        Both share ``self.model``'s parameters, which is what checkpoints save."""
        if self.dist.distributed and any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in self.model.modules()):
            if self.device.type == "cuda":  # batch statistics over the global batch, as one process would see it
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # same Parameter objects
            elif self.dist.is_main:
                warnings.warn(f"BatchNorm under DDP on {self.device.type} normalises with each process's share of the "
                              "batch (SyncBatchNorm needs CUDA): results differ slightly from one process")
        net = self.model
        if self.dist.distributed:
            net = DistributedDataParallel(net, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.train_net = torch.compile(net) if self.recipe.compile else net
        self.eval_net = torch.compile(self.model) if self.recipe.compile else self.model

    def _wall_seconds(self) -> float:
        """Wall time of the run so far, over all its (resumed) processes up to their last checkpoint."""
        return self._resumed_wall + time.perf_counter() - self._wall_start

    def _autocast(self):
        if self.recipe.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # -- the loop ----------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Train to the last epoch (from where a resumed run stopped), then write the report."""
        r, p = self.recipe, self.progress
        self.model.train()
        try:
            while p.epoch < r.epochs:
                self._train_epoch()
                self._end_epoch()
            if self.dist.is_main:
                report = self._report()
                self.logger.message(f"report: {report}")
        finally:
            self.logger.close()
        return self.run_dir

    def _train_epoch(self) -> None:
        r, p = self.recipe, self.progress
        batches = _epoch_batches(self.sampler, p.epoch, self.per_rank_batch)[p.step_in_epoch:]
        loader = DataLoader(self.train_set, batch_sampler=batches, collate_fn=self.task.collate)
        window_start, window_samples = time.perf_counter(), 0
        step_start = time.perf_counter()
        for batch in loader:
            lr = self._train_step(batch)
            self._last_lr = lr
            samples = self.task.batch_size_of(batch) * self.dist.world_size
            p.global_step += 1
            p.step_in_epoch += 1
            p.train_samples += samples
            window_samples += samples
            now = time.perf_counter()
            p.train_seconds += now - step_start
            if p.global_step % r.log_every == 0:
                speed = window_samples / max(now - window_start, 1e-9)
                self._log_train(lr, speed)
                window_start, window_samples = time.perf_counter(), 0
            else:
                self.logger.advance()
            if r.checkpoint_every and p.global_step % r.checkpoint_every == 0 and p.step_in_epoch < self.steps_per_epoch:
                self._save(best=False)
            step_start = time.perf_counter()

    def _train_step(self, batch: Any) -> float:
        """One optimizer step; returns the learning rate it used."""
        r, p, rank = self.recipe, self.progress, self.dist.rank
        torch.manual_seed(step_seed(r.seed, p.global_step, rank))
        generator = torch.Generator().manual_seed(step_seed(r.seed, p.global_step, rank, stream=1))
        batch = move_to(self.task.augment(batch, generator), self.device)
        with self._autocast():
            loss, logs = self.task.loss(self.train_net, batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if r.optim.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), r.optim.clip_grad)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        n = self.task.batch_size_of(batch)
        for sums in (self._log_sums, self._epoch_sums):
            sums.add("samples", n)
            sums.add("loss", loss.detach() * n)
            for name in self.task.log_names:
                sums.add(name, logs[name] * n)
        return lr

    def _mean_logs(self, sums: dict[str, float]) -> dict[str, float]:
        n = sums.get("samples", 0.0)
        if n and not math.isfinite(sums["loss"]):
            raise FloatingPointError(f"the training loss is {sums['loss'] / n} at step {self.progress.global_step}")
        return {f"train_{k}": v / n for k, v in sums.items() if k != "samples"} if n else {}

    def _log_train(self, lr: float, speed: float) -> None:
        p = self.progress
        logs = self._mean_logs(self._log_sums.reduce())
        self.logger.log("train", p.epoch + 1, p.global_step, {"lr": lr, "samples_per_s": speed, **logs})
        self.logger.advance(loss=f"{logs.get('train_loss', float('nan')):.4f}", lr=f"{lr:.2e}",
                            samples_per_s=f"{speed:.0f}")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The task's metrics on the whole eval set (this rank's shard, summed over ranks)."""
        batches = _eval_batches(len(self.eval_set), self.dist.rank, self.dist.world_size, self.recipe.eval_batch_size)
        loader = DataLoader(self.eval_set, batch_sampler=batches, collate_fn=self.task.collate)
        sums = _Sums(self.device)
        self.model.eval()
        try:
            for batch in loader:
                with self._autocast():
                    for name, value in self.task.eval_step(self.eval_net, move_to(batch, self.device)).items():
                        sums.add(name, value)
        finally:
            self.model.train()
        return self.task.metrics(sums.reduce())

    def _end_epoch(self) -> None:
        p, task = self.progress, self.task
        metrics = self.evaluate()
        p.epoch += 1
        p.step_in_epoch = 0
        row = {"epoch": p.epoch, "step": p.global_step, "last_lr": self._last_lr,
               **self._mean_logs(self._epoch_sums.reduce()), **{f"eval_{k}": v for k, v in metrics.items()}}
        p.history.append(row)
        value = metrics[task.main_metric]
        better = p.best_metric is None or (value > p.best_metric if task.mode == "max" else value < p.best_metric)
        if better:
            p.best_metric, p.best_epoch, p.best_step = value, p.epoch, p.global_step
        self.logger.log("eval", p.epoch, p.global_step, {f"eval_{k}": v for k, v in metrics.items()})
        self.logger.message(f"epoch {p.epoch}/{self.recipe.epochs}: " +
                            ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
        self._save(best=better)

    def _save(self, best: bool) -> None:
        p = self.progress
        p.log_sums, p.epoch_sums = self._log_sums.state(), self._epoch_sums.state()
        p.wall_seconds = self._wall_seconds()
        if not self.dist.is_main:
            return
        self.checkpoints.save(p.global_step, self.model, self.optimizer, self.scheduler, dataclasses.asdict(p),
                              best=best, recipe=recipe_to_dict(self.recipe))

    # -- the end -----------------------------------------------------------------------------------
    def _facts(self) -> dict[str, str]:
        r, p = self.recipe, self.progress
        params = sum(t.numel() for t in self.model.parameters())
        device = str(self.device) + (f" ({torch.cuda.get_device_name(self.device)})" if self.device.type == "cuda" else "")
        options = ", ".join(f"{k}={v}" for k, v in r.model.options.items())
        return {
            "task": r.task,
            "model": f"`{r.model.name}`" + (f" ({options})" if options else ""),
            "parameters": f"{params:,}",
            "device": f"{device}, {torch.get_num_threads()} threads per process, {self.dist.world_size} "
                      f"process{'es' if self.dist.distributed else ''}",
            "software": f"torch {torch.__version__}, Python {platform.python_version()}",
            "steps": f"{p.global_step:,} ({self.steps_per_epoch:,} per epoch, global batch {r.batch_size})",
            "wall time": f"{self._wall_seconds():.1f} s",
            "train throughput": f"{p.train_samples / max(p.train_seconds, 1e-9):,.0f} samples/s "
                                f"({p.train_samples:,} samples in {p.train_seconds:.1f} s of training steps)",
            "amp / compile / deterministic": f"{r.amp} / {r.compile} / {r.deterministic}",
        }

    def _report(self) -> Path:
        task, p = self.task, self.progress
        figures = task.report_figures(self.model, self.run_dir)
        return write_report(self.run_dir, title=self.recipe.name, facts=self._facts(), history=p.history,
                            best_epoch=p.best_epoch, main_metric=task.main_metric,
                            train_has_main=task.main_metric in task.log_names,
                            eval_description=task.eval_description, figures=figures,
                            recipe_yaml=recipe_to_yaml(self.recipe))


def train(task: Task, *, resume: bool = False) -> Path:
    """Run (or with ``resume``, continue) a built task; returns the run folder. From a recipe:
    ``relformer.tasks.train(recipe)``."""
    if isinstance(task, Recipe):
        raise TypeError("relformer.train.train is handed a task object; for a recipe call "
                        "relformer.tasks.train(recipe), which builds its task")
    try:
        run_dir = Trainer(task, resume=resume).fit()
        barrier()  # the others wait for the main rank's report: a rank leaving early aborts gloo's teardown
        return run_dir
    finally:
        shutdown()
