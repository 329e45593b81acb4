"""``attend(q, k, v, relation, backend)``: one attention primitive, four backends, one policy.

Backends (all tested against ``eager`` forward and backward):

==========  ==============================================================================
eager       plain PyTorch reference; materialises scores and the relation's dense bias
sdpa        ``F.scaled_dot_product_attention`` with a 4-D bool mask or float bias
flex        ``flex_attention``: BlockMask from the relation's mask, score_mod from its bias
chunked     blockwise online-softmax autograd Function; bias recomputed per tile
==========  ==============================================================================

``auto`` follows measurements made on a 2-core CPU with torch 2.13 (see
``bench/results/attention.md`` for the current numbers):

* SDPA keeps its fused kernel only for 4-D masks/biases that do not require grad; a
  bias that requires grad drops it to the O(L^2) math kernel.
* Flex has no CPU backward; with a block-sparse mask it is several times faster than
  SDPA in inference, while for dense biases SDPA is as fast or faster.
* ``chunked`` trades a little time for O(tile) memory when the bias is learnable and the
  score matrix is large, and is the only fused path for post-softmax multipliers.
* Between eager and SDPA for small CPU score matrices no fixed rule holds on every CPU (eager won
  on an AMD EPYC, SDPA on an Intel Xeon for packed rows): the rule's answer there is checked by a
  short probe cached per shape bucket (:mod:`relformer.attention.probe`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from . import backends as _b
from . import probe as _probe
from .chunked import chunked_attention
from .relation import Relation

__all__ = ["attend", "explain", "Choice", "BACKENDS"]

log = logging.getLogger("relformer.attention")

BACKENDS = ("auto", "eager", "sdpa", "flex", "chunked")

# Policy thresholds (from bench/attention.py on 2 CPU cores; see bench/results/attention.md).
FLEX_MIN_PAIRS = 512 * 512       # below this Flex's per-call overhead is not worth it
FLEX_MAX_DENSITY = 0.75          # a live Flex tile costs about as much as SDPA's: Flex pays only when it skips tiles
CHUNKED_MIN_SCORES = 1 << 24     # B*H*Lq*Lk*tile_cost above which `chunked` beats materialising the scores
CHUNKED_MIN_PAIRS = 128 * 128    # Lq*Lk below which chunked runs one 64x64-or-smaller tile: no memory saved
EXPENSIVE_BIAS = 4.0             # tile_cost from which materialising the bias dominates (e.g. the box MLP)
SMALL_PAIRS = 64 * 64            # CPU at or below this Lq*Lk (and < CHUNKED_MIN_SCORES scores in all, unless
                                 # training a learnable bias): eager or SDPA by measurement (attention/probe.py);
                                 # the fixed rule below is the default the measurement must beat
SMALL_MIN_MATRICES = 64          # the rule: eager for this many (B*H) or more, whose matmul + softmax beat SDPA's
                                 # kernels on the AMD EPYC first measured; with few (DETR-base's encoder, 4 x 8
                                 # heads of 64 x 64) the fused kernel was level or ahead in training


@dataclass(frozen=True)
class Choice:
    backend: str
    reason: str

    def __str__(self) -> str:
        return f"{self.backend}: {self.reason}"


def _check(q: Tensor, k: Tensor, v: Tensor, relation, backend: str, scale, dropout_p: float) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4:
            raise ValueError(f"{name} must be 4-D (B, H, L, D), got shape {tuple(t.shape)}")
        if not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise ValueError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"q, k, v must be on one device, got {q.device}, {k.device}, {v.device}")
    B, H, Lq, D = q.shape
    for name, size in (("q's heads H", H), ("k/v's heads Hkv", k.shape[1]), ("the head dim D of q and k", D),
                       ("v's head dim Dv", v.shape[3])):
        if size == 0:
            raise ValueError(f"{name} must be >= 1, got 0 (q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)})")
    if k.shape[0] != B or v.shape[0] != B:
        raise ValueError(f"batch size differs: q {B}, k {k.shape[0]}, v {v.shape[0]}")
    if k.shape[1] != v.shape[1]:
        raise ValueError(f"k and v must have the same number of heads, got {k.shape[1]} and {v.shape[1]}")
    if H % k.shape[1] != 0:
        raise ValueError(f"heads: q has {H} heads, not a multiple of k/v's {k.shape[1]} heads (grouped-query)")
    if k.shape[2] != v.shape[2]:
        raise ValueError(f"k and v must have the same length, got {k.shape[2]} and {v.shape[2]}")
    if k.shape[3] != D:
        raise ValueError(f"q and k must have the same head dim, got {D} and {k.shape[3]}")
    if Lq == 0 or k.shape[2] == 0:
        raise ValueError(f"zero-length sequence: q has length {Lq}, k has length {k.shape[2]}")
    if relation is not None and not isinstance(relation, Relation):
        raise ValueError(f"relation must be a relformer Relation or None, got {type(relation).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))
                              or not math.isfinite(scale) or scale <= 0):
        raise ValueError(f"scale must be a finite positive number, got {scale!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    if relation is not None:
        relation.check_device(q.device)
        relation.check(B, H, Lq, k.shape[2])


def explain(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None = None, dropout_p: float = 0.0) -> Choice:
    """Which backend ``backend="auto"`` picks for these inputs, and why.

    The fixed rule (:func:`_rule`) decides, except between eager and SDPA for small CPU score
    matrices, where the rule's answer stands unless the other backend measured faster on this CPU
    by :data:`~relformer.attention.probe.MARGIN` (:func:`_small_choice`)."""
    choice = _rule(q, k, v, relation, dropout_p)
    if choice.backend in ("eager", "sdpa"):
        grads = _small_contested(q, k, v, relation, dropout_p)
        if grads is not None:
            return _small_choice(choice, q, k, v, relation, *grads)
    return choice


def _small_contested(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None,
                     dropout_p: float) -> tuple[bool, bool] | None:
    """``(training, rel_grad)`` for small fp32 CPU score matrices, where eager and SDPA trade places from
    one CPU to another (the rule's small-score conditions, whatever the number of matrices); None
    elsewhere (an empty batch included), under ``torch.compile`` or autocast, and for SDPA's causal
    kernel (not what the probe models)."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    if not (q.device.type == "cpu" and q.dtype == torch.float32 and 0 < B * H and Lq * Lk <= SMALL_PAIRS
            and dropout_p == 0.0):
        return None
    if relation is not None and (relation.has_prob or relation.tile_cost >= EXPENSIVE_BIAS
                                 or relation.is_causal(Lq, Lk)):
        return None
    if torch.compiler.is_compiling() or torch.is_autocast_enabled("cpu"):
        return None
    training, rel_grad = _b.needs_grad(q, k, v, relation)
    return (training, rel_grad) if B * H * Lq * Lk < CHUNKED_MIN_SCORES or (training and rel_grad) else None


