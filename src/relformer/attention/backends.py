"""The eager, SDPA and Flex backends of :func:`relformer.attend`.

Every backend takes ``q (B, H, Lq, D)``, ``k (B, Hkv, Lk, D)``, ``v (B, Hkv, Lk, Dv)``
(``H % Hkv == 0``), an optional :class:`Relation`, ``scale`` and ``dropout_p``, and
returns ``(B, H, Lq, Dv)``. Shared semantics, tested on every backend (``tests/attention``):
scores and softmax run in fp32 (fp64 for fp64 inputs, see :func:`compute_dtype`); a query row
with no key to attend gives a zero output and zero gradients; a blocked pair never reaches the
softmax with what it held (a NaN/inf there reaches no row); a NaN a row does see makes it NaN.
Mask fill values are ``-inf`` in the compute dtype (every float dtype has it; no finite
"large negative" that overflows in fp16 or is not small enough in fp64).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .relation import Relation

__all__ = ["attention_probs", "eager", "sdpa", "flex", "flex_available", "flex_block_mask", "FLEX_BLOCK", "repeat_kv"]


def repeat_kv(x: Tensor, groups: int) -> Tensor:
    """``(B, Hkv, L, D) -> (B, Hkv*groups, L, D)`` for grouped-query attention."""
    return x if groups == 1 else x.repeat_interleave(groups, dim=1)


def needs_grad(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None) -> tuple[bool, bool]:
    """(autograd records this call: any input needs grad, the relation itself has trainable tensors)."""
    if not torch.is_grad_enabled():
        return False, False
    rel_grad = relation is not None and bool(relation.grad_tensors())
    return rel_grad or q.requires_grad or k.requires_grad or v.requires_grad, rel_grad


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype scores, softmax and accumulators run in: float64 for float64 inputs (gradcheck,
    references), float32 for everything else (bf16/fp16 would lose the softmax's precision)."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _softmax(scores: Tensor, dead: Tensor | None) -> Tensor:
    """Softmax over the last dim of a score tensor this module owns, in :func:`compute_dtype` (under
    autocast the matmul gives bf16/fp16 scores); ``dead`` rows (no key to attend) give zeros and zero
    grads, not NaN. The softmax writes a new tensor even without autograd: with its output aliasing
    its input, torch's CPU softmax runs at about half the speed."""
    scores = scores.to(compute_dtype(scores.dtype))
    if dead is not None:
        scores = scores.masked_fill_(dead, 0.0)
    probs = torch.softmax(scores, dim=-1)
    if dead is None:
        return probs
    return probs.masked_fill(dead, 0.0) if probs.requires_grad else probs.masked_fill_(dead, 0.0)


def dense_mask_and_dead(relation: Relation, B: int, H: int, Lq: int, Lk: int, device) -> tuple[Tensor, Tensor | None]:
    """The relation's boolean mask ``(B|1, H|1, Lq, Lk)`` (True = attend) and its rows with no key at
    all ``(B|1, H|1, Lq, 1)`` (None when there are none; on accelerators never checked, no host
    sync), memoised per relation state and layout (:meth:`Relation.cached`)."""
    def build():
        mask = relation.dense_mask(B, H, Lq, Lk, device)
        dead = ~mask.any(-1, keepdim=True)
        return mask, (None if dead.device.type == "cpu" and not dead.any() else dead)

    return relation.cached(("mask", B, H, Lq, Lk, str(device), torch.is_inference_mode_enabled()), build)


