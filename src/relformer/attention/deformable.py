"""Multi-scale deformable attention (Zhu et al. 2021, "Deformable DETR: Deformable Transformers for
End-to-End Object Detection"), the sampling core.

Each query ``q`` samples, per head ``h``, level ``l`` and point ``k``, the level-``l`` value map at a
location ``p_{qhlk}`` (given here already as reference point + offset, normalised to ``[0, 1]``) and
takes the weighted sum (eq. 3; eq. 2 is its single-scale case)::

    MSDeformAttn(z_q, p_q, {x^l}) = sum_h W_h [ sum_l sum_k A_{hlqk} . W'_h x^l(phi_l(p_q) + dp_{hlqk}) ]

with ``sum_{l,k} A_{hlqk} = 1``; this function computes the bracket for every head (the value
projection ``W'_h`` and output projection ``W_h`` live in :class:`relformer.nn.MultiScaleDeformableAttention`).
``x^l(p)`` is bilinear interpolation with zero padding outside the map, pixel centres at
``(i + 0.5) / w`` -- ``grid_sample(..., align_corners=False)``.

All levels are packed in one flat value tensor (level ``l`` starts at ``level_start_index[l]``,
row-major ``h_l x w_l``). The four bilinear corners of every sample are turned into flat row indices
and weights (corner weight x attention weight, zero for corners outside the map), and one
``F.embedding_bag(mode="sum", per_sample_weights=...)`` over the ``(B * S * H, D)`` value rows gathers
and sums them for all levels at once: no loop over levels, and the ``4 * L * P`` corner rows of a query
are never materialised. :func:`grid_sample_deformable_attend` is the plain per-level ``grid_sample``
twin (the formulation of HF transformers and the Deformable DETR code's PyTorch fallback).

``sampler="auto"`` (``bench/deformable.py`` -> ``bench/results/deformable.md``): the packed sampler when
no gradient is needed (2.0-4.6x faster than grid_sample on an idle 2-core AMD EPYC). With gradients on
the CPU the answer depends on the CPU: ``embedding_bag``'s backward sorts every corner index, a fixed
cost that only large value tensors amortise, and where that pays differs by vendor. On an idle 2-core
Intel Xeon at RT-DETR's 640 x 640 levels (S = 8400) the packed backward won on one thread and at batch
4 on two but lost at batch 1 on two (0.79x), and at 256 x 256 (S = 1344) lost everywhere; on the AMD
EPYC it wins at 640 x 640 everywhere (1.2-1.5x) and at 256 x 256 only at batch 1 on one thread. So a
rule gives the first guess -- packed when ``batch x value tokens >= PACKED_TRAINING_TOKENS x threads``
-- and a probe decides (:func:`training_sampler`): the two samplers' forward + backward timed in
alternation on seeded inputs of the call's shape (queries rounded up to a power of two), once per
process, thread count and shape, kept on disk under ``relformer.utils.cache_root()/deformable`` per
CPU model and torch version; the sampler the rule did not pick takes the shape only when it measured
``MARGIN`` times faster. Off the CPU, grid_sample.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.cpu import MeasuredRatios, paired_ratio

__all__ = ["multi_scale_deformable_attend", "grid_sample_deformable_attend", "auto_sampler", "training_sampler",
           "level_start_index_of", "describe", "SAMPLERS"]

SAMPLERS = ("auto", "packed", "grid_sample")
#: with gradients, ``auto`` packs from this many value rows (batch x tokens) per CPU thread (module doc)
PACKED_TRAINING_TOKENS = 8000
MARGIN = 1.10  # the sampler the rule does not pick takes a shape only when it measured this much faster
PROBE_REPS = 5  # paired forward + backward repetitions after one warm-up of each sampler
PROBE_SECONDS = 1.5  # their time budget: a large shape on a slow machine runs fewer (at least one pair);
# one pair of short calls is too noisy to decide a 1.10x margin on, so the budget leaves room for several
_MEASURED = MeasuredRatios("deformable", schema=1)  # {shape key: grid_sample time / packed time}
_by_shape: dict[tuple, str] = {}  # exact call shape and thread count -> the sampler: the hot path's lookup


def describe(x) -> str:
    """What an error message says was given: a tensor's dtype and shape, else the type's name."""
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__


def _shapes(spatial_shapes, device) -> Tensor:
    if isinstance(spatial_shapes, Sequence) and not isinstance(spatial_shapes, str):
        spatial_shapes = torch.as_tensor(spatial_shapes, dtype=torch.long, device=device)
    if not isinstance(spatial_shapes, Tensor) or spatial_shapes.dtype not in (torch.int32, torch.int64) \
            or spatial_shapes.dim() != 2 or spatial_shapes.shape[1] != 2 or spatial_shapes.shape[0] == 0:
        raise ValueError("spatial_shapes must be an integer (L, 2) tensor of (height, width) per level, got "
                         f"{describe(spatial_shapes)}")
    return spatial_shapes.to(device=device, dtype=torch.long)


def level_start_index_of(spatial_shapes: Tensor) -> Tensor:
    """``(L,)`` start row of every level in the flat value tensor: ``[0, h_0 w_0, h_0 w_0 + h_1 w_1, ...]``."""
    sizes = spatial_shapes.prod(1)
    return torch.cat([sizes.new_zeros(1), sizes.cumsum(0)[:-1]])


def _check(value: Tensor, spatial_shapes, sampling_locations: Tensor, attention_weights: Tensor,
           level_start_index) -> tuple[Tensor, Tensor, list[tuple[int, int]]]:
    """-> spatial_shapes ``(L, 2)`` long, level_start_index ``(L,)`` long, the shapes as Python ints."""
    for name, t in (("value", value), ("sampling_locations", sampling_locations),
                    ("attention_weights", attention_weights)):
        if not isinstance(t, Tensor) or not t.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {describe(t)}")
    if value.dim() != 4:
        raise ValueError(f"value must be (B, S, H, D), got shape {tuple(value.shape)}")
    B, S, H, D = value.shape
    shapes = _shapes(spatial_shapes, value.device)
    L = shapes.shape[0]
    if sampling_locations.dim() != 6 or sampling_locations.shape[-1] != 2 \
            or sampling_locations.shape[0] != B or sampling_locations.shape[2] != H or sampling_locations.shape[3] != L:
        raise ValueError(f"sampling_locations must be (B, Q, H, L, P, 2) = ({B}, Q, {H}, {L}, P, 2), got shape "
                         f"{tuple(sampling_locations.shape)}")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"attention_weights must be (B, Q, H, L, P) = {tuple(sampling_locations.shape[:-1])}, "
                         f"got shape {tuple(attention_weights.shape)}")
    if not (value.dtype == sampling_locations.dtype == attention_weights.dtype):
        raise ValueError("value, sampling_locations and attention_weights must share a dtype, got "
                         f"{value.dtype}, {sampling_locations.dtype}, {attention_weights.dtype}")
    if not (value.device == sampling_locations.device == attention_weights.device):
        raise ValueError("value, sampling_locations and attention_weights must be on one device")
    hw = [(int(h), int(w)) for h, w in shapes.tolist()]
    if min(min(s) for s in hw) < 1:
        raise ValueError(f"spatial_shapes must be positive (height, width) pairs, got {hw}")
    if sum(h * w for h, w in hw) != S:
        raise ValueError(f"spatial_shapes {hw} cover {sum(h * w for h, w in hw)} positions but value has S = {S}")
    starts = level_start_index_of(shapes)
    if level_start_index is not None:
        if not isinstance(level_start_index, Tensor) or level_start_index.shape != (L,) \
                or not torch.equal(level_start_index.to(starts), starts):
            given = level_start_index.tolist() if isinstance(level_start_index, Tensor) else level_start_index
            raise ValueError(f"level_start_index must be the (L,) starts of the levels, {starts.tolist()}, "
                             f"got {given!r}")
    if sampling_locations.numel() and not bool(torch.isfinite(sampling_locations).all()):
        raise ValueError("sampling_locations must be finite (a NaN or inf location has no bilinear sample)")
    return shapes, starts, hw


def multi_scale_deformable_attend(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                                  attention_weights: Tensor, level_start_index: Tensor | None = None, *,
                                  sampler: str = "auto") -> Tensor:
    """The sampling core of multi-scale deformable attention (module doc, Zhu et al. 2021 eq. 3).

    Args:
        value: ``(B, S, H, D)``, every level flattened row-major and concatenated, ``S = sum_l h_l w_l``.
        spatial_shapes: ``(L, 2)`` integer ``(h_l, w_l)`` (a list of pairs is accepted).
        sampling_locations: ``(B, Q, H, L, P, 2)`` ``(x, y)`` in ``[0, 1]`` (outside: zero padding).
        attention_weights: ``(B, Q, H, L, P)`` (softmax-normalised over ``L * P`` by the caller).
        level_start_index: ``(L,)`` start of every level in ``S``; checked when given, derived when None.
        sampler: ``"packed"`` (one ``embedding_bag`` over all levels), ``"grid_sample"`` (one call per
            level) or ``"auto"`` (module doc); the results agree to rounding.

    Returns:
        ``(B, Q, H * D)``, head-major (head ``h`` in columns ``h*D : (h+1)*D``). Bad input raises
        ``ValueError`` naming the argument.
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler must be one of {SAMPLERS}, got {sampler!r}")
    shapes, starts, hw = _check(value, spatial_shapes, sampling_locations, attention_weights, level_start_index)
    if sampler == "auto":
        sampler = auto_sampler(value, sampling_locations, attention_weights, hw)
    if sampler == "grid_sample":
        return _grid_sample(value, hw, sampling_locations, attention_weights)
    return _packed(value, shapes, starts, sampling_locations, attention_weights)


