"""Models for continuous-time dynamic graphs (event streams, :mod:`relformer.data.temporal`)."""
from .edgebank import EdgeBank

__all__ = ["EdgeBank"]
