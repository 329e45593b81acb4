"""relformer: relation-aware Transformers on one attention primitive."""
from .attention import BACKENDS, Choice, Compose, Relation, attend, explain, multi_scale_deformable_attend

__version__ = "0.1.0"
__all__ = ["attend", "explain", "Choice", "BACKENDS", "Relation", "Compose", "multi_scale_deformable_attend",
           "__version__"]