def auto_sampler(value: Tensor, sampling_locations: Tensor, attention_weights: Tensor,
                 spatial_shapes: Sequence[tuple[int, int]] | None = None) -> str:
    """``"packed"`` or ``"grid_sample"``: what ``sampler="auto"`` runs for these inputs (module doc).
    ``spatial_shapes``: the levels' ``(h, w)``, for the probe's inputs (default: one level of ``S`` rows)."""
    grads = tuple(torch.is_grad_enabled() and t.requires_grad for t in (value, sampling_locations, attention_weights))
    if not any(grads):
        return "packed"
    if value.device.type != "cpu":
        return "grid_sample"
    hw = tuple((int(h), int(w)) for h, w in spatial_shapes) if spatial_shapes is not None else ((1, value.shape[1]),)
    shape = (torch.get_num_threads(), grads, value.dtype, tuple(value.shape), tuple(sampling_locations.shape[:2]),
             sampling_locations.shape[4], hw)
    choice = _by_shape.get(shape)
    if choice is None:
        choice = _by_shape[shape] = training_sampler(value.shape, sampling_locations.shape[1],
                                                     sampling_locations.shape[4], hw, value.dtype, grads)[0]
    return choice


def training_sampler(value_shape, queries: int, points: int, spatial_shapes, dtype=torch.float32,
                     grads=(True, True, True)) -> tuple[str, str]:
    """The sampler ``auto`` runs with gradients on the CPU for ``value (B, S, H, D)``, ``queries`` x ``points``
    samples per head and level on ``spatial_shapes``, and the reason: the rule's first guess, kept unless
    the other sampler measured ``MARGIN`` times faster (module doc). ``grads``: which of value, sampling
    locations and attention weights need a gradient."""
    B, S, H, D = (int(n) for n in value_shape)
    big = B * S >= PACKED_TRAINING_TOKENS * torch.get_num_threads()
    rule = "packed" if big else "grid_sample"
    hw = tuple((int(h), int(w)) for h, w in spatial_shapes)
    q = 1 << max(0, math.ceil(math.log2(max(queries, 1))))  # the denoising groups vary Q from batch to batch
    key = f"B={B},S={S},H={H},D={D},Q={q},P={points},levels={'/'.join(f'{h}x{w}' for h, w in hw)}," \
          f"dtype={str(dtype).removeprefix('torch.')},grads={''.join(str(int(g)) for g in grads)}"
    ratio, source = _MEASURED.get(key, lambda: _measure((B, S, H, D), q, points, hw, dtype, grads))
    win = ratio if rule == "grid_sample" else 1.0 / ratio  # the other sampler's speed-up over the rule's
    other = "packed" if rule == "grid_sample" else "grid_sample"
    if win > MARGIN:
        return other, f"{other}: {win:.2f}x faster than {rule} on this CPU ({source}, {key})"
    return rule, f"{rule} (the rule); {other} measured {win:.2f}x, needs {MARGIN:.2f}x ({source}, {key})"


