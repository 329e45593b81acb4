"""Semantics of attend() written once and checked on every backend."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import relformer
from relformer.attention import backends as B_
from relformer.attention import probe
from relformer.relations import URPE, ALiBi, Causal, Documents, RelativeBias, SlidingWindow, T5Bias
from relformer import relations as R
from tests.equivalence import assert_backends_agree, make_qkv

ALL = ("eager", "sdpa", "flex", "chunked")


@pytest.fixture(autouse=True)
def _rule_decides(monkeypatch):
    """These tests pin the fixed policy: the small-score probe (tests/attention/test_probe.py) is
    stubbed to measure eager and SDPA level, so the rule's answer stands on every CPU."""
    monkeypatch.setattr(probe, "ratio_for", lambda *call: 1.0)
    monkeypatch.setattr(probe, "_policy", "auto")


def _dead_rows_relation(H, Lq, Lk, with_bias):
    seg_q = torch.tensor([[0] * (Lq - 3) + [-1, 5, -1]])  # rows Lq-3.. have no partner
    seg_k = torch.zeros(1, Lk, dtype=torch.long)
    rel = Documents(seg_q, seg_k)
    if with_bias:
        rb = RelativeBias(H, 4)
        with torch.no_grad():
            rb.table.normal_()
        rel = rel & rb
    return rel


@pytest.mark.parametrize("backend", ALL)
@pytest.mark.parametrize("with_bias", [False, True])
def test_fully_masked_rows_are_zero_with_zero_grads(backend, with_bias):
    H, Lq, Lk = 2, 10, 7
    rel = _dead_rows_relation(H, Lq, Lk, with_bias)
    q, k, v = make_qkv(1, H, Lq, Lk, 8, requires_grad=backend != "flex")
    ctx = torch.no_grad() if backend == "flex" else torch.enable_grad()
    with ctx:
        out = relformer.attend(q, k, v, rel, backend=backend)
    assert torch.isfinite(out).all()
    assert (out[:, :, -3:] == 0).all()
    assert out[:, :, :-3].abs().sum() > 0
    if backend != "flex":
        out.sum().backward()
        for t in (q, k, v, *rel.parameters()):
            assert torch.isfinite(t.grad).all()
        assert (q.grad[:, :, -3:] == 0).all()


@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("mode", ["no_grad", "inference_mode"])
def test_eager_without_autograd_equals_eager_with_it(with_bias, mode):
    """Without a graph, eager scales, biases and masks its score tensor in place: the
    same output as the recorded path (dead rows zero), and q, k, v and the relation untouched."""
    H, Lq, Lk = 2, 10, 7
    rel = _dead_rows_relation(H, Lq, Lk, with_bias)
    q, k, v = make_qkv(1, H, Lq, Lk, 8)
    recorded = relformer.attend(q, k, v, rel, backend="eager")
    before = [t.detach().clone() for t in (q, k, v, *rel.parameters())]
    with getattr(torch, mode)():
        got = relformer.attend(q, k, v, rel, backend="eager")
        probs = B_.attention_probs(q, k, rel, 8 ** -0.5)
    torch.testing.assert_close(got, recorded.detach(), rtol=0, atol=1e-6)
    assert (probs[:, :, -3:] == 0).all() and torch.allclose(probs[:, :, :-3].sum(-1), torch.ones(()))
    for t, b in zip((q, k, v, *rel.parameters()), before):
        assert torch.equal(t.detach(), b)


def _head_views(qkv, H, D):
    """q, k, v ``(B, H, L, D)``: the strided head views of a fused projection ``(B, L, 3 H D)``."""
    B, L, _ = qkv.shape
    return qkv.view(B, L, 3, H, D).permute(2, 0, 3, 1, 4).unbind(0)


