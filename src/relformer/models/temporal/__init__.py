"""Models for continuous-time dynamic graphs (event streams, :mod:`relformer.data.temporal`)."""
from .base import MergeLayer, TemporalContext, TemporalLinkPredictor
from .edgebank import EdgeBank
from .todyformer import Todyformer, TodyformerConfig, todyformer, todyformer_micro

__all__ = ["TemporalContext", "TemporalLinkPredictor", "MergeLayer", "EdgeBank", "Todyformer", "TodyformerConfig"]
