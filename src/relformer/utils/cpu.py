"""The identity of the CPU at hand, for caches of measurements that hold only on that CPU."""
from __future__ import annotations

import functools
import platform
from pathlib import Path

__all__ = ["cpu_model"]


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
