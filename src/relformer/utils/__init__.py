"""The bottom layer: file-system helpers every other layer may use (it imports nothing of relformer)."""
from .io import atomic_write, atomic_write_bytes, atomic_write_text, atomic_write_with, cache_root, fsync_dir

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_with", "cache_root", "fsync_dir"]