def _measure(value_shape, queries: int, points: int, hw, dtype, grads) -> float:
    """grid_sample's forward + backward time / the packed sampler's, on seeded inputs of this shape:
    locations around the map (some outside it), softmax weights over the levels and points."""
    B, S, H, D = value_shape
    L = len(hw)
    g = torch.Generator().manual_seed(0)  # a private stream: the caller's random state is untouched
    with torch.inference_mode(False), torch.enable_grad():
        value = torch.randn(B, S, H, D, generator=g, dtype=dtype)
        loc = torch.rand(B, queries, H, L, points, 2, generator=g, dtype=dtype) * 1.2 - 0.1
        weights = torch.randn(B, queries, H, L * points, generator=g, dtype=dtype).softmax(-1)
        weights = weights.view(B, queries, H, L, points)
        inputs = [t.requires_grad_(need) for t, need in zip((value, loc, weights), grads)]
        wanted = [t for t in inputs if t.requires_grad]
        shapes = torch.tensor(hw, dtype=torch.long)
        starts = level_start_index_of(shapes)

        def way(run):
            def call():
                torch.autograd.grad(run(*inputs).sum(), wanted)
            return call
        return paired_ratio(way(lambda v, p, a: _grid_sample(v, list(hw), p, a)),
                            way(lambda v, p, a: _packed(v, shapes, starts, p, a)), PROBE_REPS, PROBE_SECONDS)