def _eager_mask(relation: Relation, B: int, H: int, Lq: int, Lk: int, device) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """:func:`dense_mask_and_dead` and, on CPU, the mask as an additive score term (``-inf`` on the
    pairs it blocks, 0 elsewhere, in the mask's broadcast shape), memoised as one entry. Added, not
    ``masked_fill``-ed, on CPU: torch's CPU ``masked_fill_`` / ``where`` with a boolean mask run at
    about a tenth of ``add_``'s speed, and the add's backward is the identity. Adding is exact only
    while the blocked scores are finite (``inf + -inf`` is NaN): :func:`eager` checks its output and
    recomputes with :func:`torch.where` when it is not finite."""
    def build():
        mask, dead = dense_mask_and_dead(relation, B, H, Lq, Lk, device)
        term = None
        if torch.device(device).type == "cpu":
            term = torch.zeros(mask.shape, device=device).masked_fill_(~mask, float("-inf"))
        return mask, dead, term

    return relation.cached(("eager_mask", B, H, Lq, Lk, str(device), torch.is_inference_mode_enabled()), build)


def _score_parts(relation: Relation | None, B: int, H: int, Lq: int, Lk: int, device, dtype, exact: bool):
    """What turns raw scores into logits: ``(bias, mask, mask_term, dead)``, each in its own broadcast
    shape ``(B|1, H|1, ...)`` or None. ``mask_term`` (the fast additive form) is None when ``exact``
    or off CPU: then the blocked pairs are replaced with ``torch.where``, whatever they hold."""
    bias = mask = term = dead = None
    if relation is not None and relation.has_bias:
        # bias and mask apart: no third score-sized tensor when their broadcast shapes differ
        bias = relation.dense_parts(B, H, Lq, Lk, device, dtype=compute_dtype(dtype), with_mask=False)[0]
    if relation is not None and relation.has_mask:
        mask, dead, term = _eager_mask(relation, B, H, Lq, Lk, device)
        term = None if exact else term
    return bias, mask, term, dead


def all_finite(x: Tensor) -> bool:
    """True when every element is finite: one reduction (a sum is finite only if every term is;
    an overflowing sum of finite values reads as False, which only costs the exact recomputation)."""
    return x.numel() == 0 or bool(torch.isfinite(x.sum()))


class _ScoreProduct(torch.autograd.Function):
    """``q k^T`` for ``q (N, Lq, D)``, ``k (N, Lk, D)`` (heads along ``N``) -> a new tensor of ``shape``
    (``N * Lq * Lk`` elements). Autograd's own ``bmm`` backward gives k's gradient transposed
    (``(N, D, Lk)``-contiguous), which every later copy (the head split, a fused projection's
    gradient) then reads strided; this one gives it laid out like k. Twice differentiable."""

    @staticmethod
    def forward(ctx, q: Tensor, k: Tensor, shape: tuple) -> Tensor:
        ctx.save_for_backward(q, k)
        out = q.new_empty(shape)
        torch.bmm(q, k.transpose(1, 2), out=out.view(q.shape[0], q.shape[1], k.shape[1]))
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        q, k = ctx.saved_tensors
        grad = grad.reshape(q.shape[0], q.shape[1], k.shape[1])
        grad_q = grad.bmm(k) if ctx.needs_input_grad[0] else None
        grad_k = grad.transpose(1, 2).bmm(q) if ctx.needs_input_grad[1] else None
        return grad_q, grad_k, None


def _scores(q: Tensor, k: Tensor, scale: float) -> Tensor:
    """fp32 ``scale * q k^T``, ``(B, H, Lq, D), (B, H, Lk, D) -> (B, H, Lq, Lk)``; under autocast the
    product runs (and its scores come) in the autocast dtype. The scale goes on q or, when autograd
    records an fp32 product (:class:`_ScoreProduct`), on k's head copy: never a pass over the score
    tensor, forward or backward, where the near-zero (subnormal) gradients of far-apart pairs make
    elementwise passes several times slower on x86."""
    if (torch.is_grad_enabled() and (q.requires_grad or k.requires_grad) and q.dtype == k.dtype == torch.float32
            and not torch.is_autocast_enabled(q.device.type)):
        q3, k3 = q.reshape(-1, *q.shape[2:]), (k * scale).reshape(-1, *k.shape[2:])  # (B*H, L, D)
        return _ScoreProduct.apply(q3, k3, (*q.shape[:3], k.shape[2]))
    dt = compute_dtype(q.dtype)
    return torch.matmul(q.to(dt) * scale, k.to(dt).transpose(-1, -2))


