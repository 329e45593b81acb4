"""Set-prediction detectors on :func:`relformer.attend`: DETR, Relation-DETR and Group DETR
(:mod:`.detr`), on a ResNet backbone (:mod:`.backbone`); their set loss, matching and
post-processing (:mod:`.set_prediction`) and box geometry (:mod:`.boxes`); RT-DETR (:mod:`.rtdetr`, from
:mod:`.rtdetr_backbone`, :mod:`.rtdetr_encoder`, :mod:`.rtdetr_queries` and :mod:`.rtdetr_decoder`)."""
from .backbone import ConvNorm, FrozenBatchNorm2d, ResidualUnit, ResNetBackbone, sine_positions
from . import boxes, set_prediction
from .detr import (DETR, BoxHead, DetectionOutput, DETRConfig, detr_fashion, detr_micro, group_detr_fashion,
                   relation_detr_fashion)
from .rtdetr import RTDETR, RTDETRConfig, RTDETROutput, rtdetr_fashion, rtdetr_micro

__all__ = ["DETRConfig", "DETR", "DetectionOutput", "BoxHead", "ResNetBackbone", "FrozenBatchNorm2d", "ConvNorm",
           "ResidualUnit", "sine_positions", "detr_fashion", "relation_detr_fashion", "group_detr_fashion",
           "detr_micro", "boxes", "set_prediction", "RTDETR", "RTDETRConfig", "RTDETROutput", "rtdetr_micro",
           "rtdetr_fashion"]
