"""Linear layers on the faster of PyTorch's two CPU GEMMs.

PyTorch's fp32 ``F.linear`` on CPU calls the BLAS it was built with (MKL's sgemm in the x86
wheels). The same wheels carry oneDNN, whose matmul ``torch.compile``'s CPU backend emits for
linear layers (``torch.ops.mkldnn._linear_pointwise``). On the AMD EPYC (AVX-512) this project is
measured on, oneDNN runs the projections of ViT/Swin at 1.3-2.3x MKL's rate forward (1.1-1.8x
for forward + both gradients; ``bench/linear.py`` -> ``bench/results/linear.md``), so :func:`linear` sends large fp32 CPU
products there; everything else (other devices and dtypes, autocast, ``torch.compile``, products
under :data:`MIN_MACS`, where a oneDNN call's fixed cost dominates) stays on ``F.linear``.

Training: the forward and the input gradient run on oneDNN; the weight gradient
``dW = dY^T X`` (a reduction over the tokens) too when the layer is at least
:data:`WIDE_WEIGHT_GRAD` wide, in slices of at most :data:`WEIGHT_GRAD_ROWS` tokens summed
(oneDNN reduces a long token axis at a fraction of its rate on a short one), else on ``torch.mm``.

The oneDNN path has no double backward (``create_graph=True`` through it raises); gradient
penalties and other higher-order uses need ``set_linear_kernel("torch")``.

``RELFORMER_LINEAR=torch`` in the environment, or :func:`set_linear_kernel("torch")`, turns the
oneDNN path off (``"onednn"`` allows it on any platform, ``"auto"``, the default, on x86-64).
"""
from __future__ import annotations

import math
import os
import platform

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Linear", "linear", "set_linear_kernel", "linear_kernel", "LINEAR_KERNELS"]

LINEAR_KERNELS = ("auto", "torch", "onednn")
MIN_MACS = 1 << 22  # below ~4M multiply-adds a oneDNN call's fixed ~20 us is not won back
WIDE_WEIGHT_GRAD = 128  # weight gradients of layers this wide (in or out) are faster on oneDNN
WEIGHT_GRAD_ROWS = 4096  # ... when its reduction over the tokens is cut into slices of at most this many
_X86 = platform.machine().lower() in ("x86_64", "amd64")
_ONEDNN_BUILT = torch.backends.mkldnn.is_available()  # a property of the build: checked once
_kernel = "auto"


def set_linear_kernel(name: str) -> None:
    """Choose the CPU GEMM of :func:`linear`: ``"auto"`` (oneDNN on x86-64), ``"onednn"``, ``"torch"``."""
    global _kernel
    if name not in LINEAR_KERNELS:
        raise ValueError(f"unknown linear kernel {name!r}; expected one of {LINEAR_KERNELS}")
    _kernel = name


def linear_kernel() -> str:
    return _kernel


set_linear_kernel(os.environ.get("RELFORMER_LINEAR", "auto"))


def _onednn(x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, w, b, "none", [], "")


def _use_onednn(x: Tensor, w: Tensor) -> bool:
    if _kernel == "torch" or (_kernel == "auto" and not _X86):
        return False
    return (x.device.type == "cpu" and x.dtype == torch.float32 and w.dtype == torch.float32
            and x.numel() * w.shape[0] >= MIN_MACS and _ONEDNN_BUILT and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu") and not torch.compiler.is_compiling())


def _weight_grad(grad: Tensor, x: Tensor) -> Tensor:
    """``dW = grad^T x``, ``(N, out), (N, in) -> (out, in)``: on oneDNN when the wider side is at least
    :data:`WIDE_WEIGHT_GRAD`, as a sum over equal slices of at most :data:`WEIGHT_GRAD_ROWS` tokens,
    else on ``torch.mm`` (faster for narrow layers). Every product reads transposed views in place."""
    out_features, in_features = grad.shape[1], x.shape[1]
    if max(out_features, in_features) < WIDE_WEIGHT_GRAD:
        return grad.t().mm(x)
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


class _OneDNNLinear(torch.autograd.Function):
    """``y = x W^T + b`` on oneDNN; backward: ``dX = dY W`` on oneDNN, ``dW = dY^T X`` (:func:`_weight_grad`),
    ``db = sum dY``."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return _onednn(x, weight, bias)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        x, weight = ctx.saved_tensors
        grad2 = grad.reshape(-1, grad.shape[-1])  # (N, out)
        grad_x = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = _onednn(grad2, weight.t().contiguous(), None).view(x.shape)
        if ctx.needs_input_grad[1]:
            grad_w = _weight_grad(grad2, x.reshape(-1, x.shape[-1]))
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = grad2.sum(0)
        return grad_x, grad_w, grad_b


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)``, ``(..., in) -> (..., out)``, on oneDNN where that is faster (module doc)."""
    if not _use_onednn(x, weight):
        return F.linear(x, weight, bias)
    weight = weight.contiguous()
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad
                                    or (bias is not None and bias.requires_grad)):
        return _OneDNNLinear.apply(x, weight, bias)
    return _onednn(x, weight, bias)


class Linear(nn.Linear):
    """``nn.Linear`` (same parameters, state dict and init) whose forward is :func:`linear`."""

    def forward(self, x: Tensor) -> Tensor:
        return linear(x, self.weight, self.bias)
