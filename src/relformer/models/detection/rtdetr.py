"""RT-DETR (Zhao et al. 2024, "DETRs Beat YOLOs on Real-time Object Detection"), assembled:

    images -> ResNet-D (:mod:`.rtdetr_backbone`) -> 1x1 conv + BN per level -> hybrid encoder (AIFI +
    CCFM, :mod:`.rtdetr_encoder`, sec. 4.2) -> IoU-aware query selection (+ contrastive denoising
    queries in training, :mod:`.rtdetr_queries`, sec. 4.3) -> deformable decoder with iterative box
    refinement (:mod:`.rtdetr_decoder`) -> per layer sigmoid class logits and boxes.

Module for module HF ``RTDetrForObjectDetection`` (:func:`relformer.interop.transformers.from_hf` converts
one; only prefixes change). ``model(images (B, C, H, W), pixel_mask=None, labels=None) -> RTDETROutput``.
``pixel_mask`` is checked and, as in HF's RT-DETR, not read (the maps are not masked). ``labels`` (HF's:
one ``{"class_labels", "boxes" cxcywh}`` per image) add the denoising queries in training and ``loss`` /
``loss_dict`` (:class:`~.rtdetr_loss.RTDetrCriterion` from the config's HF-named loss fields, as HF
``RTDetrForObjectDetection(..., labels=...)``; the terms are unweighted, ``loss`` is the weighted sum).
Outputs follow HF's layout: in training with labels the ``N`` denoising queries come first
(``denoising_meta_values["dn_num_split"] = [N, Q]``).

Rank-DETR (Pu et al. 2023, :mod:`.rank`), each part a config flag: ``rank_architecture`` (query rank
layers and rank-adaptive class heads in the decoder, :mod:`.rtdetr_decoder`), ``rank_loss`` (the
GIoU-aware class loss instead of VFL on the decoder outputs), ``high_order_cost`` (the matcher's cost
``-p IoU^iou_order``) from the share ``high_order_start`` of training on (the paper: the last quarter;
the engine hands the share to :meth:`RTDETR.set_training_progress` before every step; a model never
told its progress uses the cost whenever the flag is set).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from ...relations import GraphAdjacency
from ..checks import check_count, check_eps, check_positive, check_rate
from ..registry import PretrainedMixin, builds, register_model
from .detr import DetectionOutput, hf_targets
from .rtdetr_backbone import RTDetrResNetBackbone
from .rtdetr_decoder import RTDetrDecoder
from .rtdetr_encoder import RTDetrHybridEncoder, input_projections
from .rtdetr_loss import RTDetrCriterion, rtdetr_loss_outputs, rtdetr_matcher
from .rtdetr_queries import QuerySelection

__all__ = ["RTDETRConfig", "RTDETR", "RTDETROutput", "ACTIVATIONS", "LOSS_FIELDS"]

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
# HF RTDetrConfig's loss fields, same names and defaults (interop/rtdetr.py copies them)
LOSS_FIELDS = ("matcher_class_cost", "matcher_bbox_cost", "matcher_giou_cost", "use_focal_loss", "matcher_alpha",
               "matcher_gamma", "weight_loss_vfl", "weight_loss_bbox", "weight_loss_giou", "focal_loss_alpha",
               "focal_loss_gamma", "auxiliary_loss")


@dataclass
class RTDETROutput(DetectionOutput):
    """:class:`~.detr.DetectionOutput` with RT-DETR's extras. ``logits (B, N + Q, K)`` (sigmoid classes, no
    "no object" column) and ``pred_boxes (B, N + Q, 4)`` of the last decoder layer; ``layer_logits (B,
    layers, N + Q, K)`` / ``layer_boxes``: every layer's (``aux_outputs`` stays empty: the loss reads these);
    ``enc_topk_logits (B, Q, K)`` / ``enc_topk_bboxes``: the selected encoder tokens' predictions;
    ``init_reference_points (B, N + Q, 4)`` (logits); ``encoder_last_hidden_state (B, S, C)``: the decoder's
    flattened memory; ``denoising_meta_values`` (``N > 0`` only in training with labels)."""

    layer_logits: Tensor | None = None
    layer_boxes: Tensor | None = None
    enc_topk_logits: Tensor | None = None
    enc_topk_bboxes: Tensor | None = None
    init_reference_points: Tensor | None = None
    denoising_meta_values: dict | None = None


@dataclass(frozen=True)
class RTDETRConfig:
    """RT-DETR (defaults: RT-DETR-R50's, HF ``RTDetrConfig``'s). HF field names in brackets.

    Backbone: ``in_channels``, ``stem_channels`` [``embedding_size``], ``widths`` [``hidden_sizes``],
    ``depths``, ``block`` [``layer_type``], ``out_indices``, ``backbone_norm`` (``"frozen"``:
    [``freeze_backbone_batch_norms``]), ``downsample_first_stage``, ``downsample_in_bottleneck``.
    Encoder: ``encoder_dim`` [``encoder_hidden_dim``], ``encode_proj_layers``, ``encoder_layers``,
    ``encoder_heads``, ``encoder_ffn``, ``encoder_act``, ``act`` [``activation_function``], ``pre_norm``
    [``normalize_before``], ``expansion`` [``hidden_expansion``], ``temperature``. Decoder: ``dim`` [``d_model``],
    ``num_queries``, ``num_levels`` [``num_feature_levels``], ``decoder_layers``, ``decoder_heads``,
    ``decoder_ffn``, ``num_points`` [``decoder_n_points``], ``learn_initial_query``. Denoising:
    ``num_denoising``, ``label_noise_ratio``, ``box_noise_scale``. ``dropout``, ``attn_dropout``,
    ``layer_norm_eps``, ``batch_norm_eps``, ``backend`` (of :func:`relformer.attend`). Loss (HF's names and
    defaults): :data:`LOSS_FIELDS`. Rank-DETR: ``rank_architecture``, ``rank_loss`` (with ``rank_alpha``,
    ``rank_gamma``: 0.25, 2), ``high_order_cost`` (with ``iou_order``: 4, ``high_order_start``: 0.75 of
    training), all off by default.
    """

    num_classes: int = 80
    in_channels: int = 3
    stem_channels: int = 64
    widths: tuple[int, ...] = (256, 512, 1024, 2048)
    depths: tuple[int, ...] = (3, 4, 6, 3)
    block: Literal["basic", "bottleneck"] = "bottleneck"
    out_indices: tuple[int, ...] = (2, 3, 4)
    backbone_norm: Literal["batch", "frozen"] = "frozen"
    downsample_first_stage: bool = False
    downsample_in_bottleneck: bool = False
    encoder_dim: int = 256
    encode_proj_layers: tuple[int, ...] = (2,)
    encoder_layers: int = 1
    encoder_heads: int = 8
    encoder_ffn: int = 1024
    encoder_act: Literal["relu", "gelu", "silu"] = "gelu"
    act: Literal["relu", "gelu", "silu"] = "silu"
    pre_norm: bool = False
    expansion: float = 1.0
    temperature: float = 10000.0
    dim: int = 256
    num_queries: int = 300
    num_levels: int = 3
    decoder_layers: int = 6
    decoder_heads: int = 8
    decoder_ffn: int = 1024
    num_points: int = 4
    learn_initial_query: bool = False
    num_denoising: int = 100
    label_noise_ratio: float = 0.5
    box_noise_scale: float = 1.0
    dropout: float = 0.0
    attn_dropout: float = 0.0
    layer_norm_eps: float = 1e-5
    batch_norm_eps: float = 1e-5
    backend: str = "auto"
    matcher_class_cost: float = 2.0
    matcher_bbox_cost: float = 5.0
    matcher_giou_cost: float = 2.0
    use_focal_loss: bool = True
    matcher_alpha: float = 0.25
    matcher_gamma: float = 2.0
    weight_loss_vfl: float = 1.0
    weight_loss_bbox: float = 5.0
    weight_loss_giou: float = 2.0
    focal_loss_alpha: float = 0.75
    focal_loss_gamma: float = 2.0
    auxiliary_loss: bool = True
    rank_architecture: bool = False
    rank_loss: bool = False
    rank_alpha: float = 0.25
    rank_gamma: float = 2.0
    high_order_cost: bool = False
    iou_order: float = 4.0
    high_order_start: float = 0.75

    def __post_init__(self) -> None:
        name = type(self).__name__
        check_positive(self, "num_classes", "in_channels", "stem_channels", "encoder_dim", "encoder_heads",
                       "encoder_ffn", "dim", "num_queries", "num_levels", "decoder_layers", "decoder_heads",
                       "decoder_ffn", "num_points")
        check_count(self, "encoder_layers", "num_denoising")
        check_eps(self, "layer_norm_eps", "batch_norm_eps", "expansion", "temperature")
        check_rate(self, "dropout", "attn_dropout")
        for key, options in (("block", ("basic", "bottleneck")), ("backbone_norm", ("batch", "frozen")),
                             ("encoder_act", tuple(ACTIVATIONS)), ("act", tuple(ACTIVATIONS))):
            if getattr(self, key) not in options:
                raise ValueError(f"{name}.{key} must be one of {options}, got {getattr(self, key)!r}")
        for key in ("use_focal_loss", "auxiliary_loss", "rank_architecture", "rank_loss", "high_order_cost"):
            if not isinstance(getattr(self, key), bool):
                raise ValueError(f"{name}.{key} must be a bool, got {getattr(self, key)!r}")
        for key in ("matcher_class_cost", "matcher_bbox_cost", "matcher_giou_cost", "matcher_alpha", "matcher_gamma",
                    "weight_loss_vfl", "weight_loss_bbox", "weight_loss_giou", "focal_loss_alpha", "focal_loss_gamma",
                    "rank_alpha", "rank_gamma", "label_noise_ratio", "box_noise_scale"):
            value = getattr(self, key)
            if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value < float("inf")):
                raise ValueError(f"{name}.{key} must be a finite number >= 0, got {value!r}")
        if not (isinstance(self.high_order_start, (int, float)) and 0 <= self.high_order_start <= 1):
            raise ValueError(f"{name}.high_order_start must lie in [0, 1] (a share of training), got "
                             f"{self.high_order_start!r}")
        if not self.iou_order > 0:
            raise ValueError(f"{name}.iou_order must be > 0 (Rank-DETR: 4), got {self.iou_order!r}")
        if self.rank_architecture and self.decoder_layers < 2:
            raise ValueError(f"{name}.rank_architecture needs decoder_layers >= 2 (query rank layers sit between "
                             f"layers), got {self.decoder_layers}")
        if self.num_levels < len(self.out_indices):
            raise ValueError(f"{name}.num_levels ({self.num_levels}) must be >= len(out_indices) ({len(self.out_indices)})")
        if self.encoder_dim != self.dim and self.num_levels > len(self.out_indices) + 1:
            raise ValueError(f"{name}: extra levels beyond one read the encoder map with dim channels; "
                             f"encoder_dim ({self.encoder_dim}) must equal dim ({self.dim})")
        if self.encoder_dim % 4 or self.encoder_dim % self.encoder_heads or self.dim % self.decoder_heads:
            raise ValueError(f"{name}: encoder_dim ({self.encoder_dim}) must be divisible by 4 and encoder_heads, "
                             f"dim ({self.dim}) by decoder_heads")


@builds(RTDETRConfig)
class RTDETR(PretrainedMixin, nn.Module):
    """RT-DETR (module docstring). ``forward(images (B, C, H, W), pixel_mask (B, H, W) | None, labels=None)
    -> RTDETROutput``; ``H`` and ``W`` multiples of the coarsest backbone stride."""

    def __init__(self, config: RTDETRConfig) -> None:
        super().__init__()
        c = self.config = config
        self.backbone = RTDetrResNetBackbone(c.in_channels, c.stem_channels, c.widths, c.depths, c.block, c.out_indices,
                                             c.backbone_norm, nn.ReLU, c.downsample_first_stage,
                                             c.downsample_in_bottleneck)
        self.encoder_input_proj = input_projections(self.backbone.channels, c.encoder_dim)
        self.encoder = RTDetrHybridEncoder(
            c.encoder_dim, len(c.out_indices), c.encode_proj_layers, c.encoder_layers, c.encoder_heads, c.encoder_ffn,
            ACTIVATIONS[c.encoder_act], ACTIVATIONS[c.act], c.dropout, c.pre_norm, c.expansion, c.layer_norm_eps,
            c.batch_norm_eps, c.temperature, backend=c.backend)
        self.queries = QuerySelection(c.dim, c.num_classes, c.num_queries, (c.encoder_dim,) * len(c.out_indices),
                                      c.num_levels, c.learn_initial_query, c.num_denoising, c.label_noise_ratio,
                                      c.box_noise_scale, c.layer_norm_eps, c.batch_norm_eps)
        self.decoder = RTDetrDecoder(c.dim, c.decoder_layers, c.decoder_heads, c.num_levels, c.num_points,
                                     c.decoder_ffn, c.num_classes, c.dropout, c.attn_dropout, c.layer_norm_eps,
                                     backend=c.backend, rank=c.rank_architecture, num_queries=c.num_queries)

    def set_training_progress(self, share: float) -> None:
        """The share of training done (0 to 1); it switches the high-order cost on at ``high_order_start``."""
        self.training_share = float(share)

    @property
    def high_order_active(self) -> bool:
        """Whether the matcher uses Rank-DETR's high-order cost now."""
        share = getattr(self, "training_share", None)
        return self.config.high_order_cost and (share is None or share >= self.config.high_order_start)

    def criterion(self) -> RTDetrCriterion:
        """The loss of ``labels=`` (:class:`~.rtdetr_loss.RTDetrCriterion`) from the config's loss fields."""
        c = self.config
        matcher = rtdetr_matcher(c.matcher_class_cost, c.matcher_bbox_cost, c.matcher_giou_cost, c.use_focal_loss,
                                 c.matcher_alpha, c.matcher_gamma, c.iou_order if self.high_order_active else None)
        return RTDetrCriterion(c.num_classes, matcher, c.weight_loss_vfl, c.weight_loss_bbox, c.weight_loss_giou,
                               alpha=c.focal_loss_alpha, gamma=c.focal_loss_gamma, giou_aware=c.rank_loss,
                               rank_alpha=c.rank_alpha, rank_gamma=c.rank_gamma)

    def forward(self, images: Tensor, pixel_mask: Tensor | None = None,
                labels: Sequence[Mapping[str, Tensor]] | None = None) -> RTDETROutput:
        maps = self.backbone(images)  # checks images
        if pixel_mask is not None and (not isinstance(pixel_mask, Tensor)
                                       or pixel_mask.shape != (images.shape[0], *images.shape[2:])):
            raise ValueError(f"pixel_mask must be (B, H, W) = {(images.shape[0], *images.shape[2:])}, got "
                             f"{tuple(pixel_mask.shape) if isinstance(pixel_mask, Tensor) else type(pixel_mask).__name__}")
        encoded = self.encoder([proj(m) for proj, m in zip(self.encoder_input_proj, maps)])
        q = self.queries(encoded, labels)
        relation = None
        if q.attn_mask is not None:
            relation = GraphAdjacency(q.attn_mask.expand(images.shape[0], -1, -1), self_loops=False)
        dn_meta = q.denoising_meta_values
        dec = self.decoder(q.target, q.reference_points_unact, q.memory, q.spatial_shapes, q.level_start_index,
                           relation, num_fixed=0 if dn_meta is None else dn_meta["dn_num_split"][0])
        out = RTDETROutput(logits=dec.logits[:, -1], pred_boxes=dec.boxes[:, -1], layer_logits=dec.logits,
                            layer_boxes=dec.boxes, last_hidden_state=dec.last_hidden_state,
                            encoder_last_hidden_state=q.memory, enc_topk_logits=q.enc_topk_logits,
                            enc_topk_bboxes=q.enc_topk_bboxes, init_reference_points=q.reference_points_unact,
                            denoising_meta_values=dn_meta)
        if labels is not None:
            out.loss_dict = self.loss(out, labels)
            out.loss = out.loss_dict["loss"]
        return out

    def loss(self, out: RTDETROutput, labels: Sequence[Mapping[str, Tensor]]) -> dict[str, Tensor]:
        """:meth:`criterion` on ``out`` (HF ``RTDetrForObjectDetectionLoss``'s split of the stacked outputs;
        the encoder and intermediate terms with ``auxiliary_loss``) -> ``{term: scalar}`` with ``"loss"``."""
        c = self.config
        if c.auxiliary_loss:
            outputs = rtdetr_loss_outputs(out.logits, out.pred_boxes, out.layer_logits, out.layer_boxes,
                                          out.enc_topk_logits, out.enc_topk_bboxes, out.denoising_meta_values)
        else:
            outputs = rtdetr_loss_outputs(out.logits, out.pred_boxes, dn_meta=out.denoising_meta_values)
        return self.criterion()(outputs, hf_targets(labels))


