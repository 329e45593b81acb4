"""Linear layers on whichever of PyTorch's two CPU GEMMs is faster on the CPU at hand.

PyTorch's fp32 ``F.linear`` on CPU calls the BLAS it was built with (MKL's sgemm in the x86
wheels). The same wheels carry oneDNN, whose matmul ``torch.compile``'s CPU backend emits for
linear layers (``torch.ops.mkldnn._linear_pointwise``). Which of the two is faster depends on the
CPU (its vendor, vector units and caches), the thread count, the layer's width and the operation:
oneDNN wins clearly on some CPUs and loses on others, so no rule written down in advance holds on
every machine (figures: ``bench/linear.py`` -> ``bench/results/linear.md``).

So the kernel is chosen by measurement. The first large fp32 CPU product of a layer width
``(in, out)`` runs a short probe (:func:`linear_choice`): each of the three products of a training
step -- forward ``Y = X W^T``, input gradient ``dX = dY W``, weight gradient ``dW = dY^T X`` -- is
timed on both kernels at that width on about :data:`PROBE_MACS` multiply-adds, the kernels
alternating over :data:`PROBE_REPS` repetitions so a slow moment of the machine hits both; the
lower of the median paired ratio and the ratio of the fastest runs counts. oneDNN takes a product
only where it wins by more than :data:`MARGIN` (noise must not buy it a layer it loses); anything
closer goes to ``F.linear``, which also keeps double backward. The answer is kept for the process
and on disk (JSON under ``relformer.utils.cache_root()``, keyed on CPU model, torch version and
thread count; a file that does not parse or validate is ignored and rewritten).

Everything else stays on ``F.linear``: other devices and dtypes, autocast, ``torch.compile``,
products under :data:`MIN_MACS` (a oneDNN call's fixed cost is not won back). Every operand
reaches oneDNN dense (row-major, or the transpose of a row-major tensor): a strided or expanded
(stride-0) one -- the gradient of ``y.sum()`` -- sends oneDNN to a path orders of magnitude slower.

The oneDNN path has no double backward (``create_graph=True`` through it raises); gradient
penalties and other higher-order uses need ``set_linear_kernel("torch")``.

``RELFORMER_LINEAR`` in the environment, or :func:`set_linear_kernel`, sets the policy:
``"auto"`` (the default, measured), ``"torch"`` (always ``F.linear``), ``"onednn"`` (oneDNN for
every large product, the weight gradient only for layers at least :data:`WIDE_WEIGHT_GRAD` wide;
for benchmarks and tests).
"""
from __future__ import annotations

import math
import os

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.cpu import MeasuredRatios, cpu_model, finite_positive, paired_ratio

__all__ = ["Linear", "linear", "set_linear_kernel", "linear_kernel", "linear_choice", "cpu_model",
           "LINEAR_KERNELS", "OPS"]

LINEAR_KERNELS = ("auto", "torch", "onednn")
OPS = ("forward", "input_grad", "weight_grad")  # the three products of a training step
MIN_MACS = 1 << 22  # below ~4M multiply-adds a oneDNN call's fixed cost is not won back
WIDE_WEIGHT_GRAD = 128  # "onednn" policy: weight gradients of layers this wide (in or out) on oneDNN
WEIGHT_GRAD_ROWS = 4096  # oneDNN's weight gradient sums slices of at most this many tokens
MARGIN = 1.10  # oneDNN takes an operation only when F.linear's time / oneDNN's exceeds this
PROBE_MACS = 1 << 24  # multiply-adds per probe call: 4x MIN_MACS, where the per-call cost no longer dominates
PROBE_ROWS = (64, WEIGHT_GRAD_ROWS)  # probe token bounds
PROBE_REPS = 5  # paired repetitions per operation, after one warm-up of each kernel
_CACHE_SCHEMA = 2  # 2: the shared utils.cpu.CpuCache layout
_ONEDNN_BUILT = torch.backends.mkldnn.is_available()  # a property of the build: checked once
_kernel = "auto"


def set_linear_kernel(name: str) -> None:
    """Choose the CPU GEMM policy of :func:`linear`: ``"auto"`` (measured), ``"onednn"``, ``"torch"``."""
    global _kernel
    if name not in LINEAR_KERNELS:
        raise ValueError(f"unknown linear kernel {name!r}; expected one of {LINEAR_KERNELS}")
    _kernel = name


