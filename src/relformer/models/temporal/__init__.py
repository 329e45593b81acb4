"""Models for continuous-time dynamic graphs (event streams, :mod:`relformer.data.temporal`)."""
from .base import MergeLayer, TemporalContext, TemporalLinkPredictor
from .dygformer import DyGFormer, DyGFormerConfig
from .edgebank import EdgeBank
from .time_encoding import TimeEncoder
from .todyformer import Todyformer, TodyformerConfig, todyformer, todyformer_micro

__all__ = ["TemporalContext", "TemporalLinkPredictor", "MergeLayer", "EdgeBank", "DyGFormer", "DyGFormerConfig",
           "TimeEncoder", "Todyformer", "TodyformerConfig"]