def _fused_heads(B, H, L, D, seed=0, dtype=torch.float32):
    """A fused projection ``(B, L, 3 H D)`` (a leaf) and its :func:`_head_views`."""
    qkv = torch.randn(B, L, 3 * H * D, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    qkv.requires_grad_(True)
    return qkv, _head_views(qkv, H, D)


def test_eager_matches_the_textbook_formula_forward_and_backward():
    """Eager's score product (the scale on k's head copy, its own backward) and its additive mask
    (no masked_fill, an identity backward) give what ``softmax(masked_fill(q k^T * scale + bias))
    v`` gives through autograd: output, the fused projection's gradient and the bias table's, with
    strided head views, a learned bias, a per-row mask and rows with no key at all."""
    B, H, L, D = 3, 2, 11, 8
    seg = torch.randint(0, 3, (B, L), generator=torch.Generator().manual_seed(1))
    seg[:, -2:] = -1  # dead rows
    rb = RelativeBias(H, 4)
    with torch.no_grad():
        rb.table.normal_()
    rel = Documents(seg) & rb
    cot = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(2))

    qkv, (q, k, v) = _fused_heads(B, H, L, D)
    out = relformer.attend(q, k, v, rel, backend="eager")
    (out * cot).sum().backward()
    got = out.detach(), qkv.grad.clone(), rb.table.grad.clone()

    rb.table.grad = None
    qkv, (q, k, v) = _fused_heads(B, H, L, D)
    bias, mask = rel.dense_parts(B, H, L, L)
    scores = (q @ k.transpose(-1, -2) * D ** -0.5 + bias).masked_fill(~mask, float("-inf"))
    dead = ~mask.any(-1, keepdim=True)
    probs = torch.softmax(scores.masked_fill(dead, 0.0), -1).masked_fill(dead, 0.0)
    ref = probs @ v
    (ref * cot).sum().backward()
    for g, r in zip(got, (ref.detach(), qkv.grad, rb.table.grad)):
        torch.testing.assert_close(g, r, rtol=1e-5, atol=1e-6)
    assert (got[0][:, :, -2:] == 0).all()


def test_eager_score_product_is_twice_differentiable():
    """``q k^T`` with its own backward (k's gradient laid out like k): gradcheck and gradgradcheck
    in float64, from strided head views of a fused projection."""
    B, H, L, D = 2, 3, 5, 4
    qkv, _ = _fused_heads(B, H, L, D, dtype=torch.float64)

    def fn(x):
        q, k, _ = _head_views(x, H, D)
        return B_._ScoreProduct.apply(q.reshape(B * H, L, D), k.reshape(B * H, L, D), (B, H, L, L))

    assert torch.autograd.gradcheck(fn, (qkv,)) and torch.autograd.gradgradcheck(fn, (qkv,))


@pytest.mark.parametrize("Hkv", [4, 2])
def test_eager_inference_in_batch_tiles_equals_the_whole_batch(monkeypatch, Hkv):
    """Without autograd, eager runs a few batch rows at a time (score tiles of at most
    EAGER_TILE_BYTES): the same output as the whole-batch computation, with per-row masks
    (segments with dead rows), a shared bias and grouped-query heads, the last tile short."""
    B, H, L = 5, 4, 12
    seg = torch.randint(0, 3, (B, L), generator=torch.Generator().manual_seed(0))
    seg[:, -2:] = -1  # padding rows: no key to attend
    rb = RelativeBias(H, 4)
    with torch.no_grad():
        rb.table.normal_()
    rel = Documents(seg) & rb
    q, k, v = make_qkv(B, H, L, L, 8, Hkv=Hkv, requires_grad=False)
    with torch.no_grad():
        whole = relformer.attend(q, k, v, rel, backend="eager")  # 5*4*12*12*4 bytes: one tile
        monkeypatch.setattr(B_, "EAGER_TILE_BYTES", 2 * H * L * L * 4)  # two rows per tile: 2 + 2 + 1
        tiled = relformer.attend(q, k, v, rel, backend="eager")
    torch.testing.assert_close(tiled, whole, rtol=0, atol=1e-6)
    assert (tiled[:, :, -2:] == 0).all()
    recorded = relformer.attend(q.clone().requires_grad_(True), k, v, rel, backend="eager")
    torch.testing.assert_close(tiled, recorded.detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("backend", ALL)
def test_low_precision_does_not_overflow(dtype, backend):
    """Large scores, -inf masks and a large bias stay finite in bf16/fp16 and match fp32."""
    H, L = 2, 64
    q, k, v = make_qkv(1, H, L, L, 16, requires_grad=False)
    q, k = q * 30, k * 30  # scores ~ 1e3 before scaling: beyond fp16's safe exp range
    rel = Causal() & ALiBi(H) & SlidingWindow(40)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    ref = relformer.attend(q.float(), k.float(), v.float(), rel, backend="eager")  # same rounded inputs
    with torch.no_grad():
        out = relformer.attend(q, k, v, rel, backend=backend)
    assert out.dtype == dtype and torch.isfinite(out).all()
    tol = 0.05 if dtype == torch.bfloat16 else 0.01
    torch.testing.assert_close(out.float(), ref, atol=tol, rtol=0)


def test_sdpa_bias_cast_keeps_large_values_finite():
    bias = torch.tensor([1e6, -1e6, float("-inf"), 3.0])
    got = B_._finite_in(bias, torch.float16)
    assert torch.isfinite(got[:2]).all() and torch.isneginf(got[2]) and got[3] == 3.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(q=torch.zeros(2, 4, 8)), "q must be 4-D"),
        (dict(k=torch.zeros(1, 4, 5, 7)), "head dim"),
        (dict(k=torch.zeros(1, 3, 5, 8), v=torch.zeros(1, 3, 5, 8)), "heads"),
        (dict(v=torch.zeros(1, 4, 6, 8)), "same length"),
        (dict(k=torch.zeros(2, 4, 5, 8), v=torch.zeros(2, 4, 5, 8)), "batch"),
        (dict(q=torch.zeros(1, 4, 3, 8, dtype=torch.long)), "floating-point"),
        (dict(v=torch.zeros(1, 4, 5, 8, dtype=torch.float64)), "dtype"),
        (dict(q=torch.zeros(1, 4, 0, 8)), "zero-length"),
        (dict(backend="magic"), "backend"),
        (dict(scale=-1.0), "scale"),
        (dict(dropout_p=1.5), "dropout_p"),
        (dict(relation="causal"), "relation"),
        (dict(relation=RelativeBias(3, 4)), "heads"),
        (dict(relation=Documents(torch.zeros(1, 9, dtype=torch.long))), "segment_ids"),
    ],
)
def test_bad_input_raises_value_error_naming_argument(kwargs, match):
    args = dict(q=torch.zeros(1, 4, 3, 8), k=torch.zeros(1, 4, 5, 8), v=torch.zeros(1, 4, 5, 8))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        relformer.attend(**args)


