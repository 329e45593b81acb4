"""The grounding family's config and registered variants (TransRefer3D, its plain-attention ablation and
the ReferIt3DNet-style baseline)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ...data.grounding import CLASSES, STRUCTURE
from ..checks import check_positive, check_rate
from ..registry import register_model

__all__ = ["GroundingConfig", "ARCHS", "RELATIONS"]

ARCHS = ("transrefer3d", "referit3dnet")
RELATIONS = ("pair", "plain")


@dataclass(frozen=True)
class GroundingConfig:
    """Hyper-parameters of a 3-D referring model (defaults: TransRefer3D's reference code, ``D = 128``,
    4 blocks of 4 heads, feed-forward width ``D``).

    ``arch``: ``"transrefer3d"`` (ERCB stack) or ``"referit3dnet"`` (sentence vector + object attention).
    ``relation`` (TransRefer3D): ``"pair"`` -- Relation-aware Attention over object pairs with their 3-D
    geometry and geometry-biased object self-attention (:class:`~relformer.relations.Pair3DBias`);
    ``"plain"`` -- both replaced by plain attention among the scene's objects (the ablation).
    Object encoder: ``points_per_object`` points (stride subsample), a ``point_dim`` MLP and
    ``point_layers`` point-transformer blocks of ``point_heads`` heads, max-pooled. Language: the
    registered text variant ``text_model`` (``text_pretrained``: its shipped weights; ``freeze_text``:
    no gradient, word features cached per sentence). ``num_classes``: object classes of the auxiliary
    heads (default: the generated benchmark's classes and the room structure).
    """

    arch: Literal["transrefer3d", "referit3dnet"] = "transrefer3d"
    relation: Literal["pair", "plain"] = "pair"
    dim: int = 128
    depth: int = 4
    num_heads: int = 4
    mlp_hidden: int | None = None
    pair_hidden: int = 32
    point_dim: int = 64
    point_layers: int = 1
    point_heads: int = 2
    points_per_object: int = 64
    text_model: str = "minilm_l6"
    text_pretrained: bool = True
    freeze_text: bool = True
    max_words: int = 64
    num_classes: int = len(CLASSES) + len(STRUCTURE)
    dropout: float = 0.1
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, "dim", "depth", "num_heads", "pair_hidden", "point_dim", "point_heads",
                       "points_per_object", "max_words", "num_classes")
        check_rate(self, "dropout")
        if self.arch not in ARCHS:
            raise ValueError(f"GroundingConfig.arch must be one of {ARCHS}, got {self.arch!r}")
        if self.relation not in RELATIONS:
            raise ValueError(f"GroundingConfig.relation must be one of {RELATIONS}, got {self.relation!r}")
        if not (isinstance(self.point_layers, int) and self.point_layers >= 0):
            raise ValueError(f"GroundingConfig.point_layers must be an int >= 0, got {self.point_layers!r}")
        if self.mlp_hidden is not None and not (isinstance(self.mlp_hidden, int) and self.mlp_hidden > 0):
            raise ValueError(f"GroundingConfig.mlp_hidden must be a positive int or None, got {self.mlp_hidden!r}")
        for name, width, heads in (("dim", self.dim, self.num_heads), ("point_dim", self.point_dim, self.point_heads)):
            if width % heads:
                raise ValueError(f"GroundingConfig.{name} ({width}) must be divisible by its heads ({heads})")
        if self.max_words < 2:
            raise ValueError(f"GroundingConfig.max_words must be >= 2 ([CLS] and [SEP]), got {self.max_words}")

    @property
    def ffn_hidden(self) -> int:
        return self.dim if self.mlp_hidden is None else self.mlp_hidden


@register_model
def transrefer3d() -> GroundingConfig:
    """TransRefer3D (He et al. 2021) at the reference code's size: 4 ERCBs of width 128, 4 heads, frozen
    all-MiniLM-L6-v2 words."""
    return GroundingConfig()


@register_model
def transrefer3d_plain() -> GroundingConfig:
    """The ablation of :func:`transrefer3d`: Relation-aware Attention replaced by plain attention."""
    return GroundingConfig(relation="plain")


@register_model
def referit3dnet() -> GroundingConfig:
    """A ReferIt3DNet-style baseline (Achlioptas et al. 2020): object encoder, sentence vector, 4 blocks of
    plain attention among the scene's objects fused with the sentence, no pair relations."""
    return GroundingConfig(arch="referit3dnet")


@register_model
def transrefer3d_micro() -> GroundingConfig:
    """A small TransRefer3D for tests and short CPU runs: 2 ERCBs of width 64, 16 points per object."""
    return GroundingConfig(dim=64, depth=2, num_heads=4, pair_hidden=16, point_dim=32, point_layers=1,
                           point_heads=2, points_per_object=16, dropout=0.0)
