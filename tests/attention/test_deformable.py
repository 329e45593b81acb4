"""multi_scale_deformable_attend (Deformable DETR's sampling core) against HF transformers' pure-PyTorch
``MultiScaleDeformableAttention`` (the one RT-DETR runs): forward and the gradients of value, sampling
locations and attention weights, float32 and float64; the per-level grid_sample twin; bad input."""
import math

import pytest
import torch
from transformers.models.rt_detr.modeling_rt_detr import MultiScaleDeformableAttention as HFCore

from relformer.attention import multi_scale_deformable_attend
from relformer.attention.deformable import auto_sampler, grid_sample_deformable_attend, level_start_index_of

TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}
CASES = [  # (B, Q, H, D, spatial shapes, P)
    (2, 7, 3, 4, [(5, 6), (3, 2), (1, 1)], 3),
    (1, 11, 2, 8, [(9, 7)], 4),
    (3, 5, 4, 2, [(8, 8), (4, 4), (2, 2), (1, 2)], 2),
]


def _inputs(B, Q, H, D, shapes, P, dtype, spread=1.6, seed=0):
    g = torch.Generator().manual_seed(seed)
    S, L = sum(h * w for h, w in shapes), len(shapes)
    value = torch.randn(B, S, H, D, generator=g, dtype=dtype)
    # locations reach past the map on every side (zero padding), weights need not sum to one here
    loc = torch.rand(B, Q, H, L, P, 2, generator=g, dtype=dtype) * spread - (spread - 1) / 2
    weights = torch.rand(B, Q, H, L, P, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (value, loc, weights)]


def _hf(value, shapes, loc, weights):
    ss = torch.tensor(shapes)
    return HFCore()(value, ss, shapes, level_start_index_of(ss), loc, weights, 64)


def _run(fn, inputs, grad):
    out = fn(*inputs)
    return (out, *torch.autograd.grad(out, inputs, grad))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", CASES)
def test_forward_and_backward_match_hf(case, dtype):
    B, Q, H, D, shapes, P = case
    inputs = _inputs(*case, dtype)
    grad = torch.randn(B, Q, H * D, dtype=dtype, generator=torch.Generator().manual_seed(5))
    want = _run(lambda v, l, w: _hf(v, shapes, l, w), inputs, grad)
    ss = torch.tensor(shapes)
    for sampler in ("packed", "grid_sample", "auto"):
        got = _run(lambda v, l, w: multi_scale_deformable_attend(v, ss, l, w, level_start_index_of(ss), sampler=sampler),
                   inputs, grad)
        assert got[0].shape == (B, Q, H * D) and got[0].dtype == dtype
        for name, a, b in zip(("output", "d value", "d locations", "d weights"), got, want):
            assert b.abs().max() > 0, name  # the comparison is not between zeros
            torch.testing.assert_close(a, b, **TOL[dtype], msg=lambda m: f"{sampler} {name}: {m}")
    got = grid_sample_deformable_attend(*(t.detach() for t in inputs[:1]), ss, *(t.detach() for t in inputs[1:]))
    torch.testing.assert_close(got, want[0], **TOL[dtype])


def test_far_outside_samples_are_zero_padding_with_zero_gradients():
    inputs = _inputs(2, 4, 2, 3, [(4, 5), (2, 2)], 2, torch.float64)
    with torch.no_grad():
        inputs[1][0] = 1e6  # batch 0: every sample far right / below
        inputs[1][1, :, :, :, :, 0] = -3.0  # batch 1: every sample left of the map
    grad = torch.ones(2, 4, 6, dtype=torch.float64)
    want = _run(lambda v, l, w: _hf(v, [(4, 5), (2, 2)], l, w), inputs, grad)
    for sampler in ("packed", "grid_sample"):
        got = _run(lambda v, l, w: multi_scale_deformable_attend(v, [(4, 5), (2, 2)], l, w, sampler=sampler),
                   inputs, grad)
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert got[0].abs().max() == 0 and got[1].abs().max() == 0 and got[2].abs().max() == 0


