"""OpenCV baselines: SIFT recovers held-out homographies far above chance, ORB too (less well), the
flows point from image 0 to image 1, SGBM's disparities match Aloe's and Motorcycle's ground truth,
and bad images give clear errors or empty match sets."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from relformer.data.matching import heldout_pairs, load_aloe, load_motorcycle, load_photo
from relformer.interop.opencv import (OrbMatcher, SgbmStereo, SiftMatcher, dis_flow, farneback_flow, sift_features,
                                      to_grey_uint8)
from relformer.tasks.matching_metrics import bad_pixel_rate, corner_error, error_auc, estimate_homography

PAIRS = 10


def _aucs(matcher, shuffle: bool = False, n: int = PAIRS) -> dict[float, float]:
    pairs = heldout_pairs(length=n)
    errors = []
    for i in range(n):
        item, other = pairs[i], pairs[(i + 1) % n]
        image1 = (other if shuffle else item)["image1"]
        kpts0, kpts1, scores = matcher(item["image0"], image1)
        assert kpts0.shape == kpts1.shape == (len(scores), 2) and kpts0.dtype == np.float32
        errors.append(corner_error(estimate_homography(kpts0, kpts1), item["H_0to1"], 320, 240))
    return error_auc(errors)


def test_sift_recovers_heldout_homographies_far_above_chance():
    aucs = _aucs(SiftMatcher())
    assert aucs[10.0] > 0.6 and aucs[3.0] > 0.3  # measured 0.88 / 0.60 on these 10 pairs
    assert _aucs(SiftMatcher(), shuffle=True, n=5)[10.0] < 0.05  # chance: image 1 of another pair


def test_orb_recovers_heldout_homographies_above_chance():
    assert _aucs(OrbMatcher())[10.0] > 0.3  # measured 0.80 on these 10 pairs


def test_sift_scores_and_features():
    photo = load_photo("astronaut")
    features = sift_features(photo, max_keypoints=300, root=True)
    n = len(features.keypoints)
    assert 250 <= n <= 310 and features.descriptors.shape == (n, 128)
    assert np.allclose(np.linalg.norm(features.descriptors, axis=1), 1.0, atol=1e-4)  # RootSIFT is L2-normalised
    assert features.scales.shape == features.angles.shape == features.responses.shape == (n,)
    kpts0, kpts1, scores = SiftMatcher()(photo, photo)
    assert len(kpts0) > 100 and np.allclose(kpts0, kpts1) and ((0 <= scores) & (scores <= 1)).all()


@pytest.mark.parametrize("flow", [dis_flow, farneback_flow])
def test_flow_points_from_image0_to_image1(flow):
    image0 = np.ascontiguousarray(load_photo("astronaut", grey=True)[100:340, 100:420])
    shift = np.array([3.5, -2.0])  # image1[p + shift] = image0[p]
    image1 = cv2.warpAffine(image0, np.array([[1, 0, shift[0]], [0, 1, shift[1]]]), (320, 240))
    field = flow(image0, image1)
    assert field.shape == (240, 320, 2) and field.dtype == np.float32
    interior = field[20:-20, 20:-20].reshape(-1, 2)
    assert np.abs(np.median(interior, axis=0) - shift).max() < 0.2
    assert np.abs(np.median(flow(image1, image0)[20:-20, 20:-20].reshape(-1, 2), axis=0) + shift).max() < 0.2


@pytest.mark.parametrize("load, bound", [(load_aloe, 0.25), (load_motorcycle, 0.25)])
def test_sgbm_disparity_matches_ground_truth(load, bound):
    pair = load()
    disparity = SgbmStereo()(pair.left, pair.right)
    assert disparity.shape == pair.disparity.shape and np.isfinite(disparity).all()
    assert bad_pixel_rate(disparity, pair.disparity) < bound  # measured 0.16 (aloe), 0.15 (motorcycle)


def test_sgbm_order_and_holes():
    pair = load_motorcycle()
    disparity = SgbmStereo()(pair.left, pair.right)
    swapped = SgbmStereo()(pair.right, pair.left)  # the wrong order finds nothing consistent
    assert bad_pixel_rate(swapped, pair.disparity) > 0.5
    holes = SgbmStereo(fill=False)(pair.left, pair.right)
    assert np.isnan(holes).any() and np.allclose(holes[np.isfinite(holes)], disparity[np.isfinite(holes)])


def test_images_in_every_accepted_form_give_the_same_grey():
    rgb = np.ascontiguousarray(load_photo("coffee")[100:260, 150:350])
    grey = to_grey_uint8(rgb)
    as_float = rgb.astype(np.float32) / 255
    assert np.array_equal(to_grey_uint8(as_float), grey)
    assert np.array_equal(to_grey_uint8(torch.from_numpy(as_float).permute(2, 0, 1)), grey)
    assert np.array_equal(to_grey_uint8(grey[:, :, None]), grey)
    kpts0, _, _ = SiftMatcher()(rgb, grey)  # a grey image against an RGB one: both matched in grey
    assert len(kpts0) > 10


def test_bad_images_give_clear_errors_or_no_matches():
    photo = load_photo("coffee")
    for matcher in (SiftMatcher(), OrbMatcher()):
        with pytest.raises(ValueError, match="image1 must be"):
            matcher(photo, np.zeros((50, 60, 4), np.uint8))
        with pytest.raises(ValueError, match="image0 must be"):
            matcher(np.zeros((50, 60, 2), np.uint8), photo)
        with pytest.raises(ValueError, match="image0 is empty"):
            matcher(np.zeros((0, 60), np.uint8), photo)
        with pytest.raises(ValueError, match="image1 holds NaN"):
            matcher(photo, np.full((50, 60), np.nan, np.float32))
        with pytest.raises(ValueError, match=r"image0 is float with values in \[0, 255\]"):
            matcher(photo.astype(np.float32), photo)
        with pytest.raises(ValueError, match="image1 must be uint8 or float"):
            matcher(photo, photo.astype(np.int32))
        with pytest.raises(TypeError, match="image0 must be"):
            matcher([[1, 2], [3, 4]], photo)
        for hopeless in (np.zeros((6, 6), np.uint8), np.full((200, 200), 128, np.uint8)):  # tiny, or flat
            kpts0, kpts1, scores = matcher(hopeless, photo)
            assert kpts0.shape == kpts1.shape == (0, 2) and scores.shape == (0,)
    with pytest.raises(ValueError, match="same size"):
        dis_flow(photo, photo[:100])
    with pytest.raises(ValueError, match="too narrow"):
        SgbmStereo(max_disparity=64)(photo[:, :40], photo[:, :40])
    with pytest.raises(ValueError, match="block_size"):
        SgbmStereo(block_size=4)(photo, photo)
    with pytest.raises(ValueError, match="max_keypoints"):
        sift_features(photo, max_keypoints=0)
