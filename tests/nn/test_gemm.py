"""relformer.nn.gemm against ``F.linear``: the oneDNN path, forward and backward, and when it is not taken.

Tolerance: fp32, outputs and gradients within 1e-5 relative to the largest reference entry
(oneDNN and MKL sum the products in different orders; nothing else differs).
"""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from relformer.nn import Linear, linear, set_linear_kernel
from relformer.nn import gemm as linear_mod
from relformer.utils.cpu import MeasuredRatios

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
@pytest.mark.slow
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


# --- the choice by measurement (policy "auto") and the policies that force it ---------------------------

@pytest.fixture
def auto(monkeypatch, tmp_path):
    """Policy "auto" with an empty process cache and a private disk cache; restored after."""
    monkeypatch.setenv("RELFORMER_CACHE", str(tmp_path))
    monkeypatch.setattr(linear_mod, "_MEASURED", MeasuredRatios("linear", linear_mod._CACHE_SCHEMA,
                                                               linear_mod._valid_ratios))
    before = linear_mod.linear_kernel()
    set_linear_kernel("auto")
    yield tmp_path
    set_linear_kernel(before)


def _fake_measure(monkeypatch, ratios):
    """Replace the probe by fixed ratios (F.linear time / oneDNN time); returns the list of widths probed."""
    probed = []
    monkeypatch.setattr(linear_mod, "_measure_ratios", lambda i, o: probed.append((i, o)) or dict(ratios))
    return probed


@needs_onednn
def test_forced_policies_need_no_measurement(auto, monkeypatch):
    probed = _fake_measure(monkeypatch, dict.fromkeys(linear_mod.OPS, 9.0))
    set_linear_kernel("torch")
    choice = linear_mod.linear_choice(96, 288)
    assert choice["ops"] == dict.fromkeys(linear_mod.OPS, "torch") and choice["ratios"] is None
    set_linear_kernel("onednn")
    assert linear_mod.linear_choice(96, 288)["ops"] == dict.fromkeys(linear_mod.OPS, "onednn")
    assert linear_mod.linear_choice(96, 96)["ops"]["weight_grad"] == "torch"  # narrower than WIDE_WEIGHT_GRAD
    assert not probed


@needs_onednn
@pytest.mark.parametrize("ratio", [0.5, 1.0, linear_mod.MARGIN, linear_mod.MARGIN * 1.01, 2.0])
def test_auto_takes_onednn_only_beyond_the_margin(auto, monkeypatch, ratio):
    _fake_measure(monkeypatch, {"forward": ratio, "input_grad": 1.0, "weight_grad": 3.0})
    ops = linear_mod.linear_choice(96, 288)["ops"]
    assert ops == {"forward": "onednn" if ratio > linear_mod.MARGIN else "torch", "input_grad": "torch",
                   "weight_grad": "onednn"}


@needs_onednn
def test_auto_measures_each_width_once_per_process(auto, monkeypatch):
    """The real probe: finite ratios, ops that follow them, the same answer every time, one probe per width,
    the user's random stream untouched."""
    probed, real = [], linear_mod._measure_ratios
    monkeypatch.setattr(linear_mod, "_measure_ratios", lambda i, o: probed.append((i, o)) or real(i, o))
    rng = torch.get_rng_state()
    first = linear_mod.linear_choice(96, 288)
    assert torch.equal(torch.get_rng_state(), rng)
    assert first["source"] == "measured" and set(first["ratios"]) == set(linear_mod.OPS)
    assert all(r > 0 and r < float("inf") for r in first["ratios"].values())
    assert first["ops"] == {op: "onednn" if r > linear_mod.MARGIN else "torch" for op, r in first["ratios"].items()}
    x = _big(2048).requires_grad_()
    for _ in range(2):
        Linear(96, 288)(x).sum().backward()
    again = linear_mod.linear_choice(96, 288)
    assert (again["ops"], again["ratios"], again["source"]) == (first["ops"], first["ratios"], "process")
    assert probed == [(96, 288)]


