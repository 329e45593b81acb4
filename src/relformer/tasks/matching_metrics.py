"""Matching metrics: homography accuracy from matches, match precision, flow and stereo errors.

Homography protocol of HPatches as LoFTR (Sun et al. 2021, §4.1) and LightGlue (Lindenberger et al.
2023, §5.1; glue-factory's ``homography_corner_error`` and ``AUCMetric``) report it:

* estimate ``H`` from the matches with a robust estimator (OpenCV's USAC MAGSAC++, else RANSAC);
* corner error: the mean distance, over the 4 image corners ``(0, 0), (w, 0), (w, h), (0, h)``,
  between the corners mapped by the estimate and by the ground truth; ``inf`` when estimation fails;
* AUC@t: the area under the cumulative error curve up to ``t`` pixels, divided by ``t``; the curve
  joins ``(0, 0)`` and the points ``(e_(i), i / N)`` of the sorted errors below ``t`` linearly and
  stays flat from the last of them to ``t``; failures count in ``N`` and never reach the curve.

Match precision at ``t`` px: the share of matches whose symmetric reprojection error under the
ground-truth ``H``, ``(|H x0 - x1| + |H^-1 x1 - x0|) / 2`` (glue-factory's ``sym_homography_error``),
is below ``t``; 0 for no matches (as glue-factory counts them). Dense flow and stereo: end-point
error (mean ``|pred - gt|`` over pixels with known ground truth) and the bad-pixel rate (share of
those pixels with error above ``t``, 3 px by default as in KITTI's D1 outlier threshold).
"""
from __future__ import annotations

from typing import Sequence

import cv2
import numpy as np

from ..data.matching.homography import warp_points

__all__ = ["estimate_homography", "corner_error", "error_auc", "reprojection_error", "match_precision",
           "endpoint_error", "bad_pixel_rate", "AUC_THRESHOLDS"]

AUC_THRESHOLDS = (3.0, 5.0, 10.0)
_ROBUST = getattr(cv2, "USAC_MAGSAC", cv2.RANSAC)


def _points(points, name: str) -> np.ndarray:
    array = np.asarray(points, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"{name} must be (N, 2) points, got shape {array.shape}")
    return array


def _homography(H, name: str) -> np.ndarray:
    array = np.asarray(H, dtype=np.float64)
    if array.shape != (3, 3):
        raise ValueError(f"{name} must be a (3, 3) homography, got shape {array.shape}")
    return array


def estimate_homography(kpts0, kpts1, threshold: float = 3.0, confidence: float = 0.999,
                        max_iters: int = 10000) -> np.ndarray | None:
    """``H (3, 3)`` mapping ``kpts0 (N, 2)`` onto ``kpts1 (N, 2)`` by ``cv2.findHomography`` with USAC
    MAGSAC++ (RANSAC where OpenCV lacks it), inlier threshold ``threshold`` px; None when fewer
    than 4 finite matches or when the estimator finds no model."""
    kpts0, kpts1 = _points(kpts0, "kpts0"), _points(kpts1, "kpts1")
    if len(kpts0) != len(kpts1):
        raise ValueError(f"kpts0 and kpts1 must have one row per match, got {len(kpts0)} and {len(kpts1)}")
    finite = np.isfinite(kpts0).all(axis=1) & np.isfinite(kpts1).all(axis=1)
    kpts0, kpts1 = kpts0[finite], kpts1[finite]
    if len(kpts0) < 4:
        return None
    H, _ = cv2.findHomography(kpts0, kpts1, _ROBUST, threshold, confidence=confidence, maxIters=max_iters)
    if H is None or H.shape != (3, 3) or not np.isfinite(H).all():
        return None
    return H


def corner_error(H_est, H_gt, width: float, height: float) -> float:
    """Mean distance of the 4 image corners mapped by ``H_est`` and ``H_gt``; ``inf`` for a missing
    (None) or degenerate estimate."""
    H_gt = _homography(H_gt, "H_gt")
    if width <= 0 or height <= 0:
        raise ValueError(f"width and height must be positive, got {width}, {height}")
    if H_est is None:
        return float("inf")
    corners = np.array([[0.0, 0.0], [width, 0.0], [width, height], [0.0, height]])
    distance = np.linalg.norm(warp_points(corners, _homography(H_est, "H_est")) - warp_points(corners, H_gt), axis=1)
    return float(distance.mean()) if np.isfinite(distance).all() else float("inf")


