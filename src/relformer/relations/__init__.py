"""Ready-made relations: sequence, grid, graph and geometry."""
from .sequence import ALiBi, Causal, Documents, RelativeBias, SlidingWindow, T5Bias, URPE

__all__ = ["Causal", "SlidingWindow", "Documents", "RelativeBias", "T5Bias", "ALiBi", "URPE"]
