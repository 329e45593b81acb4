"""Attention, Transformer blocks and layer stacks. All attention goes through :func:`relformer.attend`.

* :class:`Attention` -- multi-head / grouped-query attention, self or cross, optional RoPE.
* :class:`Block` -- attention + MLP with residuals, pre-norm (GPT-2 / ViT) or post-norm
  (Vaswani / BERT); ``cross=True`` makes its attention a cross-attention (LoFTR's "cross" layer).
* :class:`CrossBlock` -- self-attention, cross-attention to a ``context``, MLP (the Transformer
  decoder layer; DETR's decoder layer).
* :class:`Encoder` / :class:`Decoder` -- stacks built from a declarative schedule
  ``layer_types``, e.g. LoFTR's ``("self", "cross") * 4``.

Tokens are ``(B, L, C)``; variable-size items are packed into one row and kept apart with a
relation such as :class:`relformer.relations.Documents`, not padded.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from ..attention import Relation, attend
from ..attention.backends import attention_probs
from .gemm import Linear, linear
from .mlp import MLP

__all__ = ["Attention", "Block", "CrossBlock", "Encoder", "Decoder", "DropPath", "LayerScale", "LAYER_TYPES"]


def _to_heads(x: Tensor, heads: int, head_dim: int) -> Tensor:
    """``(B, L, heads * head_dim) -> (B, heads, L, head_dim)``, a view."""
    B, L, _ = x.shape
    return x.view(B, L, heads, head_dim).transpose(1, 2)


class _SplitHeads(torch.autograd.Function):
    """A fused projection ``(B, L, (H + 2 Hkv) D)`` as head views q ``(B, H, L, D)``, k and v ``(B, Hkv, L, D)``.

    Autograd's own backward of ``split`` + ``transpose`` concatenates the three strided head
    gradients with ``cat``; this one copies each into its slot of one ``(B, L, (H + 2 Hkv) D)``
    buffer (3x faster on the Swin-micro stage-1 projection, 0.46 vs 1.34 ms), which is also the
    contiguous layout the projection's backward reads."""

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


def _branch(dim: int, layer_scale: float | None, drop_path: float) -> nn.Sequential:
    """What wraps a residual branch's output: optional LayerScale, then DropPath."""
    layers = [LayerScale(dim, layer_scale)] if layer_scale is not None else []
    return nn.Sequential(*layers, DropPath(drop_path))


def add_residual(x: Tensor, branch: Tensor) -> Tensor:
    """``x + branch``, written into ``branch`` when no autograd graph records it (inference):
    one activation-sized allocation less per residual."""
    if (branch.requires_grad or branch.shape != x.shape or branch.dtype != x.dtype
            or branch.untyped_storage().data_ptr() == x.untyped_storage().data_ptr()):
        return x + branch
    return branch.add_(x)


def _add_branch(x: Tensor, wrap: nn.Sequential, branch: Tensor) -> Tensor:
    """``x + wrap(branch)`` for a :func:`_branch` wrapper, its DropPath fused into the add."""
    *scales, drop = wrap
    for layer in scales:
        branch = layer(branch)
    return drop.add_to(x, branch)


