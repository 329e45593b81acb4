"""Convert Hugging Face ``transformers`` models into their relformer equivalents.

``from_hf(model)`` reads the HF model's config and weights (nothing is downloaded) and returns
the relformer module with the same outputs, called the same way (``model(pixel_values)``) and
returning the same field names (``last_hidden_state``, ``pooler_output``, ``logits``).

Supported (transformers >= 5 weight names): ``ViTModel``, ``ViTForImageClassification``, ``SwinModel``, ``SwinForImageClassification``.
HF's separate ``q_proj`` / ``k_proj`` / ``v_proj`` are fused into relformer's ``qkv``.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor, nn

from ..models import SwinConfig, ViTConfig, build_model

__all__ = ["from_hf", "SUPPORTED"]


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
_QKV = re.compile(r"(.*)attention\.([qkv])_proj\.(\w+)$")
_IGNORED = re.compile(r".*relative_position_index$")


def _attention_prefix(hf_prefix: str, keys: list[tuple[str, str]]) -> str:
    """The relformer module path of the attention whose HF keys start with ``hf_prefix``."""
    probe = _rename(hf_prefix + "attention.o_proj.weight", keys)
    return probe[: -len("proj.weight")]


def _rename(key: str, keys: list[tuple[str, str]]) -> str:
    for pattern, template in keys:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    raise NotImplementedError(f"from_hf: no relformer parameter for HF weight {key!r}")


def _convert_state(state: dict[str, Tensor], prefix: str, keys: list[tuple[str, str]]) -> dict[str, Tensor]:
    """HF state dict -> relformer state dict: rename, and fuse q/k/v projections into ``qkv``."""
    out: dict[str, Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        key = key[len(prefix):] if prefix and key.startswith(prefix) else key
        if _IGNORED.fullmatch(key):
            continue
        m = _QKV.fullmatch(key)
        if m:
            qkv.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
            continue
        out[_rename(key, keys)] = value
    for (hf_prefix, kind), parts in qkv.items():
        out[_attention_prefix(hf_prefix, keys) + f"qkv.{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


_FAMILIES = {
    "ViTModel": (_vit_config, "", _VIT_KEYS),
    "ViTForImageClassification": (_vit_config, "vit.", _VIT_KEYS),
    "SwinModel": (_swin_config, "", _SWIN_KEYS),
    "SwinForImageClassification": (_swin_config, "swin.", _SWIN_KEYS),
}
SUPPORTED = tuple(_FAMILIES)


def from_hf(model: nn.Module) -> nn.Module:
    """The relformer equivalent of an HF ``transformers`` model, with its weights, in the same
    train/eval mode, dtype and device. Raises ``TypeError`` for unsupported classes and
    ``NotImplementedError`` for config options relformer does not reproduce."""
    name = type(model).__name__
    if name not in _FAMILIES:
        raise TypeError(f"from_hf supports {', '.join(SUPPORTED)}; got {name}")
    make_config, prefix, keys = _FAMILIES[name]
    head = getattr(model, "classifier", None)
    num_classes = head.out_features if isinstance(head, nn.Linear) else 0
    _require(head is None or num_classes > 0, "a classifier that is not a Linear layer")
    config = make_config(model, num_classes)
    target = build_model(config)
    state = _convert_state(model.state_dict(), prefix, keys)
    missing, unexpected = target.load_state_dict(state, strict=False)
    missing = [k for k in missing if not (k.startswith("pooler.") and getattr(target, "pooler", None) is None)]
    if missing or unexpected:
        raise RuntimeError(f"from_hf({name}): weights do not line up; missing {missing}, unexpected {unexpected}")
    param = next(model.parameters())
    return target.to(device=param.device, dtype=param.dtype).train(model.training)
