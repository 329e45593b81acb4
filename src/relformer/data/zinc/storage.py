"""Where and how the ZINC-like splits are stored: safetensors files under one cache folder,
written atomically and durably (:func:`relformer.utils.atomic_write_bytes`: a kill or power cut
leaves the old file or the new one, never half of one), read without pickle."""
from __future__ import annotations

import os
from pathlib import Path

from safetensors import safe_open
from safetensors.torch import save
from torch import Tensor

from ...utils import atomic_write_bytes, cache_root

__all__ = ["zinc_cache_dir"]

FORMAT = "1"
_SPD_UNREACHABLE = 255  # stored uint8 value of "no path"; read back as -1


def _write_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """``tensors`` and their string ``metadata`` as one safetensors file at ``path``, atomically."""
    atomic_write_bytes(path, save({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata))


def _read(path: Path) -> tuple[dict[str, Tensor], dict[str, str]]:
    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})


def _read_metadata(path: Path) -> dict[str, str] | None:
    try:
        with safe_open(str(path), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception:  # missing, truncated or foreign file: rebuild it
        return None


def zinc_cache_dir(variant: str = "12k", root: str | os.PathLike | None = None, seed: int = 0,
                   limit: tuple[int, int, int] | None = None) -> Path:
    """``<root>/zinc-<variant>[-seed<s>][-limit<a>-<b>-<c>]``; ``root`` defaults to relformer's cache
    folder, :func:`relformer.utils.cache_root` (``$RELFORMER_CACHE``, else ``$XDG_CACHE_HOME/relformer``,
    else ``~/.cache/relformer``)."""
    base = Path(root).expanduser() if root is not None else cache_root()
    name = f"zinc-{variant}" + (f"-seed{seed}" if seed else "")
    name += "-limit" + "-".join(map(str, limit)) if limit else ""
    return base / name
