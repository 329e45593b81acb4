"""Measurements that hold only on the CPU at hand: its identity, a paired timing of two ways to
compute one thing, and a JSON cache of such measurements keyed on CPU model, torch version and
thread count (a kernel chosen by measurement must be chosen again on another machine)."""
from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import platform
import statistics
import threading
import time
import weakref
from pathlib import Path
from typing import Callable

import torch

from .io import atomic_write_text, cache_root

__all__ = ["cpu_model", "paired_ratio", "finite_positive", "CpuCache", "MeasuredRatios"]


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


_ratio_stores: "weakref.WeakSet[MeasuredRatios]" = weakref.WeakSet()


class MeasuredRatios:
    """Ratios measured on this CPU once per process, thread count and key, and kept on disk
    (:class:`CpuCache` under ``folder``, entries checked by ``valid``: by default a finite positive
    number) so a later process -- a resumed run -- chooses as the first did. :meth:`get` answers from
    the process, else from the disk, else measures; threads asking for one key at once get one
    measurement (a re-entrant lock, fresh in a forked child)."""

    def __init__(self, folder: str, schema: int, valid: Callable[[object], bool] = finite_positive) -> None:
        self.disk = CpuCache(folder, schema, valid)
        self._lock = threading.RLock()
        self.forget()
        _ratio_stores.add(self)

    def forget(self) -> None:
        """Drop what this process knows (the disk cache stays): the state a fresh process starts in."""
        self._ratios: dict[tuple[int, str], object] = {}
        self._loaded: set[int] = set()

    def get(self, key: str, measure: Callable[[], object], remeasure: bool = False) -> tuple[object, str]:
        """The entry of ``key`` at the current thread count and where it came from: ``"process"``,
        ``"disk"`` or ``"measured"`` (by calling ``measure()``, then written to disk; ``remeasure``:
        measure now whatever is known, for benchmarks on a quiet machine)."""
        entry = None if remeasure else self.known(key)
        if entry is not None:
            return entry, "process"
        threads = torch.get_num_threads()
        with self._lock:
            if (threads, key) in self._ratios and not remeasure:  # another thread measured it meanwhile
                return self._ratios[(threads, key)], "process"
            if threads not in self._loaded:
                self._loaded.add(threads)
                for k, r in self.disk.read(threads).items():
                    self._ratios.setdefault((threads, k), r)
                if (threads, key) in self._ratios and not remeasure:
                    return self._ratios[(threads, key)], "disk"
            entry = self._ratios[(threads, key)] = measure()
            self.disk.write(threads, {k: r for (t, k), r in self._ratios.items() if t == threads})
        return entry, "measured"

    def known(self, key: str):
        """The entry of ``key`` at the current thread count if this process holds it, else None (no
        disk read, no lock: a hot path's first look)."""
        return self._ratios.get((torch.get_num_threads(), key))


def _fresh_locks_in_child() -> None:
    for store in list(_ratio_stores):
        store._lock = threading.RLock()


os.register_at_fork(after_in_child=_fresh_locks_in_child)