@needs_onednn
def test_choice_is_read_back_from_disk(auto, monkeypatch):
    probed = _fake_measure(monkeypatch, {"forward": 2.0, "input_grad": 0.5, "weight_grad": 1.5})
    first = linear_mod.linear_choice(96, 288)
    linear_mod._MEASURED.forget()  # a new process
    again = linear_mod.linear_choice(96, 288)
    assert again["source"] == "disk" and again["ops"] == first["ops"] and probed == [(96, 288)]
    assert linear_mod.linear_choice(96, 288, remeasure=True)["source"] == "measured" and len(probed) == 2


@needs_onednn
@pytest.mark.parametrize("content", [
    "not json", '{"schema": 2, "cpu": ', "[]", "null",
    '{"schema": 2, "entries": {"96x288": {"forward": 2.0, "input_grad": 2.0, "weight_grad": 2.0}}}',  # no key
    'SAME_KEY {"96x288": {"forward": "fast", "input_grad": 2.0, "weight_grad": 2.0}}',
    'SAME_KEY {"96x288": {"forward": NaN, "input_grad": 2.0, "weight_grad": 2.0}}',
    'SAME_KEY {"96x288": {"forward": 2.0}}',
    'SAME_KEY ["96x288"]',
])
def test_corrupted_cache_is_ignored_and_rebuilt(auto, monkeypatch, content):
    path = linear_mod._MEASURED.disk.file(torch.get_num_threads())
    if content.startswith("SAME_KEY"):
        content = json.dumps({"schema": 2, "cpu": linear_mod.cpu_model(), "torch": torch.__version__,
                              "threads": torch.get_num_threads()})[:-1] + ', "entries": ' + content[9:] + "}"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    probed = _fake_measure(monkeypatch, {"forward": 0.5, "input_grad": 0.5, "weight_grad": 0.5})
    choice = linear_mod.linear_choice(96, 288)
    assert choice["source"] == "measured" and choice["ops"] == dict.fromkeys(linear_mod.OPS, "torch")
    assert probed == [(96, 288)]
    assert json.loads(path.read_text())["entries"] == {"96x288": dict.fromkeys(linear_mod.OPS, 0.5)}


def test_linear_choice_rejects_bad_widths():
    with pytest.raises(ValueError, match="in_features and out_features"):
        linear_mod.linear_choice(0, 8)


