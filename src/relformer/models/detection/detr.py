"""Set-prediction detectors on :func:`relformer.attend`: DETR, Relation-DETR and Group DETR.

* :class:`DETR` (Carion et al. 2020, "End-to-End Object Detection with Transformers"): a ResNet
  backbone, a 1x1 input projection, sine positions, a post-norm Transformer encoder over the
  feature map and a decoder whose object queries attend to each other and to the image, a class
  head (``num_classes + 1`` with "no object") and a 3-layer box MLP (``sigmoid`` -> ``cx, cy, w, h``
  in ``[0, 1]``); every decoder layer's output goes through the shared final LayerNorm and heads
  (the auxiliary decoding losses). Layer for layer the layout of HF ``DetrForObjectDetection``
  (:func:`relformer.interop.transformers.from_hf` converts one).
* Relation-DETR (Hou et al. 2024, "Relation DETR: Exploring Explicit Position Relation Prior for
  Object Detection"), ``box_relation=True``: the decoder self-attention of layer ``l + 1`` is biased
  by :class:`~relformer.relations.BoxRelationBias` of the boxes layer ``l`` predicted (detached, as
  Relation-DETR), so the relation is refined layer by layer; the first layer has none.
* Group DETR (Chen et al. 2023, "Group DETR: Fast DETR Training with Group-Wise One-to-Many
  Assignment"), ``num_groups=K``: ``K`` groups of ``num_queries`` queries in training, each matched
  one-to-one on its own (``HungarianMatcher(num_groups=K)``) and kept apart in the decoder
  self-attention by a :class:`~relformer.relations.Documents` mask; one group at inference.

``model(images (B, C, H, W), pixel_mask=None, labels=None) -> DetectionOutput``. ``pixel_mask (B, H,
W)`` (1 = real pixel) marks padding; padded feature positions are masked as keys everywhere.
``labels``, as HF's: one ``{"class_labels" (or "labels"): (M,) long, "boxes": (M, 4) cxcywh in
[0, 1]}`` per image, adds ``loss`` and ``loss_dict``: DETR's set criterion
(:class:`~relformer.models.detection.set_prediction.SetCriterion`) with the config's matching
costs and loss weights, on every decoder layer's output when ``aux_loss``.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn import MLP, Decoder, Encoder, Linear
from ...relations import BoxRelationBias, Documents
from ..checks import check_rate
from ..outputs import ModelOutput
from ..registry import PretrainedMixin, builds, register_model
from .backbone import ResNetBackbone, sine_positions
from .set_prediction import set_criterion

__all__ = ["DETRConfig", "DETR", "DetectionOutput", "BoxHead"]


@dataclass
class DetectionOutput(ModelOutput):
    """``loss`` and ``loss_dict`` (the set criterion's terms) when ``labels`` were given; ``logits (B, Q, num_classes + 1)`` (last class: no object); ``pred_boxes (B, Q, 4)`` (cx, cy, w,
    h) in ``[0, 1]``; ``aux_outputs``: ``{"logits", "pred_boxes"}`` of every decoder layer but the
    last (empty without auxiliary losses); ``last_hidden_state (B, Q, C)``: the decoder output after
    its final norm; ``encoder_last_hidden_state (B, HW, C)``."""

    loss: Tensor | None = None
    loss_dict: dict[str, Tensor] | None = None
    logits: Tensor | None = None
    pred_boxes: Tensor | None = None
    aux_outputs: list[dict[str, Tensor]] = field(default_factory=list)
    last_hidden_state: Tensor | None = None
    encoder_last_hidden_state: Tensor | None = None


# ---------------------------------------------------------------------------------------------
# Config and model
# ---------------------------------------------------------------------------------------------
LOSS_FIELDS = ("cost_class", "cost_bbox", "cost_giou", "weight_class", "weight_bbox", "weight_giou", "eos_coef")


@dataclass(frozen=True)
class DETRConfig:
    """DETR and its variants (defaults: DETR-R50's Transformer, a small ResNet backbone).

    Backbone: ``in_channels``, ``stem_channels``, ``widths`` / ``depths`` per stage, ``block``
    (``"basic"`` / ``"bottleneck"``), ``backbone_norm`` (``"batch"`` trainable, ``"frozen"`` as DETR
    with pretrained weights), ``downsample_first_stage``, ``downsample_in_bottleneck`` (HF ``ResNetConfig``).
    Transformer: ``dim``, ``num_heads``, ``encoder_layers``, ``decoder_layers``, ``encoder_mlp`` /
    ``decoder_mlp`` (FFN widths), ``dropout`` (DETR: 0.1), ``attn_dropout``, ``num_queries``.
    ``aux_loss``: predictions of every decoder layer. Loss of ``labels=``: matching costs
    ``cost_class`` / ``cost_bbox`` / ``cost_giou`` and weights ``weight_class`` / ``weight_bbox`` /
    ``weight_giou``, no-object weight ``eos_coef`` (DETR's 1, 5, 2; 1, 5, 2; 0.1). ``box_relation`` (Relation-DETR) with
    ``relation_embed_dim``; ``num_groups`` (Group DETR). HF's ``DetrForObjectDetection`` with the
    same initial weights, the benchmarks' baseline, is a peer built in
    :mod:`relformer.interop.transformers` (``hf_detr_fashion``).
    """

    num_classes: int = 10
    in_channels: int = 3
    stem_channels: int = 64
    widths: tuple[int, ...] = (64, 128, 256)
    depths: tuple[int, ...] = (2, 2, 2)
    block: Literal["basic", "bottleneck"] = "basic"
    backbone_norm: Literal["batch", "frozen"] = "batch"
    downsample_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    dim: int = 256
    num_heads: int = 8
    encoder_layers: int = 6
    decoder_layers: int = 6
    encoder_mlp: int = 2048
    decoder_mlp: int = 2048
    dropout: float = 0.1
    attn_dropout: float = 0.0
    num_queries: int = 100
    aux_loss: bool = True
    box_relation: bool = False
    relation_embed_dim: int = 16
    num_groups: int = 1
    backend: str = "auto"
    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    weight_class: float = 1.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    eos_coef: float = 0.1

    def __post_init__(self) -> None:
        name = type(self).__name__
        for key in ("num_classes", "in_channels", "stem_channels", "dim", "num_heads", "encoder_mlp", "decoder_mlp",
                    "num_queries", "num_groups", "decoder_layers", "relation_embed_dim"):
            value = getattr(self, key)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"{name}.{key} must be a positive int, got {value!r}")
        if not (isinstance(self.encoder_layers, int) and self.encoder_layers >= 0):
            raise ValueError(f"{name}.encoder_layers must be an int >= 0, got {self.encoder_layers!r}")
        if len(self.widths) != len(self.depths) or not self.widths or min(self.widths) < 1 or min(self.depths) < 1:
            raise ValueError(f"{name}.widths and .depths must be equally long lists of positive ints, got "
                             f"{self.widths} and {self.depths}")
        if self.dim % self.num_heads or self.dim % 4:
            raise ValueError(f"{name}.dim ({self.dim}) must be divisible by num_heads ({self.num_heads}) and by 4 "
                             "(sine positions)")
        for key, options in (("block", ("basic", "bottleneck")), ("backbone_norm", ("batch", "frozen"))):
            if getattr(self, key) not in options:
                raise ValueError(f"{name}.{key} must be one of {options}, got {getattr(self, key)!r}")
        check_rate(self, "dropout", "attn_dropout")
        for key in LOSS_FIELDS:
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < math.inf):
                raise ValueError(f"{name}.{key} must be a finite number >= 0, got {value!r}")


class BoxHead(nn.Module):
    """DETR's box MLP: ``num_layers`` linear layers, ReLU between them. ``(..., dim) -> (..., 4)`` logits."""

    def __init__(self, dim: int, out: int = 4, num_layers: int = 3) -> None:
        super().__init__()
        widths = [dim] * num_layers + [out]
        self.layers = nn.ModuleList(Linear(a, b) for a, b in zip(widths[:-1], widths[1:]))

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x) if i == len(self.layers) - 1 else torch.relu(layer(x))
        return x


@builds(DETRConfig)
class DETR(PretrainedMixin, nn.Module):
    """DETR / Relation-DETR / Group DETR (see the module docstring).
    ``forward(images (B, C, H, W), pixel_mask (B, H, W) | None, labels=None) -> DetectionOutput``."""

    def __init__(self, config: DETRConfig) -> None:
        super().__init__()
        c = self.config = config
        self.backbone = ResNetBackbone(c.in_channels, c.stem_channels, c.widths, c.depths, c.block, c.backbone_norm,
                                       c.downsample_first_stage, c.downsample_in_bottleneck)
        self.input_proj = nn.Conv2d(self.backbone.out_channels, c.dim, 1)
        common = dict(pre_norm=False, final_norm=False, mlp_layer=partial(MLP, act=nn.ReLU), dropout=c.dropout,
                      attn_dropout=c.attn_dropout, backend=c.backend)
        self.encoder = Encoder(c.dim, c.encoder_layers, c.num_heads, mlp_hidden=c.encoder_mlp, **common)
        self.decoder = Decoder(c.dim, c.decoder_layers, c.num_heads, mlp_hidden=c.decoder_mlp, **common)
        self.decoder_norm = nn.LayerNorm(c.dim)
        self.query_embed = nn.Embedding(c.num_queries * c.num_groups, c.dim)
        self.class_head = Linear(c.dim, c.num_classes + 1)
        self.box_head = BoxHead(c.dim)
        self.box_relation = BoxRelationBias(c.num_heads, c.relation_embed_dim) if c.box_relation else None

    def _features(self, images: Tensor, pixel_mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """-> projected features ``(B, HW, C)``, sine positions ``(B, HW, C)``, real-position mask ``(B, h, w)``."""
        if not (isinstance(images, Tensor) and images.dim() == 4 and images.is_floating_point()):
            raise ValueError("images must be a float (B, C, H, W) tensor, got "
                             f"{(images.dtype, tuple(images.shape)) if isinstance(images, Tensor) else type(images)}")
        if images.shape[1] != self.config.in_channels:
            raise ValueError(f"images have {images.shape[1]} channels, the model takes {self.config.in_channels}")
        if images.shape[0] == 0:
            raise ValueError("images is an empty batch")
        feats = self.backbone(images)  # (B, C_b, h, w)
        B, _, h, w = feats.shape
        if pixel_mask is None:
            mask = torch.ones(B, h, w, dtype=torch.bool, device=images.device)
        else:
            if pixel_mask.shape != (B, *images.shape[2:]):
                raise ValueError(f"pixel_mask must be (B, H, W) = {(B, *images.shape[2:])}, got {tuple(pixel_mask.shape)}")
            mask = F.interpolate(pixel_mask[None].float(), size=(h, w)).bool()[0]  # nearest, as DETR
        x = self.input_proj(feats).flatten(2).transpose(1, 2)  # (B, hw, C)
        return x, sine_positions(mask, self.config.dim // 2).to(x.dtype), mask

    def _predict(self, h: Tensor) -> tuple[Tensor, Tensor]:
        return self.class_head(h), self.box_head(h).sigmoid()

    def _decode_with_box_relation(self, h: Tensor, self_rel, decode: dict) -> tuple[list, list]:
        """Relation-DETR's decoder: layer ``l + 1``'s self-attention relation is the box relation of the
        (detached) boxes layer ``l`` predicted from its normed output. -> per layer the normed output
        ``(B, Q, C)`` and its ``(logits, boxes)``."""
        states, outputs = [], []

        def predict(h: Tensor) -> None:
            states.append(self.decoder_norm(h))
            outputs.append(self._predict(states[-1]))

        def relation(i: int, h: Tensor):
            if i == 0:
                return self_rel
            predict(h)  # the output of layer i - 1
            boxes = self.box_relation.bind(boxes=outputs[-1][1].detach())
            return boxes if self_rel is None else self_rel & boxes

        predict(self.decoder(h, relation, **decode))
        return states, outputs

    def forward(self, images: Tensor, pixel_mask: Tensor | None = None,
                labels: Sequence[Mapping[str, Tensor]] | None = None) -> DetectionOutput:
        c = self.config
        x, pos, mask = self._features(images, pixel_mask)
        B = x.shape[0]
        keys = mask.flatten(1)  # (B, hw)
        # padded positions attend nothing and are attended by nothing (None: no padding, no mask)
        enc_rel = None if bool(keys.all()) else Documents(keys.long() - 1)  # ids: 0 real, -1 padding
        x = self.encoder(x, enc_rel, pos=pos)
        groups = c.num_groups if self.training else 1
        Q = c.num_queries * groups
        query_pos = self.query_embed.weight[:Q].unsqueeze(0).expand(B, -1, -1)  # (B, Q, C)
        group_ids = torch.arange(groups, device=x.device).repeat_interleave(c.num_queries).expand(B, -1)
        self_rel = Documents(group_ids) if groups > 1 else None
        cross_rel = None if enc_rel is None else Documents(torch.zeros_like(group_ids), enc_rel.segment_ids)
        decode = dict(context=x, context_relation=cross_rel, pos=query_pos, context_pos=pos)
        h = torch.zeros_like(query_pos)
        if self.box_relation is not None:
            states, outputs = self._decode_with_box_relation(h, self_rel, decode)
        else:  # the norm and heads of every layer in one call on (L, B, Q, C)
            stack = self.decoder(h, self_rel, return_hidden=c.aux_loss, **decode)
            states = self.decoder_norm(torch.stack(stack[1][1:]) if c.aux_loss else stack[None])
            outputs = list(zip(*(t.unbind(0) for t in self._predict(states))))
        logits, boxes = outputs[-1]
        aux = [{"logits": a, "pred_boxes": b} for a, b in outputs[:-1]] if c.aux_loss else []
        out = DetectionOutput(logits=logits, pred_boxes=boxes, aux_outputs=aux, last_hidden_state=states[-1],
                              encoder_last_hidden_state=x)
        if labels is not None:
            criterion = set_criterion(c.num_classes, num_groups=c.num_groups, **{k: getattr(c, k) for k in LOSS_FIELDS})
            out.loss_dict = criterion(out, hf_targets(labels), num_groups=groups)
            out.loss = out.loss_dict["loss"]
        return out


def hf_targets(labels: Sequence[Mapping[str, Tensor]]) -> list[dict[str, Tensor]]:
    """HF's targets (``class_labels``, ``boxes``) or relformer's (``labels``, ``boxes``) -> relformer's."""
    if isinstance(labels, Mapping) or not isinstance(labels, Sequence):
        raise TypeError(f"labels must be a list of one mapping per image, got {type(labels).__name__}")
    out = []
    for i, t in enumerate(labels):
        if not isinstance(t, Mapping):
            raise TypeError(f"labels[{i}] must be a mapping with 'class_labels' and 'boxes', got {type(t).__name__}")
        if "class_labels" in t and "labels" in t:
            raise ValueError(f"labels[{i}] has both 'class_labels' and 'labels'; give one")
        out.append({**t, "labels": t["class_labels"]} if "class_labels" in t else dict(t))
    return out


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------
# Fashion-MNIST detection (128 x 128 grey canvases, 1-8 items): a stride-16 ResNet-10-like backbone
# (8 x 8 = 64 image tokens), a 3 + 3 layer Transformer of width 128, 25 queries.
_FASHION = dict(num_classes=10, in_channels=1, stem_channels=32, widths=(32, 64, 128), depths=(1, 1, 1), dim=128,
                num_heads=8, encoder_layers=3, decoder_layers=3, encoder_mlp=512, decoder_mlp=512, num_queries=25)


@register_model
def detr_fashion() -> DETRConfig:
    """DETR sized for 128 x 128 Fashion-MNIST detection canvases."""
    return DETRConfig(**_FASHION)


@register_model
def relation_detr_fashion() -> DETRConfig:
    """DETR + Relation-DETR's box-relation bias in the decoder self-attention."""
    return DETRConfig(**_FASHION, box_relation=True)


@register_model
def group_detr_fashion() -> DETRConfig:
    """DETR + Group DETR: 4 query groups in training, one at inference."""
    return DETRConfig(**_FASHION, num_groups=4)


@register_model
def detr_micro() -> DETRConfig:
    """A tiny DETR for tests: 2 + 2 layers of width 32, 8 queries, a 2-stage backbone of width 16."""
    return DETRConfig(num_classes=5, in_channels=1, stem_channels=8, widths=(8, 16), depths=(1, 1), dim=32, num_heads=4,
                      encoder_layers=2, decoder_layers=2, encoder_mlp=64, decoder_mlp=64, num_queries=8)
