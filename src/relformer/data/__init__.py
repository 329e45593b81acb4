"""Packed batches and (later) dataset loaders."""
from .packed import Packed, Rows

__all__ = ["Packed", "Rows"]
