"""Convert Hugging Face ``transformers`` models into their relformer equivalents.

``from_hf(model)`` reads the HF model's config and weights (nothing is downloaded) and returns
the relformer module with the same outputs, called the same way (``model(pixel_values)``,
``model(input_ids, attention_mask=..., token_type_ids=...)``) and returning the same field names
(``last_hidden_state``, ``pooler_output``, ``logits``, ``hidden_states``).

Supported (transformers >= 5 weight names): ``ViTModel``, ``ViTForImageClassification``, ``SwinModel``,
``SwinForImageClassification``, ``BertModel`` (-> :class:`~relformer.models.TextEncoder`; its outputs
hold zeros at padded positions, where HF's hold values no one reads).
HF's separate q / k / v projections are fused into relformer's ``qkv``. ``bert_text_config`` and
``bert_state_dict`` convert a BERT ``config.json`` and weight file without ``transformers``.
"""
from __future__ import annotations

import re
from typing import NamedTuple

import torch
from torch import Tensor, nn

from ..models import SwinConfig, TextConfig, ViTConfig, build_model

__all__ = ["from_hf", "SUPPORTED", "bert_text_config", "bert_state_dict"]


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
_BERT_LAYER = r"encoder\.layer\.(\d+)\."
_BERT_KEYS = [
    (r"embeddings\.word_embeddings\.weight", "embeddings.word.weight"),
    (r"embeddings\.position_embeddings\.weight", "embeddings.position.weight"),
    (r"embeddings\.token_type_embeddings\.weight", "embeddings.token_type.weight"),
    (r"embeddings\.LayerNorm\.(\w+)", r"embeddings.norm.\1"),
    (_BERT_LAYER + r"attention\.output\.dense\.(\w+)", r"encoder.layers.\1.attn.proj.\2"),
    (_BERT_LAYER + r"attention\.output\.LayerNorm\.(\w+)", r"encoder.layers.\1.norm1.\2"),
    (_BERT_LAYER + r"intermediate\.dense\.(\w+)", r"encoder.layers.\1.mlp.fc1.\2"),
    (_BERT_LAYER + r"output\.dense\.(\w+)", r"encoder.layers.\1.mlp.fc2.\2"),
    (_BERT_LAYER + r"output\.LayerNorm\.(\w+)", r"encoder.layers.\1.norm2.\2"),
    (r"pooler\.dense\.(\w+)", r"pooler.\1"),
]
# (module prefix, "q" / "k" / "v" as the first letter of group 2, parameter)
_QKV = re.compile(r"(.*)attention\.([qkv])_proj\.(\w+)$")
_BERT_QKV = re.compile(r"(.*)attention\.self\.(query|key|value)\.(\w+)$")
_IGNORED = re.compile(r".*relative_position_index$|embeddings\.(position_ids|token_type_ids)$")


def _attention_prefix(hf_prefix: str, keys: list[tuple[str, str]], out_proj: str) -> str:
    """The relformer module path of the attention whose HF keys start with ``hf_prefix``."""
    probe = _rename(hf_prefix + out_proj, keys)
    return probe[: -len("proj.weight")]


def _rename(key: str, keys: list[tuple[str, str]]) -> str:
    for pattern, template in keys:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    raise NotImplementedError(f"from_hf: no relformer parameter for HF weight {key!r}")


class _Family(NamedTuple):
    make_config: object  # (HF model, num_classes) -> relformer config
    prefix: str  # removed from HF keys
    keys: list[tuple[str, str]]
    qkv: re.Pattern = _QKV
    out_proj: str = "attention.o_proj.weight"  # an attention's output projection, after its prefix


def _convert_state(state: dict[str, Tensor], family: _Family) -> dict[str, Tensor]:
    """HF state dict -> relformer state dict: rename, and fuse q/k/v projections into ``qkv``."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    prefix = family.prefix
    for key, value in state.items():
        key = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if _IGNORED.fullmatch(key):
            continue
        m = family.qkv.fullmatch(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)[0]] = value
            continue
        out[_rename(key, family.keys)] = value
    for (hf_prefix, kind), parts in qkv.items():
        target = _attention_prefix(hf_prefix, family.keys, family.out_proj) + f"qkv.{kind}"
        out[target] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


def bert_text_config(config: dict, pooler: bool = True) -> TextConfig:
    """A BERT ``config.json`` (or ``BertConfig.to_dict()``) -> :class:`~relformer.models.TextConfig`."""
    _require(config.get("hidden_act", "gelu") == "gelu",
             f"hidden_act={config.get('hidden_act')!r} (only exact 'gelu' is supported)")
    _require(config.get("position_embedding_type", "absolute") == "absolute",
             f"position_embedding_type={config.get('position_embedding_type')!r} (only 'absolute')")
    _require(not config.get("is_decoder", False) and not config.get("add_cross_attention", False),
             "a BERT decoder / cross-attention")
    return TextConfig(vocab_size=config["vocab_size"], dim=config["hidden_size"], depth=config["num_hidden_layers"],
                      num_heads=config["num_attention_heads"], mlp_hidden=config["intermediate_size"],
                      max_position=config["max_position_embeddings"], type_vocab_size=config["type_vocab_size"],
                      norm_eps=float(config["layer_norm_eps"]), dropout=float(config["hidden_dropout_prob"]),
                      attn_dropout=float(config["attention_probs_dropout_prob"]), position="absolute",
                      pre_norm=False, activation="gelu", pooler=pooler, pad_token_id=config.get("pad_token_id") or 0)


def _bert_config(model: nn.Module, num_classes: int) -> TextConfig:
    return bert_text_config(model.config.to_dict(), pooler=model.pooler is not None)


_BERT = _Family(_bert_config, "bert.", _BERT_KEYS, _BERT_QKV, "attention.output.dense.weight")


def bert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF BERT weights (``BertModel`` names, with or without a ``bert.`` prefix; task heads such as
    ``cls.*`` are dropped) -> :class:`~relformer.models.TextEncoder` state dict."""
    keep = re.compile(r"(bert\.)?(embeddings|encoder|pooler)\..*")
    return _convert_state({k: v for k, v in state.items() if keep.fullmatch(k)}, _BERT)


_FAMILIES = {
    "ViTModel": _Family(_vit_config, "", _VIT_KEYS),
    "ViTForImageClassification": _Family(_vit_config, "vit.", _VIT_KEYS),
    "SwinModel": _Family(_swin_config, "", _SWIN_KEYS),
    "SwinForImageClassification": _Family(_swin_config, "swin.", _SWIN_KEYS),
    "BertModel": _BERT,
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
    state = _convert_state(model.state_dict(), family)
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("pooler.") and getattr(target, "pooler", None) is None)]
    if missing or unexpected:
        raise RuntimeError(f"from_hf({name}): weights do not line up; missing {missing}, unexpected {unexpected}")
    param = next(model.parameters())
    return target.to(device=param.device, dtype=param.dtype).train(model.training)