@register_model
def rtdetr_micro() -> RTDETRConfig:
    """A tiny RT-DETR for tests: a 4-stage basic ResNet of width 8-32, encoder and decoder of width 16,
    2 decoder layers, 8 queries, 8 denoising queries."""
    return RTDETRConfig(num_classes=5, in_channels=1, stem_channels=8, widths=(8, 16, 24, 32), depths=(1, 1, 1, 1),
                        block="basic", encoder_dim=16, encoder_heads=2, encoder_ffn=32, dim=16, num_queries=8,
                        decoder_layers=2, decoder_heads=2, decoder_ffn=32, num_points=2, num_denoising=8)


@register_model
def rtdetr_fashion() -> RTDETRConfig:
    """A small CPU-trainable RT-DETR for the Fashion-MNIST canvases (grey, 10 classes): a ResNet-18-like
    backbone of basic blocks (2 per stage, widths 16-128, trainable BatchNorms: trained from scratch),
    levels at strides 8, 16, 32, encoder and decoder of width 128 (4 heads, FFN 256), 3 decoder layers,
    50 queries, 50 denoising queries."""
    return RTDETRConfig(num_classes=10, in_channels=1, stem_channels=16, widths=(16, 32, 64, 128), depths=(2, 2, 2, 2),
                        block="basic", backbone_norm="batch", encoder_dim=128, encoder_heads=4, encoder_ffn=256,
                        dim=128, num_queries=50, decoder_layers=3, decoder_heads=4, decoder_ffn=256, num_points=4,
                        num_denoising=50)
