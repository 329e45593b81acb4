"""Shared by the benchmarks: interleaved timing and writing a report."""
from __future__ import annotations

import time
from pathlib import Path


def time_interleaved(steps: dict, reps: int, warmup: int) -> dict[str, list[float]]:
    """Seconds per call for each peer; peers alternate within each repetition, order rotating."""
    names = list(steps)
    for _ in range(warmup):
        for n in names:
            steps[n]()
    times = {n: [] for n in names}
    for r in range(reps):
        for n in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            steps[n]()
            times[n].append(time.perf_counter() - t0)
    return times


def write_lines(lines: list[str], out: Path) -> None:
    """Write a markdown report, echo it, and say where it went."""
    lines.append("")
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")
