"""Eager or SDPA for many small CPU score matrices, chosen by measurement on the CPU at hand.

For score matrices of at most ``SMALL_PAIRS`` pairs, which of ``eager`` (matmul + softmax +
matmul) and SDPA's CPU kernels is faster depends on the CPU: on the AMD EPYC the policy was first
tuned on, eager won for many such matrices; on an Intel Xeon SDPA won by about 2x for GPS's packed
64-slot rows (``bench/results/attention.md``). No rule written in advance holds on both, so
:func:`measured_ratio` times the two on synthetic inputs shaped like the call's :class:`Bucket`
(mode, learnable bias, mask with or without dead rows, bias, lengths rounded up, head dims,
number of matrices rounded to a power of two and capped at :data:`PROBE_SCORES` scores): one
warm-up of each, then :data:`PROBE_REPS` pairs alternating which runs first (fewer when a pair
takes long: at most about :data:`PROBE_SECONDS` after the warm-up), forward only in inference,
forward + backward in training. The ratio is eager's time / SDPA's: the lower of the median
per-pair ratio and the ratio of the fastest runs (noise only adds time). The probe draws from a
private generator (the user's random stream is untouched). Each bucket is measured once per
process and kept on disk (JSON under ``relformer.utils.cache_root()/attention``, keyed on CPU
model, torch version and thread count; a file that does not parse or validate is ignored and
rewritten), so a resumed run chooses as the first one did.

``RELFORMER_SMALL_ATTENTION`` in the environment, or :func:`set_small_attention`, sets the
policy: ``"auto"`` (the default, measured), ``"eager"`` or ``"sdpa"`` (forced; for benchmarks).
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from ..utils.cpu import MeasuredRatios, paired_ratio
from . import backends as _b
from .relation import Relation

__all__ = ["SMALL_ATTENTION", "MARGIN", "Bucket", "bucket_of", "measured_ratio", "ratio_for",
           "set_small_attention", "small_attention"]

SMALL_ATTENTION = ("auto", "eager", "sdpa")
MARGIN = 1.10  # the backend the fixed rule does not pick takes a bucket only when it is this much faster
PROBE_SCORES = 1 << 19  # scores per probe call at most (128 matrices of 64 x 64): bounds the probe's time
PROBE_REPS = 3  # paired repetitions after one warm-up of each backend
PROBE_SECONDS = 0.04  # the repetitions' time budget: a slow machine runs fewer (the warm-up pair always runs)
_MEASURED = MeasuredRatios("attention", schema=1)  # {bucket key: eager time / sdpa time} per thread count
_policy = "auto"
_by_shape: dict[tuple, float] = {}  # exact call shape -> its bucket's ratio: the hot path's one lookup


def set_small_attention(name: str) -> None:
    """The small-score CPU policy of ``attend(backend="auto")``: ``"auto"`` (measured), ``"eager"``, ``"sdpa"``."""
    global _policy
    if name not in SMALL_ATTENTION:
        raise ValueError(f"RELFORMER_SMALL_ATTENTION / set_small_attention: unknown policy {name!r}; "
                         f"expected one of {SMALL_ATTENTION}")
    _policy = name


def small_attention() -> str:
    return _policy


set_small_attention(os.environ.get("RELFORMER_SMALL_ATTENTION", "auto"))


@dataclass(frozen=True)
class Bucket:
    """The shape class one probe stands for: ``matrices`` score matrices ``(lq, lk)`` over ``heads``
    heads, head dims ``d`` / ``dv``, with a mask and/or a bias (learnable when ``rel_grad``)."""
    training: bool
    rel_grad: bool
    mask: bool
    dead: bool
    bias: bool
    lq: int
    lk: int
    d: int
    dv: int
    heads: int
    matrices: int

    def key(self) -> str:
        return ",".join(f"{k}={int(v)}" for k, v in asdict(self).items())


def _round_len(n: int) -> int:
    """Lengths up to 8 as they are, up to 64 to a multiple of 8, above to a power of two."""
    if n <= 8:
        return n
    return 8 * math.ceil(n / 8) if n <= 64 else 1 << math.ceil(math.log2(n))


def bucket_of(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, training: bool, rel_grad: bool,
              dead: bool) -> Bucket:
    """The :class:`Bucket` of an ``attend`` call: ``q (B, H, Lq, D)``, ``k (B, Hkv, Lk, D)``, ``v (.., Dv)``;
    ``dead``: the mask leaves some query rows without a key (padding slots of packed rows)."""
    B, H, Lq, D = q.shape
    lq, lk = _round_len(Lq), _round_len(k.shape[2])
    matrices = 1 << max(round(math.log2(max(B * H, 1))), 0)
    matrices = max(1, min(matrices, 1 << int(math.log2(max(PROBE_SCORES // (lq * lk), 1)))))
    heads = min(H, matrices)
    mask = relation is not None and relation.has_mask
    bias = relation is not None and relation.has_bias
    return Bucket(training, rel_grad, mask, mask and dead, bias, lq, lk, D, v.shape[3], heads, matrices)


def _segments(length: int, batch: int, padded: bool) -> Tensor:
    """``(batch, length)`` segment ids of packed rows: three items, then (``padded``) an eighth of padding
    (-1): rows without any key cost eager a pass of their own, so they are part of the bucket."""
    used = length - max(1, length // 8) if padded and length > 1 else length
    ids = torch.arange(length) * 3 // used
    return ids.masked_fill(ids >= 3, -1).expand(batch, -1)


class _ProbeRelation(Relation):
    """The probe's relation: a packed-rows mask (three items per row, as packed graphs have, and padding
    when the bucket has dead rows) and/or a per-head ``(H, Lq, Lk)`` bias table."""

    def __init__(self, bucket: Bucket, batch: int, generator: torch.Generator) -> None:
        super().__init__()
        self.has_mask, self.has_bias = bucket.mask, bucket.bias
        self.seg_q = _segments(bucket.lq, batch, bucket.dead)  # (B, Lq)
        self.seg_k = _segments(bucket.lk, batch, False)  # (B, Lk)
        table = torch.randn(bucket.heads, bucket.lq, bucket.lk, generator=generator)
        self.table = torch.nn.Parameter(table, requires_grad=bucket.rel_grad)

    def mask_mod(self, b, h, q_idx, kv_idx):
        sq = self.seg_q[b, q_idx]
        return (sq == self.seg_k[b, kv_idx]) & (sq >= 0)

    def bias_mod(self, b, h, q_idx, kv_idx):
        return self.table[h, q_idx, kv_idx]


def _probe_calls(bucket: Bucket):
    """``(eager's way, sdpa's way)`` on seeded inputs of the bucket's shape: a forward in inference, a
    forward and backward (to q, k, v and a learnable bias) in training."""
    g = torch.Generator().manual_seed(0)
    batch = bucket.matrices // bucket.heads
    q = torch.randn(batch, bucket.heads, bucket.lq, bucket.d, generator=g)
    k = torch.randn(batch, bucket.heads, bucket.lk, bucket.d, generator=g)
    v = torch.randn(batch, bucket.heads, bucket.lk, bucket.dv, generator=g)
    rel = _ProbeRelation(bucket, batch, g) if bucket.mask or bucket.bias else None
    grad_out = torch.randn(batch, bucket.heads, bucket.lq, bucket.dv, generator=g)
    inputs = [t.requires_grad_(bucket.training) for t in (q, k, v)] + ([rel.table] if bucket.rel_grad else [])
    scale = _b.default_scale(bucket.d)

    def way(backend):
        def call():
            with torch.set_grad_enabled(bucket.training):
                out = backend(q, k, v, rel, scale, 0.0)
                if bucket.training:  # a scalar loss: explicit grad_outputs would import sympy on first use
                    torch.autograd.grad((out * grad_out).sum(), inputs)
        return call
    return way(_b.eager), way(_b.sdpa)


def _measure(bucket: Bucket) -> float:
    with torch.inference_mode(False):
        return paired_ratio(*_probe_calls(bucket), PROBE_REPS, PROBE_SECONDS)


def ratio_for(q: Tensor, k: Tensor, v: Tensor, relation: Relation | None, training: bool, rel_grad: bool,
              dead: bool) -> float:
    """:func:`measured_ratio` of the call's :func:`bucket_of`, memoised on the exact shapes."""
    shape = (torch.get_num_threads(), training, rel_grad, dead, relation is not None and relation.has_mask,
             relation is not None and relation.has_bias, q.shape, k.shape[2], v.shape[3])
    ratio = _by_shape.get(shape)
    if ratio is None:
        ratio = _by_shape[shape] = measured_ratio(bucket_of(q, k, v, relation, training, rel_grad, dead))[0]
    return ratio


def measured_ratio(bucket: Bucket) -> tuple[float, str]:
    """Eager's time / SDPA's for this bucket and where it came from (``"process"``, ``"disk"``,
    ``"measured"``): measured once per process and bucket, then fixed."""
    return _MEASURED.get(bucket.key(), lambda: _measure(bucket))