def _small_choice(rule: Choice, q: Tensor, k: Tensor, v: Tensor, relation: Relation | None,
                  training: bool, rel_grad: bool) -> Choice:
    """Eager or SDPA for small CPU score matrices: forced by ``RELFORMER_SMALL_ATTENTION``, else the rule's
    answer unless the other backend measured more than ``MARGIN`` times faster on this bucket."""
    B, H, Lq, _ = q.shape
    what = f"CPU, small score matrices ({Lq}x{k.shape[2]}, {B * H} of them)"
    policy = _probe.small_attention()
    if policy != "auto":
        return Choice(policy, f"{what}: RELFORMER_SMALL_ATTENTION={policy}")
    dead = (relation is not None and relation.has_mask
            and _b.dense_mask_and_dead(relation, B, H, Lq, k.shape[2], q.device)[1] is not None)
    ratio = _probe.ratio_for(q, k, v, relation, training, rel_grad, dead)
    measured = f"{what}: sdpa measured {ratio:.2f}x as fast as eager on this CPU"
    if (ratio if rule.backend == "eager" else 1.0 / ratio) > _probe.MARGIN:
        return Choice("sdpa" if rule.backend == "eager" else "eager", measured)
    return Choice(rule.backend, f"{measured}; {rule.backend} stays (the other needs a {_probe.MARGIN:.2f}x win)")


