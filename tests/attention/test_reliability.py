"""Issue 19 items 2-6 as reproductions: relation caches never go stale, non-finite values follow one
rule on every backend, float64 end to end, degenerate sizes refused by name."""
import pytest
import torch

import relformer
from relformer import relations as R
from relformer.relations.graph import dense_shortest_paths
from tests.attention.reference import BACKENDS, reference, run
from tests.equivalence import make_qkv

NO_FLEX = ("eager", "sdpa", "chunked", "auto")


def _qkv(B=1, H=2, L=12, D=8, **kw):
    return make_qkv(B, H, L, L, D, requires_grad=False, **kw)


# ---- item 2: caches keyed on the relation's state -------------------------------------------------
def _window():
    rel = R.SlidingWindow(2)
    return rel, lambda: setattr(rel, "window", 10), lambda: R.SlidingWindow(10)


def _segments():
    seg = torch.tensor([[0] * 6 + [1] * 6])
    return R.Documents(seg), lambda: seg.fill_(0), lambda: R.Documents(seg.clone())


def _adjacency():
    adj = torch.zeros(1, 12, 12, dtype=torch.bool)
    adj[0, :, 0] = True
    return R.GraphAdjacency(adj), lambda: adj.fill_(True), lambda: R.GraphAdjacency(adj.clone())


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("make", [_window, _segments, _adjacency], ids=["window=10", "segment_ids[:]=0", "adjacency[:]=1"])
def test_an_edited_relation_equals_a_fresh_one(backend, make):
    """``rel.window = 10``, ``segment_ids[:] = 0`` or ``adjacency[:] = True`` after a call: the next
    call must equal one with a freshly built relation (the cached mask / block mask is rebuilt)."""
    q, k, v = _qkv()
    rel, edit, fresh = make()
    first = run(q, k, v, rel, backend)
    edit()
    got = run(q, k, v, rel, backend)
    torch.testing.assert_close(got, run(q, k, v, fresh(), backend), rtol=0, atol=0)
    assert (got - first).abs().max() > 0.1


@pytest.mark.parametrize("backend", NO_FLEX)
def test_reassigned_tensor_attribute_rebuilds_the_cached_mask(backend):
    """A new tensor in place of the old (the old one freed: its id may be reused) is seen."""
    q, k, v = _qkv()
    rel = R.Documents(torch.tensor([[0] * 6 + [1] * 6]))
    run(q, k, v, rel, backend)
    rel.segment_ids = rel.kv_segment_ids = torch.zeros(1, 12, dtype=torch.long)
    torch.testing.assert_close(run(q, k, v, rel, backend), run(q, k, v, None, "eager"), rtol=0, atol=1e-6)


def test_cache_key_follows_every_attribute_and_tensor_version():
    rel = R.Causal(0) & R.Documents(torch.zeros(1, 4, dtype=torch.long))
    before = rel.state_key()
    assert rel.state_key() == before
    rel.parts[0].offset = 1
    assert rel.state_key() != before
    after = rel.state_key()
    rel.parts[1].segment_ids[0, 0] = 3
    assert rel.state_key() != after


def test_relation_on_inference_tensors_is_not_memoised_but_right():
    q, k, v = _qkv()
    with torch.inference_mode():
        seg = torch.tensor([[0] * 6 + [1] * 6])
        rel = R.Documents(seg)
        first = relformer.attend(q, k, v, rel, backend="sdpa")
        seg[:] = 0
        got = relformer.attend(q, k, v, rel, backend="sdpa")
    assert not rel._cache
    torch.testing.assert_close(got, run(q, k, v, None, "sdpa"), rtol=0, atol=1e-6)
    assert (got - first).abs().max() > 0.1


# ---- item 3: a blocked pair never reaches the softmax ----------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [float("inf"), float("nan")])
def test_non_finite_masked_key_does_not_poison_rows_that_never_see_it(backend, value):
    q, k, v = _qkv(L=16)
    k[:, :, -1] = value
    rel = R.SlidingWindow(5)
    out = run(q, k, v, rel, backend)
    blind = slice(0, 16 - 6)  # rows i with |i - 15| > 5
    clean = k.clone()
    clean[:, :, -1] = 0.0
    assert torch.isfinite(out[:, :, blind]).all()
    torch.testing.assert_close(out[:, :, blind], reference(q, clean, v, rel)[:, :, blind].float(), rtol=0, atol=1e-5)
    assert torch.isnan(out[:, :, -1]).all()  # q . (inf, ..., inf) mixes signs: the row that sees it is NaN


