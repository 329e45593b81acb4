"""Atomic, durable file writes and the one cache root.

A write goes to a temporary sibling (same folder, so the rename is atomic on POSIX), is flushed
and fsynced, renamed onto its target with :func:`os.replace`, and then the folder is fsynced so
the rename itself survives a power cut. A kill at any instant leaves either the old file or the
new one, never a mix; a failed write removes its temporary file.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_with", "cache_root", "fsync_dir"]


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a folder (or file) by path, so a rename or create inside it is durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """``with atomic_write(path) as f: f.write(...)``: ``path`` appears complete or not at all.

    ``mode`` is ``"wb"`` or ``"w"`` (text, UTF-8). The parent folder is created if missing.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode must be 'wb' or 'w', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, **({} if mode == "wb" else {"encoding": "utf-8"})) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically and durably."""
    with atomic_write(path, "wb") as f:
        f.write(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically and durably."""
    with atomic_write(path, "w") as f:
        f.write(text)


def atomic_write_with(path: str | os.PathLike, write: Callable[[IO], None]) -> None:
    """``write(binary_file)`` into ``path`` atomically (for writers such as ``np.save`` that take a file)."""
    with atomic_write(path, "wb") as f:
        write(f)


def cache_root() -> Path:
    """relformer's cache folder: ``$RELFORMER_CACHE``, else ``$XDG_CACHE_HOME/relformer``, else
    ``~/.cache/relformer`` (the XDG base-directory rule). Not created here."""
    if os.environ.get("RELFORMER_CACHE"):
        return Path(os.environ["RELFORMER_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "relformer"