def error_auc(errors: Sequence[float], thresholds: Sequence[float] = AUC_THRESHOLDS) -> dict[float, float]:
    """``{t: AUC@t}`` in [0, 1] of ``errors`` (one per pair; NaN and ``inf`` are failures): the
    recall curve of the module docstring integrated by the trapezoid rule up to ``t``, over ``t``."""
    errors = np.asarray(errors, dtype=np.float64).ravel()
    if errors.size == 0:
        raise ValueError("errors is empty: the AUC needs at least one pair")
    if any(t <= 0 for t in thresholds):
        raise ValueError(f"thresholds must be positive, got {thresholds}")
    errors = np.sort(np.where(np.isnan(errors), np.inf, errors))
    curve_x = np.concatenate([[0.0], errors])
    curve_y = np.arange(errors.size + 1) / errors.size
    aucs = {}
    for t in thresholds:
        inside = int(np.searchsorted(curve_x, t))  # points of the curve with error < t
        x = np.concatenate([curve_x[:inside], [t]])
        y = np.concatenate([curve_y[:inside], [curve_y[inside - 1]]])
        aucs[float(t)] = float(np.trapezoid(y, x) / t)
    return aucs


def reprojection_error(kpts0, kpts1, H_gt) -> np.ndarray:
    """``(N,)`` symmetric reprojection error of the matches ``kpts0 -> kpts1`` under ``H_gt``."""
    kpts0, kpts1, H_gt = _points(kpts0, "kpts0"), _points(kpts1, "kpts1"), _homography(H_gt, "H_gt")
    if len(kpts0) != len(kpts1):
        raise ValueError(f"kpts0 and kpts1 must have one row per match, got {len(kpts0)} and {len(kpts1)}")
    forward = np.linalg.norm(warp_points(kpts0, H_gt) - kpts1, axis=1)
    backward = np.linalg.norm(warp_points(kpts1, np.linalg.inv(H_gt)) - kpts0, axis=1)
    return np.nan_to_num((forward + backward) / 2, nan=np.inf)


def match_precision(kpts0, kpts1, H_gt, threshold: float = 3.0) -> float:
    """Share of the matches with symmetric reprojection error below ``threshold`` px; 0 if none."""
    error = reprojection_error(kpts0, kpts1, H_gt)
    return float((error < threshold).mean()) if error.size else 0.0


def _dense_error(pred, gt, valid) -> np.ndarray:
    """Per-pixel error at the pixels with known ground truth: ``|pred - gt|`` for disparity
    ``(h, w)``, the Euclidean norm for flow ``(h, w, 2)``."""
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    if pred.shape != gt.shape or not (gt.ndim == 2 or (gt.ndim == 3 and gt.shape[2] == 2)):
        raise ValueError(f"pred and gt must both be (h, w) disparity or (h, w, 2) flow, got {pred.shape} and {gt.shape}")
    known = np.isfinite(gt) if gt.ndim == 2 else np.isfinite(gt).all(axis=2)
    if valid is not None:
        valid = np.asarray(valid, dtype=bool)
        if valid.shape != known.shape:
            raise ValueError(f"valid must be {known.shape}, got {valid.shape}")
        known &= valid
    if not known.any():
        raise ValueError("no pixel has known ground truth (gt is all NaN or valid all False)")
    difference = (pred - gt)[known]
    if not np.isfinite(difference).all():
        raise ValueError(f"pred is not finite at {int((~np.isfinite(difference)).sum())} pixels with known ground "
                         "truth: fill the holes of a prediction before scoring it")
    return np.abs(difference) if gt.ndim == 2 else np.linalg.norm(difference, axis=1)


def endpoint_error(pred, gt, valid=None) -> float:
    """Mean end-point error over pixels with finite ``gt`` (and ``valid`` where given)."""
    return float(_dense_error(pred, gt, valid).mean())


def bad_pixel_rate(pred, gt, valid=None, threshold: float = 3.0) -> float:
    """Share of the pixels with finite ``gt`` (and ``valid``) whose error exceeds ``threshold`` px."""
    return float((_dense_error(pred, gt, valid) > threshold).mean())
