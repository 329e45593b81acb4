"""Normalization layers for token sets: LayerNorm, RMSNorm, CRMSNorm, token BatchNorm, Unified Norm.

Every layer normalizes the last (channel) dimension of ``(..., C)`` token tensors. The
batch-statistic layers (:class:`TokenBatchNorm`, :class:`UnifiedNorm`) also take packed
tokens ``(N, C)`` or padded ``(B, L, C)`` with a bool ``mask (B, L)`` of valid tokens, and
compute their statistics over valid tokens only.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["LayerNorm", "RMSNorm", "CRMSNorm", "TokenBatchNorm", "UnifiedNorm"]

LayerNorm = nn.LayerNorm


def _upcast(x: Tensor) -> Tensor:
    """fp16 / bf16 -> fp32 for the statistics; fp32 and fp64 stay as they are."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019): ``y = x / sqrt(mean(x^2) + eps) * weight``.

    Computed in (at least) fp32 and cast back to the input dtype.
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = True) -> None:
        super().__init__()
        self.dim, self.eps = int(dim), float(eps)
        self.weight = nn.Parameter(torch.ones(self._features())) if elementwise_affine else None

    def _features(self) -> int:
        return self.dim

    def _mean_square(self, x: Tensor) -> Tensor:  # (..., C) -> (..., 1)
        return x.pow(2).mean(-1, keepdim=True)

    def forward(self, x: Tensor) -> Tensor:  # (..., C) -> (..., C)
        if x.shape[-1] != self._features():
            raise ValueError(f"{type(self).__name__}(dim={self.dim}) expects {self._features()} features, "
                             f"got {x.shape[-1]}")
        xf = _upcast(x)
        y = xf * torch.rsqrt(self._mean_square(xf) + self.eps)
        if self.weight is not None:
            y = y * self.weight.to(y.dtype)
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.dim}, eps={self.eps}, elementwise_affine={self.weight is not None}"


class CRMSNorm(RMSNorm):
    """Compressed RMSNorm (Jiang et al., "Pre-RMSNorm and Pre-CRMSNorm Transformers", NeurIPS 2023).

    A zero-mean vector in R^d is stored as its first ``d - 1`` coordinates ``x``; the last one
    is ``-sum(x)``. CRMSNorm is RMSNorm of the full vector, returned compressed::

        CRMSNorm(x) = x / sqrt((||x||^2 + (sum x)^2) / d + eps)

    Args:
        dim: ``d``, the *uncompressed* width; inputs have ``d - 1`` features.
        eps: as in RMSNorm / LayerNorm (identical function on zero-mean inputs).
        elementwise_affine: a ``(d - 1,)`` gain; off by default since the conversion of
            :mod:`relformer.nn.convert` folds the gain into the following linear layers.
    """

    def __init__(self, dim: int, eps: float = 1e-6, elementwise_affine: bool = False) -> None:
        if dim < 2:
            raise ValueError(f"CRMSNorm needs dim >= 2 (inputs have dim - 1 features), got {dim}")
        super().__init__(dim, eps, elementwise_affine)

    def _features(self) -> int:
        return self.dim - 1

    def _mean_square(self, x: Tensor) -> Tensor:  # (..., d - 1) -> (..., 1), over the full d-vector
        return (x.pow(2).sum(-1, keepdim=True) + x.sum(-1, keepdim=True).pow(2)) / self.dim


def _pack(x: Tensor, mask: Tensor | None, num_features: int) -> Tensor:
    """Valid tokens as ``(N, C)``: ``x (N, C)``, or ``(B, L, C)`` with optional ``mask (B, L)``."""
    if x.dim() not in (2, 3):
        raise ValueError(f"expected packed (N, C) or padded (B, L, C) tokens, got shape {tuple(x.shape)}")
    if x.shape[-1] != num_features:
        raise ValueError(f"expected {num_features} channels, got {x.shape[-1]}")
    if mask is None:
        return x.reshape(-1, num_features)
    if x.dim() != 3 or mask.dtype != torch.bool or mask.shape != x.shape[:2]:
        raise ValueError(f"mask must be a bool (B, L) tensor for (B, L, C) input; got mask "
                         f"{tuple(mask.shape)} {mask.dtype} for x {tuple(x.shape)}")
    return x[mask]


