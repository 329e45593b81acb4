"""Sentence-encoder fine-tuning on text pairs (or triplets) with in-batch negatives, evaluated by
retrieval.

Loss: MultipleNegativesRanking (Henderson et al. 2017, "Efficient Natural Language Response
Suggestion"; sentence-transformers' ``MultipleNegativesRankingLoss``): for a batch of ``B``
pairs ``(a_i, p_i)`` (and optional hard negatives ``n_i``), the scores are
``s_ij = scale * cos(a_i, c_j)`` over the candidates ``c = [p_1..p_B, n_1..n_B]`` and the loss is
the cross-entropy of row ``i`` against column ``i``: every other positive in the batch is a negative.

Evaluation: every eval anchor retrieves among ALL eval positives (cosine); ``recall@1`` is the
share whose own positive ranks first, ``mrr`` the mean of 1 / its rank.

Data (``data.source``): ``"files"``: ``data.train`` / ``data.eval`` are ``.tsv`` (2 or 3 tab-separated
columns) or ``.jsonl`` files (``{"anchor", "positive"[, "negative"]}``); ``"stdlib"``: the Python
standard library's docstrings, a function's summary (first paragraph) against the rest of its
docstring, split by top-level module so that eval pairs come from modules never trained on
(:func:`stdlib_doc_pairs`); ``"memory"``: ``TextPairTask(recipe, train=pairs, eval=pairs)``.

Model: ``model.name = "sentence_encoder"`` with ``model.options.path`` an HF / sentence-transformers
folder (default all-MiniLM-L6-v2), or a registered text-encoder variant (e.g. ``text_micro``) with
the tokenizer of ``data.tokenizer`` (a ``tokenizer.json``; default MiniLM's), mean pooling.
"""
from __future__ import annotations

import ast
import functools
import hashlib
import json
import random
import re
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import Packed
from ..data.stdlib_docs import parsed_sources
from ..models.text import SentenceEncoder, TextEncoder
from ..train.recipe import ModelSection, Recipe, RecipeError
from .base import TaskBase
from .classification import fill_model_options
from .registry import register_task
from .search import default_model_path
from .splits import gather_objects

__all__ = ["TextPairTask", "TextPairRecipe", "TextPairSection", "TextBatch", "stdlib_doc_pairs", "read_pairs",
           "multiple_negatives_ranking_loss", "embed"]

Pair = tuple[str, ...]  # (anchor, positive) or (anchor, positive, negative)


# ---------------------------------------------------------------------------------------------
# Pairs
# ---------------------------------------------------------------------------------------------
def _collapse(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


def _held_out(module: str, eval_fraction: float) -> bool:
    """Whether ``module``'s top-level package is in the eval share (a fixed hash of its name)."""
    top = module.split(".")[0]
    return int(hashlib.sha256(top.encode()).hexdigest()[:8], 16) / 16 ** 8 < eval_fraction


def stdlib_doc_pairs(split: Literal["train", "eval"], eval_fraction: float = 0.2, min_words: int = 6,
                     root: str | Path | None = None) -> list[Pair]:
    """``(summary, rest)`` of every public function, class and method docstring of the standard
    library with at least two paragraphs (each side at least ``min_words`` words; the rest cut to
    its next two paragraphs). Top-level packages are split by a fixed hash of their name, so the
    eval pairs come from modules the train pairs never saw. In a fixed shuffled order."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', got {split!r}")
    pairs = [pair for module, pair in _all_doc_pairs(min_words, None if root is None else str(root))
             if _held_out(module, eval_fraction) == (split == "eval")]
    random.Random(0).shuffle(pairs)
    return pairs


@functools.lru_cache(maxsize=4)
def _all_doc_pairs(min_words: int, root: str | None) -> tuple[tuple[str, Pair], ...]:
    """``(module, (summary, rest))`` for the whole standard library (parsed once per process)."""
    pairs, seen = [], set()
    for module, tree in parsed_sources(root):
        for node in ast.walk(tree):
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) or node.name.startswith("_"):
                continue
            paragraphs = [_collapse(p) for p in (ast.get_docstring(node) or "").split("\n\n") if p.strip()]
            if len(paragraphs) < 2:
                continue
            summary, rest = paragraphs[0], " ".join(paragraphs[1:3])
            if len(summary.split()) >= min_words and len(rest.split()) >= min_words and summary not in seen:
                seen.add(summary)
                pairs.append((module, (summary, rest)))
    return tuple(pairs)


def read_pairs(path: str | Path, key: str) -> list[Pair]:
    """Pairs / triplets from a ``.tsv`` (tab-separated columns) or ``.jsonl`` file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"data.{key}: no such file {path}")
    pairs = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        if path.suffix == ".jsonl":
            row = json.loads(line)
            pair = tuple(row[k] for k in ("anchor", "positive", "negative") if k in row)
        elif path.suffix == ".tsv":
            pair = tuple(line.split("\t"))
        else:
            raise ValueError(f"data.{key}: {path} must be a .tsv or .jsonl file")
        if len(pair) not in (2, 3) or not all(isinstance(t, str) and t.strip() for t in pair):
            raise ValueError(f"data.{key}: {path}:{number} is not an (anchor, positive[, negative]) row of text")
        pairs.append(pair)
    return pairs