def test_segment_ids_must_be_integer():
    with pytest.raises(ValueError, match="segment_ids"):
        Documents(torch.zeros(1, 4))


def test_flex_refuses_cpu_backward_before_calling():
    """A failed compiled Flex call degrades later calls, so the refusal must come first."""
    q, k, v = make_qkv(1, 2, 8, 8, 8)
    with pytest.raises(ValueError, match="no backward on CPU"):
        relformer.attend(q, k, v, Causal(), backend="flex")


@pytest.mark.parametrize("backend", ["flex", "chunked"])
def test_dropout_unsupported_is_clear(backend):
    q, k, v = make_qkv(1, 2, 8, 8, 8, requires_grad=False)
    with torch.no_grad(), pytest.raises(ValueError, match="dropout"):
        relformer.attend(q, k, v, None, backend=backend, dropout_p=0.1)


def test_dropout_eager_and_sdpa_train():
    q, k, v = make_qkv(1, 2, 16, 16, 8)
    for backend in ("eager", "sdpa", "auto"):
        out = relformer.attend(q, k, v, Causal(), backend=backend, dropout_p=0.5)
        out.sum().backward()
        assert torch.isfinite(out).all()


def test_dropout_matches_f_dropout_in_distribution():
    """The rand_like dropout of the eager path: a fraction p of zeros, the rest scaled by 1/(1-p),
    gradient = the same mask and scale, and the auto policy sends CPU training with dropout to it."""
    from relformer.attention.backends import dropout

    torch.manual_seed(0)
    x = torch.full((64, 4, 64, 64), 2.0, requires_grad=True)
    y = dropout(x, 0.3)
    zeros = (y == 0).float().mean().item()
    assert abs(zeros - 0.3) < 0.005, zeros  # 1M draws: std 0.0005
    assert torch.allclose(y[y != 0], torch.tensor(2.0 / 0.7))
    y.sum().backward()
    torch.testing.assert_close(x.grad, (y / 2.0).detach())
    q, k, v = make_qkv(2, 4, 128, 128, 8)  # above the small-score rule: dropout alone decides
    assert relformer.explain(q, k, v, Causal(), dropout_p=0.1).backend == "eager"
    assert relformer.explain(q, k, v, Causal(), dropout_p=0.0).backend != "eager"


