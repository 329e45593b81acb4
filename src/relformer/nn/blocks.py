"""Attention, Transformer blocks and layer stacks. All attention goes through :func:`relformer.attend`.

* :class:`Attention` -- multi-head / grouped-query attention, self or cross, optional RoPE.
* :class:`BlockSpec` -- what a block is made of (norm, MLP, heads, dropouts, ...), written once.
* :class:`Block` -- self-attention + MLP with residuals, pre-norm (GPT-2 / ViT) or post-norm
  (Vaswani / BERT).
* :class:`CrossBlock` -- self-attention, cross-attention to a ``context``, MLP (the Transformer
  decoder layer; DETR's decoder layer).
* :class:`Encoder` / :class:`Decoder` -- stacks of Blocks / CrossBlocks built from one spec, with
  per-layer relations, positions, packed rows, a KV cache and every hidden state on request.

Tokens are ``(B, L, C)``; variable-size items are packed into one row and kept apart with a
relation such as :class:`relformer.relations.Documents`, not padded.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor, nn

from ..attention import Relation, attend
from ..attention.backends import attention_probs
from .gemm import Linear, linear
from .mlp import MLP

__all__ = ["Attention", "BlockSpec", "Block", "CrossBlock", "Encoder", "Decoder", "DropPath", "LayerScale"]


def _to_heads(x: Tensor, heads: int, head_dim: int) -> Tensor:
    """``(B, L, heads * head_dim) -> (B, heads, L, head_dim)``, a view."""
    B, L, _ = x.shape
    return x.view(B, L, heads, head_dim).transpose(1, 2)


class _SplitHeads(torch.autograd.Function):
    """A fused projection ``(B, L, (H + 2 Hkv) D)`` as head views q ``(B, H, L, D)``, k and v ``(B, Hkv, L, D)``.

    Autograd's own backward of ``split`` + ``transpose`` concatenates the three strided head
    gradients with ``cat``; this one copies each into its slot of one ``(B, L, (H + 2 Hkv) D)``
    buffer: one pass instead of a copy per head view plus the ``cat``, and the contiguous layout
    the projection's backward reads."""

    @staticmethod
    def forward(ctx, qkv: Tensor, heads: int, kv_heads: int, head_dim: int):
        ctx.widths = (heads, kv_heads, kv_heads)
        parts = qkv.split(tuple(h * head_dim for h in ctx.widths), dim=-1)
        return tuple(_to_heads(t, h, head_dim) for t, h in zip(parts, ctx.widths))

    @staticmethod
    def backward(ctx, *grads: Tensor | None):
        first = next(g for g in grads if g is not None)
        B, _, L, D = first.shape
        buf = first.new_empty(B, L, sum(ctx.widths), D)
        start = 0
        for g, h in zip(grads, ctx.widths):
            slot = buf[:, :, start:start + h]  # (B, L, h, D)
            slot.zero_() if g is None else slot.copy_(g.transpose(1, 2))
            start += h
        return buf.flatten(2), None, None, None