def test_environment_forces_onednn():
    code = "from relformer.nn import gemm; print(gemm.linear_kernel(), gemm.linear_choice(96, 288)['source'])"
    src = str(Path(linear_mod.__file__).parents[2])  # the copy of relformer under test
    out = subprocess.run([sys.executable, "-c", code], env={"RELFORMER_LINEAR": "onednn", "PATH": "", "PYTHONPATH": src},
                         capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["onednn", "forced" if ONEDNN else "no oneDNN in this build"]


def _check_against_f_linear(bases, views=None, grad=None, tol=1e-5):
    """Forward and every gradient of ``linear`` against ``F.linear``: each runs on fresh leaves cloned from
    ``bases`` (x, weight, bias), seen through ``views`` (one function per operand, identity if missing), so a
    strided operand stays strided and its gradient flows back through the view. ``grad`` None: ``y.sum()``."""
    views = views or {}
    outs = []
    for fn in (linear, F.linear):
        leaves = [t.detach().clone().requires_grad_() for t in bases]
        y = fn(*(views.get(name, lambda t: t)(t) for name, t in zip(("x", "weight", "bias"), leaves)))
        y.sum().backward() if grad is None else y.backward(grad)
        outs.append([y.detach(), *(t.grad for t in leaves)])
    for got, ref in zip(*outs):
        torch.testing.assert_close(got, ref, atol=tol * max(1.0, ref.abs().max().item()), rtol=tol)


@needs_onednn
@pytest.mark.parametrize("pattern", [(2.0, 2.0, 2.0), (2.0, 0.5, 2.0), (0.5, 2.0, 0.5), (0.5, 0.5, 2.0), (0.5,) * 3])
def test_auto_equals_f_linear_for_every_mix(auto, monkeypatch, calls, pattern):
    """Each product on either kernel: the same outputs and gradients; oneDNN runs exactly the chosen ones."""
    set_linear_kernel("auto")  # the calls fixture forced "onednn"
    _fake_measure(monkeypatch, dict(zip(linear_mod.OPS, pattern)))
    x, w, b = _big(4, 512), torch.randn(288, 96) * 96 ** -0.5, torch.randn(288)
    _check_against_f_linear([x, w, b], grad=torch.randn(4, 512, 288))
    assert len(calls) == sum(p > linear_mod.MARGIN for p in pattern)  # 2048 tokens: one weight-gradient slice


# --- operand layouts: every operand reaches oneDNN dense ------------------------------------------------

@pytest.fixture
def operands(monkeypatch):
    """Record every tensor handed to oneDNN; the policy is forced to "onednn" and restored after."""
    seen = []
    real = linear_mod._onednn
    monkeypatch.setattr(linear_mod, "_onednn", lambda *a: seen.extend(t for t in a if isinstance(t, torch.Tensor))
                        or real(*a))
    before = linear_mod.linear_kernel()
    set_linear_kernel("onednn")
    yield seen
    set_linear_kernel(before)


def _dense_or_transposed(t):
    return t.is_contiguous() or (t.dim() == 2 and t.t().is_contiguous())


@needs_onednn
def test_expanded_gradient_of_a_sum_is_fast_and_right(operands):
    """``y.sum().backward()`` hands the layer a stride-0 gradient; as a oneDNN weight operand it took ~50 s
    for this layer (F.linear: 0.1 s). Finishing at all is the speed check; the gradients match F.linear's."""
    lin, x = Linear(256, 1024), torch.randn(8192, 256, requires_grad=True)
    ref_lin = nn.Linear(256, 1024)
    ref_lin.load_state_dict(lin.state_dict())
    ref_x = x.detach().clone().requires_grad_()
    lin(x).sum().backward()
    F.linear(ref_x, ref_lin.weight, ref_lin.bias).sum().backward()
    for got, ref in [(x.grad, ref_x.grad), (lin.weight.grad, ref_lin.weight.grad), (lin.bias.grad, ref_lin.bias.grad)]:
        torch.testing.assert_close(got, ref, atol=1e-4 * ref.abs().max().item(), rtol=1e-4)
    assert len(operands) >= 4 and all(_dense_or_transposed(t) for t in operands)  # forward, dX, 2 dW slices


LAYOUTS = {  # (3, 700, 96) -> 288 with one operand a strided view: base shapes and the view taken of each
    "x transposed": ({"x": (700, 3, 96)}, {"x": lambda t: t.transpose(0, 1)}),
    "x column slice": ({"x": (3, 700, 200)}, {"x": lambda t: t[..., 50:146]}),
    "x every other row": ({"x": (3, 1400, 96)}, {"x": lambda t: t[:, ::2]}),
    "weight transposed": ({"weight": (96, 288)}, {"weight": lambda t: t.t()}),
    "weight slice": ({"weight": (300, 200)}, {"weight": lambda t: t[5:293, 100:196]}),
    "bias strided": ({"bias": (576,)}, {"bias": lambda t: t[::2]}),
    "weight expanded": ({"weight": (1, 96)}, {"weight": lambda t: t.expand(288, 96)}),
}


@needs_onednn
@pytest.mark.parametrize("kind", sorted(LAYOUTS))
def test_strided_operands_equal_f_linear(operands, kind):
    shapes, views = LAYOUTS[kind]
    shapes = {"x": (3, 700, 96), "weight": (288, 96), "bias": (288,), **shapes}
    bases = [torch.randn(*shapes[name]) * (0.1 if name == "weight" else 1.0) for name in ("x", "weight", "bias")]
    _check_against_f_linear(bases, views, grad=torch.randn(3, 700, 288))
    assert len(operands) >= 3 and all(_dense_or_transposed(t) for t in operands)


@needs_onednn
@pytest.mark.parametrize("grad", ["expanded over the batch", "transposed", "expanded scalar"])
def test_strided_upstream_gradients_equal_f_linear(operands, grad):
    grad = {"expanded over the batch": lambda: torch.randn(1, 700, 288).expand(3, 700, 288),
            "transposed": lambda: torch.randn(288, 700, 3).permute(2, 1, 0),
            "expanded scalar": lambda: torch.tensor(0.3).expand(3, 700, 288)}[grad]()
    _check_against_f_linear([torch.randn(3, 700, 96), torch.randn(288, 96) * 0.1, torch.randn(288)], grad=grad)
    assert len(operands) >= 3 and all(_dense_or_transposed(t) for t in operands)
