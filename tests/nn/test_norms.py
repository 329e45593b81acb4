"""Norms against references: torch's RMSNorm / LayerNorm / BatchNorm1d, and UN's own equations.

Tolerances: fp64 comparisons within 1e-10; fp32 within 1e-5 (atol) unless noted.
"""
import pytest
import torch
from torch import nn

from relformer.nn import CRMSNorm, RMSNorm, TokenBatchNorm, UnifiedNorm

F64 = dict(atol=1e-10, rtol=0)


def test_rmsnorm_matches_torch():
    x = torch.randn(3, 5, 16, dtype=torch.float64)
    ours, ref = RMSNorm(16, eps=1e-6).double(), nn.RMSNorm(16, eps=1e-6).double()
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5)
        ref.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), ref(x), **F64)
    assert RMSNorm(8, elementwise_affine=False).weight is None


def test_crmsnorm_equals_rmsnorm_and_layernorm_on_zero_mean_vectors():
    d = 12
    full = torch.randn(4, 7, d, dtype=torch.float64)
    full = full - full.mean(-1, keepdim=True)  # zero-mean d-vectors
    compressed = full[..., : d - 1]
    rms = RMSNorm(d, eps=1e-5, elementwise_affine=False)(full)
    ln = nn.LayerNorm(d, eps=1e-5, elementwise_affine=False).double()(full)
    crms = CRMSNorm(d, eps=1e-5)(compressed)
    torch.testing.assert_close(rms, ln, **F64)
    torch.testing.assert_close(crms, rms[..., : d - 1], **F64)
    with pytest.raises(ValueError, match="expects 11 features"):
        CRMSNorm(d)(full)


# ---- TokenBatchNorm ---------------------------------------------------------------------------

