"""relformer.nn.gemm against ``F.linear``: the oneDNN path, forward and backward, and when it is not taken.

Tolerance: fp32, outputs and gradients within 1e-5 relative to the largest reference entry
(oneDNN and MKL sum the products in different orders; nothing else differs).
"""
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relformer.nn import Linear, linear, set_linear_kernel
from relformer.nn import gemm as linear_mod

ONEDNN = torch.backends.mkldnn.is_available()
needs_onednn = pytest.mark.skipif(not ONEDNN, reason="this torch build has no oneDNN")


@pytest.fixture
def calls(monkeypatch):
    """Count oneDNN calls; the kernel is forced on (whatever the platform) and restored after."""
    seen = []
    real = linear_mod._onednn
    monkeypatch.setattr(linear_mod, "_onednn", lambda *a: seen.append(a[0].shape) or real(*a))
    before = linear_mod.linear_kernel()
    set_linear_kernel("onednn")
    yield seen
    set_linear_kernel(before)


def _close(a, b):
    torch.testing.assert_close(a, b, atol=1e-5 * max(1.0, b.abs().max().item()), rtol=1e-5)


def _big(*lead, k=96):
    """An input whose product with a (k -> 3k) weight exceeds MIN_MACS."""
    return torch.randn(*lead, k)


@needs_onednn
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("layout", ["2d", "3d", "4d", "transposed", "long"])
@pytest.mark.parametrize("k, n", [(96, 96), (96, 288), (384, 96)])  # weight grad: torch.mm, oneDNN both ways
def test_forward_backward_equal_f_linear(calls, bias, layout, k, n):
    x = {"2d": lambda: _big(2048, k=k), "3d": lambda: _big(4, 512, k=k), "4d": lambda: _big(2, 4, 256, k=k),
         "transposed": lambda: _big(512, 4, k=k).transpose(0, 1),  # non-contiguous (4, 512, k)
         "long": lambda: _big(3, 3001, k=k)}[layout]()  # 9003 tokens: the weight gradient sums 3 slices
    w = torch.randn(n, k) * k ** -0.5
    b = torch.randn(n) if bias else None
    x_ref, w_ref = x.clone().requires_grad_(), w.clone().requires_grad_()
    b_ref = b.clone().requires_grad_() if bias else None
    x, w = x.requires_grad_(), w.requires_grad_()
    b = b.requires_grad_() if bias else None
    y, y_ref = linear(x, w, b), F.linear(x_ref, w_ref, b_ref)
    _close(y, y_ref)
    g = torch.randn_like(y_ref)
    y.backward(g)
    y_ref.backward(g)
    _close(x.grad, x_ref.grad)
    _close(w.grad, w_ref.grad)
    if bias:
        _close(b.grad, b_ref.grad)
    tokens = x.numel() // k
    slices = -(-tokens // linear_mod.WEIGHT_GRAD_ROWS) if max(k, n) >= linear_mod.WIDE_WEIGHT_GRAD else 0
    assert slices == {(96, 96): 0, (96, 288): 1 + 2 * (layout == "long"), (384, 96): 1 + 2 * (layout == "long")}[k, n]
    assert len(calls) == 2 + slices  # forward, input gradient (and each weight-gradient slice) ran on oneDNN


@needs_onednn
@pytest.mark.parametrize("which", ["x", "weight"])
def test_only_the_needed_gradient(calls, which):
    """A frozen layer still passes gradient to its input; a first layer computes no input gradient."""
    x, w, b = _big(2048), torch.randn(288, 96), torch.randn(288)
    (x if which == "x" else w).requires_grad_()
    y = linear(x, w, b)
    y.sum().backward()
    ref_x, ref_w = x.detach().clone().requires_grad_(which == "x"), w.detach().clone().requires_grad_(which == "weight")
    F.linear(ref_x, ref_w, b).sum().backward()
    if which == "x":
        _close(x.grad, ref_x.grad)
        assert w.grad is None and len(calls) == 2
    else:
        _close(w.grad, ref_w.grad)
        assert x.grad is None and len(calls) == 2  # forward and weight gradient; no input-gradient product


@needs_onednn
def test_inference_mode_records_nothing(calls):
    x, lin = _big(2048), Linear(96, 288)
    with torch.inference_mode():
        y = lin(x)
    assert y.grad_fn is None and len(calls) == 1
    _close(y, F.linear(x, lin.weight.detach(), lin.bias.detach()))


@pytest.mark.parametrize("case", ["small", "float64", "autocast", "kernel-torch"])
def test_falls_back_to_f_linear(calls, case):
    """Outside the oneDNN path the result is F.linear's, bit for bit, and oneDNN is never called."""
    x, w, b = _big(2048), torch.randn(288, 96), torch.randn(288)
    if case == "small":
        x = x[:8]
    if case == "float64":
        x, w, b = x.double(), w.double(), b.double()
    if case == "kernel-torch":
        set_linear_kernel("torch")
    if case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y, ref = linear(x, w, b), F.linear(x, w, b)
        assert y.dtype == torch.bfloat16
    else:
        y, ref = linear(x, w, b), F.linear(x, w, b)
    assert torch.equal(y, ref) and not calls


def test_linear_is_an_nn_linear():
    """Same parameters, state dict and init as nn.Linear: checkpoints and interop see no difference."""
    torch.manual_seed(1)
    ours = Linear(8, 4)
    torch.manual_seed(1)
    ref = nn.Linear(8, 4)
    assert isinstance(ours, nn.Linear)
    assert ours.state_dict().keys() == ref.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(ours.state_dict().values(), ref.state_dict().values()))


def test_bad_kernel_name():
    with pytest.raises(ValueError, match="unknown linear kernel 'mkl'"):
        set_linear_kernel("mkl")


def test_environment_turns_it_off():
    out = subprocess.run([sys.executable, "-c", "from relformer.nn.gemm import linear_kernel; print(linear_kernel())"],
                         env={"RELFORMER_LINEAR": "torch", "PATH": ""}, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "torch"


@needs_onednn
def test_double_backward_is_refused_not_wrong(calls):
    """The oneDNN path is once-differentiable: create_graph through it raises instead of giving a wrong
    second derivative; the ``torch`` kernel gives the second derivative."""
    x, w = _big(2048).requires_grad_(), torch.randn(288, 96, requires_grad=True)
    (gx,) = torch.autograd.grad(linear(x, w).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="once_differentiable"):
        gx.sum().backward()
    set_linear_kernel("torch")
    (gx,) = torch.autograd.grad(linear(x, w).square().sum(), x, create_graph=True)
    gx.sum().backward()
    assert w.grad is not None and torch.isfinite(w.grad).all()
