"""3-D visual grounding on packed scenes: TransRefer3D (He et al. 2021) with Entity-aware and
Relation-aware Attention, its plain-attention ablation and a ReferIt3DNet-style baseline.

* :mod:`.config`: :class:`GroundingConfig` and the variants ``transrefer3d``, ``transrefer3d_plain``,
  ``referit3dnet``, ``transrefer3d_micro``;
* :mod:`.objects`: :class:`ObjectEncoder` (packed points per object);
* :mod:`.language`: :class:`WordEncoder` (all-MiniLM-L6-v2 word features);
* :mod:`.layers`: EA, RA, ERCB; :mod:`.layout`: the packed (and padded-twin) layout;
* :mod:`.model`: :class:`TransRefer3D`, :class:`ReferIt3DNet`, :func:`grounding_loss`.
"""
from torch import nn

from ..registry import builds
from .config import GroundingConfig
from .layers import ERCB, EntityAwareAttention, RelationAwareAttention
from .layout import ElementSet, SceneLayout
from .model import (LOSS_WEIGHTS, GroundingOutput, ReferIt3DNet, TransRefer3D, grounding_loss, scene_argmax,
                    scene_log_softmax)
from .objects import ObjectEncoder

__all__ = ["GroundingConfig", "TransRefer3D", "ReferIt3DNet", "GroundingOutput", "grounding_loss", "scene_argmax",
           "scene_log_softmax", "LOSS_WEIGHTS", "ObjectEncoder", "ERCB", "EntityAwareAttention",
           "RelationAwareAttention", "SceneLayout", "ElementSet"]


@builds(GroundingConfig)
def build_grounding(config: GroundingConfig) -> nn.Module:
    """:class:`TransRefer3D` or :class:`ReferIt3DNet` by ``config.arch``."""
    return TransRefer3D(config) if config.arch == "transrefer3d" else ReferIt3DNet(config)