def _probs(q: Tensor, k: Tensor, parts: tuple, scale: float) -> Tensor:
    """Softmax of ``scale * q k^T`` (:func:`_scores`) with ``parts`` (:func:`_score_parts`) applied in
    place on the score tensor (the matmul backward does not read its output). Blocked pairs never
    reach the softmax with what they held: the mask is added as ``-inf`` (exact while they are
    finite) or, without ``mask_term``, written over them with ``torch.where``."""
    bias, mask, mask_term, dead = parts
    scores = _scores(q, k, scale)  # (B, H, Lq, Lk)
    if bias is not None:
        scores = scores.add_(bias)
    if mask_term is not None:
        scores = scores.add_(mask_term)
    elif mask is not None:
        scores = torch.where(mask, scores, torch.tensor(float("-inf"), dtype=scores.dtype, device=scores.device))
    return _softmax(scores, dead)


def attention_probs(q: Tensor, k: Tensor, relation: Relation | None, scale: float, exact: bool = True) -> Tensor:
    """Attention probabilities ``(B, H, Lq, Lk)`` in :func:`compute_dtype` (after any ``prob_mod``),
    materialised. Training holds two score-sized tensors (scores, probabilities), inference two
    while the softmax runs. ``exact=False`` allows the additive mask (see :func:`_eager_mask`)."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    k = repeat_kv(k, H // k.shape[1])
    probs = _probs(q, k, _score_parts(relation, B, H, Lq, Lk, q.device, q.dtype, exact), scale)
    if relation is not None and relation.has_prob:
        probs = probs * relation.dense_prob(B, H, Lq, Lk, q.device)
    return probs


EAGER_TILE_BYTES = 1 << 20  # inference: score tiles of at most this many bytes (cache-resident, reused)


def _tiled_eager(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, scale: float, exact: bool) -> Tensor:
    """Eager attention without autograd, a slice of the batch at a time, so that each score tile
    (at most :data:`EAGER_TILE_BYTES`) is computed, softmaxed and multiplied by ``v`` while it is
    still in cache, and its memory is reused by the next slice instead of one (B, H, Lq, Lk)
    block that glibc maps (and the kernel faults in) afresh on every call."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    groups = H // k.shape[1]
    k, v = repeat_kv(k, groups), repeat_kv(v, groups)
    parts = _score_parts(relation, B, H, Lq, Lk, q.device, q.dtype, exact)
    dt = compute_dtype(q.dtype)
    out = torch.empty(B, H, Lq, v.shape[-1], dtype=dt, device=q.device)
    step = max(1, EAGER_TILE_BYTES // (4 * H * Lq * Lk))
    for b in range(0, B, step):
        rows = slice(b, b + step)
        tile = tuple(t[rows] if t is not None and t.shape[0] == B else t for t in parts)
        torch.matmul(_probs(q[rows], k[rows], tile, scale), v[rows].to(dt), out=out[rows])
    return out.to(q.dtype)


def dropout(x: Tensor, p: float) -> Tensor:
    """``F.dropout(x, p)`` in distribution (zero with probability ``p``, scale the rest by
    ``1 / (1 - p)``), with the mask drawn by ``rand_like``: on CPU ``F.dropout`` draws it with
    ``bernoulli_``, several times slower than ``rand_like`` and a comparison (see
    ``bench/results/attention.md``). Other devices use ``F.dropout``."""
    if x.device.type != "cpu":
        return F.dropout(x, p)
    return x * (torch.rand_like(x) >= p) * (1.0 / (1.0 - p))


def eager(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, scale: float, dropout_p: float,
          exact: bool = False) -> Tensor:
    """The plain-PyTorch reference: materialises ``(B, H, Lq, Lk)`` scores, bias and probabilities
    (without autograd, a batch slice at a time: :func:`_tiled_eager`).

    On CPU the mask is first added as a ``-inf`` term (fast, exact while blocked scores are finite);
    an output that is not finite is recomputed with the blocked pairs overwritten (``exact``), so a
    NaN or inf in a key or bias that a row never sees cannot reach that row."""
    out = _eager(q, k, v, relation, scale, dropout_p, exact)
    if exact or relation is None or not relation.has_mask or q.device.type != "cpu" or all_finite(out):
        return out
    return _eager(q, k, v, relation, scale, dropout_p, True)


def _eager(q, k, v, relation, scale, dropout_p, exact):
    if (not needs_grad(q, k, v, relation)[0] and dropout_p == 0.0 and (relation is None or not relation.has_prob)
            and q.shape[0] > 1 and 4 * q.shape[0] * q.shape[1] * q.shape[2] * k.shape[2] > EAGER_TILE_BYTES):
        return _tiled_eager(q, k, v, relation, scale, exact)
    probs = attention_probs(q, k, relation, scale, exact)
    if dropout_p > 0.0:
        probs = dropout(probs, dropout_p)
    v = repeat_kv(v, q.shape[1] // v.shape[1])
    return torch.matmul(probs, v.to(probs.dtype)).to(q.dtype)


def _finite_in(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast a bias to ``dtype`` without turning large finite values into +-inf (``-inf`` masks stay)."""
    if torch.finfo(dtype).max >= torch.finfo(x.dtype).max:
        return x.to(dtype)  # widening (or equal): every value fits
    fmax = torch.finfo(dtype).max
    return torch.where(torch.isneginf(x), x, x.clamp(-fmax, fmax)).to(dtype)


def sdpa_mask(relation: Relation, B: int, H: int, Lq: int, Lk: int, device, dtype) -> Tensor | None:
    """The 4-D ``attn_mask`` SDPA keeps its fused CPU kernel with: bool for pure masks, else float bias
    (``-inf`` on blocked pairs). None on CPU when the bias is not finite (see :func:`sdpa`)."""
    if not relation.has_bias:
        # Pure masks hold no trainable data: build once per relation state and layout, share across layers.
        return dense_mask_and_dead(relation, B, H, Lq, Lk, device)[0]
    bias, mask = relation.dense_parts(B, H, Lq, Lk, device, dtype=compute_dtype(dtype))
    if torch.device(device).type == "cpu" and not all_finite(bias):
        return None
    if mask is not None:
        bias = bias.masked_fill(~mask, float("-inf"))
    return _finite_in(bias, dtype)


def sdpa(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, scale: float, dropout_p: float) -> Tensor:
    """``F.scaled_dot_product_attention`` with a 4-D boolean mask or additive bias (never 3-D).

    Two behaviours of torch's kernels differ from the shared semantics: the fused CPU kernel returns
    zeros for a query row whose scores hold a NaN, and a mask applied by adding ``-inf`` turns a
    blocked ``inf``/NaN score into NaN for every row of its head. So on CPU, when q, k or the bias
    hold a non-finite value (one reduction each, small next to the attention), the call runs on the
    exact :func:`eager` path instead. On accelerators that check would cost a host sync per call,
    so there SDPA keeps torch's behaviour for non-finite inputs."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    if q.device.type == "cpu" and not (all_finite(q) and all_finite(k)):
        return eager(q, k, v, relation, scale, dropout_p, exact=True)
    gqa = H != k.shape[1]
    kwargs = dict(dropout_p=dropout_p, scale=scale, enable_gqa=gqa)
    if relation is None or not (relation.has_mask or relation.has_bias):
        return F.scaled_dot_product_attention(q, k, v, **kwargs)
    if relation.is_causal(Lq, Lk):
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, **kwargs)
    mask = sdpa_mask(relation, B, H, Lq, Lk, q.device, q.dtype)
    if mask is None:
        return eager(q, k, v, relation, scale, dropout_p, exact=True)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **kwargs)


# ---------------------------------------------------------------------------------------------
# Flex
# ---------------------------------------------------------------------------------------------
FLEX_BLOCK = 128


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # dynamic=False: with dynamic shapes Inductor's CPU template fails to build score_mods that
    # index a table (torch 2.13). New closures over new tensors of the same shape do not recompile.
    return torch.compile(flex_attention, dynamic=False)


@functools.lru_cache(maxsize=None)
def flex_available(device_type: str) -> bool:
    """Flex needs ``torch.nn.attention.flex_attention`` and a working compiler (gcc on CPU)."""
    try:
        from torch.nn.attention.flex_attention import BlockMask  # noqa: F401
    except ImportError:
        return False
    if device_type == "cpu":
        import shutil

        return shutil.which("gcc") is not None or shutil.which("cc") is not None
    return device_type == "cuda"


def flex_supports_backward(device_type: str) -> bool:
    """Flex's CPU kernel has no backward in torch <= 2.13 (it raises ``NotImplementedError``, and the
    failed compiled call degrades every later Flex call in the process), so relformer never calls it."""
    return device_type == "cuda"


def _blocks(x: Tensor) -> tuple[Tensor, Tensor]:
    """``(B, H, nq, nk)`` block flags -> (count per q-block, kv-block indices with the set ones first)."""
    num = x.sum(-1, dtype=torch.int32)
    idx = torch.argsort((~x).to(torch.int8), dim=-1, stable=True).to(torch.int32)
    return num, idx


def block_summary(relation: Relation, B: int, H: int, Lq: int, Lk: int, device, block: int = FLEX_BLOCK):
    """Per ``block x block`` tile: (any pair attends, every pair attends), each ``(B|1, H|1, nq, nk)``.

    Built from the dense boolean mask with two reductions (much cheaper than ``create_block_mask``,
    which evaluates the mask_mod through vmap), once per relation state and layout.
    """
    def build():
        mask = dense_mask_and_dead(relation, B, H, Lq, Lk, device)[0]
        b, h = mask.shape[:2]
        nq, nk = -(-Lq // block), -(-Lk // block)
        # padding is False, so a tile that hangs over the end is never "full": Flex masks it
        tiles = F.pad(mask, (0, nk * block - Lk, 0, nq * block - Lq)).view(b, h, nq, block, nk, block)
        return tiles.any(5).any(3), tiles.all(5).all(3)

    key = ("blocks", B, H, Lq, Lk, str(device), block)
    return relation.cached(key, build)


def block_density(relation: Relation, B: int, H: int, Lq: int, Lk: int, device) -> float:
    """Fraction of tiles with at least one attending pair (1.0 for relations without a mask)."""
    if not relation.has_mask:
        return 1.0
    any_, _ = block_summary(relation, B, H, Lq, Lk, device)
    return any_.float().mean().item()


def flex_block_mask(relation: Relation | None, B: int, H: int, Lq: int, Lk: int, device):
    """A Flex ``BlockMask`` for the relation's mask part (all tiles when it has none), cached per layout."""
    from torch.nn.attention.flex_attention import BlockMask

    def build():
        if relation is not None and relation.has_mask:
            any_, all_ = block_summary(relation, B, H, Lq, Lk, device)
            partial = any_ & ~all_
            kn, ki = _blocks(partial)
            fn, fi = _blocks(all_)
            view = relation.flex_view()
            return BlockMask.from_kv_blocks(kn, ki, fn, fi, BLOCK_SIZE=FLEX_BLOCK, mask_mod=view.mask_mod,
                                            seq_lengths=(Lq, Lk))
        nq, nk = -(-Lq // FLEX_BLOCK), -(-Lk // FLEX_BLOCK)
        full = torch.ones(1, 1, nq, nk, dtype=torch.bool, device=device)
        kn, ki = _blocks(torch.zeros_like(full))
        fn, fi = _blocks(full)
        # the tail tile still needs its padding masked: Flex does that from seq_lengths
        return BlockMask.from_kv_blocks(kn, ki, fn, fi, BLOCK_SIZE=FLEX_BLOCK, seq_lengths=(Lq, Lk))

    if relation is None:
        return build()
    return relation.cached(("flex_block_mask", B, H, Lq, Lk, str(device)), build)


def check_flex(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, dropout_p: float) -> None:
    """``ValueError`` for what Flex cannot run, before anything is compiled."""
    if q.dtype == torch.float64:
        raise ValueError("backend='flex' does not support float64 (its compiled kernel runs float32 or lower); "
                         "use backend='eager', 'sdpa' or 'chunked'")
    if dropout_p > 0.0:
        raise ValueError("backend='flex' does not support dropout_p > 0")
    if relation is not None and relation.has_prob:
        raise ValueError(f"backend='flex' cannot fuse the post-softmax multiplier of {type(relation).__name__}; "
                         "use backend='chunked' or 'eager'")
    if torch.is_grad_enabled():
        if relation is not None and relation.grad_tensors():
            raise ValueError("backend='flex' compiles the relation's tensors detached, so it cannot train them; "
                             "use backend='chunked' or 'sdpa' (auto does)")
        if not flex_supports_backward(q.device.type) and any(t.requires_grad for t in (q, k, v)):
            raise ValueError("backend='flex' has no backward on CPU in this torch; run under torch.no_grad() "
                             "or use backend='chunked' / 'sdpa' for training")


def flex(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, scale: float, dropout_p: float) -> Tensor:
    """``flex_attention`` compiled once; the mask becomes a block-sparse ``BlockMask`` and the bias a
    ``score_mod``, so the ``Lq x Lk`` bias is never materialised.

    Flex's kernel returns zeros for a row whose scores hold a NaN, where the other backends return
    NaN. ``v`` is therefore extended by a column of ones: its output is 1 on every row the kernel
    normalised, 0 on the rows it zeroed, and a zeroed row that the mask leaves alive becomes NaN."""
    check_flex(q, k, v, relation, dropout_p)
    if not torch.is_grad_enabled():
        # flex_attention raises on any input with requires_grad=True, even under no_grad
        q, k, v = q.detach(), k.detach(), v.detach()
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    block_mask = flex_block_mask(relation, B, H, Lq, Lk, q.device)
    score_mod = None
    if relation is not None and relation.has_bias:
        view = relation.flex_view()

        def score_mod(score, b, h, q_idx, kv_idx):
            return score + view.bias_mod(b, h, q_idx, kv_idx).to(score.dtype)

    Dv = v.shape[-1]
    v = torch.cat([v, v.new_ones(*v.shape[:-1], 1)], -1)
    # Every new shape compiles once; keep dynamo from silently falling back to the O(L^2) eager
    # Flex path after its default 8 recompiles (scoped to this call only).
    with torch._dynamo.config.patch(recompile_limit=4096, accumulated_recompile_limit=1 << 20):
        out = _compiled_flex()(q, k, v, score_mod=score_mod, block_mask=block_mask, scale=scale,
                               enable_gqa=H != k.shape[1])
    normalised = out[..., Dv:] > 0.5  # (B, H, Lq, 1): False where the kernel zeroed the row (or NaN)
    zeroed = ~normalised
    if relation is not None and relation.has_mask:
        dead = dense_mask_and_dead(relation, B, H, Lq, Lk, q.device)[1]
        if dead is not None:
            zeroed = zeroed & ~dead
    return out[..., :Dv].masked_fill(zeroed, float("nan"))


def default_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)
