"""Convert Hugging Face ``transformers`` models into their relformer equivalents.

``from_hf(model)`` reads the HF model's config and weights (nothing is downloaded) and returns
the relformer module with the same outputs, called the same way (``model(pixel_values)``,
``model(input_ids, attention_mask=..., token_type_ids=...)``) and returning the same field names
(``last_hidden_state``, ``pooler_output``, ``logits``, ``hidden_states``).

Supported (transformers >= 5 weight names): ``ViTModel``, ``ViTForImageClassification``, ``SwinModel``,
``SwinForImageClassification``, ``BertModel`` (-> :class:`~relformer.models.TextEncoder`; its outputs
hold zeros at padded positions, where HF's hold values no one reads), ``DetrForObjectDetection`` with
an HF ResNet backbone (-> :class:`~relformer.models.DETR`, called ``model(pixel_values, pixel_mask)``,
returning ``logits`` and ``pred_boxes``), ``RTDetrForObjectDetection`` with HF's RTDetrResNet backbone
(-> :class:`~relformer.models.detection.RTDETR`, :mod:`relformer.interop.rtdetr`).
HF's separate q / k / v projections are fused into relformer's ``qkv`` (cross-attention: k / v into ``kv``). ``bert_text_config`` and
``bert_state_dict`` convert a BERT ``config.json`` and weight file without ``transformers``.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Callable, NamedTuple

from torch import Tensor, nn

from ..models import DETR, DETRConfig, DetectionOutput, SwinConfig, TextConfig, ViTConfig, build_model
from ..models.detection import detr_fashion, detr_micro
from ..models.keymap import KeyMap, convert_state, load_into
from ..models.registry import builds, register_model
from ..models.text.checkpoint import BERT_KEYMAP, bert_state_dict, bert_text_config
from .rtdetr import RTDETR_KEYMAP, rtdetr_config

__all__ = ["from_hf", "SUPPORTED", "bert_text_config", "bert_state_dict", "hf_detr_config", "HFDETR", "HFDETRConfig"]


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise NotImplementedError(f"from_hf: {what}")


def _common(config) -> dict:
    _require(config.hidden_act == "gelu", f"hidden_act={config.hidden_act!r} (only exact 'gelu' is supported)")
    return dict(image_size=config.image_size, patch_size=config.patch_size, in_chans=config.num_channels,
                qkv_bias=config.qkv_bias, norm_eps=config.layer_norm_eps, dropout=float(config.hidden_dropout_prob),
                attn_dropout=float(config.attention_probs_dropout_prob))


def _vit_config(model: nn.Module, num_classes: int) -> ViTConfig:
    c = model.config
    base = model.vit if hasattr(model, "vit") else model
    pooler = base.pooler is not None
    if pooler:
        _require(c.pooler_output_size == c.hidden_size and c.pooler_act == "tanh",
                 "a pooler other than tanh(Linear(hidden_size -> hidden_size))")
    return ViTConfig(num_classes=num_classes, dim=c.hidden_size, depth=c.num_hidden_layers,
                     num_heads=c.num_attention_heads, mlp_hidden=c.intermediate_size, pool="cls",
                     pos_embed="learned", pooler=pooler, **_common(c))


def _swin_config(model: nn.Module, num_classes: int) -> SwinConfig:
    c = model.config
    return SwinConfig(num_classes=num_classes, embed_dim=c.embed_dim, depths=tuple(c.depths),
                      num_heads=tuple(c.num_heads), window_size=c.window_size, mlp_ratio=float(c.mlp_ratio),
                      abs_pos_embed=c.use_absolute_embeddings, drop_path=float(c.drop_path_rate), **_common(c))


# (HF key pattern, relformer key template) after the ``vit.`` / ``swin.`` prefix is removed.
_VIT_KEYS = [
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(\w+)", r"patch_embed.\1"),
    (r"layers\.(\d+)\.attention\.o_proj\.(\w+)", r"encoder.layers.\1.attn.proj.\2"),
    (r"layers\.(\d+)\.layernorm_before\.(\w+)", r"encoder.layers.\1.norm1.\2"),
    (r"layers\.(\d+)\.layernorm_after\.(\w+)", r"encoder.layers.\1.norm2.\2"),
    (r"layers\.(\d+)\.mlp\.(fc\d)\.(\w+)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"layernorm\.(\w+)", r"encoder.norm.\1"),
    (r"pooler\.dense\.(\w+)", r"pooler.\1"),
    (r"classifier\.(\w+)", r"head.\1"),
]
_SWIN_BLOCK = r"encoder\.layers\.(\d+)\.blocks\.(\d+)\."
_SWIN_KEYS = [
    (r"embeddings\.patch_embeddings\.projection\.(\w+)", r"patch_embed.\1"),
    (r"embeddings\.norm\.(\w+)", r"patch_norm.\1"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (_SWIN_BLOCK + r"attention\.o_proj\.(\w+)", r"stages.\1.blocks.\2.attn.proj.\3"),
    (_SWIN_BLOCK + r"attention\.relative_position_bias\.relative_position_bias_table",
     r"stages.\1.blocks.\2.rel_bias.relative_position_bias_table"),
    (_SWIN_BLOCK + r"layernorm_before\.(\w+)", r"stages.\1.blocks.\2.norm1.\3"),
    (_SWIN_BLOCK + r"layernorm_after\.(\w+)", r"stages.\1.blocks.\2.norm2.\3"),
    (_SWIN_BLOCK + r"mlp\.(fc\d)\.(\w+)", r"stages.\1.blocks.\2.mlp.\3.\4"),
    (r"encoder\.layers\.(\d+)\.downsample\.(\w+)\.(\w+)", r"stages.\1.downsample.\2.\3"),
    (r"layernorm\.(\w+)", r"norm.\1"),
    (r"classifier\.(\w+)", r"head.\1"),
]
_BACKBONE = r"model\.backbone\.model\."
_UNIT = _BACKBONE + r"encoder\.stages\.(\d+)\.layers\.(\d+)\."
_ENC, _DEC = r"model\.encoder\.layers\.(\d+)\.", r"model\.decoder\.layers\.(\d+)\."
_DETR_KEYS = [
    (_BACKBONE + r"embedder\.embedder\.convolution\.weight", "backbone.stem.conv.weight"),
    (_BACKBONE + r"embedder\.embedder\.normalization\.(\w+)", r"backbone.stem.norm.\1"),
    (_UNIT + r"shortcut\.convolution\.weight", r"backbone.stages.\1.\2.shortcut.conv.weight"),
    (_UNIT + r"shortcut\.normalization\.(\w+)", r"backbone.stages.\1.\2.shortcut.norm.\3"),
    (_UNIT + r"layer\.(\d+)\.convolution\.weight", r"backbone.stages.\1.\2.convs.\3.conv.weight"),
    (_UNIT + r"layer\.(\d+)\.normalization\.(\w+)", r"backbone.stages.\1.\2.convs.\3.norm.\4"),
    (r"model\.input_projection\.(\w+)", r"input_proj.\1"),
    (r"model\.query_position_embeddings\.weight", "query_embed.weight"),
    (_ENC + r"self_attn\.o_proj\.(\w+)", r"encoder.layers.\1.attn.proj.\2"),
    (_ENC + r"self_attn_layer_norm\.(\w+)", r"encoder.layers.\1.norm1.\2"),
    (_ENC + r"mlp\.(fc\d)\.(\w+)", r"encoder.layers.\1.mlp.\2.\3"),
    (_ENC + r"final_layer_norm\.(\w+)", r"encoder.layers.\1.norm2.\2"),
    (_DEC + r"self_attn\.o_proj\.(\w+)", r"decoder.layers.\1.self_attn.proj.\2"),
    (_DEC + r"self_attn_layer_norm\.(\w+)", r"decoder.layers.\1.norm1.\2"),
    (_DEC + r"encoder_attn\.q_proj\.(\w+)", r"decoder.layers.\1.cross_attn.q.\2"),
    (_DEC + r"encoder_attn\.o_proj\.(\w+)", r"decoder.layers.\1.cross_attn.proj.\2"),
    (_DEC + r"encoder_attn_layer_norm\.(\w+)", r"decoder.layers.\1.norm2.\2"),
    (_DEC + r"mlp\.(fc\d)\.(\w+)", r"decoder.layers.\1.mlp.\2.\3"),
    (_DEC + r"final_layer_norm\.(\w+)", r"decoder.layers.\1.norm3.\2"),
    (r"model\.decoder\.layernorm\.(\w+)", r"decoder_norm.\1"),
    (r"class_labels_classifier\.(\w+)", r"class_head.\1"),
    (r"bbox_predictor\.layers\.(\d+)\.(\w+)", r"box_head.layers.\1.\2"),
]
_DETR_QKV = re.compile(r"(.*)self_attn\.([qkv])_proj\.(\w+)$")
_DETR_KV = re.compile(r"(.*)encoder_attn\.([kv])_proj\.(\w+)$")


class _Family(NamedTuple):
    make_config: Callable  # (HF model, num_classes) -> relformer config
    keymap: KeyMap  # HF weight names -> relformer's


def _bert_config(model: nn.Module, num_classes: int) -> TextConfig:
    return bert_text_config(model.config.to_dict(), pooler=model.pooler is not None)


def _detr_config(model: nn.Module, num_classes: int) -> DETRConfig:
    c = model.config
    b = c.backbone_config
    _require(getattr(b, "model_type", None) == "resnet", f"backbone {getattr(b, 'model_type', b)!r} (only HF ResNet, "
             "use_timm_backbone=False)")
    _require(b.out_features[-1] == b.stage_names[-1] and len(b.out_features) == 1,
             f"backbone out_features={b.out_features} (only the last stage)")
    _require(b.hidden_act == "relu" and c.activation_function == "relu", "activations other than relu")
    _require(c.position_embedding_type == "sine", f"position_embedding_type={c.position_embedding_type!r}")
    _require(c.encoder_attention_heads == c.decoder_attention_heads, "different encoder and decoder head counts")
    _require(c.activation_dropout == 0 and c.encoder_layerdrop == 0 and c.decoder_layerdrop == 0,
             "activation_dropout or layerdrop")
    _require(not c.auxiliary_loss, "auxiliary_loss=True: HF's decoder then feeds every layer the LayerNorm-ed output "
             "of the previous one and normalises the last output twice, unlike DETR; convert with auxiliary_loss=False")
    return DETRConfig(num_classes=c.num_labels, in_channels=c.num_channels, stem_channels=b.embedding_size,
                      widths=tuple(b.hidden_sizes), depths=tuple(b.depths), block=b.layer_type, backbone_norm="frozen",
                      downsample_first_stage=b.downsample_in_first_stage,
                      downsample_in_bottleneck=b.downsample_in_bottleneck, dim=c.d_model,
                      num_heads=c.encoder_attention_heads, encoder_layers=c.encoder_layers,
                      decoder_layers=c.decoder_layers, encoder_mlp=c.encoder_ffn_dim, decoder_mlp=c.decoder_ffn_dim,
                      dropout=float(c.dropout), attn_dropout=float(c.attention_dropout), num_queries=c.num_queries,
                      aux_loss=False, cost_class=float(c.class_cost), cost_bbox=float(c.bbox_cost),
                      cost_giou=float(c.giou_cost), weight_bbox=float(c.bbox_loss_coefficient),
                      weight_giou=float(c.giou_loss_coefficient), eos_coef=float(c.eos_coefficient))


_DETR_KEYMAP = KeyMap("", _DETR_KEYS, _DETR_QKV, "self_attn.o_proj.weight", _DETR_KV, "encoder_attn.o_proj.weight")
_FAMILIES = {
    "ViTModel": _Family(_vit_config, KeyMap("", _VIT_KEYS)),
    "ViTForImageClassification": _Family(_vit_config, KeyMap("vit.", _VIT_KEYS)),
    "SwinModel": _Family(_swin_config, KeyMap("", _SWIN_KEYS)),
    "SwinForImageClassification": _Family(_swin_config, KeyMap("swin.", _SWIN_KEYS)),
    "BertModel": _Family(_bert_config, BERT_KEYMAP),
    "DetrForObjectDetection": _Family(_detr_config, _DETR_KEYMAP),
    "RTDetrForObjectDetection": _Family(rtdetr_config, RTDETR_KEYMAP),
}
SUPPORTED = tuple(_FAMILIES)


def from_hf(model: nn.Module) -> nn.Module:
    """The relformer equivalent of an HF ``transformers`` model, with its weights, in the same
    train/eval mode, dtype and device. Raises ``TypeError`` for unsupported classes and
    ``NotImplementedError`` for config options relformer does not reproduce."""
    name = type(model).__name__
    if name not in _FAMILIES:
        raise TypeError(f"from_hf supports {', '.join(SUPPORTED)}; got {name}")
    family = _FAMILIES[name]
    head = getattr(model, "classifier", None)
    num_classes = head.out_features if isinstance(head, nn.Linear) else 0
    _require(head is None or num_classes > 0, "a classifier that is not a Linear layer")
    config = family.make_config(model, num_classes)
    target = build_model(config)
    state = convert_state(model.state_dict(), family.keymap)
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("pooler.") and getattr(target, "pooler", None) is None)]
    if missing or unexpected:
        raise RuntimeError(f"from_hf({name}): weights do not line up; missing {missing}, unexpected {unexpected}")
    param = next(model.parameters())
    return target.to(device=param.device, dtype=param.dtype).train(model.training)


def hf_detr_config(config: DETRConfig):
    """The HF ``DetrConfig`` (HF ResNet backbone, no downloads) of a relformer :class:`DETRConfig`."""
    from transformers import DetrConfig, ResNetConfig

    _require(config.num_groups == 1 and not config.box_relation, "Group DETR / Relation-DETR (HF has plain DETR)")
    backbone = ResNetConfig(num_channels=config.in_channels, embedding_size=config.stem_channels,
                            hidden_sizes=list(config.widths), depths=list(config.depths), layer_type=config.block,
                            downsample_in_first_stage=config.downsample_first_stage,
                            downsample_in_bottleneck=config.downsample_in_bottleneck,
                            out_features=[f"stage{len(config.widths)}"])
    return DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                      num_channels=config.in_channels, d_model=config.dim, encoder_layers=config.encoder_layers,
                      decoder_layers=config.decoder_layers, encoder_attention_heads=config.num_heads,
                      decoder_attention_heads=config.num_heads, encoder_ffn_dim=config.encoder_mlp,
                      decoder_ffn_dim=config.decoder_mlp, num_queries=config.num_queries, num_labels=config.num_classes,
                      dropout=config.dropout, attention_dropout=config.attn_dropout, auxiliary_loss=config.aux_loss,
                      eos_coefficient=config.eos_coef, **_hf_integer_costs(config))


def _hf_integer_costs(config: DETRConfig) -> dict[str, int]:
    """HF's DetrConfig types its matching costs and box-loss weights as ints (strict dataclass fields)."""
    names = dict(class_cost="cost_class", bbox_cost="cost_bbox", giou_cost="cost_giou",
                 bbox_loss_coefficient="weight_bbox", giou_loss_coefficient="weight_giou")
    values = {hf: getattr(config, ours) for hf, ours in names.items()}
    _require(all(float(v).is_integer() for v in values.values()) and config.weight_class == 1,
             f"non-integer matching costs or box-loss weights, or weight_class != 1 ({values}; HF's are ints)")
    return {hf: int(v) for hf, v in values.items()}


