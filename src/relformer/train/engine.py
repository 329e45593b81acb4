"""The generic training loop: ``train(task)`` for any :class:`relformer.train.task.Task` object.

The engine is handed a built task (``relformer.tasks.build_task(recipe)``, or
``relformer.tasks.train(recipe)`` for both steps) and reads the recipe from ``task.recipe``; it
never looks a task up by name.

AdamW (no decay on biases, norms, 1-D parameters, tokens and position tables), linear warmup
then cosine per step, gradient clipping, optional bf16 autocast and ``torch.compile``, a full
evaluation every epoch, best-checkpoint tracking on the task's main metric, DDP under torchrun.

Reproducibility: every random number is a function of ``(seed, epoch, step, rank)``. The sample
order is a :class:`DistributedSampler` (also with one process, so one and two processes see the
same global batches) with ``set_epoch(epoch)``, shuffled unless the task sets ``shuffle_train = False``
(event streams train in time order); torch's global RNG (dropout, drop-path) is
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
import platform
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ..utils import atomic_write_text
from .callbacks import Callback, run_callbacks
from .checkpoint import CheckpointDir, CheckpointError, load_weights, read_checkpoint, read_state
from .distributed import Dist, all_reduce_sum, barrier, init_distributed, shutdown
from .logger import RunLogger, progress_bar
from .loop import (RUN_ENTRIES, Sums, WarmupCosine, configure_determinism, epoch_batches, eval_batches, move_to,
                   param_groups, prepare_folder, step_seed)
from .recipe import Recipe, RecipeError, recipe_diff, recipe_from_dict, recipe_to_dict, recipe_to_yaml
from .report import write_report
from .task import Task

__all__ = ["train", "Engine", "Trainer", "Progress", "param_groups", "WarmupCosine", "step_seed", "move_to",
           "configure_determinism", "RUN_ENTRIES"]

_epoch_batches, _eval_batches = epoch_batches, eval_batches  # the names the tests of the loop use
#: recipe keys a resumed run may change: where it writes, and how long it goes on. The LR schedule
#: is the one the run started with (the checkpoint restores it): steps past its planned end train at
#: ``optim.min_lr``. For a new schedule, start a new run from the weights with ``init_from``.
RESUMABLE_CHANGES = frozenset({"out_dir", "epochs", "max_steps", "max_minutes", "early_stopping.patience"})


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
    cpu_seconds: float = 0.0     # CPU time of the training process (all threads), over all resumes
    stale_evals: int = 0         # evaluations in a row without improvement of the early-stopping metric
    early_stop_best: float | None = None
    stopped: bool = False        # early stopping (or a callback) ended the run
    budget_stopped: bool = False  # the max_minutes budget ended the last fit before its scheduled steps


class Engine:
    """One run of ``task.recipe``: build everything in the constructor, then :meth:`fit`.
    ``callbacks``: :class:`~relformer.train.callbacks.Callback` objects (main process only)."""

    def __init__(self, task: Task, *, resume: bool = False, callbacks: Sequence[Callback] = ()) -> None:
        started, cpu_started = time.perf_counter(), time.process_time()  # the budget counts the set-up too
        recipe = getattr(task, "recipe", None)
        if not isinstance(recipe, Recipe):
            raise TypeError(f"Engine needs a task object with a .recipe (a Recipe), got {type(task).__name__}; "
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
        self.callbacks = list(callbacks) if self.dist.is_main else []
        self._stop_requested = False
        self.run_dir = r.run_dir()
        self.checkpoints = CheckpointDir(self.run_dir / "checkpoints", keep=r.keep_checkpoints)
        resume_from = self._check_run_dir(resume)
        if resume_from is None and r.init_from is not None:
            try:
                self.init_folder = load_weights(r.init_from, self.model)
            except CheckpointError as e:
                raise RecipeError(f"init_from: {e}") from None
        self._build_data()
        self._build_optimizer()
        self.progress = Progress()
        if resume_from is not None:
            self.progress = Progress(**read_checkpoint(resume_from, self.model, self.optimizer, self.scheduler))
            if self.dist.is_main:
                self._repair_best()
        self._log_sums, self._epoch_sums = Sums(self.device), Sums(self.device)
        if self.dist.is_main:  # the saved sums are totals over the ranks: one rank carries them on
            self._log_sums.load(self.progress.log_sums)
            self._epoch_sums.load(self.progress.epoch_sums)
        self._wall_start, self._resumed_wall = started, self.progress.wall_seconds
        self._cpu_start, self._resumed_cpu = cpu_started, self.progress.cpu_seconds
        self._last_lr: float = self.optimizer.param_groups[0]["lr"]
        self._on_step = getattr(self.task, "on_step", None)  # optional in the Task protocol
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
            prepare_folder(self.run_dir, resume)
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
        differ = [k for k in recipe_diff(recipe_from_dict(saved, type(self.recipe)), self.recipe)
                  if k not in RESUMABLE_CHANGES]
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
        self.sampler = DistributedSampler(self.train_set, num_replicas=world, rank=self.dist.rank,
                                          shuffle=getattr(self.task, "shuffle_train", True),
                                          seed=r.seed, drop_last=True)
        self.steps_per_epoch = len(self.sampler) // (self.per_rank_batch * r.accumulate_grad_batches)
        if self.steps_per_epoch == 0:
            raise RecipeError(f"batch_size = {r.batch_size} x accumulate_grad_batches = {r.accumulate_grad_batches} "
                              f"exceeds the {len(self.train_set)} training samples")
        if len(self.eval_set) < world:
            raise RecipeError(f"the eval set has {len(self.eval_set)} samples, fewer than the {world} processes")
        self.total_steps = r.epochs * self.steps_per_epoch
        if r.max_steps is not None:
            self.total_steps = min(self.total_steps, r.max_steps)

    def _build_optimizer(self) -> None:
        o = self.recipe.optim
        self.optimizer = torch.optim.AdamW(param_groups(self.model, o.weight_decay), lr=o.lr, betas=o.betas, eps=o.eps,
                                           foreach=True)
        warmup = round(o.warmup_epochs * self.steps_per_epoch)
        self._cosine = WarmupCosine(warmup, self.total_steps, min(1.0, o.min_lr / o.lr))
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._cosine)

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

    def _cpu_seconds(self) -> float:
        """CPU time of the run so far (this process, all its threads), over all its processes."""
        return self._resumed_cpu + time.process_time() - self._cpu_start

    def _autocast(self):
        if self.recipe.amp == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return nullcontext()

    # -- the loop ----------------------------------------------------------------------------------
    def request_stop(self) -> None:
        """End the run after the current epoch's evaluation (for callbacks)."""
        self._stop_requested = True

    def _done(self) -> bool:
        r, p = self.recipe, self.progress
        at_max = r.max_steps is not None and p.global_step >= r.max_steps and p.step_in_epoch == 0
        return p.stopped or p.epoch >= r.epochs or at_max or self._budget_spent() >= 1

    def fit(self) -> Path:
        """Train to the last epoch (from where a resumed run stopped), ``max_steps``, the end of the
        ``max_minutes`` budget or an early stop, then write the report."""
        self.model.train()
        try:
            run_callbacks(self.callbacks, "on_train_start", self)
            while not self._done():
                self._train_epoch()
                self._end_epoch()
            run_callbacks(self.callbacks, "on_train_end", self)
            if self.dist.is_main:
                report = self._report()
                self.logger.message(f"report: {report}")
        finally:
            self.logger.close()
        return self.run_dir

    def _train_epoch(self) -> None:
        r, p, k = self.recipe, self.progress, self.recipe.accumulate_grad_batches
        micro = epoch_batches(self.sampler, p.epoch, self.per_rank_batch)[:self.steps_per_epoch * k]
        loader = iter(DataLoader(self.train_set, batch_sampler=micro[p.step_in_epoch * k:],
                                 collate_fn=self.task.collate))
        window_start, window_samples = time.perf_counter(), 0
        step_start, start_step = time.perf_counter(), p.global_step
        while p.step_in_epoch < self.steps_per_epoch and not (r.max_steps is not None and p.global_step >= r.max_steps):
            batches = [next(loader) for _ in range(k)]
            if self._on_step is not None:
                self._on_step(self.model, self._training_share())
            lr = self._train_step(batches)
            self._last_lr = lr
            samples = sum(self.task.batch_size_of(b) for b in batches) * self.dist.world_size
            p.global_step += 1
            p.step_in_epoch += 1
            p.train_samples += samples
            window_samples += samples
            now = time.perf_counter()
            p.train_seconds += now - step_start
            if p.global_step % r.log_every == 0:
                self._log_train(lr, window_samples / max(now - window_start, 1e-9))
                window_start, window_samples = time.perf_counter(), 0
            else:
                self.logger.advance()
            if r.checkpoint_every and p.global_step % r.checkpoint_every == 0 and p.step_in_epoch < self.steps_per_epoch:
                self._save(best=False)
            if r.max_minutes is not None and self._budget_spent() >= 1:  # this epoch's evaluation follows
                self.logger.message(f"stopping at step {p.global_step}: the {r.max_minutes:g}-minute budget "
                                    "(max_minutes) is spent")
                break
            step_start = time.perf_counter()
        if p.global_step > start_step and p.global_step % r.log_every:  # a train row at least every epoch
            self._log_train(self._last_lr, window_samples / max(time.perf_counter() - window_start, 1e-9), advance=0)

    def _train_step(self, batches: list) -> float:
        """One optimizer step over the gradients of ``batches`` (``accumulate_grad_batches``
        micro-batches, each loss weighted by its share of the samples); returns the LR it used."""
        r, p, rank = self.recipe, self.progress, self.dist.rank
        self.optimizer.zero_grad(set_to_none=True)
        sizes = [self.task.batch_size_of(b) for b in batches]
        for i, batch in enumerate(batches):  # micro-batch 0 draws the seeds a plain step draws
            torch.manual_seed(step_seed(r.seed, p.global_step, rank, stream=2 * i))
            generator = torch.Generator().manual_seed(step_seed(r.seed, p.global_step, rank, stream=2 * i + 1))
            batch = move_to(self.task.augment(batch, generator), self.device)
            with self._autocast():
                loss, logs = self.task.loss(self.train_net, batch)
            (loss * (sizes[i] / sum(sizes)) if len(batches) > 1 else loss).backward()
            n = sizes[i]
            for sums in (self._log_sums, self._epoch_sums):
                sums.add("samples", n)
                sums.add("loss", loss.detach() * n)
                for name in self.task.log_names:
                    sums.add(name, logs[name] * n)
        if r.optim.clip_grad > 0:
            nn.utils.clip_grad_norm_(self.model.parameters(), r.optim.clip_grad)
        lr = self.optimizer.param_groups[0]["lr"]
        self.optimizer.step()
        self.scheduler.step()
        return lr

    def _training_share(self) -> float:
        """The share of training done before the next step: steps or budget, whichever is further along
        (what the LR schedule follows)."""
        return min(1.0, max(self.progress.global_step / max(self.total_steps, 1), self._cosine.time_fraction))

    def _budget_spent(self) -> float:
        """The share of the ``max_minutes`` budget spent (0 without one); it moves the LR schedule on.
        Every rank gets the same value (the mean of their clocks), so they stop at the same step."""
        if self.recipe.max_minutes is None:
            return 0.0
        clock = self._cpu_seconds if self.recipe.budget_clock == "cpu" else self._wall_seconds
        spent = clock() / (60 * self.recipe.max_minutes)
        if self.dist.distributed:
            spent = all_reduce_sum({"spent": torch.tensor(spent, device=self.device)})["spent"].item() / self.dist.world_size
        self._cosine.time_fraction = spent
        return spent

    def _mean_logs(self, sums: dict[str, float]) -> dict[str, float]:
        n = sums.get("samples", 0.0)
        if n and not math.isfinite(sums["loss"]):
            raise FloatingPointError(f"the training loss is {sums['loss'] / n} at step {self.progress.global_step}")
        return {f"train_{k}": v / n for k, v in sums.items() if k != "samples"} if n else {}

    def _log_train(self, lr: float, speed: float, advance: int = 1) -> None:
        p = self.progress
        logs = self._mean_logs(self._log_sums.reduce())
        self.logger.log("train", p.epoch + 1, p.global_step, {"lr": lr, "samples_per_s": speed, **logs})
        self.logger.advance(advance, loss=f"{logs.get('train_loss', float('nan')):.4f}", lr=f"{lr:.2e}",
                            samples_per_s=f"{speed:.0f}")

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """The task's metrics on the whole eval set (this rank's shard, summed over ranks)."""
        batches = eval_batches(len(self.eval_set), self.dist.rank, self.dist.world_size, self.recipe.eval_batch_size)
        loader = DataLoader(self.eval_set, batch_sampler=batches, collate_fn=self.task.collate)
        sums = Sums(self.device)
        self.model.eval()
        try:
            for batch in progress_bar(loader, total=len(batches), desc="eval", enabled=self.dist.is_main):
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
        run_callbacks(self.callbacks, "on_eval", self, metrics)
        self._early_stopping(metrics)
        # the budget ends the run here (_done) whether it ran out within the epoch or in its evaluation
        p.budget_stopped = not p.stopped and p.global_step < self.total_steps and self._budget_spent() >= 1
        self._save(best=better)
        run_callbacks(self.callbacks, "on_epoch_end", self, row)
        self._callback_stop()  # asked in on_epoch_end: this checkpoint does not record it

    def _early_stopping(self, metrics: dict[str, float]) -> None:
        """Count the evaluations without improvement; stop after ``patience`` of them (or on request)."""
        p, e, task = self.progress, self.recipe.early_stopping, self.task
        metric = e.metric or task.main_metric
        if metric not in metrics:
            raise RecipeError(f"early_stopping.metric: {metric!r} is not a metric of this task "
                              f"({', '.join(metrics)})")
        value, mode = metrics[metric], task.mode if e.mode == "auto" else e.mode
        best = p.early_stop_best
        if best is None or (value > best + e.min_delta if mode == "max" else value < best - e.min_delta):
            p.early_stop_best, p.stale_evals = value, 0
        else:
            p.stale_evals += 1
        if e.patience and p.stale_evals >= e.patience:
            p.stopped = True
            self.logger.message(f"stopping after epoch {p.epoch}: {metric} has not improved for {p.stale_evals} "
                                "evaluations")
        self._callback_stop()

    def _callback_stop(self) -> None:
        """Stop if a callback asked to (on the main process: every process learns it)."""
        asked = torch.tensor(float(self._stop_requested), device=self.device)
        if all_reduce_sum({"stop": asked})["stop"].item() > 0 and not self.progress.stopped:
            self.progress.stopped = True
            self.logger.message(f"stopping after epoch {self.progress.epoch}: a callback asked to")

    def _save(self, best: bool) -> None:
        p = self.progress
        p.log_sums, p.epoch_sums = self._log_sums.state(), self._epoch_sums.state()
        p.wall_seconds, p.cpu_seconds = self._wall_seconds(), self._cpu_seconds()
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
            "steps": f"{p.global_step:,} of {self.total_steps:,} ({self.steps_per_epoch:,} per epoch, global batch "
                     f"{r.batch_size})" + ("; the max_minutes budget ended the run" if p.budget_stopped else ""),
            "wall time": f"{self._wall_seconds():.1f} s" + (f" (budget: max_minutes = {r.max_minutes:g}, "
                                                          f"{r.budget_clock} clock)" if r.max_minutes is not None else ""),
            "CPU time": f"{self._cpu_seconds():.1f} s (the training process, all threads)",
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


Trainer = Engine  # the engine's former name


def train(task: Task, *, resume: bool = False, callbacks: Sequence[Callback] = ()) -> Path:
    """Run (or with ``resume``, continue) a built task; returns the run folder. From a recipe:
    ``relformer.tasks.train(recipe)``."""
    if isinstance(task, Recipe):
        raise TypeError("relformer.train.train is handed a task object; for a recipe call "
                        "relformer.tasks.train(recipe), which builds its task")
    try:
        run_dir = Engine(task, resume=resume, callbacks=callbacks).fit()
        barrier()  # the others wait for the main rank's report: a rank leaving early aborts gloo's teardown
        return run_dir
    finally:
        shutdown()
