"""Pre-LN -> Pre-RMSNorm -> Pre-CRMSNorm conversion with identical function.

Jiang et al., "Pre-RMSNorm and Pre-CRMSNorm Transformers: Equivalent and Efficient Pre-LN
Transformers" (NeurIPS 2023). In a pre-norm Transformer the residual stream is only
*written* by the input embedding, attention ``proj`` and MLP ``fc2``, and only *read* through a
norm by ``qkv``, ``fc1`` and the head. Hence:

1. **fold** each norm's gain ``gamma`` / shift ``beta`` into its readers:
   ``W' = W diag(gamma)``, ``b' = b + W beta``;
2. **recenter** every writer so the stream is zero-mean (subtract the mean over the output,
   i.e. residual, dimension from weights and biases). LayerNorm ignores the mean, so the
   function is unchanged, and on a zero-mean stream ``LayerNorm == RMSNorm`` (no affine);
3. **compress** the zero-mean ``d``-vector to its first ``d - 1`` coordinates: writers keep
   their first ``d - 1`` output rows, readers ``W (out, d)`` become ``W[:, :d-1] - W[:, d-1:]``
   and RMSNorm becomes :class:`~relformer.nn.norms.CRMSNorm`.

The conversions are defined on :class:`PreNormTransformer`, a small explicit model built from
:class:`~relformer.nn.blocks.Block`. They run in float64 and return a new model.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..attention import Relation
from .blocks import Block
from .gemm import Linear
from .mlp import MLP
from .norms import CRMSNorm, RMSNorm
from .posenc import LearnedPositions

__all__ = ["PreNormTransformer", "NORMS", "to_pre_rmsnorm", "to_pre_crmsnorm"]

NORMS = ("layernorm", "rmsnorm", "crmsnorm")


class PreNormTransformer(nn.Module):
    """``embed (+ learned positions) -> depth pre-norm Blocks -> final norm -> head``.

    Args:
        vocab_or_in_dim: vocabulary size (``tokens=True``: ``nn.Embedding``) or input feature
            width (``tokens=False``: ``nn.Linear``).
        dim: model width ``d``; depth; heads (head width ``d // heads``); out_dim: head outputs.
        norm: ``"layernorm"``, ``"rmsnorm"`` or ``"crmsnorm"``. With ``"crmsnorm"`` the residual
            stream has ``d - 1`` channels (attention and MLP inner widths stay those of ``d``).
        norm_affine: learnable norm gain (and LayerNorm shift); the converted models have none.
        max_len: add learned absolute positions (None: no positions).
        mlp_ratio: MLP hidden width ``int(d * mlp_ratio)``; mlp_layer: ``mlp_layer(width, hidden)``
            with ``fc1`` / ``fc2`` (MLP or SwiGLU); give it biases if a LayerNorm shift is folded.
        eps: norm epsilon (the same in every norm so the conversions are exact).

    ``forward(x, relation=None, positions=None)``: ``x (B, L)`` token ids or ``(B, L, in_dim)``
    -> ``(B, L, out_dim)``.
    """

    def __init__(self, vocab_or_in_dim: int, dim: int, depth: int, heads: int, out_dim: int,
                 norm: str = "layernorm", norm_affine: bool = True, tokens: bool = True, max_len: int | None = None,
                 mlp_ratio: float = 4.0, mlp_layer: Callable[[int, int], nn.Module] = MLP, eps: float = 1e-5,
                 backend: str = "auto") -> None:
        super().__init__()
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        if dim % heads:
            raise ValueError(f"dim ({dim}) must be divisible by heads ({heads})")
        self._init_args = dict(vocab_or_in_dim=vocab_or_in_dim, dim=dim, depth=depth, heads=heads, out_dim=out_dim,
                         norm=norm, norm_affine=norm_affine, tokens=tokens, max_len=max_len, mlp_ratio=mlp_ratio,
                         mlp_layer=mlp_layer, eps=eps, backend=backend)
        self.norm_kind, self.dim, self.eps, self.norm_affine = norm, dim, eps, norm_affine
        width = dim - 1 if norm == "crmsnorm" else dim  # residual-stream channels
        self.embed = nn.Embedding(vocab_or_in_dim, width) if tokens else Linear(vocab_or_in_dim, width)
        self.pos = LearnedPositions(max_len, width) if max_len is not None else None
        self.blocks = nn.ModuleList(
            Block(width, heads, norm_layer=self._norm, mlp_layer=mlp_layer, head_dim=dim // heads,
                  mlp_hidden=int(dim * mlp_ratio), backend=backend)
            for _ in range(depth))
        self.norm = self._norm(width)
        self.head = Linear(width, out_dim)

    def _norm(self, width: int) -> nn.Module:
        if self.norm_kind == "layernorm":
            return nn.LayerNorm(width, eps=self.eps, elementwise_affine=self.norm_affine)
        if self.norm_kind == "rmsnorm":
            return RMSNorm(width, eps=self.eps, elementwise_affine=self.norm_affine)
        return CRMSNorm(width + 1, eps=self.eps, elementwise_affine=self.norm_affine)

    def forward(self, x: Tensor, relation: Relation | None = None, positions: Tensor | None = None) -> Tensor:
        h = self.embed(x)  # (B, L, width)
        if self.pos is not None:
            h = h + self.pos(torch.arange(h.shape[1], device=h.device) if positions is None else positions)
        for block in self.blocks:
            h = block(h, relation)
        return self.head(self.norm(h))  # (B, L, out_dim)

    # ---- the residual stream's writers and readers (state-dict keys) -----------------------
    def writers(self) -> list[tuple[str, int]]:
        """``(key, residual axis)`` of every tensor that writes to the residual stream."""
        out = [("embed.weight", -1 if isinstance(self.embed, nn.Embedding) else 0)]
        if isinstance(self.embed, nn.Linear) and self.embed.bias is not None:
            out.append(("embed.bias", 0))
        if self.pos is not None:
            out.append(("pos.weight", -1))
        for i, block in enumerate(self.blocks):
            for name, lin in (("attn.proj", block.attn.proj), ("mlp.fc2", block.mlp.fc2)):
                out += [(f"blocks.{i}.{name}.weight", 0)] + ([(f"blocks.{i}.{name}.bias", 0)] if lin.bias is not None else [])
        return out

    def readers(self) -> list[tuple[str, str]]:
        """``(norm prefix, reader linear prefix)``: the linear layers that read each norm's output."""
        out = []
        for i in range(len(self.blocks)):
            out += [(f"blocks.{i}.norm1", f"blocks.{i}.attn.qkv"), (f"blocks.{i}.norm2", f"blocks.{i}.mlp.fc1")]
        return out + [("norm", "head")]


def _spawn(model: PreNormTransformer, norm: str) -> PreNormTransformer:
    p = next(model.parameters())
    args = {**model._init_args, "norm": norm, "norm_affine": False}
    return PreNormTransformer(**args).to(device=p.device, dtype=p.dtype).train(model.training)


def _fold(sd: dict[str, Tensor], model: PreNormTransformer) -> None:
    """Step 1: move every norm's gamma / beta into its reader linear layers; drop them from ``sd``."""
    for norm, reader in model.readers():
        gamma, beta = sd.pop(f"{norm}.weight", None), sd.pop(f"{norm}.bias", None)
        w = sd[f"{reader}.weight"]  # (out, d)
        if beta is not None and bool(beta.ne(0).any()):
            if f"{reader}.bias" not in sd:
                raise ValueError(f"cannot fold {norm}'s shift: {reader} has no bias")
            sd[f"{reader}.bias"] = sd[f"{reader}.bias"] + w @ beta
        if gamma is not None:
            sd[f"{reader}.weight"] = w * gamma


def _recenter(sd: dict[str, Tensor], model: PreNormTransformer) -> None:
    """Step 2: subtract the mean over the residual axis from every writer."""
    for key, axis in model.writers():
        sd[key] = sd[key] - sd[key].mean(axis, keepdim=True)


def _state64(model: PreNormTransformer) -> dict[str, Tensor]:
    return {k: v.detach().to(torch.float64) if v.is_floating_point() else v for k, v in model.state_dict().items()}


@torch.no_grad()
def to_pre_rmsnorm(model: PreNormTransformer) -> PreNormTransformer:
    """A pre-RMSNorm model computing the same function as the pre-LN ``model`` (steps 1-2)."""
    if model.norm_kind != "layernorm":
        raise ValueError(f"to_pre_rmsnorm converts a 'layernorm' model, got {model.norm_kind!r}")
    sd = _state64(model)
    _fold(sd, model)
    _recenter(sd, model)
    new = _spawn(model, "rmsnorm")
    new.load_state_dict(sd)
    return new


@torch.no_grad()
def to_pre_crmsnorm(model: PreNormTransformer) -> PreNormTransformer:
    """A pre-CRMSNorm model computing the same function (steps 1-3).

    ``model`` is pre-LN, or pre-RMSNorm with a zero-mean residual stream (e.g. the output of
    :func:`to_pre_rmsnorm`; checked: an arbitrary RMSNorm model has no CRMSNorm equivalent).
    """
    sd = _state64(model)
    if model.norm_kind == "layernorm":
        _fold(sd, model)
        _recenter(sd, model)
    elif model.norm_kind == "rmsnorm":
        for key, axis in model.writers():
            t = sd[key]
            if not torch.allclose(t.mean(axis), torch.zeros((), dtype=t.dtype), atol=1e-6 * max(1.0, t.abs().max().item())):
                raise ValueError(f"{key} is not zero-mean over the residual dimension: the RMSNorm model's "
                                 "stream is not zero-mean, so it has no CRMSNorm equivalent")
        _fold(sd, model)
    else:
        raise ValueError(f"to_pre_crmsnorm converts a 'layernorm' or 'rmsnorm' model, got {model.norm_kind!r}")
    d = model.dim
    for key, axis in model.writers():  # step 3: keep the first d - 1 residual coordinates
        sd[key] = sd[key].narrow(axis, 0, d - 1)
    for _, reader in model.readers():  # x_d = -sum(x[:d-1])  =>  W x = (W[:, :d-1] - W[:, d-1:]) x[:d-1]
        w = sd[f"{reader}.weight"]
        sd[f"{reader}.weight"] = w[:, : d - 1] - w[:, d - 1:]
    new = _spawn(model, "crmsnorm")
    new.load_state_dict(sd)
    return new