def _unpack(y: Tensor, x: Tensor, mask: Tensor | None) -> Tensor:
    """Inverse of :func:`_pack`; padding positions are zero (and get no gradient)."""
    if mask is None:
        return y.reshape(x.shape)
    out = y.new_zeros(x.shape)
    out[mask] = y
    return out


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over tokens (Ioffe & Szegedy 2015), packing- and padding-aware.

    Statistics are taken over the valid tokens only, so padding never changes the result and
    the running statistics equal those of ``nn.BatchNorm1d`` fed the packed valid tokens
    (same parameters, buffers and ``state_dict`` keys).

    ``forward(x, mask=None)``: ``x (N, C)`` packed tokens, or ``(B, L, C)`` with an optional
    bool ``mask (B, L)`` (True = valid token). Padding positions of the output are zero.
    """

    def __init__(self, dim: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        super().__init__(dim, eps=eps, momentum=momentum, affine=affine, track_running_stats=track_running_stats)

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return _unpack(super().forward(_pack(x, mask, self.num_features)), x, mask)


class _UNFunction(torch.autograd.Function):
    """UN's normalization with the smoothed gradient statistic of its backward pass (UN's backward framework)."""

    @staticmethod
    def forward(ctx, x, weight, bias, var, norm):  # x (N, C), var (C,)
        inv_std = torch.rsqrt(var + norm.eps)  # (C,)
        z = x * inv_std
        ctx.norm, ctx.skip, ctx.iteration = norm, norm._skipped, int(norm.iters)
        ctx.has_weight, ctx.has_bias = weight is not None, bias is not None
        ctx.save_for_backward(z, inv_std, weight)
        y = z if weight is None else z * weight
        return y if bias is None else y + bias

    @staticmethod
    def backward(ctx, grad_y):  # grad_y (N, C)
        z, inv_std, weight = ctx.saved_tensors
        g = grad_y if weight is None else grad_y * weight  # dL/dz
        g_var = (g * z).mean(0)  # (C,) this iteration's gradient statistic g_{sigma^2}
        psi = ctx.norm._grad_statistic(g_var, ctx.skip, ctx.iteration)
        grad_x = inv_std * (g - psi * z)
        grad_w = (grad_y * z).sum(0) if ctx.has_weight and ctx.needs_input_grad[1] else None
        grad_b = grad_y.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b, None, None


class UnifiedNorm(nn.Module):
    """Unified Normalization (Yang et al., "Unified Normalization for Accelerating and Stabilizing
    Transformers", ACM MM 2022).

    An *offline* normalization: at inference ``y = weight * x / sqrt(running_var + eps) + bias``
    is a fixed per-channel affine map, so it folds into the adjacent linear layer
    (:meth:`fused_linear`, :meth:`fuse_into`). Training follows the paper's unified framework
    with its two strategies, as in the authors' reference code (``UN1d``):

    * **no centering**: ``mu_hat = 0``; the activation statistic of iteration t is the
      per-channel second moment ``sigma_t^2 = mean(x^2)`` over the batch's valid tokens.
    * **fluctuation smoothing**: forward uses the geometric mean of the last
      ``M = window`` statistics, ``sigma_hat_t^2 = (prod_i sigma_{t-i}^2)^(1/M)``; backward
      uses ``dL/dx = (g - psi_t * z) / sqrt(sigma_hat_t^2 + eps)`` with ``g = dL/dz`` and the
      gradient statistic ``psi_t = alpha * psi_{t-1} + (1 - alpha) * mean_i g_{t-i}`` where
      ``g_t = mean(g * z)`` (window-mean, then exponential moving average).
    * **adaptive outlier filtration**: with ``Omega_t`` the window of statistics, the
      batch is an outlier when ``AM(Omega_t) - GM(Omega_t) > M * Var(Omega_{t-1}^(1/2))`` in any
      channel. The AM-GM gap of a window is always bounded by ``M * Var`` of *that same*
      window's square roots, so, as in the reference code, the threshold uses the window
      *before* this batch was inserted (unbiased variance). For an outlier batch all moving
      averages are dropped for this iteration (``sigma_hat_t^2 = sigma_t^2``, ``psi_t = g_t``)
      and its slot in the window is filled with the running statistic instead, so the outlier
      never enters later windows. ``skipped`` counts filtered batches.

    Smoothing and filtration start once ``warmup_iters`` iterations have run and the window is
    full; before that the current batch statistic is used. ``running_var`` tracks the
    statistic actually used, ``running = alpha * running + (1 - alpha) * sigma_hat_t^2``.

    Simplifications against the reference code: the gradient "compensation" ratio ``r`` (a
    clamp of ``sqrt(sigma_hat_t^2 / running_var)`` applied to ``g`` after 1000 iterations,
    which the paper's equations do not contain) is left out; the weight gradient is the exact
    ``sum(dL/dy * z)``. The filtration check also waits until the window is full (the
    reference may compare against a zero-filled window right after warm-up). Statistics are
    module state updated in ``forward``/``backward``, so run each training forward exactly
    once (no activation checkpointing through this layer).

    Args:
        dim: channels ``C``.
        window: ``M``, the number of recent iterations averaged (reference default 4).
        warmup_iters: iterations before smoothing/filtration start (reference default 4000).
        outlier_filtration: enable the filtration (the reference suggests off for NLP, on for CV).
        eps: added to the variance.
        alpha: moving-average factor of ``running_var`` and ``psi`` (the paper's alpha, 0.9).
        elementwise_affine: learnable ``weight`` / ``bias``.

    ``forward(x, mask=None)``: ``x (..., C)``, or ``(B, L, C)`` with a bool ``mask (B, L)`` of
    valid tokens (padding positions of the output are zero).
    """

    def __init__(self, dim: int, window: int = 4, warmup_iters: int = 4000, outlier_filtration: bool = True,
                 eps: float = 1e-5, alpha: float = 0.9, elementwise_affine: bool = True) -> None:
        super().__init__()
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 0.0 <= alpha < 1.0:
            raise ValueError(f"alpha must be in [0, 1), got {alpha}")
        self.dim, self.window, self.warmup_iters = int(dim), int(window), int(warmup_iters)
        self.outlier_filtration, self.eps, self.alpha = bool(outlier_filtration), float(eps), float(alpha)
        self.weight = nn.Parameter(torch.ones(dim)) if elementwise_affine else None
        self.bias = nn.Parameter(torch.zeros(dim)) if elementwise_affine else None
        self.register_buffer("running_var", torch.ones(dim))
        self.register_buffer("grad_stat", torch.zeros(dim))             # psi_{t}
        self.register_buffer("var_window", torch.zeros(window, dim))    # Omega_t: recent sigma^2
        self.register_buffer("grad_window", torch.zeros(window, dim))   # recent g_{sigma^2}
        self.register_buffer("iters", torch.zeros((), dtype=torch.long))
        self.register_buffer("skipped", torch.zeros((), dtype=torch.long))
        self._skipped = False

    def _smoothing(self, t: int) -> bool:
        return self.window > 1 and t >= self.warmup_iters and t >= self.window

    @torch.no_grad()
    def _activation_statistic(self, x2: Tensor) -> Tensor:
        """``sigma_hat_t^2`` for this iteration; updates the window, ``running_var`` and ``skipped``."""
        self.iters += 1
        t, slot = int(self.iters), (int(self.iters) - 1) % self.window
        previous = self.var_window.clone()
        self.var_window[slot] = x2
        self._skipped = False
        if self.outlier_filtration and self._smoothing(t):
            am = self.var_window.mean(0)
            gm = self.var_window.log().mean(0).exp()
            threshold = self.window * previous.sqrt().var(0)
            if bool((am - gm > threshold).any()):
                self._skipped = True
                self.skipped += 1
                self.var_window[slot] = self.running_var
        if self._skipped or not self._smoothing(t):
            var = x2
        else:
            var = self.var_window.log().mean(0).exp()  # geometric mean, computed in log space
        self.running_var.mul_(self.alpha).add_((1 - self.alpha) * var)
        return var

    @torch.no_grad()
    def _grad_statistic(self, g_var: Tensor, skip: bool, t: int) -> Tensor:
        """``psi_t`` from this iteration's gradient statistic ``g_var (C,)``; updates the state."""
        g_var = g_var.to(self.grad_stat.dtype)
        self.grad_window[(t - 1) % self.window] = self.grad_stat if skip else g_var
        mean = g_var if (skip or not self._smoothing(t)) else self.grad_window.mean(0)
        self.grad_stat.mul_(self.alpha).add_((1 - self.alpha) * mean)
        return (mean if skip else self.grad_stat).to(g_var.dtype)

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """Inference map ``y = x * scale + shift``: ``scale = weight / sqrt(running_var + eps)``."""
        scale = torch.rsqrt(self.running_var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = self.bias if self.bias is not None else torch.zeros_like(scale)
        return scale, shift

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        if x.shape[-1] != self.dim:
            raise ValueError(f"expected {self.dim} channels, got {x.shape[-1]}")
        tokens = x.reshape(-1, self.dim) if mask is None else _pack(x, mask, self.dim)  # (N, C) valid tokens
        if not self.training:
            scale, shift = self.scale_shift()
            y = tokens * scale.to(x.dtype) + shift.to(x.dtype)
        else:
            if tokens.shape[0] == 0:
                raise ValueError("UnifiedNorm in training needs at least one valid token")
            var = self._activation_statistic(_upcast(tokens.detach()).pow(2).mean(0).to(self.running_var.dtype))
            y = _UNFunction.apply(tokens, self.weight, self.bias, var.to(tokens.dtype), self)
        return _unpack(y, x, mask)

    @torch.no_grad()
    def fused_linear(self, linear: nn.Linear) -> nn.Linear:
        """A new ``nn.Linear`` equal to ``linear(self(x))`` in eval mode (W' = W diag(scale), b' = b + W shift)."""
        scale, shift = self.scale_shift()
        if linear.in_features != self.dim:
            raise ValueError(f"linear.in_features is {linear.in_features}, the norm has {self.dim} channels")
        w = linear.weight
        fused = nn.Linear(linear.in_features, linear.out_features, bias=True, device=w.device, dtype=w.dtype)
        fused.weight.copy_(w * scale.to(w.dtype))
        b = w @ shift.to(w.dtype)
        fused.bias.copy_(b if linear.bias is None else b + linear.bias)
        return fused

    @torch.no_grad()
    def fuse_into(self, linear: nn.Linear) -> nn.Linear:
        """Fold the inference-time normalization into ``linear`` in place (it must have a bias) and return it.

        Afterwards ``linear(x)`` equals the old ``linear(norm(x))`` in eval mode; replace the
        norm with ``nn.Identity()``.
        """
        if linear.bias is None:
            raise ValueError("fuse_into needs a linear layer with a bias; use fused_linear() instead")
        fused = self.fused_linear(linear)
        linear.weight.copy_(fused.weight)
        linear.bias.copy_(fused.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"{self.dim}, window={self.window}, warmup_iters={self.warmup_iters}, "
                f"outlier_filtration={self.outlier_filtration}, eps={self.eps}, alpha={self.alpha}")
