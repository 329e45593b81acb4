"""Linear attention (Katharopoulos et al. 2020, "Transformers are RNNs", eq. 4-6), the attention of
LoFTR (Sun et al. 2021): softmax's ``exp(q . k)`` is replaced by ``phi(q) . phi(k)`` with the
feature map ``phi(x) = elu(x) + 1``, so the sums over keys are taken once::

    out_i = phi(q_i)^T (sum_j phi(k_j) v_j^T) / (phi(q_i)^T sum_j phi(k_j) + eps)

O(L D Dv) time and memory instead of O(Lq Lk). Masks (padded positions of an image pair of
different sizes) drop keys from both sums and give padded queries a zero output with zero gradients.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["linear_attention", "elu_feature_map"]


def elu_feature_map(x: Tensor) -> Tensor:
    """``phi(x) = elu(x) + 1`` (Katharopoulos et al. 2020, sec. 3.2.1): positive (in floating point >= 0,
    the normaliser's ``eps`` covers an all-zero row)."""
    return F.elu(x) + 1


def _check_mask(name: str, mask: Tensor | None, B: int, L: int) -> Tensor | None:
    if mask is None:
        return None
    if not isinstance(mask, Tensor):
        raise ValueError(f"{name} must be a tensor or None, got {type(mask).__name__}")
    if mask.shape != (B, L):
        raise ValueError(f"{name} must have shape (B, L) = {(B, L)}, got {tuple(mask.shape)}")
    if mask.dtype != torch.bool:
        raise ValueError(f"{name} must be a bool tensor (True = a real position), got {mask.dtype}")
    return mask


def _check(q: Tensor, k: Tensor, v: Tensor, eps: float) -> None:
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, Tensor):
            raise ValueError(f"{name} must be a tensor, got {type(t).__name__}")
        if t.dim() != 4 or not t.is_floating_point():
            raise ValueError(f"{name} must be a 4-D (B, H, L, D) floating-point tensor, got {tuple(t.shape)} {t.dtype}")
    if not (q.dtype == k.dtype == v.dtype) or not (q.device == k.device == v.device):
        raise ValueError("q, k, v must share a dtype and a device")
    if k.shape[:3] != v.shape[:3] or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]:
        raise ValueError(f"shapes do not fit: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} "
                         "(q, k share (B, H, D); k, v share (B, H, Lk))")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps must be a finite positive number, got {eps!r}")


def linear_attention(q: Tensor, k: Tensor, v: Tensor, q_mask: Tensor | None = None, kv_mask: Tensor | None = None,
                     eps: float = 1e-6, feature_map=elu_feature_map) -> Tensor:
    """Linear attention with the feature map ``phi`` (module doc).

    Args:
        q: ``(B, H, Lq, D)``; k: ``(B, H, Lk, D)``; v: ``(B, H, Lk, Dv)``.
        q_mask: ``(B, Lq)`` bool, False for padded queries (their output is zero).
        kv_mask: ``(B, Lk)`` bool, False for padded keys (left out of both sums).
        eps: added to the normaliser (a query that sees no key gets zero, not NaN).

    Returns:
        ``(B, H, Lq, Dv)`` in the dtype of ``q``; computed in float32 (float64 for float64 inputs).
    """
    _check(q, k, v, eps)
    B, _, Lq, _ = q.shape
    q_mask = _check_mask("q_mask", q_mask, B, Lq)
    kv_mask = _check_mask("kv_mask", kv_mask, B, k.shape[2])
    work = torch.float64 if q.dtype == torch.float64 else torch.float32
    phi_q, phi_k, v_ = feature_map(q.to(work)), feature_map(k.to(work)), v.to(work)
    if kv_mask is not None:
        keep = kv_mask[:, None, :, None]  # (B, 1, Lk, 1); where, not a product: a NaN there stays out
        phi_k, v_ = phi_k.where(keep, 0.0), v_.where(keep, 0.0)
    kv = phi_k.transpose(-2, -1) @ v_  # (B, H, D, Dv)
    k_sum = phi_k.sum(dim=2).unsqueeze(-1)  # (B, H, D, 1)
    out = (phi_q @ kv) / (phi_q @ k_sum + eps)  # (B, H, Lq, Dv)
    if q_mask is not None:
        out = out.where(q_mask[:, None, :, None], 0.0)
    return out.to(q.dtype)
