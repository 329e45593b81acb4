"""Sentence embeddings (Reimers & Gurevych 2019, "Sentence-BERT"): tokenizer + packed
:class:`~relformer.models.text.TextEncoder` + pooling, loaded from a Hugging Face /
sentence-transformers folder (e.g. all-MiniLM-L6-v2)."""
from __future__ import annotations

import warnings
from itertools import accumulate
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...data import Packed
from .checkpoint import load_bert_folder, max_length, pooling_mode
from .config import POOLINGS, evaluating
from .encoder import TextEncoder
from .export import save_sentence_folder

__all__ = ["SentenceEncoder", "pool"]


def _check_text(i: int, text) -> None:
    """``texts[i]`` is a str the tokenizer can take: valid Unicode (no lone surrogate)."""
    if not isinstance(text, str):
        raise TypeError(f"texts[{i}] must be a str, got {type(text).__name__}")
    if not text.isascii():
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"texts[{i}] is not valid Unicode: {e.reason} at character {e.start} "
                             f"({text[e.start:e.end]!a})") from None


def pool(hidden: Packed, mode: str = "mean") -> Tensor:
    """Per-item pooling of packed token states ``(N, C)`` -> ``(n, C)``: ``"mean"`` over the item's
    tokens, ``"cls"`` its first token, ``"max"`` the channel-wise maximum."""
    x, offsets = hidden.values, hidden.offsets
    if mode == "cls":
        return x[offsets[:-1]]
    seg = hidden.segment_ids()
    out = x.new_zeros(hidden.num_items, x.shape[-1])
    if mode == "mean":
        return out.index_add_(0, seg, x) / hidden.lengths.clamp_min(1).unsqueeze(1).to(x.dtype)
    if mode == "max":
        return out.scatter_reduce_(0, seg[:, None].expand_as(x), x, "amax", include_self=False)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {mode!r}")


