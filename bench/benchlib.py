"""Shared by the benchmarks: interleaved timing and writing a report."""
from __future__ import annotations

import os
import re
import threading
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


def paired_speedup(times: dict[str, list[float]], ours: str, peer: str, resamples: int = 2000,
                   seed: int = 0) -> tuple[float, float, float]:
    """Speed-up of ``ours`` over ``peer`` from interleaved repetitions: the median of the per-repetition
    ratios ``peer_i / ours_i`` (the two ran back to back, so slow phases of the machine hit both) and its
    95% percentile-bootstrap interval. -> ``(median, low, high)``."""
    import random
    import statistics

    ratios = [b / a for a, b in zip(times[ours], times[peer])]
    rng = random.Random(seed)
    boot = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return statistics.median(ratios), boot[int(0.025 * resamples)], boot[int(0.975 * resamples) - 1]


def paired_verdict(ci: tuple[float, float], target: float = 1.0) -> str:
    """``"FASTER"`` / ``"SLOWER"`` when the paired speed-up's interval lies above / below ``target``,
    ``"LEVEL"`` when it contains it."""
    low, high = ci
    return "FASTER" if low > target else "SLOWER" if high < target else "LEVEL"


def fmt(x, spec: str) -> str:
    """``x`` formatted by ``spec``, or a dash for a missing value (a table cell)."""
    return "—" if x is None else format(x, spec)


def write_lines(lines: list[str], out: Path) -> None:
    """Write a markdown report, echo it, and say where it went."""
    lines.append("")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_growth(step) -> float:
    """Peak RSS growth (MiB) while ``step()`` runs, sampled every 0.5 ms by a thread."""
    base, peak, done = _rss(), [0], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(0.0005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        step()
    finally:
        done.set()
        sampler.join()
    return max(0, max(peak[0], _rss()) - base) / 2**20


def write_section(lines: list[str], out: Path, title: str, heading: str = "# Benchmarks") -> None:
    """Replace the ``## {title}`` section of the markdown file ``out`` by ``lines`` (which start with
    that heading), keeping its other sections, or start the file with ``heading``."""
    from relformer.utils import atomic_write_text

    text = out.read_text() if out.is_file() else f"{heading}\n\n"
    section = "\n".join(lines)
    pattern = rf"^## {re.escape(title)}$"
    if re.search(pattern, text, flags=re.M):
        text = re.sub(pattern + r".*?(?=^## |\Z)", lambda _: section + "\n", text, flags=re.M | re.S)
    else:
        text = text.rstrip("\n") + "\n\n" + section + "\n"
    atomic_write_text(out, text)
    print(section)
    print(f"wrote {out}")
