"""The text family's config, output type, embeddings and block stack (shared by
:class:`~relformer.models.text.TextEncoder` and :class:`~relformer.models.text.CausalLM`), and its
registered variants."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
from torch import Tensor, nn

from ...attention import Relation
from ...data import Packed
from ...nn import MLP, Encoder, RotaryEmbedding
from ...relations import ALiBi, T5Bias
from ..checks import check_eps, check_rate
from ..outputs import ModelOutput
from ..registry import register_model

__all__ = ["TextConfig", "TextOutput", "TextEmbeddings", "POSITIONS", "ACTIVATIONS", "init_weights", "check_ids",
           "relative_bias", "layer_stack", "evaluating"]

POSITIONS = ("absolute", "rope", "alibi", "t5")
ACTIVATIONS = {"gelu": nn.GELU, "gelu_tanh": partial(nn.GELU, approximate="tanh"), "relu": nn.ReLU, "silu": nn.SiLU}
POOLINGS = ("mean", "cls", "max")


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
        check_rate(self, "dropout", "attn_dropout")
        if not (isinstance(self.pad_token_id, int) and 0 <= self.pad_token_id < self.vocab_size):
            raise ValueError(f"TextConfig.pad_token_id must be in [0, vocab_size={self.vocab_size}), "
                             f"got {self.pad_token_id!r}")
        check_eps(self, "norm_eps")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


@dataclass
class TextOutput(ModelOutput):
    """``last_hidden_state``: after the final norm, in the input's layout: ``(B, L, C)`` for padded
    ``input_ids`` (zeros at padding) or a :class:`~relformer.data.Packed` ``(N, C)`` for packed
    input; ``pooler_output (B, C)``: ``tanh(Linear(first token))`` or None without a pooler;
    ``hidden_states``: the embeddings and every layer's output (same layout), when asked for."""

    last_hidden_state: Tensor | Packed
    pooler_output: Tensor | None = None
    hidden_states: tuple[Tensor | Packed, ...] | None = None


def init_weights(module: nn.Module) -> None:
    """BERT's init: normal(0.02) linear and embedding weights, zero biases (LayerNorms keep 1 / 0)."""
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
        if getattr(module, "bias", None) is not None:
            nn.init.zeros_(module.bias)


def check_ids(name: str, ids, upper: int) -> Tensor:
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


def relative_bias(c: TextConfig) -> Relation | None:
    """The position relation shared by every layer (``alibi`` / ``t5``), else None."""
    if c.position == "alibi":
        return ALiBi(c.num_heads)
    if c.position == "t5":
        return T5Bias(c.num_heads, c.t5_num_buckets, c.t5_max_distance, bidirectional=not c.causal)
    return None


def layer_stack(c: TextConfig) -> Encoder:
    """The block stack: post-LN (BERT) or pre-LN with a final norm; RoPE shared by every layer."""
    rope = RotaryEmbedding(c.head_dim, base=c.rope_base) if c.position == "rope" else None
    return Encoder(c.dim, c.depth, c.num_heads, mlp_hidden=c.mlp_hidden or 4 * c.dim,
                   norm_layer=partial(nn.LayerNorm, eps=c.norm_eps),
                   mlp_layer=partial(MLP, act=ACTIVATIONS[c.activation]), pre_norm=c.pre_norm,
                   qkv_bias=c.qkv_bias, backend=c.backend, rope=rope, dropout=c.dropout,
                   attn_dropout=c.attn_dropout, final_norm=c.pre_norm)


@contextlib.contextmanager
def evaluating(module: nn.Module):
    """Eval mode and inference mode for the block; the module's training flag is restored after."""
    was_training = module.training
    module.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        module.train(was_training)


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