def test_auto_sends_many_small_cpu_score_matrices_to_eager():
    """On CPU, many (B * H >= 64) score matrices of at most 64 x 64 (ViT-micro's 50 x 50, Swin's
    49 x 49 windows) go to eager, whose matmul + softmax beat SDPA's flash kernels there, in
    training and in inference; larger or fewer score matrices keep SDPA."""
    q, k, v = make_qkv(64, 4, 50, 50, 16)
    assert relformer.explain(q, k, v, None).backend == "eager"
    windows = make_qkv(64, 4, 49, 49, 16)
    assert relformer.explain(*windows, R.GridRelativeBias(4, 7)).backend == "eager"  # a learnable bias too
    with torch.no_grad():
        assert relformer.explain(q, k, v, None).backend == "eager"
        assert relformer.explain(*windows, R.GridRelativeBias(4, 7)).backend == "eager"
    big = make_qkv(64, 4, 65, 65, 16)
    assert relformer.explain(*big, None).backend == "sdpa"
    many = [t.expand(4096, 4, 50, 16) for t in make_qkv(1, 4, 50, 50, 16)]  # 2^25 scores in all
    assert relformer.explain(*many, None).backend == "sdpa"
    few = make_qkv(4, 8, 64, 64, 32)  # DETR-base's encoder: 32 matrices, the fused kernel keeps them
    assert relformer.explain(*few, None).backend == "sdpa"


def test_auto_policy_and_explain():
    H, L = 4, 1024
    q, k, v = make_qkv(1, H, L, L, 16, requires_grad=False)
    rb = RelativeBias(H, 16)
    with torch.no_grad():
        assert relformer.explain(q, k, v, SlidingWindow(64)).backend == "flex"
        assert relformer.explain(q, k, v, rb).backend == "flex"  # a cheap gather: not materialised
        assert relformer.explain(q, k, v, T5Bias(H)).backend == "flex"
        assert relformer.explain(q, k, v, R.ManhattanDecay(H, (32, 32))).backend == "sdpa"  # arithmetic-heavy
        assert relformer.explain(q, k, v, None).backend == "sdpa"
        assert relformer.explain(q, k, v, Causal()).reason.startswith("causal mask: SDPA is_causal")
        assert relformer.explain(q, k, v, Causal() & ALiBi(H)).backend == "flex"  # 53% of tiles live
        assert relformer.explain(q[:, :, :64], k[:, :, :64], v[:, :, :64], SlidingWindow(8)).backend == "sdpa"
    qg = q.clone().requires_grad_(True)
    assert relformer.explain(qg, k, v, SlidingWindow(64)).backend == "sdpa"  # no Flex backward on CPU
    big = make_qkv(4, 8, 1024, 1024, 16)
    assert relformer.explain(*big, RelativeBias(8, 16)).backend == "chunked"
    assert relformer.explain(qg[:, :, :100], k[:, :, :100], v[:, :, :100], rb).backend == "sdpa"
    assert relformer.explain(qg[:, :, :32], k[:, :, :32], v[:, :, :32], rb).backend == "sdpa"  # 4 matrices only
    # Swin-T stage 1 in training (batch 64 x 64 windows of 7x7): 2^24.8 scores, one tile per window
    # -- tiling saves nothing. Its learnable bias would send SDPA to the math kernel, which
    # materialises more than eager: eager despite the many scores; a fixed bias keeps SDPA
    windows = [t.expand(64 * 64, 3, 49, 32) for t in make_qkv(1, 3, 49, 49, 32)]
    assert relformer.explain(*windows, R.GridRelativeBias(3, 7)).backend == "eager"
    assert relformer.explain(*windows, R.GridRelativeBias(3, 7).requires_grad_(False)).backend == "sdpa"
    assert "flex" in str(relformer.explain(q, k, v, SlidingWindow(64)))
    with torch.no_grad():  # URPE: chunked beats eager for large score matrices in inference too
        assert relformer.explain(*big, URPE(8, 16).requires_grad_(False)).backend == "chunked"
        assert relformer.explain(q[:, :, :32], k[:, :, :32], v[:, :, :32], URPE(H, 4)).backend == "eager"


def test_auto_sends_expensive_biases_to_chunked():
    """A per-pair MLP bias (Relation-DETR) is cheaper tile by tile than materialised (bench: 2.6x at Q=1024)."""
    rel = R.BoxRelationBias(8).bind(boxes=torch.rand(4, 256, 4) * 0.5 + 0.05)
    q, k, v = make_qkv(4, 8, 256, 256, 16, requires_grad=False)
    with torch.no_grad():
        assert relformer.explain(q, k, v, rel).backend == "chunked"
    small = make_qkv(1, 8, 100, 100, 16, requires_grad=False)  # one image, 100 queries: materialise
    rel_small = R.BoxRelationBias(8).bind(boxes=torch.rand(1, 100, 4) * 0.5 + 0.05)
    with torch.no_grad():
        assert relformer.explain(*small, rel_small).backend == "sdpa"


