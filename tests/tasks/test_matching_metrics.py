"""Matching metrics against constructions whose answer is known by hand: a homography whose corners
move by known amounts, AUCs recomputed independently, matches with known reprojection errors, flow
and disparity with known errors on known pixels."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from relformer.tasks.matching_metrics import (bad_pixel_rate, corner_error, endpoint_error, error_auc,
                                              estimate_homography, match_precision, reprojection_error)

H_GT = np.array([[0.9, 0.08, 12.0], [-0.05, 1.1, -7.0], [1e-4, -2e-4, 1.0]])
W, H = 320.0, 240.0
CORNERS = np.array([[0.0, 0.0], [W, 0.0], [W, H], [0.0, H]])


def _apply(points, homography):
    projected = np.c_[points, np.ones(len(points))] @ homography.T
    return projected[:, :2] / projected[:, 2:]


def test_corner_error_of_known_corner_shifts():
    shifts = np.array([[3.0, 4.0], [0.0, -2.0], [-6.0, 8.0], [1.0, 0.0]])  # lengths 5, 2, 10, 1
    moved = _apply(CORNERS, H_GT) + shifts
    H_est = cv2.getPerspectiveTransform(CORNERS.astype(np.float32), moved.astype(np.float32)).astype(np.float64)
    assert corner_error(H_est, H_GT, W, H) == pytest.approx((5 + 2 + 10 + 1) / 4, abs=1e-3)
    assert corner_error(H_GT, H_GT, W, H) == pytest.approx(0.0, abs=1e-9)
    assert corner_error(None, H_GT, W, H) == float("inf")
    with pytest.raises(ValueError, match="H_gt"):
        corner_error(H_GT, np.eye(2), W, H)
    with pytest.raises(ValueError, match="width and height"):
        corner_error(H_GT, H_GT, 0, H)


def _auc_independently(errors, t, steps=200001):
    """The protocol's curve sampled finely: linear through (0, 0) and the sorted errors below t, flat
    from the last of them to t (np.interp holds the last value), averaged over [0, t]."""
    errors = np.sort(np.nan_to_num(np.asarray(errors, float), nan=np.inf))
    recall = np.arange(1, len(errors) + 1) / len(errors)
    below = errors < t
    x = np.linspace(0, t, steps)
    curve = np.interp(x, np.r_[0.0, errors[below]], np.r_[0.0, recall[below]])
    return float(np.mean((curve[1:] + curve[:-1]) / 2))


def test_auc_by_hand_and_independently():
    assert error_auc([3.0], (3.0, 5.0)) == {3.0: pytest.approx(0.0), 5.0: pytest.approx((0.5 * 3 * 1 + 2 * 1) / 5)}
    assert error_auc([0.0], (3.0,))[3.0] == pytest.approx(1.0)
    assert error_auc([1.0, np.inf], (2.0,))[2.0] == pytest.approx((0.5 * 1 * 0.5 + 1 * 0.5) / 2)  # 0.375
    errors = [0.5, 1.0, 2.5, 4.0, 7.0, np.inf, np.nan, 12.0, 2.5, 9.9]
    aucs = error_auc(errors)
    assert set(aucs) == {3.0, 5.0, 10.0}
    for t, value in aucs.items():
        assert value == pytest.approx(_auc_independently(errors, t), abs=1e-5)
    assert error_auc([np.inf, np.nan], (3.0,))[3.0] == 0.0
    with pytest.raises(ValueError, match="empty"):
        error_auc([])
    with pytest.raises(ValueError, match="thresholds"):
        error_auc([1.0], (0.0,))


def test_estimate_homography_recovers_the_truth_through_outliers():
    rng = np.random.default_rng(0)
    kpts0 = rng.uniform([0, 0], [W, H], (200, 2))
    kpts1 = _apply(kpts0, H_GT) + rng.normal(0, 0.3, (200, 2))
    kpts1[:60] = rng.uniform([0, 0], [W, H], (60, 2))  # 30% outliers
    H_est = estimate_homography(kpts0, kpts1)
    assert corner_error(H_est, H_GT, W, H) < 1.0
    assert estimate_homography(kpts0[:3], kpts1[:3]) is None
    nan_rows = kpts0.copy()
    nan_rows[:197] = np.nan  # 3 finite matches left
    assert estimate_homography(nan_rows, kpts1) is None
    with pytest.raises(ValueError, match="one row per match"):
        estimate_homography(kpts0, kpts1[:10])
    with pytest.raises(ValueError, match="kpts0 must be"):
        estimate_homography(kpts0[:, :1], kpts1)


def test_precision_counts_matches_with_known_errors():
    angle = np.deg2rad(20)  # a Euclidean H: a shift of 10 px in image 1 is 10 px back in image 0 too
    euclidean = np.array([[np.cos(angle), -np.sin(angle), 30.0], [np.sin(angle), np.cos(angle), -5.0], [0, 0, 1]])
    kpts0 = np.random.default_rng(1).uniform(0, 300, (40, 2))
    kpts1 = _apply(kpts0, euclidean)
    kpts1[:10] += [6.0, 8.0]  # 10 px off
    kpts1[10:15] += [1.2, 1.6]  # 2 px off
    error = reprojection_error(kpts0, kpts1, euclidean)
    assert np.allclose(error[:10], 10.0) and np.allclose(error[10:15], 2.0) and np.allclose(error[15:], 0.0, atol=1e-9)
    assert match_precision(kpts0, kpts1, euclidean, threshold=3.0) == pytest.approx(30 / 40)
    assert match_precision(kpts0, kpts1, euclidean, threshold=1.0) == pytest.approx(25 / 40)
    assert match_precision(np.zeros((0, 2)), np.zeros((0, 2)), euclidean) == 0.0


def test_endpoint_error_and_bad_pixels_of_flow():
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 5, (100, 80, 2))
    pred = gt.copy()
    pred[:25] += [3.0, 4.0]  # error 5 on a quarter of the pixels
    pred[25:50] += [0.6, 0.8]  # error 1 on another quarter
    assert endpoint_error(pred, gt) == pytest.approx((25 * 5 + 25 * 1) / 100)
    assert bad_pixel_rate(pred, gt) == pytest.approx(0.25)
    gt_with_holes = gt.copy()
    gt_with_holes[:25] = np.nan  # unknown there: only the rest counts
    assert endpoint_error(pred, gt_with_holes) == pytest.approx(25 / 75)
    valid = np.zeros((100, 80), bool)
    valid[:50] = True
    assert bad_pixel_rate(pred, gt, valid) == pytest.approx(0.5)
    assert bad_pixel_rate(pred, gt, threshold=0.5) == pytest.approx(0.5)


def test_disparity_errors_and_bad_inputs():
    gt = np.full((10, 20), 30.0)
    gt[:, :5] = np.nan  # unknown
    pred = np.full((10, 20), 30.0)
    pred[:, :5] = np.nan  # holes where nothing is known are fine
    pred[:2, 5:] = 26.0  # 4 px off on 2 of 10 rows
    assert endpoint_error(pred, gt) == pytest.approx(4 * 0.2)
    assert bad_pixel_rate(pred, gt) == pytest.approx(0.2)
    holes = pred.copy()
    holes[5, 10] = np.nan
    with pytest.raises(ValueError, match="pred is not finite at 1 pixels"):
        endpoint_error(holes, gt)
    with pytest.raises(ValueError, match="pred and gt must"):
        endpoint_error(pred[:, :10], gt)
    with pytest.raises(ValueError, match="no pixel has known ground truth"):
        bad_pixel_rate(pred, np.full_like(gt, np.nan))
    with pytest.raises(ValueError, match="valid must be"):
        endpoint_error(pred, gt, np.ones((3, 3), bool))
