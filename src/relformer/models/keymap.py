"""State-dict key maps: the weight names of another layout of the same model (a Hugging Face
checkpoint) -> relformer's, as regex renames plus fused attention projections (separate q / k / v
-> ``qkv``, cross-attention k / v -> ``kv``). Used by the checkpoint readers of the families
(:mod:`relformer.models.text.checkpoint`) and by :mod:`relformer.interop.transformers`.

A :class:`KeyMap` is data; :func:`convert_state` applies it, :func:`export_state` / :func:`load_into` invert it."""
from __future__ import annotations

import re
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = ["KeyMap", "convert_state", "export_state", "load_into", "plan", "QKV", "IGNORED"]

# (module prefix, "q" / "k" / "v" as the first letter of group 2, parameter)
QKV = re.compile(r"(.*)attention\.([qkv])_proj\.(\w+)$")
# derived buffers that relformer rebuilds (Swin's index, BERT's position / token-type id buffers)
IGNORED = re.compile(r".*relative_position_index$|embeddings\.(position_ids|token_type_ids)$")


class KeyMap(NamedTuple):
    prefix: str  # removed from the source keys
    keys: list[tuple[str, str]]  # (source key pattern, relformer key template), first match wins
    qkv: re.Pattern = QKV  # self-attention q / k / v projections, fused into ``qkv``
    out_proj: str = "attention.o_proj.weight"  # an attention's output projection, after its prefix
    kv: re.Pattern | None = None  # cross-attention k / v projections, fused into ``kv``
    kv_out_proj: str = ""


def _rename(key: str, keys: list[tuple[str, str]]) -> str:
    for pattern, template in keys:
        if re.fullmatch(pattern, key):
            return re.sub(pattern, template, key)
    raise NotImplementedError(f"no relformer parameter for weight {key!r}")


def _attention_prefix(source_prefix: str, keys: list[tuple[str, str]], out_proj: str) -> str:
    """The relformer module path of the attention whose source keys start with ``source_prefix``."""
    return _rename(source_prefix + out_proj, keys)[: -len("proj.weight")]


def plan(keys, keymap: KeyMap) -> dict[str, list[str]]:
    """relformer key -> the source keys whose tensors it concatenates along dim 0 (one for a rename;
    q, k, v for a fused ``qkv``; k, v for a cross-attention's ``kv``)."""
    out: dict[str, list[str]] = {}
    fused: dict[tuple[str, str, str], dict[str, str]] = {}  # (target name, source prefix, param) -> parts
    prefix = keymap.prefix
    for full in keys:
        key = full[len(prefix):] if prefix and full.startswith(prefix) else full
        if IGNORED.fullmatch(key):
            continue
        for pattern, name in ((keymap.qkv, "qkv"), (keymap.kv, "kv")):
            m = pattern.fullmatch(key) if pattern is not None else None
            if m:
                fused.setdefault((name, m.group(1), m.group(3)), {})[m.group(2)[0]] = full
                break
        else:
            out[_rename(key, keymap.keys)] = [full]
    for (name, source_prefix, kind), parts in fused.items():
        out_proj = keymap.out_proj if name == "qkv" else keymap.kv_out_proj
        out[_attention_prefix(source_prefix, keymap.keys, out_proj) + f"{name}.{kind}"] = [parts[c] for c in name]
    return out


def convert_state(state: dict[str, Tensor], keymap: KeyMap) -> dict[str, Tensor]:
    """Source state dict -> relformer state dict (see :func:`plan`)."""
    return {k: torch.cat([state[s] for s in src]) if len(src) > 1 else state[src[0]]
            for k, src in plan(state, keymap).items()}


def export_state(state: dict[str, Tensor], source_rows: dict[str, int], keymap: KeyMap) -> dict[str, Tensor]:
    """The inverse of :func:`convert_state`: relformer weights ``state`` -> the source layout whose keys
    are ``source_rows`` (key -> its tensor's first dimension, which splits a fused ``qkv`` / ``kv``)."""
    new: dict[str, Tensor] = {}
    for key, source_keys in plan(source_rows, keymap).items():
        if len(source_keys) == 1:  # a rename (0-d buffers such as num_batches_tracked included)
            new[source_keys[0]] = state[key]
        else:
            new.update(zip(source_keys, state[key].split([source_rows[s] for s in source_keys])))
    return new


def load_into(model: nn.Module, state: dict[str, Tensor], keymap: KeyMap) -> None:
    """The inverse of :func:`convert_state`: relformer weights ``state`` into the source-layout ``model``."""
    source = model.state_dict()
    new = export_state(state, {k: v.shape[0] if v.dim() else 0 for k, v in source.items()}, keymap)
    missing = set(source) - set(new)
    if missing:
        raise RuntimeError(f"relformer weights do not cover weights {sorted(missing)}")
    model.load_state_dict(new)