def test_auto_matches_eager_in_each_mode():
    H, L = 4, 600
    rel = SlidingWindow(32) & RelativeBias(H, 16)
    with torch.no_grad():
        rel.parts[1].table.normal_()
    q, k, v = make_qkv(1, H, L, L, 16, requires_grad=False)
    with torch.no_grad():
        torch.testing.assert_close(relformer.attend(q, k, v, rel), relformer.attend(q, k, v, rel, backend="eager"),
                                   atol=1e-5, rtol=0)


def test_flex_block_mask_built_once_per_layout():
    """Every layer sharing one relation object reuses its block mask."""
    rel = SlidingWindow(16)
    q, k, v = make_qkv(1, 2, 300, 300, 8, requires_grad=False)
    with torch.no_grad():
        for _ in range(3):
            relformer.attend(q, k, v, rel, backend="flex")
    keys = [key for key in rel._cache if key[0][0] == "flex_block_mask"]  # (layout, relation state)
    assert len(keys) == 1
    bm = B_.flex_block_mask(rel, 1, 2, 300, 300, q.device)
    assert bm is rel._cache[keys[0]][1]


def test_block_summary_marks_tiles():
    any_, all_ = B_.block_summary(Causal(), 1, 1, 256, 256, "cpu")
    assert any_[0, 0].tolist() == [[True, False], [True, True]]
    assert all_[0, 0].tolist() == [[False, False], [True, False]]


@settings(max_examples=12, deadline=None)
@given(
    B=st.integers(1, 2), Hkv=st.sampled_from([1, 2]), groups=st.sampled_from([1, 2]),
    Lq=st.integers(1, 40), Lk=st.integers(1, 40), window=st.integers(0, 12), offset=st.integers(-5, 5),
)
def test_property_backends_agree(B, Hkv, groups, Lq, Lk, window, offset):
    H = Hkv * groups

    def make():
        rb = RelativeBias(H, 6)
        with torch.no_grad():  # seeded: every backend must see the same table
            rb.table.copy_(torch.randn(rb.table.shape, generator=torch.Generator().manual_seed(3)))
        return SlidingWindow(window) & Causal(offset) & rb

    assert_backends_agree(make, B=B, H=H, Lq=Lq, Lk=Lk, D=8, Hkv=Hkv, backends=("sdpa", "chunked"))


class _DerivedBias(relformer.Relation):
    """A relation reading a tensor computed from its own parameters (like edge-feature biases)."""

    has_bias = True

    def __init__(self, H, n):
        super().__init__()
        self.proj = torch.nn.Linear(3, H)
        self.feats = torch.randn(n, 3, requires_grad=True)
        self.table = self.proj(self.feats)  # (n, H), non-leaf, requires grad

    def bias_mod(self, b, h, q_idx, kv_idx):
        return self.table[(q_idx - kv_idx).abs() % self.table.shape[0], h]


def test_chunked_grads_flow_through_derived_relation_tensors():
    """Chunked backward hands tile gradients to the outer graph once (no double counting, no re-traversal)."""
    from relformer.attention.chunked import chunked_attention

    torch.manual_seed(0)
    rel = _DerivedBias(2, 7)
    q, k, v = make_qkv(1, 2, 70, 70, 8)
    grads = {}
    for name in ("eager", "chunked"):
        for t in (q, k, v, rel.feats, *rel.parameters()):
            t.grad = None
        rel.table = rel.proj(rel.feats)  # rebuild the graph for each backward
        if name == "eager":
            out = relformer.attend(q, k, v, rel, backend="eager")
        else:
            out = chunked_attention(q, k, v, rel, scale=8 ** -0.5, tile_q=16, tile_k=16)
        (out ** 2).sum().backward()
        grads[name] = [t.grad.clone() for t in (q, k, v, rel.feats, rel.proj.weight, rel.proj.bias)]
    for g, rg in zip(grads["chunked"], grads["eager"]):
        torch.testing.assert_close(g, rg, atol=1e-5 * max(1, rg.abs().max().item()), rtol=1e-4)


def test_flex_refuses_to_train_relation_tensors():
    """Flex compiles detached tensors: it must refuse rather than silently drop table gradients."""
    q, k, v = make_qkv(1, 2, 8, 8, 8, requires_grad=False)
    with pytest.raises(ValueError, match="cannot train"):
        relformer.attend(q, k, v, RelativeBias(2, 4), backend="flex")
