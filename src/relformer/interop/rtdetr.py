"""HF ``RTDetrForObjectDetection`` (HF's own ``RTDetrResNet`` backbone, no timm) -> :class:`~relformer.models.
detection.RTDETR`: :func:`rtdetr_config` reads HF's config, :data:`RTDETR_KEYMAP` renames the weights (only
prefixes change: ``model.backbone.model.`` -> ``backbone.``, the query-selection parts -> ``queries.``,
``model.`` off the rest). Used by :func:`relformer.interop.transformers.from_hf`."""
from __future__ import annotations

from torch import nn

from ..models.detection.rtdetr import ACTIVATIONS, LOSS_FIELDS, RTDETRConfig
from ..models.keymap import KeyMap

__all__ = ["rtdetr_config", "RTDETR_KEYMAP"]

_QUERY_PARTS = r"decoder_input_proj|enc_output|enc_score_head|enc_bbox_head|denoising_class_embed|weight_embedding"
RTDETR_KEYMAP = KeyMap("model.", [
    (r"backbone\.model\.(.*)", r"backbone.\1"),
    (rf"({_QUERY_PARTS})\.(.*)", r"queries.\1.\2"),
    (r"(encoder_input_proj|encoder|decoder)\.(.*)", r"\1.\2"),
], qkv=None)


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise NotImplementedError(f"from_hf: {what}")


def rtdetr_config(model: nn.Module, num_classes: int = 0) -> RTDETRConfig:
    """The :class:`RTDETRConfig` of an HF ``RTDetrForObjectDetection`` (its loss fields too: same names);
    ``NotImplementedError`` names an HF option relformer does not reproduce."""
    c = model.config
    b = c.backbone_config
    _require(getattr(b, "model_type", None) == "rt_detr_resnet",
             f"backbone {getattr(b, 'model_type', b)!r} (only HF's RTDetrResNet, use_timm_backbone=False)")
    _require(b.hidden_act == "relu" and c.decoder_activation_function == "relu",
             "backbone or decoder activations other than relu")
    for key in ("encoder_activation_function", "activation_function"):
        _require(getattr(c, key) in ACTIVATIONS, f"{key}={getattr(c, key)!r} (one of {tuple(ACTIVATIONS)})")
    _require(c.eval_size is None, "eval_size (HF then drops AIFI's positions in eval)")
    _require(c.anchor_image_size is None, "anchor_image_size (fixed anchors; relformer makes them per image size)")
    _require(not c.normalize_before, "normalize_before=True (HF's pre-norm FFN residual starts from the normed "
             "input, unlike RT-DETR's)")
    _require(float(c.activation_dropout) == float(c.dropout), "activation_dropout != dropout (relformer's FFN has one)")
    out_indices = tuple(b.out_indices)
    channels = [([b.embedding_size] + list(b.hidden_sizes))[i] for i in out_indices]
    _require(list(c.encoder_in_channels) == channels, f"encoder_in_channels={list(c.encoder_in_channels)} differ from "
             f"the backbone's {channels}")
    _require(list(c.decoder_in_channels) == [c.encoder_hidden_dim] * len(channels),
             f"decoder_in_channels={list(c.decoder_in_channels)} (must be encoder_hidden_dim per level)")
    return RTDETRConfig(
        num_classes=c.num_labels, in_channels=b.num_channels, stem_channels=b.embedding_size,
        widths=tuple(b.hidden_sizes), depths=tuple(b.depths), block=b.layer_type, out_indices=out_indices,
        backbone_norm="frozen" if c.freeze_backbone_batch_norms else "batch",
        downsample_first_stage=b.downsample_in_first_stage, downsample_in_bottleneck=b.downsample_in_bottleneck,
        encoder_dim=c.encoder_hidden_dim, encode_proj_layers=tuple(c.encode_proj_layers), encoder_layers=c.encoder_layers,
        encoder_heads=c.encoder_attention_heads, encoder_ffn=c.encoder_ffn_dim, encoder_act=c.encoder_activation_function,
        act=c.activation_function, expansion=float(c.hidden_expansion),
        temperature=float(c.positional_encoding_temperature), dim=c.d_model, num_queries=c.num_queries,
        num_levels=c.num_feature_levels, decoder_layers=c.decoder_layers, decoder_heads=c.decoder_attention_heads,
        decoder_ffn=c.decoder_ffn_dim, num_points=c.decoder_n_points, learn_initial_query=c.learn_initial_query,
        num_denoising=c.num_denoising, label_noise_ratio=float(c.label_noise_ratio),
        box_noise_scale=float(c.box_noise_scale), dropout=float(c.dropout), attn_dropout=float(c.attention_dropout),
        layer_norm_eps=float(c.layer_norm_eps), batch_norm_eps=float(c.batch_norm_eps),
        **{key: getattr(c, key) if isinstance(getattr(c, key), bool) else float(getattr(c, key)) for key in LOSS_FIELDS})
