"""relformer: relation-aware Transformers on one attention primitive."""
from .attention import BACKENDS, Choice, Compose, Relation, attend, explain

__version__ = "0.1.0"
__all__ = ["attend", "explain", "Choice", "BACKENDS", "Relation", "Compose", "__version__"]