def _thaw_batch_norms(module: nn.Module) -> None:
    """HF's ``DetrFrozenBatchNorm2d`` -> trainable ``nn.BatchNorm2d`` (what HF's ResNet had before
    DETR froze it), in place."""
    for name, child in module.named_children():
        if type(child).__name__ == "DetrFrozenBatchNorm2d":
            setattr(module, name, nn.BatchNorm2d(child.weight.shape[0]).to(child.weight.device))
        else:
            _thaw_batch_norms(child)


@dataclasses.dataclass(frozen=True)
class HFDETRConfig(DETRConfig):
    """A :class:`~relformer.models.DETRConfig` that builds :class:`HFDETR`: HF's DETR as the peer
    baseline of relformer's, registered as ``hf_<variant>`` next to the relformer variant it mirrors."""

    @classmethod
    def mirror(cls, config: DETRConfig) -> "HFDETRConfig":
        return cls(**{f.name: getattr(config, f.name) for f in dataclasses.fields(DETRConfig)})


@builds(HFDETRConfig)
class HFDETR(nn.Module):
    """HF ``DetrForObjectDetection`` built from a relformer :class:`DETRConfig` and initialised with the
    weights :class:`DETR` gets from the same RNG state, its whole backbone trainable (HF freezes the
    stem and first stage, meant for pretrained weights) and, for ``backbone_norm="batch"``, its
    backbone BatchNorms too (HF freezes them; from scratch they would stay identities). Called like :class:`DETR`:
    ``forward(images, pixel_mask=None) -> DetectionOutput``; with ``aux_loss`` the auxiliary outputs
    are HF's intermediate decoder states through its heads, as HF's own loss reads them."""

    def __init__(self, config: DETRConfig) -> None:
        super().__init__()
        from transformers import DetrForObjectDetection

        self.config = config
        reference = DETR(config)
        self.hf = DetrForObjectDetection(hf_detr_config(config))
        if config.backbone_norm == "batch":
            _thaw_batch_norms(self.hf.model.backbone)
        load_into(self.hf, reference.state_dict(), _DETR_KEYMAP)
        self.hf.model.unfreeze_backbone()

    def _heads(self, h: Tensor) -> dict[str, Tensor]:
        return {"logits": self.hf.class_labels_classifier(h), "pred_boxes": self.hf.bbox_predictor(h).sigmoid()}

    def forward(self, images: Tensor, pixel_mask: Tensor | None = None) -> DetectionOutput:
        out = self.hf.model(pixel_values=images, pixel_mask=pixel_mask)
        final = self._heads(out.last_hidden_state)
        aux = [self._heads(h) for h in out.intermediate_hidden_states[:-1]] if self.config.aux_loss else []
        return DetectionOutput(logits=final["logits"], pred_boxes=final["pred_boxes"], aux_outputs=aux,
                               last_hidden_state=out.last_hidden_state,
                               encoder_last_hidden_state=out.encoder_last_hidden_state)


@register_model
def hf_detr_fashion() -> HFDETRConfig:
    """HF ``DetrForObjectDetection`` shaped as ``detr_fashion``, with its initial weights for a seed."""
    return HFDETRConfig.mirror(detr_fashion())


@register_model
def hf_detr_micro() -> HFDETRConfig:
    """HF ``DetrForObjectDetection`` shaped as ``detr_micro`` (tests)."""
    return HFDETRConfig.mirror(detr_micro())
