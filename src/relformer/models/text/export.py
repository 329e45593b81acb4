"""Writing a :class:`~relformer.models.text.SentenceEncoder` as a Hugging Face /
sentence-transformers folder (the layout ``sentence-transformers`` saves and all-MiniLM-L6-v2 ships
in), so HF ``AutoModel``, sentence-transformers and :meth:`SentenceEncoder.from_pretrained` all read
it: ``config.json`` (BERT), ``model.safetensors`` (``BertModel`` names), ``tokenizer.json``,
``modules.json``, ``sentence_bert_config.json``, ``1_Pooling/config.json``. Each file is written
atomically, ``config.json`` last: a folder with a config has the rest."""
from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save as save_safetensors

from ... import __version__
from ...utils import atomic_write_bytes, atomic_write_text
from .checkpoint import bert_config_dict, bert_export_state

__all__ = ["save_sentence_folder", "pooling_config", "MODULES"]

#: sentence-transformers' module list: Transformer (the folder root), Pooling, Normalize (encode's default)
MODULES = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
           {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
           {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]
_TOKENIZER_FILES = ("tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def pooling_config(dim: int, pooling: str) -> dict:
    """sentence-transformers' ``Pooling`` config for ``"mean"`` / ``"cls"`` / ``"max"``."""
    return {"word_embedding_dimension": dim, "pooling_mode_cls_token": pooling == "cls",
            "pooling_mode_mean_tokens": pooling == "mean", "pooling_mode_max_tokens": pooling == "max",
            "pooling_mode_mean_sqrt_len_tokens": False, "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False, "include_prompt": True}


def _json(value) -> str:
    return json.dumps(value, indent=2) + "\n"


def save_sentence_folder(model, folder: str | Path) -> Path:
    """Write ``model`` (a ``SentenceEncoder``) to ``folder``; a config HF BERT cannot express raises
    ``ValueError`` before anything is written. The tokenizer side files of the folder it was loaded
    from (``vocab.txt``, ``tokenizer_config.json``, ...) are copied, so HF ``AutoTokenizer`` reads it too."""
    folder = Path(folder)
    config = {**bert_config_dict(model.encoder.config), "relformer_version": __version__}
    weights = save_safetensors(bert_export_state(model.encoder), metadata={"format": "pt"})
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save folder {folder} exists and is not a folder")
    atomic_write_bytes(folder / "model.safetensors", weights)
    atomic_write_text(folder / "tokenizer.json", model.tokenizer.to_str())
    source = Path(model.path) if model.path else None
    for name in _TOKENIZER_FILES:
        if source is not None and (source / name).is_file() and source.resolve() != folder.resolve():
            atomic_write_bytes(folder / name, (source / name).read_bytes())
    if not (folder / "tokenizer_config.json").is_file():
        atomic_write_text(folder / "tokenizer_config.json",
                          _json({"tokenizer_class": "BertTokenizer", "model_max_length": model.max_length}))
    atomic_write_text(folder / "1_Pooling" / "config.json", _json(pooling_config(model.dim, model.pooling)))
    atomic_write_text(folder / "sentence_bert_config.json",
                      _json({"max_seq_length": model.max_length, "do_lower_case": False}))
    atomic_write_text(folder / "modules.json", _json(MODULES))
    atomic_write_text(folder / "config.json", _json(config))
    return folder
