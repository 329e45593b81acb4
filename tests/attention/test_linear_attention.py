"""linear_attention (Katharopoulos et al. 2020; LoFTR's attention) against a float64 reference that
materialises the (Lq, Lk) kernel matrix: forward, backward, masks, bad input."""
import pytest
import torch
import torch.nn.functional as F

from relformer.attention import elu_feature_map, linear_attention


def reference(q, k, v, q_mask=None, kv_mask=None, eps=1e-6):
    """float64, the kernel matrix A_ij = phi(q_i) . phi(k_j) written out (no reassociation of the sums)."""
    q, k, v = (t.double() for t in (q, k, v))
    A = (F.elu(q) + 1) @ (F.elu(k) + 1).transpose(-2, -1)  # (B, H, Lq, Lk)
    if kv_mask is not None:
        A = A * kv_mask[:, None, None, :].double()
    out = (A @ torch.where(kv_mask[:, None, :, None], v, 0.0) if kv_mask is not None else A @ v)
    out = out / (A.sum(-1, keepdim=True) + eps)
    if q_mask is not None:
        out = out * q_mask[:, None, :, None].double()
    return out


def _inputs(B=2, H=3, Lq=7, Lk=5, D=4, Dv=6, dtype=torch.float32):
    g = torch.Generator().manual_seed(1)
    return [torch.randn(B, H, L, d, generator=g, dtype=dtype, requires_grad=True)
            for L, d in ((Lq, D), (Lk, D), (Lk, Dv))]


def _masks(B=2, Lq=7, Lk=5):
    q_mask = torch.ones(B, Lq, dtype=torch.bool)
    kv_mask = torch.ones(B, Lk, dtype=torch.bool)
    q_mask[0, 5:] = False
    kv_mask[1, 3:] = False
    return q_mask, kv_mask


@pytest.mark.parametrize("masked", [False, True])
def test_forward_and_backward_match_float64_reference(masked):
    q, k, v = _inputs()
    masks = _masks() if masked else (None, None)
    out = linear_attention(q, k, v, *masks)
    q64, k64, v64 = (t.detach().double().requires_grad_(True) for t in (q, k, v))
    ref = reference(q64, k64, v64, *masks)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 7, 6)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-6)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (q, k, v), grad)
    want = torch.autograd.grad(ref, (q64, k64, v64), grad.double())
    for g, w in zip(got, want):
        torch.testing.assert_close(g.double(), w, rtol=1e-4, atol=1e-5)


def test_float64_in_float64():
    q, k, v = _inputs(dtype=torch.float64)
    masks = _masks()
    out = linear_attention(q, k, v, *masks)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, reference(q, k, v, *masks), rtol=1e-12, atol=1e-12)


def test_padded_positions_do_not_reach_real_ones():
    """Garbage (NaN, huge values) in padded keys changes nothing; padded queries are zero with zero grads."""
    q, k, v = _inputs()
    q_mask, kv_mask = _masks()
    out = linear_attention(q, k, v, q_mask, kv_mask)
    k2, v2 = k.detach().clone(), v.detach().clone()
    k2[1, :, 3:], v2[1, :, 3:] = float("nan"), 1e30
    q2 = q.detach().clone().requires_grad_(True)
    out2 = linear_attention(q2, k2, v2, q_mask, kv_mask)
    assert torch.equal(out.detach(), out2.detach())
    assert (out2[0, :, 5:] == 0).all()
    out2.sum().backward()
    assert torch.isfinite(q2.grad).all() and (q2.grad[0, :, 5:] == 0).all()


def test_query_without_keys_is_zero_not_nan():
    q, k, v = _inputs()
    kv_mask = torch.zeros(2, 5, dtype=torch.bool)
    out = linear_attention(q, k, v, kv_mask=kv_mask)
    assert torch.isfinite(out).all() and (out == 0).all()
    out.sum().backward()
    assert all(torch.isfinite(t.grad).all() for t in (q, k, v))


def test_feature_map_is_elu_plus_one():
    x = torch.linspace(-50, 50, 101)
    assert (elu_feature_map(x) >= 0).all() and (elu_feature_map(x[40:]) > 0).all()
    torch.testing.assert_close(elu_feature_map(x), F.elu(x) + 1)


@pytest.mark.parametrize("call, name", [
    (lambda q, k, v: linear_attention(q[0], k, v), "q"),
    (lambda q, k, v: linear_attention(q, k.int(), v), "k"),
    (lambda q, k, v: linear_attention(q, k, v[:, :, :3]), "shapes"),
    (lambda q, k, v: linear_attention(q, k, v, q_mask=torch.ones(2, 6, dtype=torch.bool)), "q_mask"),
    (lambda q, k, v: linear_attention(q, k, v, kv_mask=torch.ones(2, 5)), "kv_mask"),
    (lambda q, k, v: linear_attention(q, k, v, eps=0.0), "eps"),
])
def test_bad_input_names_the_argument(call, name):
    q, k, v = _inputs()
    with pytest.raises(ValueError, match=name):
        call(q, k, v)