def linear_kernel() -> str:
    return _kernel


set_linear_kernel(os.environ.get("RELFORMER_LINEAR", "auto"))


# --- the two kernels, each operand dense --------------------------------------------------------------

def _dense(t: Tensor) -> Tensor:
    """``t`` row-major: a strided or expanded (stride-0) operand sends oneDNN to a pathological path."""
    return t if t.is_contiguous() else t.contiguous()


def _onednn(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    """``x w^T + b`` on oneDNN; callers pass row-major tensors or transposes of row-major ones."""
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def _input_grad_onednn(grad: Tensor, weight: Tensor) -> Tensor:
    """``dX = grad W``, ``(N, out), (out, in) -> (N, in)``, both row-major."""
    return _onednn(grad, weight.t().contiguous(), None)


def _weight_grad_onednn(grad: Tensor, x: Tensor) -> Tensor:
    """``dW = grad^T x``, ``(N, out), (N, in) -> (out, in)`` (both row-major), as a sum over equal slices
    of at most :data:`WEIGHT_GRAD_ROWS` tokens (oneDNN reduces a long token axis at a fraction of its
    rate on a short one); each product reads transposed views of row-major slices in place."""
    tokens = grad.shape[0]
    step = math.ceil(tokens / math.ceil(tokens / WEIGHT_GRAD_ROWS))  # equal slices, the last one shorter
    total = None
    for start in range(0, tokens, step):
        part = _wide_first_product(grad[start:start + step], x[start:start + step])
        total = part if total is None else total.add_(part)
    return total


def _wide_first_product(grad: Tensor, x: Tensor) -> Tensor:
    """``grad^T x`` on oneDNN with the wider of ``in``/``out`` as its output columns (the faster
    orientation measured)."""
    if x.shape[1] >= grad.shape[1]:
        return _onednn(grad.t(), x.t(), None)
    return _onednn(x.t(), grad.t(), None).t()


# --- the choice -------------------------------------------------------------------------------------

def _probe_pairs(in_features: int, out_features: int) -> dict[str, tuple]:
    """Per product, ``(F.linear's way, oneDNN's way)`` on seeded inputs of the layer's width (a private
    generator: the user's random stream is untouched). The input gradient's transposed weight copy is
    made outside the timing: once per backward, it is amortised over a real batch's tokens."""
    rows = min(max(math.ceil(PROBE_MACS / (in_features * out_features)), PROBE_ROWS[0]), PROBE_ROWS[1])
    g = torch.Generator().manual_seed(0)
    x, grad = torch.randn(rows, in_features, generator=g), torch.randn(rows, out_features, generator=g)
    w = torch.randn(out_features, in_features, generator=g) * in_features ** -0.5
    w_t = w.t().contiguous()  # (in, out)
    return {"forward": (lambda: F.linear(x, w), lambda: _onednn(x, w, None)),
            "input_grad": (lambda: grad.mm(w), lambda: _onednn(grad, w_t, None)),
            "weight_grad": (lambda: grad.t().mm(x), lambda: _weight_grad_onednn(grad, x))}


def _measure_ratios(in_features: int, out_features: int) -> dict[str, float]:
    """``{op: F.linear time / oneDNN time}`` for the three products at this width."""
    with torch.no_grad():
        return {op: paired_ratio(*ways, PROBE_REPS) for op, ways in _probe_pairs(in_features, out_features).items()}


def _valid_ratios(entry) -> bool:
    return isinstance(entry, dict) and set(entry) == set(OPS) and all(finite_positive(v) for v in entry.values())


_MEASURED = MeasuredRatios("linear", _CACHE_SCHEMA, _valid_ratios)  # {"in x out": {op: ratio}} per thread count


def _measured(in_features: int, out_features: int, remeasure: bool = False) -> tuple[dict[str, float], str]:
    """This width's ratios and where they came from (``"process"``, ``"disk"``, ``"measured"``)."""
    return _MEASURED.get(f"{in_features}x{out_features}", lambda: _measure_ratios(in_features, out_features),
                         remeasure)


def linear_choice(in_features: int, out_features: int, remeasure: bool = False) -> dict:
    """The kernel of each product of a ``Linear(in_features, out_features)`` on a large fp32 CPU input
    under the current policy: ``{"policy", "source", "ops": {op: "onednn" | "torch"}, "ratios": {op:
    F.linear time / oneDNN time} or None, "cpu", "threads"}``. Under ``"auto"`` it measures the width
    the first time (module doc); the answer then stays the same for the process, unless ``remeasure``
    (for benchmarks: measure now, on a quiet machine, and replace the cached answer)."""
    if not (isinstance(in_features, int) and isinstance(out_features, int) and in_features > 0 and out_features > 0):
        raise ValueError(f"in_features and out_features must be positive ints, got {in_features!r}, {out_features!r}")
    if not _ONEDNN_BUILT or _kernel == "torch":
        ratios, source, flags = None, "forced" if _ONEDNN_BUILT else "no oneDNN in this build", (False,) * 3
    else:
        ratios, source = (None, "forced") if _kernel == "onednn" else _measured(in_features, out_features, remeasure)
        flags = _onednn_ops(in_features, out_features)
    ops = {op: "onednn" if on else "torch" for op, on in zip(OPS, flags)}
    return {"policy": _kernel, "source": source, "ops": ops, "ratios": ratios, "cpu": cpu_model(),
            "threads": torch.get_num_threads()}


def _onednn_ops(in_features: int, out_features: int) -> tuple[bool, bool, bool]:
    """``(forward, input_grad, weight_grad)`` on oneDNN? -- :func:`linear_choice` without its report (the
    hot path), for a policy other than ``"torch"``."""
    if _kernel == "onednn":
        return True, True, max(in_features, out_features) >= WIDE_WEIGHT_GRAD
    ratios = _measured(in_features, out_features)[0]  # the process's answer first, without a lock
    return ratios["forward"] > MARGIN, ratios["input_grad"] > MARGIN, ratios["weight_grad"] > MARGIN  # OPS order


# --- the layer --------------------------------------------------------------------------------------

def _eligible(x: Tensor, w: Tensor) -> bool:
    """A product oneDNN may take: large fp32 on CPU, outside autocast and compile."""
    return (_kernel != "torch" and x.numel() * w.shape[0] >= MIN_MACS and _ONEDNN_BUILT  # cheapest first
            and x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


class _ChosenLinear(torch.autograd.Function):
    """``y = x W^T + b``, each of the three products on the kernel chosen for it (``ops``, a
    ``(forward, input_grad, weight_grad)`` tuple of "on oneDNN?"); ``db = sum dY``. ``x`` and ``W``
    arrive row-major; the upstream gradient is made row-major here."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None, ops: tuple[bool, bool, bool]) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias, ctx.ops = bias is not None, ops
        return _onednn(x, weight, bias) if ops[0] else F.linear(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad2 = _dense(grad.reshape(-1, grad.shape[-1]))  # (N, out); expanded by y.sum() -> materialised
        x2 = x.view(-1, x.shape[-1])  # (N, in)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (_input_grad_onednn(grad2, weight) if ctx.ops[1] else grad2.mm(weight)).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad_onednn(grad2, x2) if ctx.ops[2] else grad2.t().mm(x2)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad2.sum(0)
        return grad_x, grad_w, grad_b, None


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, ``(..., in) -> (..., out)``, each product on the kernel chosen for
    this CPU and width (module doc)."""
    if not _eligible(x, weight):
        return F.linear(x, weight, bias)
    ops = _onednn_ops(weight.shape[1], weight.shape[0])
    if not (ops[0] or ops[1] or ops[2]):  # every product on F.linear (the common answer on some CPUs)
        return F.linear(x, weight, bias)
    training = torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                            or (bias is not None and bias.requires_grad))
    if not (any(ops) if training else ops[0]):
        return F.linear(x, weight, bias)
    x, weight = _dense(x), _dense(weight)
    bias = None if bias is None else _dense(bias)
    if training:
        return _ChosenLinear.apply(x, weight, bias, ops)
    return _onednn(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and init) whose forward is :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
