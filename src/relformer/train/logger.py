"""What a run shows and records: ``metrics.csv``, TensorBoard events in ``tb/``, a tqdm bar.

Only the main rank writes; on the others every method is a no-op. ``metrics.csv`` has fixed
columns, ``kind,epoch,step,wall_s`` then the task's; a ``train`` row per logged step and an
``eval`` row per epoch. Resuming from step ``S`` drops the rows (and TensorBoard events) a killed
run wrote after ``S``, so the files read as if the run had never stopped.
"""
from __future__ import annotations

import csv
import io
import math
import os
import sys
import time
from pathlib import Path

from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from ..utils import atomic_write_text

__all__ = ["RunLogger", "read_metrics", "progress_bar", "show_progress"]

BASE_COLUMNS = ("kind", "epoch", "step", "wall_s")


def show_progress() -> bool:
    """Progress bars only for a person watching: stderr is a terminal and ``CI`` is not set."""
    return sys.stderr.isatty() and not os.environ.get("CI")


def progress_bar(iterable, *, total: int | None = None, desc: str = "", enabled: bool = True):
    """``iterable`` wrapped in a tqdm bar that clears itself when done; disabled unless
    :func:`show_progress` (and ``enabled``)."""
    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (enabled and show_progress()))


def read_metrics(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of a ``metrics.csv`` as dicts of strings."""
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class RunLogger:
    """``columns``: the task's value columns after :data:`BASE_COLUMNS`."""

    def __init__(self, run_dir: str | os.PathLike, columns: list[str], *, enabled: bool, total_steps: int,
                 resume_step: int | None = None) -> None:
        self.enabled, self.columns = enabled, [*BASE_COLUMNS, *columns]
        self._start = time.perf_counter()
        if not enabled:
            return
        run_dir = Path(run_dir)
        self.csv_path = run_dir / "metrics.csv"
        self._prepare_csv(resume_step)
        self._csv_file = open(self.csv_path, "a", newline="")
        self._csv = csv.DictWriter(self._csv_file, fieldnames=self.columns)
        # purge_step: TensorBoard drops the events of earlier processes from that step on (all of them
        # for a fresh run), so the curves read as one run; the folder's other files are left alone
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=0 if resume_step is None else resume_step + 1)
        self.bar = tqdm(total=total_steps, initial=resume_step or 0, unit="step", dynamic_ncols=True,
                        desc="train", disable=not show_progress())

    def _prepare_csv(self, resume_step: int | None) -> None:
        """A fresh header, or on resume the rows up to ``resume_step``; a changed header is an error."""
        rows: list[dict[str, str]] = []
        if resume_step is not None and self.csv_path.is_file():
            with open(self.csv_path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != self.columns:
                    raise ValueError(f"{self.csv_path} has columns {reader.fieldnames}, this run writes {self.columns}")
                rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        text = io.StringIO(newline="")
        writer = csv.DictWriter(text, fieldnames=self.columns)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write_text(self.csv_path, text.getvalue())

    def log(self, kind: str, epoch: int, step: int, values: dict[str, float]) -> None:
        """One CSV row, and TensorBoard scalars tagged ``<kind>/<name>`` (``eval_accuracy`` -> ``eval/accuracy``);
        a value outside the columns is an error."""
        if not self.enabled:
            return
        unknown = set(values) - set(self.columns)
        if unknown:
            raise KeyError(f"metrics {sorted(unknown)} are not columns of {self.csv_path}: {self.columns}")
        row = {"kind": kind, "epoch": epoch, "step": step, "wall_s": round(time.perf_counter() - self._start, 3)}
        self._csv.writerow({**row, **values})
        self._csv_file.flush()
        for name, value in values.items():
            if value is not None and math.isfinite(value):
                tag = name.replace("_", "/", 1) if name.startswith(f"{kind}_") else f"{kind}/{name}"
                self.tb.add_scalar(tag, value, step)
        self.tb.flush()

    def advance(self, steps: int = 1, **postfix: str) -> None:
        """Move the bar ``steps`` on; ``postfix`` (loss, lr, samples/s) replaces what it shows."""
        if not self.enabled:
            return
        if postfix:
            self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(steps)

    def message(self, text: str) -> None:
        if self.enabled:
            self.bar.write(text)

    def close(self) -> None:
        if not self.enabled:
            return
        self.bar.close()
        self.tb.close()
        self._csv_file.close()
