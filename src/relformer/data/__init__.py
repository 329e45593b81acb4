"""Packed batches and (later) dataset loaders."""
from .packed import Packed, Rows, plan_rows

__all__ = ["Packed", "Rows", "plan_rows"]