def _rule(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, dropout_p: float) -> Choice:
    """The fixed policy, from measurements on one CPU (module doc)."""
    B, H, Lq, _ = q.shape
    Lk = k.shape[2]
    dev = q.device
    training, rel_grad = _b.needs_grad(q, k, v, relation)
    # score-sized temporaries the bias needs per pair (1 for a table lookup, ~25 for Relation-DETR's MLP)
    cost = relation.tile_cost if relation is not None else 1.0
    # many small score matrices (Swin's 49x49 windows) are one tile each: nothing to gain from tiling
    big = B * H * Lq * Lk * cost >= CHUNKED_MIN_SCORES and Lq * Lk >= CHUNKED_MIN_PAIRS
    if relation is not None and relation.has_prob:
        if big and dropout_p == 0.0:
            return Choice("chunked", "post-softmax multiplier (URPE) cannot be fused into SDPA/Flex; "
                                     "large score matrix: blockwise, O(tile) memory")
        return Choice("eager", "post-softmax multiplier (URPE) cannot be fused into SDPA/Flex")
    if dropout_p > 0.0 and dev.type == "cpu":
        return Choice("eager", "attention dropout on CPU: SDPA runs its math kernel and draws the mask with "
                               "bernoulli_; eager draws it with rand_like, several times cheaper")
    # (a learnable bias sends SDPA to its math kernel, which materialises more than eager does: no cap)
    if (dev.type == "cpu" and Lq * Lk <= SMALL_PAIRS and cost < EXPENSIVE_BIAS and B * H >= SMALL_MIN_MATRICES
            and (B * H * Lq * Lk < CHUNKED_MIN_SCORES or (training and rel_grad))):
        return Choice("eager", f"CPU, small score matrices ({Lq}x{Lk}, {B * H} of them): matmul + softmax beat "
                               "SDPA's kernels on the CPU first measured (per-call overhead dominates tiny matrices)")
    if relation is None or not (relation.has_mask or relation.has_bias):
        return Choice("sdpa", "no relation: fused SDPA")
    if cost >= EXPENSIVE_BIAS and big and dropout_p == 0.0:
        return Choice("chunked", f"the bias costs ~{cost:.0f} score-sized temporaries per pair to materialise; "
                                 "chunked computes it tile by tile")
    if training:
        if rel_grad and dropout_p == 0.0 and big:
            return Choice("chunked", "bias requires grad: SDPA would drop to its O(L^2) math kernel; "
                                     "chunked recomputes the bias per tile (Flex has no CPU backward)")
        if rel_grad:
            return Choice("sdpa", "bias requires grad but the score matrix is small: SDPA math kernel")
        if _b.flex_supports_backward(dev.type) and _flex_pays(relation, B, H, Lq, Lk, dev, dropout_p):
            return Choice("flex", "block-sparse mask, Flex backward available on this device")
        return Choice("sdpa", "fixed mask/bias: fused SDPA forward+backward"
                              + ("" if _b.flex_supports_backward(dev.type) else " (Flex has no CPU backward)"))
    if relation.is_causal(Lq, Lk):
        return Choice("sdpa", "causal mask: SDPA is_causal kernel (skips the upper tiles itself)")
    if _flex_usable(Lq, Lk, dev, dropout_p):
        if relation.has_mask:
            d = _b.block_density(relation, B, H, Lq, Lk, dev)
            if d <= FLEX_MAX_DENSITY:
                return Choice("flex", f"inference with a block-sparse mask ({d:.0%} of tiles live): Flex skips the rest")
        if relation.has_bias and relation.flex_bias_fast:
            return Choice("flex", "inference with a cheap per-pair bias: Flex computes it in the kernel "
                                  "instead of materialising (B, H, Lq, Lk) for SDPA")
    return Choice("sdpa", "inference with a dense mask/bias: fused SDPA with a 4-D mask")