class Attention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, sec. 3.2.2) with grouped-query heads (Ainslie et al.
    2023, GQA) and an optional rotary embedding.

    Self-attention (default) uses one fused ``qkv`` projection, laid out ``[q; k; v]`` like
    ``nn.MultiheadAttention.in_proj_weight``; ``cross=True`` uses ``q`` on ``x`` and a fused
    ``kv`` on the ``context``. ``proj`` is the output projection.

    Args:
        dim: token width ``C`` (queries, output).
        num_heads: query heads ``H``.
        num_kv_heads: key/value heads ``Hkv`` (``H % Hkv == 0``), default ``H``.
        qkv_bias / proj_bias: biases of the input / output projections.
        backend: passed to :func:`relformer.attend`.
        rope: a :class:`~relformer.nn.posenc.RotaryEmbedding` (or 2-D) applied to q and k.
        head_dim: per-head width ``D``, default ``dim // num_heads``.
        attn_dropout: dropout on attention probabilities (training only); proj_dropout: on the output.
        cross: build a cross-attention; context_dim: width of the context (default ``dim``).
    """

    def __init__(self, dim: int, num_heads: int, num_kv_heads: int | None = None, qkv_bias: bool = True,
                 backend: str = "auto", rope: nn.Module | None = None, head_dim: int | None = None,
                 proj_bias: bool = True, attn_dropout: float = 0.0, proj_dropout: float = 0.0,
                 cross: bool = False, context_dim: int | None = None) -> None:
        super().__init__()
        num_kv_heads = num_heads if num_kv_heads is None else num_kv_heads
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        if head_dim is None:
            if dim % num_heads:
                raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads}), or pass head_dim")
            head_dim = dim // num_heads
        if context_dim is not None and not cross:
            raise ValueError("context_dim is only meaningful with cross=True")
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.backend, self.attn_dropout, self.cross = backend, float(attn_dropout), bool(cross)
        q_dim, kv_dim = num_heads * head_dim, num_kv_heads * head_dim
        if cross:
            self.q = Linear(dim, q_dim, bias=qkv_bias)
            self.kv = Linear(dim if context_dim is None else context_dim, 2 * kv_dim, bias=qkv_bias)
        else:
            self.qkv = Linear(dim, q_dim + 2 * kv_dim, bias=qkv_bias)
        self.rope = rope
        self.proj = Linear(q_dim, dim, bias=proj_bias)
        self.proj_drop = nn.Dropout(proj_dropout)


    def _project(self, x: Tensor, context: Tensor | None, pos: Tensor | None,
                 context_pos: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """q (B, Lq, H*D), k and v (B, Lk, Hkv*D) for cross-attention, or self-attention with ``pos``
        (added to the q/k inputs only, DETR); plain self-attention is fused in :meth:`_qkv`."""
        q_dim, kv_dim = self.num_heads * self.head_dim, self.num_kv_heads * self.head_dim
        if self.cross:
            if context is None:
                raise ValueError("cross-attention needs a context")
            q = self.q(x if pos is None else x + pos)
            if context_pos is None:
                k, v = self.kv(context).split(kv_dim, dim=-1)
            else:  # keys see the positions, values do not
                w_k, w_v = self.kv.weight.split(kv_dim)
                b_k, b_v = self.kv.bias.split(kv_dim) if self.kv.bias is not None else (None, None)
                k, v = linear(context + context_pos, w_k, b_k), linear(context, w_v, b_v)
            return q, k, v
        if context is not None or context_pos is not None:
            raise ValueError("this Attention is a self-attention (cross=False): it takes no context")
        w_qk, w_v = self.qkv.weight.split((q_dim + kv_dim, kv_dim))
        b_qk, b_v = self.qkv.bias.split((q_dim + kv_dim, kv_dim)) if self.qkv.bias is not None else (None, None)
        q, k = linear(x + pos, w_qk, b_qk).split((q_dim, kv_dim), dim=-1)
        return q, k, linear(x, w_v, b_v)

    def _qkv(self, x, context, positions, context_positions, pos, context_pos,
             rows=None) -> tuple[Tensor, Tensor, Tensor]:
        """Projected heads: q ``(B, H, Lq, D)``, k and v ``(B, Hkv, Lk, D)``, RoPE applied."""
        if rows is not None and self.cross:
            raise ValueError("rows (packed tokens) are supported by self-attention only")
        if not self.cross and context is None and context_pos is None and pos is None:
            qkv = self.qkv(x)  # (B, L, (H + 2 Hkv) D), or packed (N, ...)
            if rows is not None:  # packed (N, .) -> rows (R, W, .), one gather for q, k and v
                qkv = rows.gather(qkv)
            q, k, v = _SplitHeads.apply(qkv, self.num_heads, self.num_kv_heads, self.head_dim)
        else:
            q, k, v = self._project(x, context, pos, context_pos)
            if rows is not None:
                q, k, v = rows.gather(q), rows.gather(k), rows.gather(v)
            q = _to_heads(q, self.num_heads, self.head_dim)      # (B, H, Lq, D)
            k = _to_heads(k, self.num_kv_heads, self.head_dim)   # (B, Hkv, Lk, D)
            v = _to_heads(v, self.num_kv_heads, self.head_dim)   # (B, Hkv, Lk, D)
        if self.rope is not None:
            q = self.rope(q, positions)
            k = self.rope(k, context_positions if self.cross else positions)
        elif positions is not None or context_positions is not None:
            raise ValueError("positions given but this Attention has no rope")
        return q, k, v

    @torch.no_grad()
    def probabilities(self, x: Tensor, relation: Relation | None = None, context: Tensor | None = None,
                      positions: Tensor | None = None, context_positions: Tensor | None = None,
                      pos: Tensor | None = None, context_pos: Tensor | None = None, rows=None,
                      kv_cache=None) -> Tensor:
        """The attention probabilities ``(B, H, Lq, Lk)`` (fp32, eager) for the same call as :meth:`forward`
        -- for plots and inspection; the forward pass never materialises them. With ``rows``: per
        row ``(R, H, W, W)``."""
        if kv_cache is not None:
            raise NotImplementedError("probabilities() of a decoding step with a kv_cache")
        q, k, _ = self._qkv(x, context, positions, context_positions, pos, context_pos, rows)
        return attention_probs(q, k, relation, q.shape[-1] ** -0.5)

    def forward(self, x: Tensor, relation: Relation | None = None, context: Tensor | None = None,
                positions: Tensor | None = None, context_positions: Tensor | None = None,
                pos: Tensor | None = None, context_pos: Tensor | None = None, rows=None,
                kv_cache=None) -> Tensor:
        """``x (B, Lq, C)``, ``context (B, Lk, C_ctx)`` (cross only) -> ``(B, Lq, C)``.

        ``positions`` / ``context_positions``: RoPE positions of queries / keys (default
        ``arange``; for self-attention keys use ``positions``). ``pos`` / ``context_pos``:
        additive embeddings added to the query / key inputs but not the values (DETR).

        ``rows`` (a :class:`~relformer.data.Rows`): ``x`` is packed token values ``(N, C)``; the
        projections run on them, attention on the rows ``rows.gather(.) (R, W)`` (``relation`` and
        ``positions`` describe the rows), and the result is scattered back: ``(N, C)``.
        ``kv_cache``: an object whose ``update(k, v)`` receives this call's keys and values
        ``(B, Hkv, Lq, D)`` (RoPE applied) and returns all keys and values to attend, past first
        (e.g. :class:`relformer.models.text.KVCache`); ``relation`` then spans ``(Lq, L_past + Lq)``.
        """
        q, k, v = self._qkv(x, context, positions, context_positions, pos, context_pos, rows)
        if kv_cache is not None:
            k, v = kv_cache.update(k, v)  # (B, Hkv, L_past + Lq, D)
        out = attend(q, k, v, relation, backend=self.backend,
                     dropout_p=self.attn_dropout if self.training else 0.0)  # (B, H, Lq, D)
        out = out.transpose(1, 2).flatten(2)  # (B, Lq, H*D)
        if rows is not None:
            out = rows.scatter(out)  # (N, H*D)
        return self.proj_drop(self.proj(out))


class LayerScale(nn.Module):
    """Per-channel residual-branch scale (Touvron et al. 2021, CaiT), initialised to ``init``."""

    def __init__(self, dim: int, init: float = 1e-5) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x: Tensor) -> Tensor:
        return x * self.gamma


class DropPath(nn.Module):
    """Stochastic depth (Huang et al. 2016): drop a whole residual branch per sample while training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"drop path probability must be in [0, 1), got {p}")
        self.p = float(p)

    def _scale(self, x: Tensor) -> Tensor | None:
        """Per-sample ``keep / (1 - p)`` ``(B, 1, ...)``, or None when nothing is dropped."""
        if not self.training or self.p == 0.0:
            return None
        keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1 - self.p)
        return keep.div_(1 - self.p)

    def forward(self, x: Tensor) -> Tensor:
        scale = self._scale(x)
        return x if scale is None else x * scale

    def add_to(self, x: Tensor, branch: Tensor) -> Tensor:
        """``x + self(branch)`` as one ``addcmul``: one activation-sized tensor instead of three."""
        scale = self._scale(branch)
        return add_residual(x, branch) if scale is None else torch.addcmul(x, branch, scale)

    def extra_repr(self) -> str:
        return f"p={self.p}"


