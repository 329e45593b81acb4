"""Relations over 1-D token positions: masks (causal, sliding window, packed documents) and
position biases (learned relative table, T5 buckets, ALiBi, URPE).

All index functions are broadcastable (see :mod:`relformer.attention.relation`): ``q_idx``
and ``kv_idx`` are positions in the (possibly packed) sequence. Differences of positions
are translation invariant, so position biases are exact inside each packed document.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..attention.relation import Relation, check_int

__all__ = ["Causal", "SlidingWindow", "Documents", "RelativeBias", "T5Bias", "ALiBi", "URPE"]


class Causal(Relation):
    """Query ``i`` attends key ``j`` iff ``j <= i + offset``.

    ``offset = Lk - Lq`` aligns the last query with the last key (decoding with a KV cache).
    """

    has_mask = True

    def __init__(self, offset: int = 0) -> None:
        super().__init__()
        self.offset = check_int("offset", offset, minimum=None)

    def mask_mod(self, b, h, q_idx, kv_idx):
        return kv_idx <= q_idx + self.offset

    def is_causal(self, Lq, Lk):
        return self.offset == 0 and Lq == Lk

    def extra_repr(self) -> str:
        return f"offset={self.offset}"


class SlidingWindow(Relation):
    """Local attention: ``|i - j| <= window`` (or ``0 <= i - j <= window`` when ``causal``).

    Longformer / Mistral-style band; block-sparse, so Flex and chunked skip far tiles.
    """

    has_mask = True

    def __init__(self, window: int, causal: bool = False) -> None:
        super().__init__()
        self.window, self.causal = check_int("window", window, minimum=0), bool(causal)

    def mask_mod(self, b, h, q_idx, kv_idx):
        d = q_idx - kv_idx
        if self.causal:
            return (d >= 0) & (d <= self.window)
        return d.abs() <= self.window

    def extra_repr(self) -> str:
        return f"window={self.window}, causal={self.causal}"


def _check_ids(name: str, ids: Tensor) -> Tensor:
    if not isinstance(ids, Tensor):
        raise ValueError(f"{name} must be a tensor")
    if ids.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be an integer tensor (int32/int64), got {ids.dtype}")
    if ids.dim() != 2:
        raise ValueError(f"{name} must be 2-D (B, L), got shape {tuple(ids.shape)}")
    return ids


class Documents(Relation):
    """Packed documents: tokens attend only within their own item (segment). The packed-batch mask.

    Args:
        segment_ids: ``(B, Lq)`` integer item id of every query token; ``-1`` marks padding,
            which attends nothing and is attended by nothing.
        kv_segment_ids: ``(B, Lk)`` for cross-attention between two packed sets (default: the same).
    """

    has_mask = True

    def __init__(self, segment_ids: Tensor, kv_segment_ids: Tensor | None = None) -> None:
        super().__init__()
        self.segment_ids = _check_ids("segment_ids", segment_ids)
        self.kv_segment_ids = self.segment_ids if kv_segment_ids is None else _check_ids("kv_segment_ids", kv_segment_ids)

    def mask_mod(self, b, h, q_idx, kv_idx):
        sq = self.segment_ids[b, q_idx]
        return (sq == self.kv_segment_ids[b, kv_idx]) & (sq >= 0)

    def check(self, B, H, Lq, Lk):
        if self.segment_ids.shape != (B, Lq):
            raise ValueError(f"segment_ids has shape {tuple(self.segment_ids.shape)}, expected (B, Lq) = {(B, Lq)}")
        if self.kv_segment_ids.shape != (B, Lk):
            raise ValueError(f"kv_segment_ids has shape {tuple(self.kv_segment_ids.shape)}, expected (B, Lk) = {(B, Lk)}")


class RelativeBias(Relation):
    """Learned 1-D relative position bias (Shaw et al. 2018 as a scalar per head; Swin's 1-D analogue).

    ``bias[h, i, j] = table[h, clip(i - j, -max_distance, max_distance) + max_distance]``;
    table ``(H, 2 * max_distance + 1)``, zero-initialised.
    """

    has_bias = True
    flex_bias_fast = True  # one clamp and one gather: cheaper in the kernel than a materialised bias

    def __init__(self, num_heads: int, max_distance: int) -> None:
        super().__init__()
        num_heads = check_int("num_heads", num_heads)
        self.max_distance = check_int("max_distance", max_distance, minimum=0)
        self.table = nn.Parameter(torch.zeros(num_heads, 2 * self.max_distance + 1))

    def bias_mod(self, b, h, q_idx, kv_idx):
        m = self.max_distance
        return self.table[h, (q_idx - kv_idx).clamp(-m, m) + m]

    def check(self, B, H, Lq, Lk):
        _check_heads(self.table.shape[0], H)

    def extra_repr(self) -> str:
        return f"num_heads={self.table.shape[0]}, max_distance={self.max_distance}"


def _check_heads(have: int, H: int) -> None:
    if have != H:
        raise ValueError(f"relation has {have} heads but q has {H} heads")


class T5Bias(Relation):
    """T5's bucketed relative position bias (Raffel et al. 2020, HF ``T5Attention._relative_position_bucket``).

    Half the buckets (per direction when ``bidirectional``) hold exact distances; the rest
    grow logarithmically up to ``max_distance``. ``table (num_buckets, H)`` like HF's
    ``relative_attention_bias.weight``, so T5 weights load directly.
    """

    has_bias = True
    flex_bias_fast = True  # integer bucket arithmetic and one gather: level with or ahead of a materialised bias

    def __init__(self, num_heads: int, num_buckets: int = 32, max_distance: int = 128, bidirectional: bool = True) -> None:
        super().__init__()
        num_heads = check_int("num_heads", num_heads)
        # the log-spaced buckets need >= 1 exact bucket per direction and max_distance beyond them
        check_int("num_buckets", num_buckets, minimum=4 if bidirectional else 2)
        max_exact = (num_buckets // 2 if bidirectional else num_buckets) // 2
        check_int("max_distance", max_distance, minimum=max_exact + 1)
        self.num_buckets, self.max_distance, self.bidirectional = int(num_buckets), int(max_distance), bool(bidirectional)
        self.table = nn.Parameter(torch.randn(num_buckets, num_heads) * 0.02)

    def bucket(self, relative_position: Tensor) -> Tensor:
        """``kv - q`` -> bucket index, exactly as HF T5."""
        n = self.num_buckets
        ret = torch.zeros_like(relative_position)
        if self.bidirectional:
            n //= 2
            ret = ret + (relative_position > 0).to(relative_position.dtype) * n
            rp = relative_position.abs()
        else:
            rp = -torch.clamp(relative_position, max=0)
        max_exact = n // 2
        is_small = rp < max_exact
        large = max_exact + (
            torch.log(rp.float().clamp_min(1) / max_exact) / math.log(self.max_distance / max_exact) * (n - max_exact)
        ).to(relative_position.dtype)
        large = torch.clamp(large, max=n - 1)
        return ret + torch.where(is_small, rp, large)

    def bias_mod(self, b, h, q_idx, kv_idx):
        return self.table[self.bucket(kv_idx - q_idx), h]

    def check(self, B, H, Lq, Lk):
        _check_heads(self.table.shape[1], H)


def alibi_slopes(num_heads: int) -> Tensor:
    """ALiBi head slopes (Press et al. 2022): a geometric sequence, interleaved for non powers of 2."""
    def pow2(n):
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start ** (i + 1) for i in range(n)]

    if math.log2(num_heads).is_integer():
        slopes = pow2(num_heads)
    else:
        closest = 2 ** math.floor(math.log2(num_heads))
        slopes = pow2(closest) + pow2(2 * closest)[0::2][: num_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


class ALiBi(Relation):
    """Attention with Linear Biases (Press et al. 2022): ``bias[h, i, j] = -slope[h] * |i - j|``.

    Non-learnable (slopes are a buffer); combine with :class:`Causal` for decoders.
    """

    has_bias = True

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.register_buffer("slopes", alibi_slopes(check_int("num_heads", num_heads)), persistent=False)

    def bias_mod(self, b, h, q_idx, kv_idx):
        return -self.slopes[h] * (q_idx - kv_idx).abs()

    def check(self, B, H, Lq, Lk):
        _check_heads(self.slopes.shape[0], H)


class URPE(Relation):
    """Universal relative positional encoding (Luo et al. 2022, "Your Transformer May Not be as
    Powerful as You Expect"): the softmax probabilities are multiplied elementwise by a learned
    Toeplitz matrix, ``out = (softmax(QK^T) * C) V`` with ``C[h, i, j] = c[h, i - j]``.

    ``table (H, 2 * max_distance + 1)`` initialised to ones (plain attention). Being a
    post-softmax multiplier it cannot be fused into SDPA or Flex; ``eager`` and ``chunked``
    run it, and ``auto`` routes there.
    """

    has_prob = True

    def __init__(self, num_heads: int, max_distance: int) -> None:
        super().__init__()
        num_heads = check_int("num_heads", num_heads)
        self.max_distance = check_int("max_distance", max_distance, minimum=0)
        self.table = nn.Parameter(torch.ones(num_heads, 2 * self.max_distance + 1))

    def prob_mod(self, b, h, q_idx, kv_idx):
        m = self.max_distance
        return self.table[h, (q_idx - kv_idx).clamp(-m, m) + m]

    def check(self, B, H, Lq, Lk):
        _check_heads(self.table.shape[0], H)
