"""Measurements that hold only on the CPU at hand: its identity, a paired timing of two ways to
compute one thing, and a JSON cache of such measurements keyed on CPU model, torch version and
thread count (a kernel chosen by measurement must be chosen again on another machine)."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import platform
import statistics
import time
from pathlib import Path
from typing import Callable

import torch

from .io import atomic_write_text, cache_root

__all__ = ["cpu_model", "paired_ratio", "finite_positive", "CpuCache"]


@functools.lru_cache(maxsize=None)
def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux, else what :mod:`platform` knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def paired_ratio(base: Callable[[], object], challenger: Callable[[], object], reps: int,
                 budget_s: float | None = None) -> float:
    """``base``'s time / ``challenger``'s over ``reps`` back-to-back pairs after one warm-up of each, the
    order alternating so a slow moment of the machine hits both (fewer pairs, at least one, when a
    pair takes longer than ``budget_s / reps``). The lower of the median per-pair ratio and the ratio
    of the fastest runs: noise only adds time, so the challenger must win on both counts."""
    start = time.perf_counter()
    base(), challenger()  # warm-up: first-call allocation, memoised layouts, primitive creation
    if budget_s is not None:
        reps = max(1, min(reps, int(budget_s / max(time.perf_counter() - start, 1e-9))))
    seconds: dict[int, list[float]] = {0: [], 1: []}
    for rep in range(reps):
        for side, way in ((0, base), (1, challenger))[::1 if rep % 2 else -1]:
            start = time.perf_counter()
            way()
            seconds[side].append(max(time.perf_counter() - start, 1e-9))
    paired = statistics.median(b / c for b, c in zip(seconds[0], seconds[1]))
    return min(paired, min(seconds[0]) / min(seconds[1]))


class CpuCache:
    """``{key: entry}`` measured on this CPU, torch version and thread count, in one JSON file per thread
    count under ``cache_root() / folder``. A missing, unreadable or malformed file (or one entry
    that ``valid`` rejects) reads as empty and is rewritten by the next :meth:`write`."""

    def __init__(self, folder: str, schema: int, valid: Callable[[object], bool]) -> None:
        self.folder, self.schema, self.valid = folder, schema, valid

    def file(self, threads: int) -> Path:
        key = f"{cpu_model()}|torch {torch.__version__}|{threads} threads"
        return cache_root() / self.folder / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.json"

    def read(self, threads: int) -> dict:
        try:
            data = json.loads(self.file(threads).read_text())
        except (OSError, ValueError):
            return {}
        ok = (isinstance(data, dict) and data.get("schema") == self.schema and data.get("cpu") == cpu_model()
              and data.get("torch") == torch.__version__ and data.get("threads") == threads
              and isinstance(data.get("entries"), dict)
              and all(isinstance(k, str) and self.valid(v) for k, v in data["entries"].items()))
        return data["entries"] if ok else {}

    def write(self, threads: int, entries: dict) -> None:
        """``entries`` over what the file holds now (another process may have added keys); a read-only
        cache folder costs a re-measurement in the next process, nothing else."""
        merged = {**self.read(threads), **entries}
        text = json.dumps({"schema": self.schema, "cpu": cpu_model(), "torch": torch.__version__,
                           "threads": threads, "entries": dict(sorted(merged.items()))}, indent=1)
        try:
            atomic_write_text(self.file(threads), text)
        except OSError:
            pass


def finite_positive(x) -> bool:
    """A measured ratio: a finite positive number (not a bool)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0