def add_residual(x: Tensor, branch: Tensor) -> Tensor:
    """``x + branch``, written into ``branch`` when no autograd graph records it (inference):
    one activation-sized allocation less per residual."""
    if (branch.requires_grad or branch.shape != x.shape or branch.dtype != x.dtype
            or branch.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()):
        return x + branch
    return branch.add_(x)


def _add_branch(x: Tensor, wrap: nn.Sequential, branch: Tensor) -> Tensor:
    """``x + wrap(branch)`` for a :meth:`BlockSpec.branch` wrapper, its DropPath fused into the add."""
    *scales, drop = wrap
    for layer in scales:
        branch = layer(branch)
    return drop.add_to(x, branch)


def _check_rate(name: str, value) -> None:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0):
        raise ValueError(f"{name} must be a number in [0, 1), got {value!r}")


@dataclass(frozen=True)
class BlockSpec:
    """What every layer of a stack is made of, written once (the block factory of :class:`Block`,
    :class:`CrossBlock` and :class:`Encoder`).

    Args:
        mlp_ratio: MLP hidden width ``int(dim * mlp_ratio)``, unless ``mlp_hidden`` is given.
        norm_layer: called as ``norm_layer(dim)``; mlp_layer: called as ``mlp_layer(dim, hidden)``.
        pre_norm: pre-norm (GPT-2, ViT) or post-norm (Vaswani et al. 2017, BERT) residuals.
        num_kv_heads, qkv_bias, backend, rope, head_dim: see :class:`Attention`.
        dropout: on every branch output; attn_dropout: on attention probabilities.
        layer_scale: LayerScale init (None: off); drop_path: stochastic-depth rate (an
            :class:`Encoder`'s maximum, reached by its last layer).
        context_dim: width of a :class:`CrossBlock`'s context (default: the block's width).
    """

    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None
    norm_layer: Callable[[int], nn.Module] = nn.LayerNorm
    mlp_layer: Callable[[int, int], nn.Module] = MLP
    pre_norm: bool = True
    num_kv_heads: int | None = None
    qkv_bias: bool = True
    backend: str = "auto"
    rope: nn.Module | None = None
    head_dim: int | None = None
    dropout: float = 0.0
    attn_dropout: float = 0.0
    layer_scale: float | None = None
    drop_path: float = 0.0
    context_dim: int | None = None

    def __post_init__(self) -> None:
        for name in ("dropout", "attn_dropout", "drop_path"):
            _check_rate(name, getattr(self, name))

    @classmethod
    def of(cls, spec: "BlockSpec | None", options: dict) -> "BlockSpec":
        """``spec`` (default: all defaults) with ``options`` replacing its fields; an unknown
        option raises ``TypeError``."""
        return dataclasses.replace(spec if spec is not None else cls(), **options)

    def attention_branch(self, dim: int, num_heads: int, cross: bool = False) -> tuple[nn.Module, Attention, nn.Module]:
        """An attention residual branch: ``(norm, attention, output wrapper)``; a cross-attention
        (to a context of width ``context_dim``) has no RoPE."""
        norm = self.norm_layer(dim)
        attn = Attention(dim, num_heads, self.num_kv_heads, qkv_bias=self.qkv_bias, backend=self.backend,
                         rope=None if cross else self.rope, head_dim=self.head_dim, attn_dropout=self.attn_dropout,
                         proj_dropout=self.dropout, cross=cross, context_dim=self.context_dim if cross else None)
        return norm, attn, self.branch(dim)

    def mlp_branch(self, dim: int) -> tuple[nn.Module, nn.Module, nn.Dropout, nn.Module]:
        """The MLP residual branch: ``(norm, mlp, its output dropout, output wrapper)``."""
        hidden = int(dim * self.mlp_ratio) if self.mlp_hidden is None else self.mlp_hidden
        return self.norm_layer(dim), self.mlp_layer(dim, hidden), nn.Dropout(self.dropout), self.branch(dim)

    def branch(self, dim: int) -> nn.Sequential:
        """What wraps a residual branch's output: optional LayerScale, then DropPath."""
        layers = [LayerScale(dim, self.layer_scale)] if self.layer_scale is not None else []
        return nn.Sequential(*layers, DropPath(self.drop_path))


