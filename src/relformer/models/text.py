"""Text Transformers on :func:`relformer.attend`: BERT-style encoders, sentence embeddings and a
decoder-only language model.

* :class:`TextEncoder` (Devlin et al. 2019, "BERT"): word + absolute position + token-type
  embeddings, post-LN blocks with an exact-GELU MLP, optional ``tanh(Linear(cls))`` pooler.
  Relative variants for new encoders: RoPE (Su et al. 2021), ALiBi (Press et al. 2022), T5
  buckets (Raffel et al. 2020). Variable-length batches run **packed**: embeddings, projections,
  norms and MLPs see only the ``N`` real tokens ``(N, C)``; attention runs on rows of whole
  sentences (:meth:`TextEncoder.layout`) kept apart by a 4-D block-diagonal mask.
* :class:`SentenceEncoder` (Reimers & Gurevych 2019, "Sentence-BERT"): tokenizer + encoder +
  pooling, loaded from a Hugging Face / sentence-transformers folder (e.g. all-MiniLM-L6-v2).
* :class:`CausalLM`: decoder-only stack (pre-norm: GPT-2 layout) with a key/value cache.

Every variant is a :class:`TextConfig` (:func:`~relformer.models.list_models`).
"""
from __future__ import annotations

import contextlib
import json
import warnings
from dataclasses import dataclass
from functools import partial
from itertools import accumulate
from pathlib import Path
from typing import Literal, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import Relation
from ..data import Packed, Rows
from ..nn import MLP, Encoder, Linear, RotaryEmbedding
from ..relations import ALiBi, Causal, T5Bias
from .registry import builds, register_model

__all__ = ["TextConfig", "TextEncoder", "TextOutput", "TextLayout", "SentenceEncoder", "CausalLM", "KVCache", "pool"]

POSITIONS = ("absolute", "rope", "alibi", "t5")
ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": partial(nn.GELU, approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}
POOLINGS = ("mean", "cls", "max")
_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}


