"""The attention primitive: :func:`attend`, its backends and the :class:`Relation` protocol."""
from .attend import BACKENDS, Choice, attend, explain
from .deformable import multi_scale_deformable_attend
from .linear import elu_feature_map, linear_attention
from .relation import Compose, Relation, index_grid

__all__ = ["attend", "explain", "Choice", "BACKENDS", "Relation", "Compose", "index_grid", "linear_attention",
           "elu_feature_map", "multi_scale_deformable_attend"]