class _Residual(nn.Module):
    """Shared pre-/post-norm residual wiring: ``x + branch(norm(x))`` or ``norm(x + branch(x))``."""

    pre_norm: bool
    takes_context = False  # whether forward needs a ``context`` (cross-attention)

    def _residual(self, x: Tensor, norm: nn.Module, wrap: nn.Module, fn: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            return _add_branch(x, wrap, fn(norm(x)))
        return norm(_add_branch(x, wrap, fn(x)))

    def _mlp_branch(self, x: Tensor, norm: nn.Module, wrap: nn.Module) -> Tensor:
        return self._residual(x, norm, wrap, lambda h: self.mlp_drop(self.mlp(h)))


class Block(_Residual):
    """Transformer block: self-attention then MLP, each in a residual branch.

    Pre-norm (``pre_norm=True``; GPT-2, ViT): ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``.
    Post-norm (Vaswani et al. 2017; BERT): ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``.

    ``Block(dim, num_heads, spec=None, **options)``: the layers are those of ``spec`` (a
    :class:`BlockSpec`) with ``options`` (its field names) replacing fields.

    ``forward(x, relation=None, positions=None, pos=None, rows=None, kv_cache=None)``:
    ``x (B, L, C) -> (B, L, C)``; the keywords are :meth:`Attention.forward`'s (``rows``: packed
    ``x (N, C)``; ``kv_cache``: decoding).
    """

    def __init__(self, dim: int, num_heads: int, spec: BlockSpec | None = None, **options) -> None:
        super().__init__()
        s = BlockSpec.of(spec, options)
        self.pre_norm = bool(s.pre_norm)
        self.norm1, self.attn, self.branch1 = s.attention_branch(dim, num_heads)
        self.norm2, self.mlp, self.mlp_drop, self.branch2 = s.mlp_branch(dim)

    def forward(self, x: Tensor, relation: Relation | None = None, positions: Tensor | None = None,
                pos: Tensor | None = None, rows=None, kv_cache=None) -> Tensor:
        x = self._residual(x, self.norm1, self.branch1, lambda h: self.attn(
            h, relation, positions=positions, pos=pos, rows=rows, kv_cache=kv_cache))
        return self._mlp_branch(x, self.norm2, self.branch2)


class CrossBlock(_Residual):
    """Transformer decoder layer (Vaswani et al. 2017; DETR's decoder layer, Carion et al. 2020):
    self-attention, cross-attention to ``context``, MLP, each a residual branch with its own norm
    (``norm1``, ``norm2``, ``norm3``); pre- or post-norm and built as :class:`Block`.

    ``forward(x, context, relation=None, context_relation=None, positions=None,
    context_positions=None, pos=None, context_pos=None)``: ``relation`` masks/biases the
    self-attention ``(Lq, Lq)``, ``context_relation`` the cross-attention ``(Lq, Lk)``. DETR's
    ``query_pos`` / ``pos`` are ``pos`` / ``context_pos`` (added to queries and keys only).
    RoPE, if given, is used by the self-attention only.
    """

    takes_context = True

    def __init__(self, dim: int, num_heads: int, spec: BlockSpec | None = None, **options) -> None:
        super().__init__()
        s = BlockSpec.of(spec, options)
        self.pre_norm = bool(s.pre_norm)
        self.norm1, self.self_attn, self.branch1 = s.attention_branch(dim, num_heads)
        self.norm2, self.cross_attn, self.branch2 = s.attention_branch(dim, num_heads, cross=True)
        self.norm3, self.mlp, self.mlp_drop, self.branch3 = s.mlp_branch(dim)

    def forward(self, x: Tensor, context: Tensor, relation: Relation | None = None,
                context_relation: Relation | None = None, positions: Tensor | None = None,
                context_positions: Tensor | None = None, pos: Tensor | None = None,
                context_pos: Tensor | None = None) -> Tensor:
        x = self._residual(x, self.norm1, self.branch1,
                           lambda h: self.self_attn(h, relation, positions=positions, pos=pos))
        x = self._residual(x, self.norm2, self.branch2, lambda h: self.cross_attn(
            h, context_relation, context=context, pos=pos, context_pos=context_pos))
        return self._mlp_branch(x, self.norm3, self.branch3)


# per-layer relations: one for every layer, one per layer, or a function of (layer index, stream)
LayerRelations = Union[Relation, None, Sequence[Optional[Relation]], Callable[[int, Tensor], Optional[Relation]]]


class Encoder(nn.Module):
    """A stack of ``depth`` layers of one kind (:class:`Block`; :class:`Decoder`: :class:`CrossBlock`),
    built from one :class:`BlockSpec`, then a final norm.

    ``Encoder(dim, depth, num_heads, spec=None, final_norm=None, **options)``: ``options`` replace
    fields of ``spec``; ``drop_path`` is the maximum stochastic-depth rate, increased linearly
    over depth (timm); ``final_norm`` (default ``pre_norm``) adds ``norm_layer(dim)`` after the
    last layer (else ``norm`` is an identity).

    ``forward(x, relation=None, *, positions=None, pos=None, rows=None, kv_cache=None,
    context=None, context_relation=None, context_positions=None, context_pos=None,
    return_hidden=False)``: ``x (B, L, C)`` (or packed ``(N, C)`` with ``rows``) -> the normed
    output of the same shape, or with ``return_hidden`` ``(output, hidden)``: ``hidden`` holds
    ``x`` and every layer's output before the final norm (``depth + 1`` tensors).

    * ``relation``: one relation (or None) for every layer, a sequence with one per layer, or a
      function ``relation(i, x)`` of the layer index and the stream entering layer ``i``
      (relations refined layer by layer, as Relation-DETR's boxes).
    * ``kv_cache``: one cache slot per layer (objects with ``update(k, v)``, see :class:`Attention`).
    * the other keywords go to every layer unchanged (:class:`Block` / :class:`CrossBlock`);
      ``context`` is required by a :class:`Decoder` and refused by an :class:`Encoder`.
    """

    block_type: type[_Residual] = Block

    def __init__(self, dim: int, depth: int, num_heads: int, spec: BlockSpec | None = None,
                 final_norm: bool | None = None, **options) -> None:
        super().__init__()
        if not (isinstance(depth, int) and depth >= 0):
            raise ValueError(f"depth must be an int >= 0, got {depth!r}")
        s = BlockSpec.of(spec, options)
        rates = torch.linspace(0, s.drop_path, depth).tolist() if depth > 1 else [s.drop_path] * depth
        self.layers = nn.ModuleList(self.block_type(dim, num_heads, dataclasses.replace(s, drop_path=rate))
                                    for rate in rates)
        self.norm = s.norm_layer(dim) if (s.pre_norm if final_norm is None else final_norm) else nn.Identity()

    def _relations(self, relation: LayerRelations) -> Callable[[int, Tensor], Relation | None]:
        if relation is None or isinstance(relation, Relation):
            return lambda i, x: relation
        if isinstance(relation, (nn.ModuleList, list, tuple)):
            if len(relation) != len(self.layers):
                raise ValueError(f"relation has {len(relation)} entries, the encoder {len(self.layers)} layers")
            return lambda i, x: relation[i]
        if callable(relation):
            return relation
        raise TypeError("relation must be a Relation, None, a sequence of one per layer or a function "
                        f"(layer index, x) -> Relation; got {type(relation).__name__}")

    def _check_context(self, context: Tensor | None, given: dict) -> None:
        if self.block_type.takes_context and context is None:
            raise ValueError(f"{type(self).__name__} layers cross-attend: pass a context")
        if not self.block_type.takes_context:
            bad = [name for name, value in given.items() if name.startswith("context") and value is not None]
            if bad:
                raise ValueError(f"{type(self).__name__} layers do not cross-attend: got {', '.join(bad)}")

    def forward(self, x: Tensor, relation: LayerRelations = None, *, positions: Tensor | None = None,
                pos: Tensor | None = None, rows=None, kv_cache: Sequence | None = None,
                context: Tensor | None = None, context_relation: Relation | None = None,
                context_positions: Tensor | None = None, context_pos: Tensor | None = None,
                return_hidden: bool = False) -> Tensor | tuple[Tensor, tuple[Tensor, ...]]:
        given = dict(positions=positions, pos=pos, rows=rows, context=context, context_relation=context_relation,
                     context_positions=context_positions, context_pos=context_pos)
        self._check_context(context, given)
        kw = {name: value for name, value in given.items() if value is not None}
        if kv_cache is not None and len(kv_cache) != len(self.layers):
            raise ValueError(f"kv_cache has {len(kv_cache)} slots, the encoder {len(self.layers)} layers")
        relation_of = self._relations(relation)
        hidden = [x] if return_hidden else None
        for i, layer in enumerate(self.layers):
            if kv_cache is not None:
                kw["kv_cache"] = kv_cache[i]
            x = layer(x, relation=relation_of(i, x), **kw)
            if hidden is not None:
                hidden.append(x)
        out = self.norm(x)
        return (out, tuple(hidden)) if return_hidden else out


class Decoder(Encoder):
    """:class:`Encoder` of :class:`CrossBlock` layers: the Transformer decoder (Vaswani et al. 2017) /
    DETR decoder; ``forward(x, relation, context=..., ...)`` needs a context."""

    block_type = CrossBlock
