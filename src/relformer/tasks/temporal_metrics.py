"""Dynamic link-prediction metrics as DyGLib (Yu et al. 2023) and TGB (Huang et al. 2023) report them.

* :func:`link_prediction_metrics`: average precision and AUC-ROC (scikit-learn's
  ``average_precision_score`` / ``roc_auc_score``) over ``P`` positive and ``Q`` negative scores,
  labels 1 / 0.
* :func:`mrr`: mean reciprocal rank of each positive among its ``K`` negatives (TGB's one-vs-many,
  ``K = 100``). Ties follow TGB (and OGB): ``rank = 1 + (#neg > pos + #neg >= pos) / 2``, the mean of
  the optimistic and the pessimistic rank, so a constant scorer gets ``1 / (1 + K / 2)``, not 1.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

__all__ = ["link_prediction_metrics", "mrr", "reciprocal_ranks"]


def _scores(name: str, x, dims: int) -> Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a tensor or numpy array, got {type(x).__name__}")
    if x.dim() != dims or not (x.is_floating_point() or x.dtype in (torch.int32, torch.int64, torch.bool)):
        raise ValueError(f"{name} must be a {dims}-D tensor of real scores, got {x.dtype} {tuple(x.shape)}")
    x = x.detach().double().cpu()
    if x.numel() == 0:
        raise ValueError(f"{name} is empty")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} holds NaN or inf (first at flat index {int((~torch.isfinite(x)).flatten().nonzero()[0])})")
    return x


def link_prediction_metrics(pos_scores, neg_scores) -> dict[str, float]:
    """``{"ap", "auc"}`` for ``pos_scores (P,)`` (label 1) and ``neg_scores (Q,)`` (label 0)."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    pos, neg = _scores("pos_scores", pos_scores, 1), _scores("neg_scores", neg_scores, 1)
    y = np.concatenate([np.ones(pos.numel()), np.zeros(neg.numel())])
    s = torch.cat([pos, neg]).numpy()
    return {"ap": float(average_precision_score(y, s)), "auc": float(roc_auc_score(y, s))}


def reciprocal_ranks(pos_scores, neg_scores) -> Tensor:
    """``(P,)`` float64 ``1 / rank`` of each positive ``pos_scores (P,)`` among its negatives
    ``neg_scores (P, K)``, ties as TGB (the module docstring)."""
    pos, neg = _scores("pos_scores", pos_scores, 1), _scores("neg_scores", neg_scores, 2)
    if neg.shape[0] != pos.shape[0]:
        raise ValueError(f"neg_scores has {neg.shape[0]} rows for {pos.shape[0]} positives (expected (P, K))")
    optimistic = (neg > pos[:, None]).sum(1)
    pessimistic = (neg >= pos[:, None]).sum(1)
    return 1.0 / (1.0 + 0.5 * (optimistic + pessimistic).double())


def mrr(pos_scores, neg_scores) -> float:
    """Mean reciprocal rank of ``pos_scores (P,)`` against ``neg_scores (P, K)``."""
    return float(reciprocal_ranks(pos_scores, neg_scores).mean())
