"""The measured eager-or-SDPA choice for many small CPU score matrices (attention/probe.py)."""
import importlib
import json
import math
import time

import pytest
import torch

import relformer
from relformer import relations as R
from relformer.attention import probe
from relformer.relations import Documents
from relformer.utils.cpu import MeasuredRatios, paired_ratio
from tests.equivalence import make_qkv


@pytest.fixture(autouse=True)
def _fresh_probe(monkeypatch, tmp_path):
    """A private cache folder and an empty process cache for each test (never the user's cache)."""
    monkeypatch.setenv("RELFORMER_CACHE", str(tmp_path))
    _new_process(monkeypatch)
    monkeypatch.setattr(probe, "_policy", "auto")


def _new_process(monkeypatch):
    """The probe's state as a fresh process finds it (the disk cache stays)."""
    monkeypatch.setattr(probe, "_MEASURED", MeasuredRatios("attention", schema=1))
    monkeypatch.setattr(probe, "_by_shape", {})


def _stub_measure(monkeypatch, ratio):
    """``probe._measure`` returning ``ratio``; the list records each bucket measured."""
    calls = []

    def measure(bucket):
        calls.append(bucket)
        return ratio
    monkeypatch.setattr(probe, "_measure", measure)
    return calls


def _many():
    """ViT-micro-like: 64 images x 4 heads of 50 x 50 scores (the rule's answer: eager)."""
    return make_qkv(64, 4, 50, 50, 16)


def _few():
    """DETR-base-encoder-like: 4 x 8 heads of 64 x 64 (fewer than SMALL_MIN_MATRICES: the rule says sdpa)."""
    return make_qkv(4, 8, 64, 64, 8)


