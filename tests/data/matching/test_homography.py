"""Random homographies: the ground truth H moves points exactly as the warp moves pixels (dots are
found where H sends them), views stay inside the photo, pairs are fixed by their seed, and the
held-out set uses only test photos."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from relformer.data.matching import (TEST_PHOTOS, TRAIN_PHOTOS, HomographyConfig, HomographyPairs, PhotometricConfig,
                                     correspondence_map, heldout_pairs, make_pair, photometric_augment, sample_view,
                                     warp_image, warp_points)

_GRID = np.stack(np.meshgrid(np.arange(40, 620, 45.0), np.arange(40, 520, 45.0)), -1).reshape(-1, 2)
DOTS = _GRID + np.random.default_rng(0).uniform(0, 1, _GRID.shape)  # (x, y) at sub-pixel positions


def _dot_photo(shape=(540, 640), sigma=2.0) -> np.ndarray:
    """A black photo with Gaussian dots at sub-pixel positions DOTS."""
    ys, xs = np.mgrid[0:shape[0], 0:shape[1]]
    image = sum(np.exp(-((xs - x) ** 2 + (ys - y) ** 2) / (2 * sigma ** 2)) for x, y in DOTS)
    return (255 * image).astype(np.float32)


def _centroid(image: np.ndarray, guess: np.ndarray, radius: int = 7) -> np.ndarray:
    """Intensity-weighted centre of the blob around ``guess`` (x, y)."""
    x0, y0 = int(round(guess[0])), int(round(guess[1]))
    patch = image[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1].astype(np.float64)
    ys, xs = np.mgrid[y0 - radius:y0 + radius + 1, x0 - radius:x0 + radius + 1]
    return np.array([(patch * xs).sum(), (patch * ys).sum()]) / patch.sum()


def _inside(points, size, margin=12):
    h, w = size
    return (points[:, 0] > margin) & (points[:, 0] < w - 1 - margin) & (points[:, 1] > margin) & (points[:, 1] < h - 1 - margin)


@pytest.mark.parametrize("seed", range(4))
def test_ground_truth_maps_dots_where_the_warp_puts_them(seed):
    photo, size = _dot_photo(), (240, 320)
    pair = make_pair(photo, np.random.default_rng(seed), size, photometric=None)
    H0, H1 = pair["H_photo_to_0"], pair["H_photo_to_1"]
    expected0, expected1 = warp_points(DOTS, H0), warp_points(DOTS, H1)
    seen = _inside(expected0, size) & _inside(expected1, size)
    assert seen.sum() >= 3
    for index in np.flatnonzero(seen):
        found0 = _centroid(pair["image0"], expected0[index])
        found1 = _centroid(pair["image1"], expected1[index])
        assert np.abs(found0 - expected0[index]).max() < 0.1
        assert np.abs(warp_points(found0, pair["H_0to1"]) - found1).max() < 0.1  # the pair's own ground truth


def test_warp_image_and_warp_points_agree_on_a_known_homography():
    photo = _dot_photo()
    H = np.array([[0.9, 0.1, -40.0], [-0.05, 1.05, -30.0], [2e-4, -1e-4, 1.0]])
    warped = warp_image(photo, H, (540, 640))
    expected = warp_points(DOTS, H)
    for point in expected[_inside(expected, (540, 640))]:
        assert np.abs(_centroid(warped, point) - point).max() < 0.1
    # a wrong convention (the inverse) is far off
    wrong = warp_points(DOTS, np.linalg.inv(H))
    assert np.abs(wrong - expected).max() > 10


def test_views_stay_inside_the_photo():
    rng, size, photo_shape = np.random.default_rng(0), (240, 320), (480, 600)
    corners = np.array([[-0.5, -0.5], [319.5, -0.5], [319.5, 239.5], [-0.5, 239.5]])
    for _ in range(200):
        quad = warp_points(corners, np.linalg.inv(sample_view(rng, photo_shape, size)))
        assert (quad >= -1e-6).all() and (quad[:, 0] <= 599 + 1e-6).all() and (quad[:, 1] <= 479 + 1e-6).all()


def test_dense_flow_aligns_the_images():
    item = HomographyPairs("test", length=3, photometric=None)[1]
    image0, image1 = item["image0"].permute(1, 2, 0).numpy(), item["image1"].permute(1, 2, 0).numpy()
    flow, valid = item["flow_0to1"].permute(1, 2, 0).numpy(), item["valid_0to1"].numpy()
    ys, xs = np.mgrid[0:240, 0:320].astype(np.float32)
    resampled = cv2.remap(image1, xs + flow[..., 0], ys + flow[..., 1], cv2.INTER_LINEAR)
    aligned = np.abs(resampled - image0)[valid].mean()
    unaligned = np.abs(image1 - image0)[valid].mean()
    assert valid.mean() > 0.25 and aligned < 0.02 and unaligned > 5 * aligned
    coords, valid_again = correspondence_map(item["H_0to1"].numpy(), (240, 320), (240, 320))
    assert np.array_equal(valid, valid_again)
    assert np.allclose(coords, np.stack([xs, ys], -1) + flow, atol=1e-3)


def test_warp_points_numpy_and_torch_agree_and_infinity_is_nan():
    H = np.array([[1.0, 0.2, 3.0], [0.1, 0.9, -2.0], [1e-3, 2e-3, 1.0]])
    points = np.random.default_rng(0).uniform(0, 300, (50, 2))
    assert torch.allclose(warp_points(torch.from_numpy(points), H), torch.from_numpy(warp_points(points, H)))
    vanishing = np.array([[-1000.0, 0.0]])  # 1e-3 * -1000 + 1 = 0: sent to infinity
    assert np.isnan(warp_points(vanishing, H)).all()
    assert torch.isnan(warp_points(torch.tensor(vanishing), H)).all()
    with pytest.raises(ValueError, match="H must be"):
        warp_points(points, np.eye(2))


def test_heldout_pairs_are_fixed_by_the_seed_in_any_order():
    first, second = heldout_pairs(), heldout_pairs()
    assert len(first) >= 200
    later = second[7]
    early = second[3]
    for index, item in ((3, early), (7, later)):
        reference = first[index]
        assert torch.equal(reference["image0"], item["image0"]) and torch.equal(reference["image1"], item["image1"])
        assert torch.equal(reference["H_0to1"], item["H_0to1"])
    assert not torch.equal(first[3]["H_0to1"], first[8]["H_0to1"])  # same photo (3 + 5), another pair
    other_seed = HomographyPairs("test", seed=1, dense=False)[3]
    assert not torch.equal(other_seed["H_0to1"], first[3]["H_0to1"])


def test_heldout_uses_only_test_photos_and_training_only_train_photos():
    assert {heldout_pairs()[i]["photo"] for i in range(10)} == set(TEST_PHOTOS)
    training = HomographyPairs("train", deterministic=False, length=1000, dense=False)
    torch.manual_seed(0)
    seen = {training[i]["photo"] for i in range(30)}
    assert seen <= set(TRAIN_PHOTOS) and len(seen) > 5


def test_training_pairs_are_random_but_follow_torch_seed():
    training = HomographyPairs("train", deterministic=False, length=10, dense=False)
    torch.manual_seed(5)
    a, b = training[0], training[0]
    assert not torch.equal(a["H_0to1"], b["H_0to1"])  # fresh randomness per call
    torch.manual_seed(5)
    assert torch.equal(training[0]["H_0to1"], a["H_0to1"])


def test_item_shapes_grey_and_rgb():
    rgb = HomographyPairs("test", size=(96, 128), length=2)[0]
    grey = HomographyPairs("test", size=(96, 128), length=2, grey=True, dense=False)[0]
    assert rgb["image0"].shape == (3, 96, 128) and rgb["image0"].dtype == torch.float32
    assert grey["image1"].shape == (1, 96, 128) and "flow_0to1" not in grey
    assert rgb["flow_0to1"].shape == (2, 96, 128) and rgb["valid_0to1"].dtype == torch.bool
    assert rgb["H_0to1"].dtype == torch.float64 and rgb["H_0to1"][2, 2] == 1
    for image in (rgb["image0"], rgb["image1"], grey["image0"]):
        assert 0 <= image.min() and image.max() <= 1


def test_photometric_augmentation_is_seeded_and_identity_when_off():
    image = np.random.default_rng(0).uniform(0.2, 0.8, (40, 50, 3)).astype(np.float32)
    a = photometric_augment(image, np.random.default_rng(3))
    assert np.array_equal(a, photometric_augment(image, np.random.default_rng(3)))
    assert not np.array_equal(a, photometric_augment(image, np.random.default_rng(4)))
    assert 0 <= a.min() and a.max() <= 1
    off = PhotometricConfig(brightness=0.0, contrast=(1.0, 1.0), blur=0.0, noise=0.0)
    assert np.allclose(photometric_augment(image, np.random.default_rng(3), off), image, atol=1e-6)


def test_bad_arguments():
    with pytest.raises(ValueError, match="size"):
        HomographyPairs("test", size=(8, 320))
    with pytest.raises(ValueError, match="photos"):
        HomographyPairs(["lena"])
    with pytest.raises(ValueError, match="split"):
        HomographyPairs("validation")
    with pytest.raises(ValueError, match="length"):
        HomographyPairs("test", length=0)
    with pytest.raises(ValueError, match="scale"):
        HomographyConfig(scale=(0.9, 0.5))
    with pytest.raises(ValueError, match="perspective"):
        HomographyConfig(perspective=0.4)
    with pytest.raises(IndexError):
        HomographyPairs("test", length=3)[3]
