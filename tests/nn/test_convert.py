"""Pre-LN == Pre-RMSNorm == Pre-CRMSNorm (Jiang et al., NeurIPS 2023): converted models compute
the same function. Tolerance: fp32 outputs within 1e-5 (conversion itself runs in float64);
float64 models within 1e-10.
"""
import functools

import pytest
import torch

from relformer.nn import CRMSNorm, PreNormTransformer, RMSNorm, SwiGLU, to_pre_crmsnorm, to_pre_rmsnorm
from relformer.relations import Causal


def _random_pre_ln(dtype=torch.float32, **kw):
    args = dict(vocab_or_in_dim=37, dim=24, depth=2, heads=4, out_dim=11, max_len=16)
    model = PreNormTransformer(**{**args, **kw}).to(dtype).eval()
    with torch.no_grad():  # non-trivial LayerNorm gain/shift and a non-zero-mean residual stream
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.5, 1.5) if name.endswith("weight") else p.uniform_(-0.5, 0.5)
        model.embed.weight.add_(0.3)
    return model


def _inputs(model, B=2, L=10, tokens=True):
    g = torch.Generator().manual_seed(0)
    if tokens:
        return torch.randint(0, 37, (B, L), generator=g)
    return torch.randn(B, L, 37, generator=g, dtype=next(model.parameters()).dtype)


@pytest.mark.parametrize("tokens", [True, False])
def test_pre_ln_equals_pre_rmsnorm_and_pre_crmsnorm(tokens):
    model = _random_pre_ln(tokens=tokens)
    x = _inputs(model, tokens=tokens)
    ref = model(x, Causal())
    rms, crms = to_pre_rmsnorm(model), to_pre_crmsnorm(model)
    assert all(isinstance(m, RMSNorm) and m.weight is None for m in (rms.norm, rms.blocks[0].norm1))
    assert isinstance(crms.norm, CRMSNorm) and crms.pos.weight.shape[-1] == 23
    assert crms.blocks[0].attn.qkv.in_features == 23 and crms.blocks[0].attn.proj.out_features == 23
    torch.testing.assert_close(rms(x, Causal()), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(crms(x, Causal()), ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(to_pre_crmsnorm(rms)(x, Causal()), ref, atol=1e-5, rtol=0)


def test_conversion_is_exact_in_float64_with_swiglu():
    model = _random_pre_ln(torch.float64, mlp_layer=functools.partial(SwiGLU, bias=True), max_len=None)
    x = _inputs(model)
    ref = model(x)
    torch.testing.assert_close(to_pre_rmsnorm(model)(x), ref, atol=1e-10, rtol=0)
    torch.testing.assert_close(to_pre_crmsnorm(model)(x), ref, atol=1e-10, rtol=0)


def test_recentered_stream_is_zero_mean():
    rms = to_pre_rmsnorm(_random_pre_ln(torch.float64))
    captured = []
    rms.blocks[1].norm1.register_forward_hook(lambda m, inp, out: captured.append(inp[0]))
    rms(_inputs(rms))
    assert captured[0].mean(-1).abs().max() < 1e-12


def test_conversion_rejects_what_has_no_equivalent():
    rms_model = PreNormTransformer(37, 24, 1, 4, 11, norm="rmsnorm")
    with torch.no_grad():
        rms_model.embed.weight.add_(1.0)
    with pytest.raises(ValueError, match="not zero-mean"):
        to_pre_crmsnorm(rms_model)
    with pytest.raises(ValueError, match="layernorm"):
        to_pre_rmsnorm(rms_model)
    no_bias = _random_pre_ln(mlp_layer=SwiGLU)  # SwiGLU is bias-free: fc1 cannot absorb LayerNorm's shift
    with pytest.raises(ValueError, match="has no bias"):
        to_pre_rmsnorm(no_bias)