def _packed_rows(B, L, pad):
    """``Documents`` over ``B`` packed rows of ``L`` slots: items of 3 sizes, the last ``pad`` slots padding."""
    seg = (torch.arange(L) * 3 // (L - pad)).masked_fill(torch.arange(L) >= L - pad, -1)
    return Documents(seg.expand(B, -1).contiguous())


@pytest.mark.parametrize("policy", ["eager", "sdpa"])
def test_forced_policy_decides_small_scores_only(policy):
    probe.set_small_attention(policy)
    for qkv, rel in ((_many(), None), (_few(), None), (make_qkv(64, 4, 49, 49, 16), R.GridRelativeBias(4, 7))):
        choice = relformer.explain(*qkv, rel)
        assert choice.backend == policy
        assert f"RELFORMER_SMALL_ATTENTION={policy}" in choice.reason
    assert relformer.explain(*make_qkv(64, 4, 65, 65, 16), None).backend == "sdpa"  # not small: the rule
    assert relformer.explain(*_many(), None, dropout_p=0.1).backend == "eager"  # CPU dropout: the rule


def test_policy_names_are_checked_and_read_from_the_environment(monkeypatch):
    with pytest.raises(ValueError, match="RELFORMER_SMALL_ATTENTION"):
        probe.set_small_attention("flash")
    monkeypatch.setenv("RELFORMER_SMALL_ATTENTION", "sdpa")
    try:
        importlib.reload(probe)
        assert probe.small_attention() == "sdpa"
        monkeypatch.setenv("RELFORMER_SMALL_ATTENTION", "bogus")
        with pytest.raises(ValueError, match="bogus"):
            importlib.reload(probe)
    finally:
        monkeypatch.delenv("RELFORMER_SMALL_ATTENTION")
        importlib.reload(probe)
    assert probe.small_attention() == "auto"


@pytest.mark.parametrize("ratio, many, few", [
    (probe.MARGIN * 0.99, "eager", "sdpa"),   # sdpa a little faster: not enough to move the rule's eager
    (probe.MARGIN * 1.01, "sdpa", "sdpa"),    # sdpa faster by more than the margin
    (1.0 / (probe.MARGIN * 0.99), "eager", "sdpa"),  # eager a little faster: the rule's sdpa stays
    (1.0 / (probe.MARGIN * 1.01), "eager", "eager"),  # eager faster by more than the margin
])
def test_the_other_backend_needs_the_margin(monkeypatch, ratio, many, few):
    _stub_measure(monkeypatch, ratio)
    assert relformer.explain(*_many(), None).backend == many
    assert relformer.explain(*_few(), None).backend == few


def test_one_probe_per_bucket_per_process(monkeypatch):
    calls = _stub_measure(monkeypatch, 2.0)
    q, k, v = _many()
    for _ in range(3):
        assert relformer.explain(q, k, v, None).backend == "sdpa"
    relformer.explain(*make_qkv(64, 4, 49, 49, 16), None)  # 49 and 50 round to one length bucket
    assert len(calls) == 1
    with torch.no_grad():  # inference is another bucket
        relformer.explain(q, k, v, None)
        relformer.attend(q, k, v, None)
    assert len(calls) == 2 and calls[0].training and not calls[1].training
    relformer.explain(*make_qkv(64, 4, 49, 49, 16), R.GridRelativeBias(4, 7))  # a learnable bias: another
    assert len(calls) == 3 and calls[2].rel_grad and calls[2].bias
    monkeypatch.setattr(probe, "_measure", lambda bucket: pytest.fail("measured twice"))
    assert relformer.explain(q, k, v, None).backend == "sdpa"  # not probed again however often it is asked


def test_packed_rows_with_padding_are_their_own_bucket(monkeypatch):
    calls = _stub_measure(monkeypatch, 2.0)
    q, k, v = make_qkv(16, 4, 64, 64, 16)
    relformer.explain(q, k, v, _packed_rows(16, 64, pad=0))
    relformer.explain(q, k, v, _packed_rows(16, 64, pad=8))
    assert [(c.mask, c.dead) for c in calls] == [(True, False), (True, True)]


def test_disk_cache_round_trip(monkeypatch, tmp_path):
    _stub_measure(monkeypatch, 1.7)
    q, k, v = _many()
    assert relformer.explain(q, k, v, None).backend == "sdpa"
    bucket = probe.bucket_of(q, k, v, None, True, False, False)
    files = list((tmp_path / "attention").glob("*.json"))
    assert len(files) == 1
    data = json.loads(files[0].read_text())
    assert data["entries"] == {bucket.key(): 1.7} and data["threads"] == torch.get_num_threads()
    # a new process (empty process cache) reads the disk and chooses as the first one did, measuring nothing
    _new_process(monkeypatch)
    calls = _stub_measure(monkeypatch, 0.5)
    assert probe.measured_ratio(bucket) == (1.7, "disk")
    assert relformer.explain(q, k, v, None).backend == "sdpa" and calls == []
    assert probe.measured_ratio(bucket) == (1.7, "process")


@pytest.mark.parametrize("content", [
    "{not json", "[]", '{"schema": 99, "ratios": {}}', None,  # None: a valid file whose ratio is not finite
])
def test_a_corrupt_cache_file_is_ignored_and_rewritten(monkeypatch, tmp_path, content):
    q, k, v = _many()
    bucket = probe.bucket_of(q, k, v, None, True, False, False)
    calls = _stub_measure(monkeypatch, 1.3)
    probe.measured_ratio(bucket)
    path = next((tmp_path / "attention").glob("*.json"))
    if content is None:
        content = path.read_text().replace("1.3", "-Infinity")
    path.write_text(content)
    _new_process(monkeypatch)
    calls = _stub_measure(monkeypatch, 1.4)
    assert probe.measured_ratio(bucket) == (1.4, "measured") and len(calls) == 1
    assert json.loads(path.read_text())["entries"] == {bucket.key(): 1.4}


def test_explain_names_the_measurement(monkeypatch):
    _stub_measure(monkeypatch, 2.345)
    reason = relformer.explain(*_many(), None).reason
    assert "measured 2.35x" in reason and "50x50, 256 of them" in reason
    _stub_measure(monkeypatch, 1.0)
    with torch.no_grad():  # inference: another bucket, measured level
        reason = relformer.explain(*_many(), None).reason
    assert "measured 1.00x" in reason and "eager stays" in reason


def test_no_probe_off_cpu_under_compile_or_for_other_dtypes(monkeypatch):
    monkeypatch.setattr(probe, "_measure", lambda bucket: pytest.fail("probed"))
    meta = [t.detach().to("meta") for t in _many()]
    assert relformer.explain(*meta, None).backend == "sdpa"  # the rule off CPU: no small-score branch
    assert relformer.explain(*make_qkv(64, 4, 50, 50, 16, dtype=torch.float64), None).backend == "eager"
    assert relformer.attend(*make_qkv(0, 4, 50, 50, 16), None).shape == (0, 4, 50, 16)  # nothing to compute
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert relformer.explain(*_many(), None).backend == "eager"


def test_probe_leaves_the_user_rng_alone():
    state = torch.get_rng_state()
    bucket = probe.Bucket(True, True, True, True, True, 16, 16, 8, 8, 2, 8)
    ratio, source = probe.measured_ratio(bucket)
    assert source == "measured" and math.isfinite(ratio) and ratio > 0
    assert torch.equal(torch.get_rng_state(), state)


@pytest.mark.parametrize("policy", ["auto", "eager", "sdpa"])
@pytest.mark.parametrize("case", ["packed", "bias"])
def test_auto_on_small_scores_equals_eager_forward_and_backward(policy, case):
    """Whatever the probe picks on this CPU (or a forced policy), attend equals the eager reference,
    forward and backward (to q, k, v and a learnable bias); fp32, tolerance 1e-5."""
    probe.set_small_attention(policy)
    if case == "packed":  # GPS-like packed rows with padding, a fixed mask
        rel, qkv = _packed_rows(16, 32, pad=4), make_qkv(16, 4, 32, 32, 8)
    else:  # Swin-like windows with a learnable relative bias
        rel, qkv = R.GridRelativeBias(4, 5), make_qkv(16, 4, 25, 25, 8)
        with torch.no_grad():
            for p in rel.parameters():
                p.normal_()
    assert "measured" in relformer.explain(*qkv, rel).reason or policy != "auto"
    grad = torch.randn(qkv[0].shape)
    results = []
    for backend in ("auto", "eager"):
        out = relformer.attend(*qkv, rel, backend=backend)
        inputs = qkv + list(rel.grad_tensors())
        results.append((out, torch.autograd.grad(out, inputs, grad)))
    (out, grads), (ref, ref_grads) = results
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    for g, rg in zip(grads, ref_grads):
        torch.testing.assert_close(g, rg, rtol=1e-5, atol=1e-5)


def test_buckets_round_lengths_and_bound_the_probe():
    """49 and 50 share a length bucket; the matrix count rounds to a power of two and the probe's size
    is capped at PROBE_SCORES scores (GPS's 240 packed rows x heads probe 128 matrices of 64 x 64)."""
    gps = probe.bucket_of(*make_qkv(60, 4, 64, 64, 16), None, True, False, False)
    assert (gps.lq, gps.lk, gps.heads, gps.matrices) == (64, 64, 4, 128)
    vit = probe.bucket_of(*make_qkv(64, 2, 50, 50, 32), None, False, False, False)
    swin = probe.bucket_of(*make_qkv(64, 2, 49, 49, 32), None, False, False, False)
    assert vit == swin and vit.lq == 56
    for B, H, Lq, Lk in ((4096, 3, 49, 49), (1, 1, 1, 4096), (3, 5, 7, 9), (64, 16, 64, 64)):
        b = probe.bucket_of(*make_qkv(B, H, Lq, Lk, 8), None, True, False, False)
        assert 1 <= b.matrices * b.lq * b.lk <= probe.PROBE_SCORES and b.lq >= Lq and b.lk >= Lk
        assert b.heads <= H and b.matrices >= b.heads


def test_a_slow_pair_shortens_the_probe():
    """The repetitions after the warm-up fit the probe's time budget (at least one pair runs)."""
    calls = []

    def slow(name):
        def way():
            calls.append(name)
            time.sleep(0.01)
        return way
    assert paired_ratio(slow("eager"), slow("sdpa"), reps=5, budget_s=0.001) > 0
    assert sorted(calls) == ["eager"] * 2 + ["sdpa"] * 2  # warm-up + one pair
    calls.clear()
    paired_ratio(slow("eager"), slow("sdpa"), reps=3, budget_s=10.0)
    assert len(calls) == 8