def test_tiled_eager_inference_keeps_a_masked_inf_key_out_of_blind_rows(monkeypatch):
    """The batch-tiled no-grad eager path (:func:`backends._tiled_eager`) follows the same rule."""
    from relformer.attention import backends as B_
    monkeypatch.setattr(B_, "EAGER_TILE_BYTES", 64)
    q, k, v = _qkv(B=3, L=16)
    k[1, :, -1] = float("inf")
    out = run(q, k, v, R.SlidingWindow(5), "eager")
    clean = k.clone()
    clean[1, :, -1] = 0.0
    torch.testing.assert_close(out[:, :, :10], reference(q, clean, v, R.SlidingWindow(5))[:, :, :10].float(),
                               rtol=0, atol=1e-5)
    assert torch.isnan(out[1, :, -1]).all() and torch.isfinite(out[[0, 2]]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_finite_bias_on_blocked_pairs_does_not_reach_any_row(backend):
    q, k, v = _qkv(L=16)
    bias = R.RelativeBias(2, 15)
    with torch.no_grad():
        bias.table.normal_()
        far = (torch.arange(31) - 15).abs() > 5
        bias.table[:, far] = float("nan")
    rel = R.SlidingWindow(5) & bias
    out = run(q, k, v, rel, backend)
    assert torch.isfinite(out).all()
    with torch.no_grad():
        bias.table[:, far] = 0.0
    torch.testing.assert_close(out, reference(q, k, v, rel).float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", NO_FLEX)
def test_non_finite_bias_on_blocked_pairs_keeps_every_gradient_finite(backend):
    q, k, v = make_qkv(1, 2, 16, 16, 8)
    bias = R.RelativeBias(2, 15)
    with torch.no_grad():
        bias.table[:, (torch.arange(31) - 15).abs() > 5] = float("inf")
    out = relformer.attend(q, k, v, R.SlidingWindow(5) & bias, backend=backend)
    out.sum().backward()
    for t in (q, k, v, bias.table):
        assert torch.isfinite(t.grad).all()


# ---- item 4: NaN propagates on every backend -------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_query_row_is_nan_and_only_that_row(backend):
    q, k, v = _qkv()
    q[:, :, 3] = float("nan")
    for rel in (None, R.SlidingWindow(3), R.ALiBi(2)):
        out = run(q, k, v, rel, backend)
        assert torch.isnan(out[:, :, 3]).all(), (backend, rel)
        rest = [i for i in range(12) if i != 3]
        torch.testing.assert_close(out[:, :, rest], reference(q, k, v, rel)[:, :, rest].float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_alibi_slope_makes_its_head_nan(backend):
    q, k, v = _qkv()
    rel = R.ALiBi(2)
    rel.slopes[0] = float("nan")
    out = run(q, k, v, rel, backend)
    assert torch.isnan(out[:, 0]).all()
    torch.testing.assert_close(out[:, 1], reference(q, k, v, rel)[:, 1].float(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_box_makes_the_rows_that_see_it_nan(backend):
    q, k, v = _qkv()
    boxes = torch.rand(1, 12, 4) * 0.5 + 0.25
    boxes[0, 2] = float("nan")
    rel = R.SlidingWindow(2) & R.BoxRelationBias(2).bind(boxes=boxes)
    out = run(q, k, v, rel, backend)
    sees = (torch.arange(12) - 2).abs() <= 2
    assert torch.isnan(out[:, :, sees]).all()
    torch.testing.assert_close(out[:, :, ~sees], reference(q, k, v, rel)[:, :, ~sees].float(), rtol=0, atol=1e-5)


# ---- item 5: float64 end to end ---------------------------------------------------------------------
def _f64_relations(dtype=torch.float64, H=2, L=12):
    grid = R.GridRelativeBias(H, (3, 4))
    boxes = torch.rand(1, L, 4, dtype=dtype) * 0.5 + 0.25
    ei = torch.tensor([[0, 1, 2, 3], [1, 2, 3, 4]])
    row, pos = torch.zeros(L, dtype=torch.long), torch.arange(L)
    spd = dense_shortest_paths(ei, row, pos, 1, L)
    return {
        "relative": R.RelativeBias(H, 8), "alibi": R.ALiBi(H), "grid": grid,
        "box": R.BoxRelationBias(H).to(dtype).bind(boxes=boxes),
        "spd": R.ShortestPathBias(H, 3).bind(spd=spd),
        "edges": R.EdgeBias(H).bind_values(torch.full((1, L, L), -1).index_fill_(2, torch.tensor([0]), 0),
                                           torch.randn(1, H, dtype=torch.float64)),
        "masked": R.Causal() & R.T5Bias(H, 8, 16),
    }


@pytest.mark.parametrize("backend", NO_FLEX)
@pytest.mark.parametrize("name", list(_f64_relations()))
@pytest.mark.parametrize("relation_dtype", [torch.float32, torch.float64])
def test_float64_with_any_bias_is_computed_in_float64(backend, name, relation_dtype):
    rel = _f64_relations(relation_dtype)[name].to(relation_dtype)
    for p in rel.parameters():
        with torch.no_grad():
            p.normal_()
    q, k, v = make_qkv(1, 2, 12, 12, 8, dtype=torch.float64, requires_grad=False)
    out = relformer.attend(q, k, v, rel, backend=backend)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference(q, k, v, rel), rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["eager", "chunked"])
@pytest.mark.parametrize("masked", [False, True])
def test_gradcheck_learned_bias_in_float64(backend, masked):
    bias = R.RelativeBias(2, 3).double()
    with torch.no_grad():
        bias.table.normal_()
    rel = (R.SlidingWindow(2) & bias) if masked else bias
    q, k, v = make_qkv(1, 2, 5, 5, 3, dtype=torch.float64)
    table = bias.table.detach().clone().requires_grad_(True)

    def f(q, k, v, table):  # the relation reading ``table`` in place of its own
        return relformer.attend(q, k, v, rel.map_tensors(lambda t: table if t is bias.table else t), backend=backend)

    assert torch.autograd.gradcheck(f, (q, k, v, table))


def test_flex_refuses_float64_before_compiling():
    q, k, v = _qkv(dtype=torch.float64)
    with pytest.raises(ValueError, match="float64"):
        run(q, k, v, R.RelativeBias(2, 4), "flex")


# ---- item 6: degenerate sizes and bad arguments ------------------------------------------------------
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shapes,match", [
    (((1, 0, 4, 8), (1, 0, 4, 8), (1, 0, 4, 8)), "heads H"),
    (((1, 2, 4, 8), (1, 0, 4, 8), (1, 0, 4, 8)), "heads Hkv"),
    (((1, 2, 4, 0), (1, 2, 4, 0), (1, 2, 4, 8)), "head dim D"),
    (((1, 2, 4, 8), (1, 2, 4, 8), (1, 2, 4, 0)), "head dim Dv"),
])
def test_zero_sizes_raise_value_error_naming_the_size(backend, shapes, match):
    q, k, v = (torch.zeros(s) for s in shapes)
    with pytest.raises(ValueError, match=match):
        run(q, k, v, None, backend)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("rel", [None, R.SlidingWindow(1), R.RelativeBias(2, 3), R.URPE(2, 2)])
def test_empty_batch_gives_an_empty_output(backend, rel):
    q, k, v = make_qkv(0, 2, 5, 5, 3, requires_grad=backend != "flex")
    if backend in ("sdpa", "flex") and rel is not None and rel.has_prob:
        with pytest.raises(ValueError, match="multiplier"):  # refused whatever the batch size
            run(q, k, v, rel, backend)
        return
    out = run(q, k, v, rel, backend)
    assert out.shape == (0, 2, 5, 3)
    if backend != "flex":
        out.sum().backward()
        assert q.grad.shape == q.shape


@pytest.mark.parametrize("scale", [float("inf"), float("nan"), 0.0, -1.0, True, "1"])
def test_bad_scale_is_refused(scale):
    q, k, v = _qkv()
    with pytest.raises(ValueError, match="scale"):
        relformer.attend(q, k, v, scale=scale)


@pytest.mark.parametrize("make,match", [
    (lambda: R.RelativeBias(4, -1), "max_distance"), (lambda: R.RelativeBias(0, 4), "num_heads"),
    (lambda: R.RelativeBias(4, 2.5), "max_distance"), (lambda: R.URPE(2, -3), "max_distance"),
    (lambda: R.T5Bias(2, num_buckets=1), "num_buckets"), (lambda: R.T5Bias(2, 32, max_distance=4), "max_distance"),
    (lambda: R.ALiBi(0), "num_heads"), (lambda: R.SlidingWindow(-1), "window"), (lambda: R.Causal(1.5), "offset"),
    (lambda: R.GridRelativeBias(0, 3), "num_heads"), (lambda: R.ManhattanDecay(2, 3, initial_value=0.0), "initial_value"),
    (lambda: R.ManhattanDecay(2, 3, heads_range=float("nan")), "heads_range"),
    (lambda: R.ShortestPathBias(2, -1), "max_distance"), (lambda: R.EdgeBias(0), "num_heads"),
    (lambda: R.EdgeFeatureBias(0, 2), "edge_dim"), (lambda: R.EdgePathBias(2, 0), "max_hops"),
    (lambda: R.BoxRelationBias(0), "num_heads"), (lambda: R.BoxRelationBias(2, temperature=-1.0), "temperature"),
])
def test_relation_constructor_arguments_are_validated(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("backend", BACKENDS)
def test_relation_on_another_device_is_refused(backend):
    q, k, v = _qkv()
    rel = R.RelativeBias(2, 4).to("meta")
    with pytest.raises(ValueError, match="table is on meta"):
        run(q, k, v, rel, backend)
    seg = torch.zeros(1, 12, dtype=torch.long, device="meta")
    with pytest.raises(ValueError, match="segment_ids is on meta"):
        run(q, k, v, R.Documents(seg), backend)

