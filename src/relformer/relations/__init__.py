"""Ready-made relations: sequence, grid, graph and geometry."""
from .sequence import ALiBi, Causal, Documents, RelativeBias, SlidingWindow, T5Bias, URPE
from .grid import GridRelativeBias, ManhattanDecay, ShiftedWindowRegions, WindowMask
from .graph import EdgeBias, EdgeFeatureBias, EdgePathBias, GraphAdjacency, ShortestPathBias
from .geometry import BoxRelationBias
from .geometry3d import Pair3DBias
from .rotary import Rotary

__all__ = ["Causal", "SlidingWindow", "Documents", "RelativeBias", "T5Bias", "ALiBi", "URPE",
           "GridRelativeBias", "WindowMask", "ShiftedWindowRegions", "ManhattanDecay",
           "GraphAdjacency", "ShortestPathBias", "EdgeBias", "EdgeFeatureBias", "EdgePathBias", "BoxRelationBias",
           "Pair3DBias", "Rotary"]