def _flex_usable(Lq, Lk, dev, dropout_p) -> bool:
    return dropout_p == 0.0 and Lq * Lk >= FLEX_MIN_PAIRS and _b.flex_available(dev.type)


def _flex_pays(relation, B, H, Lq, Lk, dev, dropout_p) -> bool:
    """Training on a device with Flex backward: only block-sparse masks."""
    return (relation.has_mask and _flex_usable(Lq, Lk, dev, dropout_p)
            and _b.block_density(relation, B, H, Lq, Lk, dev) <= FLEX_MAX_DENSITY)


def attend(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None = None, backend: str = "auto",
           scale: float | None = None, dropout_p: float = 0.0) -> Tensor:
    """Attention whose pairwise structure is a :class:`Relation`.

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, Hkv, Lk, D)``; v: ``(B, Hkv, Lk, Dv)`` with ``H % Hkv == 0``.
        relation: mask / bias / multiplier over pairs, or None for full attention.
        backend: ``"auto"``, ``"eager"``, ``"sdpa"``, ``"flex"`` or ``"chunked"``.
        scale: score scale, default ``1/sqrt(D)``.
        dropout_p: dropout on attention probabilities (not supported by flex/chunked).

    Returns:
        ``(B, H, Lq, Dv)``. The same on every backend: query rows with no key to attend are zero
        (with zero gradients); a NaN a row sees (in q, k, v or the relation's bias) makes that row
        NaN, while a NaN or inf in a pair the mask blocks does not reach any row (see
        :func:`relformer.attention.backends.sdpa` for SDPA on accelerators); float64 inputs are
        computed in float64, everything else in float32 (Flex refuses float64); ``B = 0`` gives an
        empty output. Bad input raises ``ValueError`` naming the argument.
    """
    _check(q, k, v, relation, backend, scale, dropout_p)
    scale = float(scale) if scale is not None else _b.default_scale(q.shape[-1])
    if backend == "auto":
        choice = explain(q, k, v, relation, dropout_p)
        backend = choice.backend
        if log.isEnabledFor(logging.DEBUG):
            log.debug("attend %s x %s -> %s", tuple(q.shape), tuple(k.shape), choice)
    _refuse(backend, q, k, v, relation, dropout_p)
    if q.shape[0] == 0:
        return _b.eager(q, k, v, relation, scale, dropout_p)  # nothing to compute: the empty output
    if backend == "eager":
        return _b.eager(q, k, v, relation, scale, dropout_p)
    if backend == "sdpa":
        return _b.sdpa(q, k, v, relation, scale, dropout_p)
    if backend == "flex":
        return _b.flex(q, k, v, relation, scale, dropout_p)
    groups = q.shape[1] // k.shape[1]
    return chunked_attention(q, _b.repeat_kv(k, groups), _b.repeat_kv(v, groups), relation, scale)


def _refuse(backend: str, q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, dropout_p: float) -> None:
    """``ValueError`` for what the chosen backend cannot run (whatever the batch size)."""
    if backend == "sdpa" and relation is not None and relation.has_prob:
        raise ValueError(f"backend='sdpa' cannot fuse the post-softmax multiplier of {type(relation).__name__}; "
                         "use backend='chunked' or 'eager'")
    if backend == "flex":
        if not _b.flex_available(q.device.type):
            raise ValueError(f"backend='flex' is unavailable on {q.device.type} (needs torch.compile and a C compiler)")
        _b.check_flex(q, k, v, relation, dropout_p)
    if backend == "chunked" and dropout_p > 0.0:
        raise ValueError("backend='chunked' does not support dropout_p > 0; use 'sdpa' or 'eager'")