def _packed(value: Tensor, shapes: Tensor, starts: Tensor, sampling_locations: Tensor,
            attention_weights: Tensor) -> Tensor:
    """The packed sampler (module doc). Every intermediate is laid out ``(bags, ..., L * P)``: the
    order of a bag's terms does not matter to the sum, and per-level constants become full rows of
    length ``L * P``, so no elementwise op broadcasts over a short inner axis."""
    B, S, H, D = value.shape
    Q, L, P = sampling_locations.shape[1], shapes.shape[0], sampling_locations.shape[4]
    N, LP = B * Q * H, L * P  # bags (b, q, h); samples (l, k) per bag
    device = value.device
    # coordinates and flat row indices in floating point: integers stay exact below 2 ** 24 in float32
    dtype = torch.float64 if S >= 2 ** 24 else torch.promote_types(value.dtype, torch.float32)
    hw = shapes.to(dtype).repeat_interleave(P, 0)  # (L * P, 2): each sample's level height and width
    h_l, w_l = hw[:, 0].contiguous(), hw[:, 1].contiguous()
    start = starts.to(dtype).repeat_interleave(P)  # its level's first row
    loc = sampling_locations.reshape(N, LP, 2).to(dtype)
    # pixel coordinates (align_corners=False); clamped just outside the map, where every corner is padding
    x = (loc[..., 0] * w_l - 0.5).clamp(min=-2.0).minimum(w_l + 1)  # (N, L * P)
    y = (loc[..., 1] * h_l - 0.5).clamp(min=-2.0).minimum(h_l + 1)
    x0, y0 = x.detach().floor(), y.detach().floor()
    fx, fy = x - x0, y - y0
    xs, ys = torch.stack([x0, x0 + 1], 1), torch.stack([y0, y0 + 1], 1)  # (N, 2, L * P) corner columns, rows
    wx = torch.stack([1 - fx, fx], 1) * ((xs >= 0) & (xs < w_l))  # zero weight outside the map
    wy = torch.stack([1 - fy, fy], 1) * ((ys >= 0) & (ys < h_l)) * attention_weights.reshape(N, 1, LP).to(dtype)
    weights = wy.unsqueeze(2) * wx.unsqueeze(1)  # (N, 2, 2, L * P): corner weight x attention weight
    col = torch.minimum(xs.clamp_(min=0), w_l - 1, out=xs)
    row = torch.minimum(ys.clamp_(min=0), h_l - 1, out=ys).mul_(w_l).add_(start)
    pixel = (row.unsqueeze(2) + col.unsqueeze(1)).long()  # (N, 2, 2, L * P) flat rows of the packed levels
    # row (b, s, h) of value seen as (B*S*H, D): no copy of value, and the bags come out as (B, Q, H)
    base = ((torch.arange(B, device=device) * (S * H)).view(B, 1, 1) + torch.arange(H, device=device)).expand(B, Q, H)
    index = pixel.mul_(H).add_(base.reshape(N, 1, 1, 1))
    out = F.embedding_bag(index.view(N, 4 * LP), value.reshape(B * S * H, D), mode="sum",
                          per_sample_weights=weights.view(N, 4 * LP).to(value.dtype))  # (B*Q*H, D)
    return out.view(B, Q, H * D)


def grid_sample_deformable_attend(value: Tensor, spatial_shapes: Tensor, sampling_locations: Tensor,
                                  attention_weights: Tensor, level_start_index: Tensor | None = None) -> Tensor:
    """The plain twin of :func:`multi_scale_deformable_attend`: one ``grid_sample`` per level, same
    arguments and result (``sampler="grid_sample"``)."""
    return multi_scale_deformable_attend(value, spatial_shapes, sampling_locations, attention_weights,
                                         level_start_index, sampler="grid_sample")


def _grid_sample(value: Tensor, hw: list[tuple[int, int]], sampling_locations: Tensor,
                 attention_weights: Tensor) -> Tensor:
    B, S, H, D = value.shape
    Q, L, P = sampling_locations.shape[1], len(hw), sampling_locations.shape[4]
    grids = 2 * sampling_locations - 1  # (B, Q, H, L, P, 2) in [-1, 1]
    sampled = []
    for level, (v_l, (h, w)) in enumerate(zip(value.split([h * w for h, w in hw], dim=1), hw)):
        v_l = v_l.permute(0, 2, 3, 1).reshape(B * H, D, h, w)  # (B*H, D, h, w)
        g_l = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)  # (B*H, Q, P, 2)
        sampled.append(F.grid_sample(v_l, g_l, mode="bilinear", padding_mode="zeros", align_corners=False))
    stacked = torch.stack(sampled, dim=-2).flatten(-2)  # (B*H, D, Q, L*P)
    aw = attention_weights.transpose(1, 2).reshape(B * H, 1, Q, L * P)
    return (stacked * aw).sum(-1).view(B, H * D, Q).transpose(1, 2)