@dataclass(frozen=True)
class TextConfig:
    """Text Transformer hyper-parameters (defaults: BERT-base, Devlin et al. 2019).

    ``mlp_hidden`` defaults to ``4 * dim``; ``max_position``: rows of the learned position table
    (``position="absolute"``; the longest input then). ``position``: ``"absolute"`` (BERT),
    ``"rope"`` (rotary q/k), ``"alibi"`` (fixed linear bias) or ``"t5"`` (one bucketed bias table
    shared by all layers, ``t5_num_buckets`` / ``t5_max_distance``). ``type_vocab_size=0``: no
    token-type embedding. ``pre_norm``: False for BERT (post-LN with a LayerNorm on the
    embeddings), True for GPT-style stacks (no embedding norm, a final norm). ``activation``:
    MLP nonlinearity, ``"gelu"`` is the exact erf GELU of BERT. ``pooler`` (encoders): HF's
    ``tanh(Linear(first token))``. ``causal=True`` builds a :class:`CausalLM` (``tie_embeddings``:
    its LM head shares the word embedding).
    """

    vocab_size: int = 30522
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_hidden: int | None = None
    max_position: int = 512
    type_vocab_size: int = 2
    norm_eps: float = 1e-12
    dropout: float = 0.1
    attn_dropout: float = 0.1
    position: Literal["absolute", "rope", "alibi", "t5"] = "absolute"
    t5_num_buckets: int = 32
    t5_max_distance: int = 128
    rope_base: float = 10000.0
    pre_norm: bool = False
    activation: Literal["gelu", "gelu_tanh", "relu", "silu"] = "gelu"
    qkv_bias: bool = True
    pooler: bool = True
    causal: bool = False
    tie_embeddings: bool = True
    pad_token_id: int = 0
    backend: str = "auto"

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "depth", "num_heads", "max_position", "t5_num_buckets", "t5_max_distance"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value > 0):
                raise ValueError(f"TextConfig.{name} must be a positive int, got {value!r}")
        if self.mlp_hidden is not None and not (isinstance(self.mlp_hidden, int) and self.mlp_hidden > 0):
            raise ValueError(f"TextConfig.mlp_hidden must be a positive int or None, got {self.mlp_hidden!r}")
        if not (isinstance(self.type_vocab_size, int) and self.type_vocab_size >= 0):
            raise ValueError(f"TextConfig.type_vocab_size must be an int >= 0, got {self.type_vocab_size!r}")
        if self.dim % self.num_heads:
            raise ValueError(f"TextConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.position not in POSITIONS:
            raise ValueError(f"TextConfig.position must be one of {POSITIONS}, got {self.position!r}")
        if self.position == "rope" and (self.dim // self.num_heads) % 2:
            raise ValueError(f"TextConfig.position='rope' needs an even head dim, got dim / num_heads = "
                             f"{self.dim // self.num_heads}")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"TextConfig.activation must be one of {tuple(ACTIVATIONS)}, got {self.activation!r}")
        for name in ("dropout", "attn_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TextConfig.{name} must be in [0, 1), got {getattr(self, name)!r}")
        if not (isinstance(self.pad_token_id, int) and 0 <= self.pad_token_id < self.vocab_size):
            raise ValueError(f"TextConfig.pad_token_id must be in [0, vocab_size={self.vocab_size}), "
                             f"got {self.pad_token_id!r}")
        if self.norm_eps <= 0:
            raise ValueError(f"TextConfig.norm_eps must be > 0, got {self.norm_eps!r}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass
class TextOutput:
    """``last_hidden_state``: after the final norm, in the input's layout: ``(B, L, C)`` for padded
    ``input_ids`` (zeros at padding) or a :class:`~relformer.data.Packed` ``(N, C)`` for packed
    input; ``pooler_output (B, C)``: ``tanh(Linear(first token))`` or None without a pooler;
    ``hidden_states``: the embeddings and every layer's output (same layout), when asked for."""

    last_hidden_state: Tensor | Packed
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor | Packed, ...] | None = None


def _init_weights(module: nn.Module) -> None:
    """BERT's init: normal(0.02) linear and embedding weights, zero biases (LayerNorms keep 1 / 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def _check_ids(name: str, ids, upper: int) -> Tensor:
    """Integer token ids in ``[0, upper)``; any shape."""
    if not isinstance(ids, Tensor):
        raise TypeError(f"{name} must be a tensor (or a Packed batch), got {type(ids).__name__}")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be an integer tensor (int32/int64), got {ids.dtype}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= upper):
        raise ValueError(f"{name} must lie in [0, {upper}), got values in [{int(ids.min())}, {int(ids.max())}]")
    return ids


class TextEmbeddings(nn.Module):
    """BERT's input embeddings (Devlin et al. 2019, sec. 3.2): word + token type + learned absolute
    position, then LayerNorm (post-norm stacks only) and dropout. ``ids``, ``positions``,
    ``token_type_ids`` share any shape ``S`` -> ``(*S, dim)``."""

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        c = config
        self.word = nn.Embedding(c.vocab_size, c.dim)
        self.token_type = nn.Embedding(c.type_vocab_size, c.dim) if c.type_vocab_size else None
        self.position = nn.Embedding(c.max_position, c.dim) if c.position == "absolute" else None
        self.norm = nn.LayerNorm(c.dim, eps=c.norm_eps) if not c.pre_norm else nn.Identity()
        self.drop = nn.Dropout(c.dropout)

    def forward(self, ids: Tensor, positions: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        x = self.word(ids)
        if self.token_type is not None:  # absent token types are type 0, as HF
            x = x + (self.token_type(token_type_ids) if token_type_ids is not None else self.token_type.weight[0])
        elif token_type_ids is not None:
            raise ValueError("token_type_ids given but this model has type_vocab_size=0")
        if self.position is not None:
            if positions.numel() and int(positions.max()) >= self.position.num_embeddings:
                raise ValueError(f"a sequence is longer than max_position={self.position.num_embeddings} tokens "
                                 f"(position {int(positions.max())}); truncate the input")
            x = x + self.position(positions)
        return self.drop(self.norm(x))


def _relative_bias(c: TextConfig) -> Relation | None:
    """The position relation shared by every layer (``alibi`` / ``t5``), else None."""
    if c.position == "alibi":
        return ALiBi(c.num_heads)
    if c.position == "t5":
        return T5Bias(c.num_heads, c.t5_num_buckets, c.t5_max_distance, bidirectional=not c.causal)
    return None


def _layers(c: TextConfig) -> Encoder:
    """The block stack: post-LN (BERT) or pre-LN with a final norm; RoPE shared by every layer."""
    rope = RotaryEmbedding(c.head_dim, base=c.rope_base) if c.position == "rope" else None
    return Encoder(c.dim, c.depth, c.num_heads, mlp_hidden=c.mlp_hidden or 4 * c.dim,
                   norm_layer=partial(nn.LayerNorm, eps=c.norm_eps),
                   mlp_layer=partial(MLP, act=ACTIVATIONS[c.activation]), pre_norm=c.pre_norm,
                   qkv_bias=c.qkv_bias, backend=c.backend, rope=rope, dropout=c.dropout,
                   attn_dropout=c.attn_dropout, final_norm=c.pre_norm)


@contextlib.contextmanager
def _evaluating(module: nn.Module):
    """Eval mode and inference mode for the block; the module's training flag is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        module.train(was_training)


@dataclass(frozen=True)
class TextLayout:
    """Where packed tokens meet in attention, built once per forward and shared by every layer.

    ``rows``: whole items placed in ``(R, W)`` slots (:meth:`~relformer.data.Packed.to_rows`);
    ``relation``: the block-diagonal :class:`~relformer.relations.Documents` mask of the rows
    (4-D for SDPA, built once and cached on the relation), plus the model's relative bias;
    ``positions``: ``(R, W)`` RoPE positions of the slots, or None.
    """

    rows: Rows
    relation: Relation
    positions: Tensor | None


class TextEncoder(nn.Module):
    """BERT-style encoder: ``input_ids -> TextOutput``, called like HF ``BertModel``.

    ``forward(input_ids, attention_mask=None, token_type_ids=None, output_hidden_states=False,
    row_len=None)``. ``input_ids`` is either

    * a :class:`~relformer.data.Packed` batch of token ids (``values (N,)``, ``offsets (n + 1,)``;
      ``token_type_ids`` then a ``(N,)`` tensor or a Packed of the same layout); positions restart
      at 0 in every item; outputs are Packed ``(N, C)``;
    * or padded ``(B, L)`` ids with ``attention_mask (B, L)`` (1 = token; default all ones) and
      ``token_type_ids (B, L)``; absolute positions are column indices, as HF BERT. The real
      tokens are packed first, so padding costs nothing; outputs are ``(B, L, C)`` with zeros at
      padding (HF fills padding with values no one reads). The pooler reads each item's first
      real token (HF reads column 0, the same for right-padded batches).

    An item with no tokens, an empty batch, ids outside the vocabulary or a sequence longer than
    ``max_position`` (absolute positions) raise ``ValueError``. ``row_len`` sets the attention row
    width (default: the longest item; see :meth:`layout`).
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if config.causal:
            raise ValueError("TextConfig(causal=True) is a decoder: build it with CausalLM (or build_model)")
        self.config = c = config
        self.embeddings = TextEmbeddings(c)
        self.encoder = _layers(c)
        self.rel_bias = _relative_bias(c)
        self.pooler = Linear(c.dim, c.dim) if c.pooler else None
        self.apply(_init_weights)

    def layout(self, packed: Packed, positions: Tensor, row_len: int | None = None) -> TextLayout:
        """The attention layout of a packed batch: whole items in rows of ``row_len`` slots
        (default: the longest item), assigned by first-fit decreasing
        (:func:`~relformer.data.plan_rows`), so short items share a row and long ones fill theirs.

        Measured on a 2-core CPU (``../shared/DESIGN.md``): rows (or length buckets) with a 4-D
        block-diagonal mask ran ~1.85x faster than padded HF BERT at 48% padding, while one long
        block-diagonal sequence or nested tensors were 2.6-3.9x slower. ``positions (N,)`` are
        the tokens' RoPE positions.
        """
        rows = packed.to_rows(row_len)
        relation = rows.relation()
        if self.rel_bias is not None:  # slot differences are position differences inside an item
            relation = relation & self.rel_bias
        rope_positions = rows.gather(positions) if self.config.position == "rope" else None
        return TextLayout(rows, relation, rope_positions)

    def forward(self, input_ids: Tensor | Packed, attention_mask: Tensor | None = None,
                token_type_ids: Tensor | Packed | None = None, output_hidden_states: bool = False,
                row_len: int | None = None) -> TextOutput:
        c = self.config
        if isinstance(input_ids, Packed):
            packed, mask, positions, token_type_ids = self._packed(input_ids, attention_mask, token_type_ids)
        else:
            packed, mask, positions, token_type_ids = self._pack(input_ids, attention_mask, token_type_ids)
        _check_ids("input_ids", packed.values, c.vocab_size)
        if packed.values.dim() != 1:
            raise ValueError(f"packed input_ids values must be 1-D (N,), got shape {tuple(packed.values.shape)}")
        if token_type_ids is not None:
            _check_ids("token_type_ids", token_type_ids, max(c.type_vocab_size, 1))
        if packed.num_items == 0:
            raise ValueError("empty batch: input_ids holds no items")
        empty = (packed.lengths == 0).nonzero().flatten().tolist()
        if empty:
            raise ValueError(f"items {empty[:5]} have no tokens; every item needs at least one "
                             "(a tokenizer gives [CLS] [SEP] for an empty text)")
        layout = self.layout(packed, positions, row_len)
        x = self.embeddings(packed.values, positions, token_type_ids)  # (N, C)
        hidden = [x]
        for layer in self.encoder.layers:
            x = layer(x, layout.relation, positions=layout.positions, rows=layout.rows)  # (N, C)
            hidden.append(x)
        x = self.encoder.norm(x)
        pooled = torch.tanh(self.pooler(x[packed.offsets[:-1]])) if self.pooler is not None else None

        def out(values: Tensor) -> Tensor | Packed:
            if mask is None:
                return packed.with_values(values)
            padded = values.new_zeros(*mask.shape, values.shape[-1])  # (B, L, C)
            padded[mask] = values
            return padded

        return TextOutput(out(x), pooled, tuple(out(h) for h in hidden) if output_hidden_states else None)

    @staticmethod
    def _packed(packed: Packed, attention_mask, token_type_ids) -> tuple[Packed, None, Tensor, Tensor | None]:
        """Packed inputs -> the same, no mask, positions restarting per item ``(N,)``, token types ``(N,)``."""
        if attention_mask is not None:
            raise ValueError("attention_mask is for padded input_ids; a Packed batch needs none")
        if isinstance(token_type_ids, Packed):
            if not torch.equal(token_type_ids.offsets, packed.offsets):
                raise ValueError("token_type_ids (Packed) must have the offsets of input_ids")
            token_type_ids = token_type_ids.values
        if token_type_ids is not None and (not isinstance(token_type_ids, Tensor)
                                           or token_type_ids.shape != packed.values.shape):
            raise ValueError(f"token_type_ids must be a ({packed.values.shape[0]},) tensor for this Packed batch")
        return packed, None, packed.positions(), token_type_ids

    @staticmethod
    def _pack(input_ids, attention_mask, token_type_ids) -> tuple[Packed, Tensor, Tensor, Tensor | None]:
        """Padded ``(B, L)`` inputs -> the packed real tokens, the bool mask, their column positions
        ``(N,)`` and token types ``(N,)``."""
        if not isinstance(input_ids, Tensor):
            raise TypeError(f"input_ids must be a (B, L) tensor or a Packed batch, got {type(input_ids).__name__}")
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be 2-D (B, L) (or a Packed batch), got shape {tuple(input_ids.shape)}")
        if attention_mask is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        elif not isinstance(attention_mask, Tensor) or attention_mask.shape != input_ids.shape:
            raise ValueError(f"attention_mask must be a tensor of the shape of input_ids {tuple(input_ids.shape)}")
        elif attention_mask.dtype != torch.bool and ((attention_mask != 0) & (attention_mask != 1)).any():
            raise ValueError("attention_mask must hold 0 (padding) and 1 (token) only")
        else:
            mask = attention_mask.bool()
        if token_type_ids is not None:
            if not isinstance(token_type_ids, Tensor) or token_type_ids.shape != input_ids.shape:
                raise ValueError(f"token_type_ids must be a tensor of the shape of input_ids {tuple(input_ids.shape)}")
            token_type_ids = token_type_ids[mask]
        B, L = input_ids.shape
        positions = torch.arange(L, device=input_ids.device).expand(B, L)[mask]
        return Packed.from_padded(input_ids, mask=mask), mask, positions, token_type_ids


# ---------------------------------------------------------------------------------------------
# Sentence embeddings
# ---------------------------------------------------------------------------------------------
def _read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def _pooling_mode(folder: Path) -> str:
    """sentence-transformers' ``Pooling`` config (the folder named in ``modules.json``, default
    ``1_Pooling``) -> ``"mean"`` / ``"cls"`` / ``"max"``; mean when there is none."""
    modules = _read_json(folder / "modules.json") or []
    sub = next((m.get("path", "") for m in modules if m.get("type", "").endswith("Pooling")), "1_Pooling")
    config = _read_json(folder / sub / "config.json")
    if config is None:
        return "mean"
    on = [key for key, value in config.items() if key.startswith("pooling_mode") and value]
    if len(on) != 1 or on[0] not in _POOLING_KEYS:
        raise NotImplementedError(f"pooling config {config}: exactly one of mean / cls / max is supported")
    return _POOLING_KEYS[on[0]]


def _max_length(folder: Path, config: TextConfig) -> int:
    """sentence-transformers' ``max_seq_length``, else the tokenizer's ``model_max_length``, capped by
    the position table of absolute-position models."""
    st = _read_json(folder / "sentence_bert_config.json") or {}
    tok = _read_json(folder / "tokenizer_config.json") or {}
    length = st.get("max_seq_length") or tok.get("model_max_length") or config.max_position
    return min(int(length), config.max_position) if config.position == "absolute" else int(length)


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
    ``1_Pooling/config.json``. ``encode(texts) -> (n, dim)`` fp32.

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
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        from ..interop.transformers import bert_state_dict, bert_text_config

        folder = Path(path)
        for name in ("config.json", "model.safetensors", "tokenizer.json"):
            if not (folder / name).is_file():
                raise FileNotFoundError(f"{folder} has no {name}: expected a Hugging Face BERT folder")
        state = bert_state_dict(load_file(str(folder / "model.safetensors")))
        config = bert_text_config(_read_json(folder / "config.json"), pooler="pooler.weight" in state)
        encoder = TextEncoder(config)
        encoder.load_state_dict(state)
        tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        model = cls(encoder.eval(), tokenizer, _pooling_mode(folder), _max_length(folder, config))
        model.path = str(folder.resolve())
        return model

    def _tokenize(self, texts) -> list:
        if isinstance(texts, str):
            texts = [texts]
        if not isinstance(texts, (list, tuple)):
            raise TypeError(f"texts must be a list or tuple of str (or one str), got {type(texts).__name__}")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
        encodings = self.tokenizer.encode_batch(list(texts)) if texts else []
        truncated = sum(1 for e in encodings if e.overflowing)
        if truncated:
            warnings.warn(f"{truncated} of {len(texts)} texts are longer than max_length={self.max_length} "
                          "tokens and were truncated", stacklevel=3)
        return encodings

    def encode(self, texts: Sequence[str] | str, batch_size: int = 64, normalize: bool = True,
               show_progress: bool = False) -> Tensor:
        """Embed ``texts`` -> ``(n, dim)`` fp32 on the model's device, in input order (one str -> ``(1, dim)``).

        Texts are sorted by length and encoded ``batch_size`` at a time, packed (no padding). Texts
        longer than ``max_length`` tokens are truncated (one warning says how many). An empty or
        whitespace-only text is ``[CLS] [SEP]`` and gets that embedding; ``[]`` gives ``(0, dim)``.
        Runs in eval and inference mode. A non-str element raises ``TypeError`` naming its index.
        """
        if not (isinstance(batch_size, int) and batch_size > 0):
            raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
        encodings = self._tokenize(texts)
        device = next(self.encoder.parameters()).device
        out = torch.zeros(len(encodings), self.dim, device=device)
        order = sorted(range(len(encodings)), key=lambda i: -len(encodings[i].ids))
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        if show_progress:
            from tqdm.auto import tqdm

            batches = tqdm(batches, desc="encode", unit="batch")
        with _evaluating(self):
            for batch in batches:
                ids = torch.tensor([t for i in batch for t in encodings[i].ids], device=device)  # (N,)
                types = torch.tensor([t for i in batch for t in encodings[i].type_ids], device=device)
                offsets = torch.tensor([0, *accumulate(len(encodings[i].ids) for i in batch)], device=device)
                if self.encoder.embeddings.token_type is None:
                    types = None
                hidden = self.encoder(Packed(ids, offsets), token_type_ids=types).last_hidden_state
                emb = pool(hidden, self.pooling).float()
                out[torch.tensor(batch, device=device)] = F.normalize(emb, dim=-1) if normalize else emb
        return out


# ---------------------------------------------------------------------------------------------
# Decoder-only language model
# ---------------------------------------------------------------------------------------------
class _LayerKV:
    """One layer's cache slot: ``update(k, v)`` appends this call's keys/values ``(B, Hkv, L, D)``
    and returns all of them; tensors are concatenated, never written in place."""

    def __init__(self, k: Tensor | None = None, v: Tensor | None = None) -> None:
        self.k, self.v = k, v

    def update(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.k is not None:
            k, v = torch.cat((self.k, k), dim=2), torch.cat((self.v, v), dim=2)
        self.k, self.v = k, v
        return k, v


class KVCache:
    """Keys and values of every token seen so far, one slot per layer: ``k, v (B, Hkv, L_past, D)``
    (RoPE applied). :meth:`CausalLM.forward` returns a new cache and leaves the one it got unchanged,
    so a cache can be reused (e.g. to branch from a common prompt)."""

    def __init__(self, depth: int, past: "KVCache | None" = None) -> None:
        if past is None:
            self.layers = [_LayerKV() for _ in range(depth)]
            return
        if len(past.layers) != depth:
            raise ValueError(f"cache has {len(past.layers)} layers, the model {depth}")
        self.layers = [_LayerKV(p.k, p.v) for p in past.layers]

    def __len__(self) -> int:
        """Cached tokens ``L_past``."""
        k = self.layers[0].k if self.layers else None
        return 0 if k is None else k.shape[2]

    @property
    def batch_size(self) -> int | None:
        k = self.layers[0].k if self.layers else None
        return None if k is None else k.shape[0]


class CausalLM(nn.Module):
    """Decoder-only language model (Radford et al. 2019, GPT-2 layout with ``pre_norm=True``):
    embeddings, blocks under a :class:`~relformer.relations.Causal` relation, final norm, LM head
    (tied to the word embedding when ``tie_embeddings``). Needs ``TextConfig(causal=True)`` with ``position`` ``"rope"``
    or ``"absolute"``.

    ``forward(input_ids (B, L), cache=None) -> (logits (B, L, vocab), cache)``: with a
    :class:`KVCache` of ``L_past`` tokens the new tokens sit at positions ``L_past ...`` and attend
    every cached key (relation ``Causal(offset=L_past)``; none for a single new token).
    ``generate(input_ids, max_new_tokens)``: greedy decoding.
    """

    def __init__(self, config: TextConfig) -> None:
        super().__init__()
        if not config.causal:
            raise ValueError("CausalLM needs TextConfig(causal=True)")
        if config.position not in ("rope", "absolute"):
            raise ValueError(f"CausalLM supports position='rope' or 'absolute', got {config.position!r} "
                             "(its bias would need the cache offset)")
        self.config = c = config
        self.embeddings = TextEmbeddings(c)
        self.encoder = _layers(c)
        self.lm_head = Linear(c.dim, c.vocab_size, bias=False)
        self.apply(_init_weights)
        if c.tie_embeddings:
            self.lm_head.weight = self.embeddings.word.weight

    def forward(self, input_ids: Tensor, cache: KVCache | None = None) -> tuple[Tensor, KVCache]:
        c = self.config
        _check_ids("input_ids", input_ids, c.vocab_size)
        if input_ids.dim() != 2 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids must be (B, L) with L >= 1, got shape {tuple(input_ids.shape)}")
        if cache is not None and not isinstance(cache, KVCache):
            raise TypeError(f"cache must be a KVCache returned by this model, got {type(cache).__name__}")
        B, L = input_ids.shape
        past = len(cache) if cache is not None else 0
        if past and cache.batch_size != B:
            raise ValueError(f"cache holds a batch of {cache.batch_size}, input_ids has {B}")
        positions = torch.arange(past, past + L, device=input_ids.device)  # (L,)
        x = self.embeddings(input_ids, positions)  # (B, L, C)
        relation = Causal(offset=past) if L > 1 else None  # one new token attends every key
        cache = KVCache(len(self.encoder.layers), cache)
        rope = positions if c.position == "rope" else None
        for layer, slot in zip(self.encoder.layers, cache.layers):
            x = layer(x, relation, positions=rope, kv_cache=slot)
        return self.lm_head(self.encoder.norm(x)), cache

    def generate(self, input_ids: Tensor, max_new_tokens: int, use_cache: bool = True) -> Tensor:
        """Greedy decoding: ``(B, L) -> (B, L + max_new_tokens)`` (eval mode, no grad). With
        ``use_cache`` each step feeds only the new token; without, the whole sequence."""
        if not (isinstance(max_new_tokens, int) and max_new_tokens >= 0):
            raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
        ids = input_ids
        with _evaluating(self):
            cache = None
            step = ids
            for _ in range(max_new_tokens):
                logits, cache = self(step, cache if use_cache else None)
                token = logits[:, -1].argmax(-1, keepdim=True)  # (B, 1)
                ids = torch.cat((ids, token), dim=1)
                step = token if use_cache else ids
        return ids


def _build_text(config: TextConfig) -> nn.Module:
    return CausalLM(config) if config.causal else TextEncoder(config)


builds(TextConfig)(_build_text)


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------
@register_model
def bert_base() -> TextConfig:
    """BERT-base (Devlin et al. 2019): 12 layers, 768 wide, 12 heads, 110M parameters."""
    return TextConfig()


@register_model
def minilm_l6() -> TextConfig:
    """all-MiniLM-L6-v2's shape (Wang et al. 2020, "MiniLM"; sentence-transformers): 6 layers,
    384 wide, 12 heads, FFN 1536, 22.7M parameters."""
    return TextConfig(dim=384, depth=6, num_heads=12, mlp_hidden=1536)


@register_model
def text_micro() -> TextConfig:
    """A tiny BERT-style encoder for tests: vocabulary 1000, 2 layers, 64 wide, 4 heads."""
    return TextConfig(vocab_size=1000, dim=64, depth=2, num_heads=4, mlp_hidden=128, max_position=128,
                      dropout=0.0, attn_dropout=0.0)


@register_model
def lm_micro() -> TextConfig:
    """A tiny decoder-only LM for tests: RoPE, pre-norm, tied head, vocabulary 1000, 2 layers, 64 wide."""
    return TextConfig(vocab_size=1000, dim=64, depth=2, num_heads=4, mlp_hidden=128, max_position=256,
                      type_vocab_size=0, norm_eps=1e-5, dropout=0.0, attn_dropout=0.0, position="rope",
                      pre_norm=True, pooler=False, causal=True)