def _check_pairs(pairs: Sequence[Pair], name: str) -> list[Pair]:
    if len(pairs) == 0:
        raise ValueError(f"{name}: no pairs")
    width = len(pairs[0])
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, (tuple, list)) and len(pair) == width and width in (2, 3)
                and all(isinstance(t, str) for t in pair)):
            raise TypeError(f"{name}[{i}] must be a tuple of {width if width in (2, 3) else '2 or 3'} str")
    return [tuple(p) for p in pairs]


class PairList(Dataset):
    def __init__(self, pairs: Sequence[Pair]) -> None:
        self.pairs = list(pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Pair:
        return self.pairs[index]


# ---------------------------------------------------------------------------------------------
# Batches, embeddings, loss
# ---------------------------------------------------------------------------------------------
@dataclass
class TextBatch:
    """Each column (anchors, positives[, negatives]) tokenised and packed: ``ids (N,)``,
    ``types (N,)`` or None, ``offsets (B + 1,)``; ``index (B,)`` the pairs' dataset indices."""

    columns: list[tuple[Tensor, Tensor | None, Tensor]]
    index: Tensor

    def to(self, device) -> "TextBatch":
        columns = [(i.to(device), None if t is None else t.to(device), o.to(device)) for i, t, o in self.columns]
        return TextBatch(columns, self.index.to(device))

    def __len__(self) -> int:
        return len(self.index)


def embed(encoder: SentenceEncoder, ids: Tensor, types: Tensor | None, offsets: Tensor) -> Tensor:
    """Differentiable, L2-normalised sentence embeddings ``(B, dim)`` of packed tokens
    (:meth:`SentenceEncoder.forward`: the same computation as ``encode``, with gradients)."""
    return F.normalize(encoder(Packed(ids, offsets), token_type_ids=types).float(), dim=-1)


def multiple_negatives_ranking_loss(anchors: Tensor, candidates: Tensor, scale: float = 20.0) -> Tensor:
    """Cross-entropy of ``scale * anchors @ candidates.T`` (unit vectors ``(B, D)``, ``(C, D)``,
    ``C >= B``) with row ``i``'s target column ``i``."""
    scores = scale * anchors @ candidates.T  # (B, C)
    return F.cross_entropy(scores, torch.arange(len(anchors), device=anchors.device))


@dataclass
class TextPairSection:
    """``source``: ``"files"``, ``"stdlib"`` or ``"memory"`` (see the module); ``train`` / ``eval``:
    the files; ``train_pairs`` / ``eval_pairs``: the first N pairs only (None = all); ``tokenizer``:
    a ``tokenizer.json`` for a registered text-encoder variant; ``max_length``: tokens per text;
    ``scale``: the loss's similarity scale (sentence-transformers' default 20)."""

    source: Literal["files", "stdlib", "memory"] = "stdlib"
    train: str | None = None
    eval: str | None = None
    train_pairs: int | None = None
    eval_pairs: int | None = None
    tokenizer: str | None = None
    max_length: int = 128
    scale: float = 20.0


@dataclass
class TextPairRecipe(Recipe):
    task: Literal["text_pairs"] = "text_pairs"
    model: ModelSection = field(default_factory=lambda: ModelSection("sentence_encoder"))
    data: TextPairSection = field(default_factory=TextPairSection)

    def validate(self) -> None:
        super().validate()
        d = self.data
        if d.source == "files" and not (d.train and d.eval):
            raise RecipeError("data.train / data.eval: the files source needs both pair files")
        for key in ("train_pairs", "eval_pairs"):
            if getattr(d, key) is not None and getattr(d, key) < 1:
                raise RecipeError(f"data.{key} must be >= 1 or null (all), got {getattr(d, key)}")
        if d.max_length < 2 or not d.scale > 0:
            raise RecipeError(f"data.max_length must be >= 2 and data.scale > 0, got {d.max_length}, {d.scale}")


@register_task("text_pairs")
class TextPairTask(TaskBase):
    """Fine-tune a sentence encoder on pairs with in-batch negatives; recall@1 / MRR retrieval."""

    recipe_type = TextPairRecipe
    main_metric, mode = "recall@1", "max"
    metric_names = ("recall@1", "mrr", "pairs")

    def __init__(self, recipe: TextPairRecipe, *, train: Sequence[Pair] | None = None,
                 eval: Sequence[Pair] | None = None, encoder: SentenceEncoder | None = None) -> None:
        super().__init__(recipe)
        d = recipe.data
        if (train is None) != (d.source != "memory") or (eval is None) != (d.source != "memory"):
            raise ValueError("train= and eval= pairs go with data.source = 'memory' (and only with it)")
        if d.source == "stdlib":
            train, eval = stdlib_doc_pairs("train"), stdlib_doc_pairs("eval")
        elif d.source == "files":
            train, eval = read_pairs(d.train, "train"), read_pairs(d.eval, "eval")
        train, eval = _check_pairs(train, "train"), _check_pairs(eval, "eval")
        self.train_set = PairList(train[:d.train_pairs] if d.train_pairs else train)
        self.eval_set = PairList([p[:2] for p in (eval[:d.eval_pairs] if d.eval_pairs else eval)])
        self._encoder, self._tokenizer = encoder, None
        self._eval_store: list[tuple[int, Tensor, Tensor]] = []

    @property
    def eval_description(self) -> str:
        where = {"stdlib": "standard-library docstring pairs from held-out modules", "files": self.recipe.data.eval,
                 "memory": "eval pairs"}[self.recipe.data.source]
        return f"{len(self.eval_set):,} {where}: each anchor retrieves its positive among all of them"

    # -- the model and its tokenizer ---------------------------------------------------------------
    def encoder(self) -> SentenceEncoder:
        """The sentence encoder (built once): a pretrained folder or a text-encoder variant."""
        if self._encoder is None:
            m = self.recipe.model
            if m.name == "sentence_encoder":
                unknown = set(m.options) - {"path"}
                if unknown:
                    raise RecipeError(f"model.options: the sentence_encoder takes only 'path', got {sorted(unknown)}")
                self._encoder = SentenceEncoder.from_pretrained(m.options.get("path") or default_model_path())
            else:
                self._encoder = self._variant_encoder(m)
        return self._encoder

    def _variant_encoder(self, m: ModelSection) -> SentenceEncoder:
        from tokenizers import Tokenizer  # optional: the tokenizers package, as SentenceEncoder.from_pretrained

        path = Path(self.recipe.data.tokenizer or default_model_path() / "tokenizer.json")
        if not path.is_file():
            raise RecipeError(f"data.tokenizer: no such file {path}")
        tokenizer = Tokenizer.from_file(str(path))
        text = fill_model_options(m, vocab_size=tokenizer.get_vocab_size()).build()
        if not isinstance(text, TextEncoder):
            raise RecipeError(f"model.name: {m.name!r} is not a text encoder (nor 'sentence_encoder')")
        return SentenceEncoder(text, tokenizer, pooling="mean",
                               max_length=min(self.recipe.data.max_length, text.config.max_position))

    def tokenizer(self):
        if self._tokenizer is None:
            encoder = self.encoder()
            self._tokenizer = type(encoder.tokenizer).from_str(encoder.tokenizer.to_str())
            self._tokenizer.enable_truncation(max_length=min(self.recipe.data.max_length, encoder.max_length))
        return self._tokenizer

    def build_model(self) -> nn.Module:
        return self.encoder()

    def train_dataset(self) -> Dataset:
        return self.train_set

    def eval_dataset(self) -> Dataset:
        return self.eval_set

    def collate(self, samples: list) -> TextBatch:
        """Pairs (or triplets) -> a :class:`TextBatch`; the indices come from the samples' order."""
        tokenizer, use_types = self.tokenizer(), self.encoder().encoder.embeddings.token_type is not None
        columns = []
        for texts in zip(*samples):
            encodings = tokenizer.encode_batch(list(texts))
            ids = torch.tensor([t for e in encodings for t in e.ids])
            types = torch.tensor([t for e in encodings for t in e.type_ids]) if use_types else None
            offsets = torch.tensor([0, *accumulate(len(e.ids) for e in encodings)])
            columns.append((ids, types, offsets))
        return TextBatch(columns, torch.arange(len(samples)))

    def loss(self, model: nn.Module, batch: TextBatch) -> tuple[Tensor, dict[str, Tensor]]:
        anchors, *candidates = [embed(model, *column) for column in batch.columns]
        return multiple_negatives_ranking_loss(anchors, torch.cat(candidates), self.recipe.data.scale), {}

    def eval_step(self, model: nn.Module, batch: TextBatch) -> dict[str, Tensor]:
        anchors, positives = (embed(model, *column) for column in batch.columns[:2])
        self._eval_store.append((anchors.cpu(), positives.cpu()))
        return {"pairs": torch.tensor(float(len(batch)))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """recall@1 and MRR of every eval anchor against all eval positives (from every rank)."""
        stored, self._eval_store = gather_objects(self._eval_store), []
        anchors = torch.cat([a for a, _ in stored])  # (n, D), in eval-set order: ranks hold contiguous shards
        positives = torch.cat([p for _, p in stored])
        scores = anchors @ positives.T  # (n, n)
        rank = (scores > scores.diagonal()[:, None]).sum(1) + 1  # 1 = its own positive scores highest
        return {"recall@1": float((rank == 1).float().mean()), "mrr": float((1.0 / rank).mean()),
                "pairs": sums["pairs"]}

    def batch_size_of(self, batch: TextBatch) -> int:
        return len(batch)