def test_samples_on_pixel_centres_read_the_pixel():
    """Location ((i + 0.5) / w, (j + 0.5) / h) is pixel (j, i) of its level exactly (align_corners=False)."""
    shapes = [(3, 4), (2, 2)]
    value = torch.randn(1, 16, 1, 2, dtype=torch.float64)
    loc = torch.zeros(1, 1, 1, 2, 1, 2, dtype=torch.float64)
    loc[..., 1, 0, :] = torch.tensor([(1 + 0.5) / 2, (0 + 0.5) / 2])  # level 1, pixel (row 0, col 1)
    loc[..., 0, 0, :] = -1.0  # level 0 left out
    weights = torch.ones(1, 1, 1, 2, 1, dtype=torch.float64)
    for sampler in ("packed", "grid_sample"):
        out = multi_scale_deformable_attend(value, shapes, loc, weights, sampler=sampler)
        torch.testing.assert_close(out[0, 0], value[0, 12 + 0 * 2 + 1, 0], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("sampler", ["packed", "grid_sample"])
def test_empty_query_set(sampler):
    value, loc, weights = _inputs(2, 0, 3, 4, [(2, 3)], 2, torch.float32)
    out = multi_scale_deformable_attend(value, torch.tensor([[2, 3]]), loc, weights, sampler=sampler)
    assert out.shape == (2, 0, 12)
    out.sum().backward()
    assert value.grad.abs().max() == 0


@pytest.fixture
def fresh_probe(monkeypatch, tmp_path):
    """The training-sampler probe as a fresh process finds it, with an empty disk cache of its own."""
    from relformer.attention import deformable
    from relformer.utils.cpu import MeasuredRatios

    monkeypatch.setenv("RELFORMER_CACHE", str(tmp_path))
    monkeypatch.setattr(deformable, "_MEASURED", MeasuredRatios("deformable", schema=1))
    monkeypatch.setattr(deformable, "_by_shape", {})
    return deformable


def _fake_measure(monkeypatch, deformable, ratio):
    """``deformable._measure`` returning ``ratio`` (grid_sample time / packed time); the list records
    the query count of each shape measured."""
    seen = []
    monkeypatch.setattr(deformable, "_measure", lambda value_shape, q, *rest: seen.append(q) or ratio)
    return seen


@pytest.mark.parametrize("ratio, small, large", [
    (1.0, "grid_sample", "packed"),                       # a tie: the rule's guess on both sides of it
    (1.10 * 1.01, "packed", "packed"),                    # packed faster by more than the margin
    (1.10 * 0.99, "grid_sample", "packed"),               # a little faster: not enough to move the rule
    (1 / (1.10 * 1.01), "grid_sample", "grid_sample"),    # grid_sample faster by more than the margin
])
def test_auto_sampler_packs_in_inference_and_measures_in_training(fresh_probe, monkeypatch, ratio, small, large):
    N = fresh_probe.PACKED_TRAINING_TOKENS
    _fake_measure(monkeypatch, fresh_probe, ratio)
    few = _inputs(1, 3, 2, 4, [(3, 3)], 2, torch.float32)
    many = [torch.zeros(1, N + 1, 1, 1, requires_grad=True), *few[1:]]  # only the value's shape is read
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert auto_sampler(*few, [(3, 3)]) == small and auto_sampler(*many) == large
        with torch.no_grad():
            assert auto_sampler(*few) == "packed" and auto_sampler(*many) == "packed"
        assert auto_sampler(*(t.detach() for t in few)) == "packed"
        torch.set_num_threads(2)  # N + 1 rows are below N per thread on two: the rule guesses grid_sample
        assert auto_sampler(*many) == ("packed" if ratio > 1.10 else "grid_sample")
    finally:
        torch.set_num_threads(threads)


def test_the_probe_runs_once_per_shape_and_a_new_process_reads_it_from_disk(fresh_probe, monkeypatch):
    seen = _fake_measure(monkeypatch, fresh_probe, 2.0)
    inputs = _inputs(2, 5, 2, 4, [(4, 4), (2, 2)], 2, torch.float32)
    assert auto_sampler(*inputs, [(4, 4), (2, 2)]) == "packed"
    assert auto_sampler(*inputs, [(4, 4), (2, 2)]) == "packed" and seen == [8]  # Q = 5 probed as 8 queries
    more = _inputs(2, 7, 2, 4, [(4, 4), (2, 2)], 2, torch.float32)  # 7 queries: the same bucket of 8
    assert fresh_probe.training_sampler(more[0].shape, 7, 2, [(4, 4), (2, 2)])[1].startswith("packed: 2.00x")
    assert seen == [8]
    fresh_probe._MEASURED.forget()  # a new process: the disk answers, nothing is measured
    fresh_probe._by_shape.clear()
    monkeypatch.setattr(fresh_probe, "_measure", lambda *a: pytest.fail("measured again"))
    sampler, reason = fresh_probe.training_sampler(inputs[0].shape, 5, 2, [(4, 4), (2, 2)])
    assert sampler == "packed" and "(disk," in reason


def test_the_probe_times_both_samplers_without_touching_the_callers_random_stream(fresh_probe):
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    ratio = fresh_probe._measure((2, 20, 2, 4), 8, 2, ((4, 4), (2, 2)), torch.float32, (True, True, True))
    assert math.isfinite(ratio) and ratio > 0
    ratio = fresh_probe._measure((1, 16, 1, 2), 4, 1, ((4, 4),), torch.float64, (False, True, False))
    assert math.isfinite(ratio) and ratio > 0
    assert torch.equal(torch.rand(3), expected)


def _bad(**change):
    value, loc, weights = (t.detach() for t in _inputs(2, 3, 2, 4, [(3, 3), (2, 1)], 2, torch.float32))
    args = dict(value=value, spatial_shapes=torch.tensor([[3, 3], [2, 1]]), sampling_locations=loc,
                attention_weights=weights, level_start_index=None)
    args.update({k: (v(args) if callable(v) else v) for k, v in change.items()})
    return args


@pytest.mark.parametrize("change, names", [
    (dict(spatial_shapes=torch.tensor([[3, 3], [2, 2]])), "spatial_shapes"),  # covers 13 positions, S = 11
    (dict(spatial_shapes=torch.tensor([[3.0, 3.0], [2.0, 1.0]])), "spatial_shapes"),
    (dict(spatial_shapes=torch.tensor([[3, 3], [2, 1], [0, 0]])), "sampling_locations"),  # L differs
    (dict(spatial_shapes=torch.tensor([[11, 1], [0, 1]])), "spatial_shapes"),
    (dict(value=lambda a: a["value"][..., None]), "value"),
    (dict(value=lambda a: a["value"][:1]), "sampling_locations"),
    (dict(attention_weights=lambda a: a["attention_weights"][..., :1]), "attention_weights"),
    (dict(attention_weights=lambda a: a["attention_weights"].double()), "dtype"),
    (dict(sampling_locations=lambda a: a["sampling_locations"].index_fill(1, torch.tensor([1]), float("nan"))),
     "sampling_locations"),
    (dict(sampling_locations=lambda a: a["sampling_locations"].index_fill(1, torch.tensor([0]), float("inf"))),
     "sampling_locations"),
    (dict(level_start_index=torch.tensor([0, 8])), "level_start_index"),
    (dict(value=lambda a: a["value"].long()), "value"),
    (dict(sampler="fast"), "sampler"),
])
def test_bad_input_names_the_argument(change, names):
    with pytest.raises(ValueError, match=names):
        multi_scale_deformable_attend(**_bad(**change))


def test_non_contiguous_inputs():
    """Inputs that are views with other strides (e.g. a permuted projection) give the same result."""
    value, loc, weights = (t.detach() for t in _inputs(2, 5, 3, 4, [(4, 3), (2, 2)], 2, torch.float64))
    ss = torch.tensor([[4, 3], [2, 2]])
    want = multi_scale_deformable_attend(value, ss, loc, weights, sampler="packed")
    strided = (value.transpose(0, 1).contiguous().transpose(0, 1), loc.transpose(1, 2).contiguous().transpose(1, 2),
               weights.permute(4, 3, 2, 1, 0).contiguous().permute(4, 3, 2, 1, 0))
    assert not any(t.is_contiguous() for t in strided)
    for sampler in ("packed", "grid_sample"):
        torch.testing.assert_close(multi_scale_deformable_attend(*strided[:1], ss, *strided[1:], sampler=sampler), want,
                                   rtol=1e-12, atol=1e-12)


def test_bfloat16_values_on_large_maps_sample_the_right_pixels():
    """A bfloat16 value tensor on RT-DETR's 640 x 640 levels (8,400 rows: far beyond the integers bfloat16
    holds exactly): the packed sampler computes its row indices in float32 and equals the float32
    result of the same inputs rounded once to bfloat16 (up to the bfloat16 rounding of the sum)."""
    shapes = [(80, 80), (40, 40), (20, 20)]
    value, loc, weights = (t.detach() for t in _inputs(1, 64, 2, 4, shapes, 4, torch.float32, spread=1.0))
    ss = torch.tensor(shapes)
    low = [t.bfloat16() for t in (value, loc, weights)]
    got = multi_scale_deformable_attend(low[0], ss, low[1], low[2], sampler="packed")
    want = multi_scale_deformable_attend(*(t.float() for t in low[:1]), ss, *(t.float() for t in low[1:]),
                                         sampler="packed")
    assert got.dtype == torch.bfloat16
    torch.testing.assert_close(got.float(), want, rtol=2e-2, atol=2e-2)