def _padded(lengths, C, fill=1e3, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, L = len(lengths), max(lengths)
    mask = torch.arange(L)[None, :] < torch.tensor(lengths)[:, None]  # (B, L)
    x = torch.randn(B, L, C, generator=g)
    x = torch.where(mask[..., None], x, torch.full_like(x, fill))  # padding holds garbage
    return x, mask


def test_token_batchnorm_padding_equals_packed_batchnorm1d():
    C = 6
    ours, ref = TokenBatchNorm(C), nn.BatchNorm1d(C)
    with torch.no_grad():
        ours.weight.uniform_(0.5, 1.5), ours.bias.uniform_(-1, 1)
    ref.load_state_dict(ours.state_dict())
    for step in range(3):  # training steps update the running statistics
        x, mask = _padded([5, 2, 7], C, fill=1e3 * (step + 1), seed=step)
        x.requires_grad_(True)
        packed = x.detach()[mask].requires_grad_(True)
        y, y_ref = ours(x, mask), ref(packed)
        torch.testing.assert_close(y[mask], y_ref, atol=1e-5, rtol=0)
        assert (y[~mask] == 0).all()
        cot = torch.randn_like(y_ref)
        y_ref.backward(cot)
        y[mask].backward(cot)
        torch.testing.assert_close(x.grad[mask], packed.grad, atol=1e-5, rtol=0)
        assert (x.grad[~mask] == 0).all()
    torch.testing.assert_close(ours.running_mean, ref.running_mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours.running_var, ref.running_var, atol=1e-6, rtol=0)
    assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == 3
    ours.eval(), ref.eval()
    x, mask = _padded([3, 4], C)
    torch.testing.assert_close(ours(x, mask)[mask], ref(x[mask]), atol=1e-5, rtol=0)
    torch.testing.assert_close(ours(x[mask]), ref(x[mask]), atol=1e-5, rtol=0)  # packed (N, C) input


def test_token_batchnorm_rejects_bad_mask():
    with pytest.raises(ValueError, match="mask"):
        TokenBatchNorm(4)(torch.randn(2, 3, 4), torch.ones(2, 3))  # not bool


# ---- UnifiedNorm --------------------------------------------------------------------------------

def _tokens(second_moment, N=64, C=8, seed=0):
    """``(N, C)`` tokens whose per-channel second moment is exactly ``second_moment``."""
    r = torch.randn(N, C, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return r / r.pow(2).mean(0).sqrt() * second_moment ** 0.5


def _plain(x, weight, bias, eps):
    """UN with no smoothing: BatchNorm without centering, differentiable through its statistic."""
    return x / (x.pow(2).mean(0) + eps).sqrt() * weight + bias


def _un(**kw):
    norm = UnifiedNorm(8, **kw).double()
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5), norm.bias.uniform_(-1, 1)
    return norm


def test_unified_norm_without_smoothing_is_exact_batch_rms_norm():
    """window=1, alpha=0: current statistics forward and backward = autograd of the plain formula."""
    norm = _un(window=1, alpha=0.0, warmup_iters=0)
    for step in range(3):
        x = (torch.randn(32, 8, dtype=torch.float64) * (step + 1)).requires_grad_(True)
        x_ref = x.detach().clone().requires_grad_(True)
        y, y_ref = norm(x), _plain(x_ref, norm.weight, norm.bias, norm.eps)
        torch.testing.assert_close(y, y_ref, **F64)
        cot = torch.randn_like(y)
        grads = torch.autograd.grad(y, (x, norm.weight, norm.bias), cot)
        grads_ref = torch.autograd.grad(y_ref, (x_ref, norm.weight, norm.bias), cot)
        for g, gr in zip(grads, grads_ref):
            torch.testing.assert_close(g, gr, **F64)


def test_unified_norm_training_updates_running_stats_and_fuses_in_eval():
    norm = _un(warmup_iters=2, window=3)
    before = norm.running_var.clone()
    for step in range(6):
        norm(_tokens(2.0 + 0.1 * step, seed=step).view(8, 8, 8)).sum().backward()  # (B, L, C) input
    assert int(norm.iters) == 6
    assert not torch.allclose(norm.running_var, before)
    norm.eval()
    linear = nn.Linear(8, 5).double()
    x = torch.randn(4, 3, 8, dtype=torch.float64)
    unfused = linear(norm(x))
    torch.testing.assert_close(norm(x), x / (norm.running_var + norm.eps).sqrt() * norm.weight + norm.bias, **F64)
    torch.testing.assert_close(norm.fused_linear(linear)(x), unfused, **F64)
    no_bias = nn.Linear(8, 5, bias=False).double()
    torch.testing.assert_close(norm.fused_linear(no_bias)(x), no_bias(norm(x)), **F64)
    norm.fuse_into(linear)
    torch.testing.assert_close(linear(x), unfused, **F64)


def test_unified_norm_fluctuation_smoothing_uses_geometric_mean():
    norm = _un(window=3, warmup_iters=0, outlier_filtration=False)
    moments = [1.0, 4.0, 2.0]
    for i, m in enumerate(moments):
        x = _tokens(m, seed=i)
        y = norm(x)
    gm = torch.tensor(moments, dtype=torch.float64).prod() ** (1 / 3)  # window full at iteration 3
    torch.testing.assert_close(y, x / (gm + norm.eps).sqrt() * norm.weight + norm.bias, **F64)


def test_unified_norm_filters_an_outlier_batch():
    norm = _un(window=4, warmup_iters=0, outlier_filtration=True)
    for i, m in enumerate([1.0, 1.2, 0.9, 1.1, 1.0, 1.2]):  # ordinary fluctuations
        norm(_tokens(m, seed=i)).sum().backward()
    assert int(norm.skipped) == 0
    running = norm.running_var.clone()
    slot = int(norm.iters) % norm.window  # the slot this iteration writes
    x = _tokens(100.0, seed=7).requires_grad_(True)
    y = norm(x)
    assert int(norm.skipped) == 1
    # the outlier never enters the window: its slot holds the running statistic instead
    torch.testing.assert_close(norm.var_window[slot], running, **F64)
    assert norm.var_window.max() < 2.0
    # all moving averages are dropped for this batch: exact normalization by its own statistic
    x_ref = x.detach().clone().requires_grad_(True)
    y_ref = _plain(x_ref, norm.weight, norm.bias, norm.eps)
    torch.testing.assert_close(y, y_ref, **F64)
    cot = torch.randn_like(y)
    torch.testing.assert_close(torch.autograd.grad(y, x, cot)[0], torch.autograd.grad(y_ref, x_ref, cot)[0], **F64)
    # the next ordinary batch is smoothed again with the filtered window
    x = _tokens(1.1, seed=8)
    y = norm(x)
    assert int(norm.skipped) == 1
    gm = norm.var_window.log().mean(0).exp()
    torch.testing.assert_close(y, x / (gm + norm.eps).sqrt() * norm.weight + norm.bias, **F64)


def test_unified_norm_mask_ignores_padding():
    x, mask = _padded([5, 3], 8, fill=1e4)
    a, b = UnifiedNorm(8, warmup_iters=0), UnifiedNorm(8, warmup_iters=0)
    torch.testing.assert_close(a(x, mask)[mask], b(x[mask]), atol=1e-5, rtol=0)
    torch.testing.assert_close(a.running_var, b.running_var, atol=1e-6, rtol=0)