class _Residual(nn.Module):
    """Shared pre-/post-norm residual wiring: ``x + branch(norm(x))`` or ``norm(x + branch(x))``."""

    pre_norm: bool

    def _residual(self, x: Tensor, norm: nn.Module, wrap: nn.Module, fn: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            return _add_branch(x, wrap, fn(norm(x)))
        return norm(_add_branch(x, wrap, fn(x)))


class Block(_Residual):
    """Transformer block: attention then MLP, each in a residual branch.

    Pre-norm (``pre_norm=True``; GPT-2, ViT): ``x = x + attn(norm1(x)); x = x + mlp(norm2(x))``.
    Post-norm (Vaswani et al. 2017; BERT): ``x = norm1(x + attn(x)); x = norm2(x + mlp(x))``.

    Args:
        dim, num_heads, num_kv_heads, qkv_bias, backend, rope, head_dim: see :class:`Attention`.
        mlp_ratio: MLP hidden width ``int(dim * mlp_ratio)``, unless ``mlp_hidden`` is given.
        norm_layer: called as ``norm_layer(dim)``; mlp_layer: called as ``mlp_layer(dim, hidden)``.
        dropout: on both branch outputs; attn_dropout: on attention probabilities.
        layer_scale: LayerScale init (None: off); drop_path: stochastic-depth rate.
        cross: the attention is a cross-attention to ``context`` (width ``context_dim``).

    ``forward(x, relation=None, positions=None, context=None, ...)``: ``x (B, L, C) -> (B, L, C)``;
    ``rows`` / ``kv_cache`` are passed to :meth:`Attention.forward` (packed ``x (N, C)`` / decoding).
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 mlp_layer: Callable[[int, int], nn.Module] = MLP, pre_norm: bool = True, num_kv_heads: int | None = None,
                 qkv_bias: bool = True, backend: str = "auto", rope: nn.Module | None = None, head_dim: int | None = None,
                 mlp_hidden: int | None = None, dropout: float = 0.0, attn_dropout: float = 0.0,
                 layer_scale: float | None = None, drop_path: float = 0.0, cross: bool = False,
                 context_dim: int | None = None) -> None:
        super().__init__()
        self.pre_norm, self.cross = bool(pre_norm), bool(cross)
        self.norm1 = norm_layer(dim)
        self.attn = Attention(dim, num_heads, num_kv_heads, qkv_bias=qkv_bias, backend=backend, rope=rope,
                              head_dim=head_dim, attn_dropout=attn_dropout, proj_dropout=dropout, cross=cross,
                              context_dim=context_dim)
        self.branch1 = _branch(dim, layer_scale, drop_path)
        self.norm2 = norm_layer(dim)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio) if mlp_hidden is None else mlp_hidden)
        self.mlp_drop = nn.Dropout(dropout)
        self.branch2 = _branch(dim, layer_scale, drop_path)

    def forward(self, x: Tensor, relation: Relation | None = None, positions: Tensor | None = None,
                context: Tensor | None = None, context_positions: Tensor | None = None,
                pos: Tensor | None = None, context_pos: Tensor | None = None, rows=None,
                kv_cache=None) -> Tensor:
        x = self._residual(x, self.norm1, self.branch1, lambda h: self.attn(
            h, relation, context=context, positions=positions, context_positions=context_positions,
            pos=pos, context_pos=context_pos, rows=rows, kv_cache=kv_cache))
        return self._residual(x, self.norm2, self.branch2, lambda h: self.mlp_drop(self.mlp(h)))


class CrossBlock(_Residual):
    """Transformer decoder layer (Vaswani et al. 2017; DETR's decoder layer, Carion et al. 2020):
    self-attention, cross-attention to ``context``, MLP, each a residual branch with its own norm
    (``norm1``, ``norm2``, ``norm3``); pre- or post-norm as :class:`Block`.

    ``forward(x, context, relation=None, context_relation=None, positions=None,
    context_positions=None, pos=None, context_pos=None)``: ``relation`` masks/biases the
    self-attention ``(Lq, Lq)``, ``context_relation`` the cross-attention ``(Lq, Lk)``. DETR's
    ``query_pos`` / ``pos`` are ``pos`` / ``context_pos`` (added to queries and keys only).
    RoPE, if given, is used by the self-attention only.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, norm_layer: Callable[[int], nn.Module] = nn.LayerNorm,
                 mlp_layer: Callable[[int, int], nn.Module] = MLP, pre_norm: bool = True, num_kv_heads: int | None = None,
                 qkv_bias: bool = True, backend: str = "auto", rope: nn.Module | None = None, head_dim: int | None = None,
                 mlp_hidden: int | None = None, dropout: float = 0.0, attn_dropout: float = 0.0,
                 layer_scale: float | None = None, drop_path: float = 0.0, context_dim: int | None = None) -> None:
        super().__init__()
        self.pre_norm = bool(pre_norm)
        attn_kw = dict(qkv_bias=qkv_bias, backend=backend, head_dim=head_dim, attn_dropout=attn_dropout,
                       proj_dropout=dropout)
        self.norm1 = norm_layer(dim)
        self.self_attn = Attention(dim, num_heads, num_kv_heads, rope=rope, **attn_kw)
        self.branch1 = _branch(dim, layer_scale, drop_path)
        self.norm2 = norm_layer(dim)
        self.cross_attn = Attention(dim, num_heads, num_kv_heads, cross=True, context_dim=context_dim, **attn_kw)
        self.branch2 = _branch(dim, layer_scale, drop_path)
        self.norm3 = norm_layer(dim)
        self.mlp = mlp_layer(dim, int(dim * mlp_ratio) if mlp_hidden is None else mlp_hidden)
        self.mlp_drop = nn.Dropout(dropout)
        self.branch3 = _branch(dim, layer_scale, drop_path)

    def forward(self, x: Tensor, context: Tensor, relation: Relation | None = None,
                context_relation: Relation | None = None, positions: Tensor | None = None,
                context_positions: Tensor | None = None, pos: Tensor | None = None,
                context_pos: Tensor | None = None) -> Tensor:
        x = self._residual(x, self.norm1, self.branch1,
                           lambda h: self.self_attn(h, relation, positions=positions, pos=pos))
        x = self._residual(x, self.norm2, self.branch2, lambda h: self.cross_attn(
            h, context_relation, context=context, pos=pos, context_pos=context_pos))
        return self._residual(x, self.norm3, self.branch3, lambda h: self.mlp_drop(self.mlp(h)))


LAYER_TYPES = ("self", "cross", "self_cross")


class Encoder(nn.Module):
    """A stack of layers following a declarative schedule (LoFTR, Sun et al. 2021: ``("self", "cross") * 4``).

    Layer types: ``"self"`` -- :class:`Block` (self-attention + MLP); ``"cross"`` --
    ``Block(cross=True)`` (cross-attention to the context + MLP); ``"self_cross"`` --
    :class:`CrossBlock` (self-attention, cross-attention, MLP).

    Args:
        dim, num_heads: as :class:`Block`.
        depth: number of layers (``layer_types`` defaults to ``("self",) * depth``).
        layer_types: the schedule; ``len(layer_types) == depth``.
        final_norm: a ``norm_layer(dim)`` after the last layer (default: ``pre_norm``).
        drop_path: maximum stochastic-depth rate, increased linearly over depth (timm).
        The remaining keyword arguments are :class:`Block`'s (minus ``cross`` / ``drop_path``).

    ``forward(x, relation=None, context=None, context_relation=None, positions=None,
    context_positions=None)``: one stream ``x (B, L, C)``; cross layers attend to ``context``.
    ``forward_pair(x0, x1, ...)``: two streams (LoFTR / SuperGlue): self layers update each,
    cross layers update each from the other.
    """

    default_layer_type = "self"

    def __init__(self, dim: int, depth: int, num_heads: int, layer_types: Sequence[str] | None = None,
                 final_norm: bool | None = None, mlp_ratio: float = 4.0,
                 norm_layer: Callable[[int], nn.Module] = nn.LayerNorm, mlp_layer: Callable[[int, int], nn.Module] = MLP,
                 pre_norm: bool = True, num_kv_heads: int | None = None, qkv_bias: bool = True, backend: str = "auto",
                 rope: nn.Module | None = None, head_dim: int | None = None, mlp_hidden: int | None = None,
                 dropout: float = 0.0, attn_dropout: float = 0.0, layer_scale: float | None = None,
                 drop_path: float = 0.0, context_dim: int | None = None) -> None:
        super().__init__()
        layer_types = (self.default_layer_type,) * depth if layer_types is None else tuple(layer_types)
        if len(layer_types) != depth:
            raise ValueError(f"layer_types has {len(layer_types)} entries, depth is {depth}")
        unknown = sorted(set(layer_types) - set(LAYER_TYPES))
        if unknown:
            raise ValueError(f"unknown layer types {unknown}; known: {LAYER_TYPES}")
        self.layer_types = layer_types
        common = dict(mlp_ratio=mlp_ratio, norm_layer=norm_layer, mlp_layer=mlp_layer, pre_norm=pre_norm,
                      num_kv_heads=num_kv_heads, qkv_bias=qkv_bias, backend=backend, rope=rope, head_dim=head_dim,
                      mlp_hidden=mlp_hidden, dropout=dropout, attn_dropout=attn_dropout, layer_scale=layer_scale)
        rates = torch.linspace(0, drop_path, depth).tolist() if depth > 1 else [drop_path] * depth
        layers = []
        for kind, rate in zip(layer_types, rates):
            if kind == "self_cross":
                layers.append(CrossBlock(dim, num_heads, drop_path=rate, context_dim=context_dim, **common))
            else:
                cross = kind == "cross"
                layers.append(Block(dim, num_heads, drop_path=rate, cross=cross,
                                    context_dim=context_dim if cross else None, **common))
        self.layers = nn.ModuleList(layers)
        self.norm = norm_layer(dim) if (pre_norm if final_norm is None else final_norm) else nn.Identity()

    def forward(self, x: Tensor, relation: Relation | None = None, context: Tensor | None = None,
                context_relation: Relation | None = None, positions: Tensor | None = None,
                context_positions: Tensor | None = None) -> Tensor:
        if context is None and any(t != "self" for t in self.layer_types):
            raise ValueError(f"layer schedule {self.layer_types} has cross layers: pass a context")
        for kind, layer in zip(self.layer_types, self.layers):
            if kind == "self":
                x = layer(x, relation, positions=positions)
            elif kind == "cross":
                x = layer(x, context_relation, positions=positions, context=context,
                          context_positions=context_positions)
            else:
                x = layer(x, context, relation, context_relation, positions=positions)
        return self.norm(x)

    def forward_pair(self, x0: Tensor, x1: Tensor, relation0: Relation | None = None,
                     relation1: Relation | None = None, relation01: Relation | None = None,
                     relation10: Relation | None = None, sequential: bool = True) -> tuple[Tensor, Tensor]:
        """Two token sets ``x0 (B, L0, C)``, ``x1 (B, L1, C)`` sharing every layer.

        ``relation0`` / ``relation1``: self-attention relations; ``relation01``: queries of x0
        over keys of x1 ``(L0, L1)``; ``relation10`` the reverse. ``sequential=True`` updates
        x1 from the already-updated x0 in a cross layer, as LoFTR's ``LocalFeatureTransformer``;
        ``False`` updates both from the old values (symmetric, as SuperGlue / LightGlue).
        Only ``"self"`` and ``"cross"`` layers are allowed here.
        """
        if "self_cross" in self.layer_types:
            raise ValueError("forward_pair supports 'self' and 'cross' layers only")
        for kind, layer in zip(self.layer_types, self.layers):
            if kind == "self":
                x0, x1 = layer(x0, relation0), layer(x1, relation1)
            else:
                new0 = layer(x0, relation01, context=x1)
                x1 = layer(x1, relation10, context=new0 if sequential else x0)
                x0 = new0
        return self.norm(x0), self.norm(x1)


class Decoder(Encoder):
    """:class:`Encoder` whose schedule defaults to ``("self_cross",) * depth``: the Transformer
    decoder (Vaswani et al. 2017) / DETR decoder; ``forward(x, relation, context, ...)`` needs a context.
    """

    default_layer_type = "self_cross"