class SentenceEncoder(nn.Module):
    """Sentence embeddings (Reimers & Gurevych 2019, "Sentence-BERT"): a :class:`TextEncoder` over
    packed tokens, then mean / cls / max pooling and (by default) L2 normalisation.

    ``SentenceEncoder.from_pretrained(folder)`` reads a Hugging Face / sentence-transformers
    folder: ``config.json`` (BERT), ``model.safetensors``, ``tokenizer.json`` and the pooling of
    ``1_Pooling/config.json``; :meth:`save_pretrained` writes one. ``encode(texts) -> (n, dim)`` fp32
    (sentence-transformers' keywords accepted); ``forward(texts)`` the differentiable embeddings.

    Args:
        encoder: the :class:`TextEncoder`. tokenizer: a ``tokenizers.Tokenizer`` that adds the
        special tokens (padding is switched off, truncation set to ``max_length``).
        pooling: ``"mean"``, ``"cls"`` or ``"max"``. max_length: tokens per text, specials included.
    """

    def __init__(self, encoder: TextEncoder, tokenizer, pooling: str = "mean", max_length: int = 512) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        if not (isinstance(max_length, int) and max_length >= 2):
            raise ValueError(f"max_length must be an int >= 2 (room for [CLS] and [SEP]), got {max_length!r}")
        self.encoder, self.pooling, self.max_length = encoder, pooling, max_length
        self.path: str | None = None  # the folder it was loaded from (names its embeddings in caches)
        self.tokenizer = type(tokenizer).from_str(tokenizer.to_str())  # a copy: the caller's keeps its settings
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)

    @property
    def dim(self) -> int:
        return self.encoder.config.dim

    @classmethod
    def from_pretrained(cls, path: str | Path) -> "SentenceEncoder":
        """Load a BERT sentence encoder from a local folder (nothing is downloaded). Weight names
        may carry a ``bert.`` prefix; a ``pooler.*`` is loaded when present."""
        from tokenizers import Tokenizer

        folder = Path(path)
        if not (folder / "tokenizer.json").is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json: expected a Hugging Face BERT folder")
        encoder = load_bert_folder(folder)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        model = cls(encoder, tokenizer, pooling_mode(folder), max_length(folder, encoder.config))
        model.path = str(folder.resolve())
        return model.eval()  # as HF's from_pretrained; call .train() to fine-tune

    def _tokenize(self, texts) -> list:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"texts must be a list or tuple of str (or one str), got {type(texts).__name__}")
        for i, t in enumerate(texts):
            _check_text(i, t)
        encodings = self.tokenizer.encode_batch(list(texts)) if texts else []
        truncated = sum(1 for e in encodings if e.overflowing)
        if truncated:
            warnings.warn(f"{truncated} of {len(texts)} texts are longer than max_length={self.max_length} "
                          "tokens and were truncated", stacklevel=3)
        return encodings

    def _features(self, encodings: list, device) -> tuple[Packed, Tensor | None]:
        """Tokenizer encodings -> packed ids ``(N,)`` and token types ``(N,)`` (None without a type table)."""
        ids = torch.tensor([t for e in encodings for t in e.ids], device=device, dtype=torch.long)
        offsets = torch.tensor([0, *accumulate(len(e.ids) for e in encodings)], device=device)
        types = None
        if self.encoder.embeddings.token_type is not None:
            types = torch.tensor([t for e in encodings for t in e.type_ids], device=device, dtype=torch.long)
        return Packed(ids, offsets), types

    def _embed(self, packed: Packed, types: Tensor | None) -> Tensor:
        """Pooled embeddings ``(n, dim)`` of a packed batch, in the encoder's dtype."""
        return pool(self.encoder(packed, token_type_ids=types).last_hidden_state, self.pooling)

    def tokenize(self, texts: Sequence[str] | str) -> dict[str, Tensor]:
        """Padded features as sentence-transformers' ``tokenize``: ``input_ids``, ``attention_mask``,
        ``token_type_ids``, each ``(n, L)`` (right padding with ``pad_token_id``)."""
        encodings = self._tokenize(texts)
        L = max((len(e.ids) for e in encodings), default=0)

        def padded(rows: list[list[int]], value: int) -> Tensor:
            return torch.tensor([r + [value] * (L - len(r)) for r in rows], dtype=torch.long).reshape(-1, L)

        return {"input_ids": padded([e.ids for e in encodings], self.encoder.config.pad_token_id),
                "attention_mask": padded([[1] * len(e.ids) for e in encodings], 0),
                "token_type_ids": padded([e.type_ids for e in encodings], 0)}

    def forward(self, inputs: Sequence[str] | str | dict | Packed, normalize: bool = False,
                token_type_ids: Tensor | None = None) -> Tensor:
        """Differentiable pooled embeddings ``(n, dim)`` for fine-tuning (Reimers & Gurevych 2019, sec. 3):
        ``inputs`` are texts, :meth:`tokenize`'s padded features (``input_ids``, ``attention_mask``,
        optional ``token_type_ids``) or a Packed batch of ids (with its packed ``token_type_ids (N,)``).
        Runs in the module's mode, with grad."""
        device = next(self.encoder.parameters()).device
        if isinstance(inputs, dict):
            unknown = set(inputs) - {"input_ids", "attention_mask", "token_type_ids"}
            if "input_ids" not in inputs or unknown:
                raise ValueError(f"features need 'input_ids' (and may have attention_mask, token_type_ids); "
                                 f"got keys {sorted(inputs)}")
            ids = inputs["input_ids"].to(device)
            mask = inputs.get("attention_mask")
            mask = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.to(device).bool()
            types = inputs.get("token_type_ids") if self.encoder.embeddings.token_type is not None else None
            types = None if types is None else types.to(device)
            hidden = self.encoder(ids, attention_mask=mask, token_type_ids=types)
            emb = pool(Packed.from_padded(hidden.last_hidden_state, mask=mask), self.pooling)
        elif isinstance(inputs, Packed):
            emb = self._embed(inputs, token_type_ids)
        else:
            emb = self._embed(*self._features(self._tokenize(inputs), device))
        return F.normalize(emb, dim=-1) if normalize else emb

    def encode(self, texts: Sequence[str] | str, batch_size: int = 64, normalize: bool = True,
               show_progress: bool = False, *, normalize_embeddings: bool | None = None,
               convert_to_tensor: bool = False, convert_to_numpy: bool = False,
               show_progress_bar: bool | None = None):
        """Embed ``texts`` -> ``(n, dim)`` fp32 on the model's device, in input order; one str -> ``(dim,)``
        (sentence-transformers' shapes).

        sentence-transformers' keywords are aliases: ``normalize_embeddings`` of ``normalize``,
        ``show_progress_bar`` of ``show_progress``; ``convert_to_numpy=True`` returns a numpy array
        (``convert_to_tensor=True``, the default here, a tensor; it wins when both are set).
        Texts are sorted by length and encoded ``batch_size`` at a time, packed (no padding). Texts
        longer than ``max_length`` tokens are truncated (one warning says how many). An empty or
        whitespace-only text is ``[CLS] [SEP]`` and gets that embedding; ``[]`` gives ``(0, dim)``.
        Runs in eval and inference mode. A non-str element raises ``TypeError``, a str that is not
        valid Unicode (a lone surrogate such as ``"\\ud800"``) ``ValueError``, naming its index.
        """
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        normalize = normalize if normalize_embeddings is None else normalize_embeddings
        show_progress = show_progress if show_progress_bar is None else show_progress_bar
        encodings = self._tokenize(texts)
        device = next(self.encoder.parameters()).device
        out = torch.zeros(len(encodings), self.dim, device=device)
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if show_progress:
            from tqdm.auto import tqdm  # imported on use: it is slow to import

            batches = tqdm(batches, desc="encode", unit="batch")
        with evaluating(self):
            for batch in batches:
                emb = self._embed(*self._features([encodings[i] for i in batch], device)).float()
                out[torch.tensor(batch, device=device)] = F.normalize(emb, dim=-1) if normalize else emb
        out = out[0] if isinstance(texts, str) else out
        return out.cpu().numpy() if convert_to_numpy and not convert_to_tensor else out

    def save_pretrained(self, folder: str | Path) -> Path:
        """Write a Hugging Face / sentence-transformers folder that :meth:`from_pretrained` and HF
        ``AutoModel`` read (see :func:`~relformer.models.text.export.save_sentence_folder`)."""
        return save_sentence_folder(self, folder)
