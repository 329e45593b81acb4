"""The offline photos: all load without a download, the train/test split is fixed and disjoint, and
no photo is another one under a second name (a test photo seen in training under an alias)."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from relformer.data.matching import PHOTOS, TEST_PHOTOS, TRAIN_PHOTOS, VAL_PHOTOS, load_photo, photo_split


def test_split_is_fixed_disjoint_and_covers_the_registry():
    splits = {"train": TRAIN_PHOTOS, "val": VAL_PHOTOS, "test": TEST_PHOTOS}
    assert sum(len(names) for names in splits.values()) == len(PHOTOS)  # disjoint and covering
    assert set().union(*splits.values()) == set(PHOTOS)
    assert all(photo_split(split) == names for split, names in splits.items())
    assert len(TEST_PHOTOS) >= 5 and len(TRAIN_PHOTOS) >= 10 and len(VAL_PHOTOS) >= 2
    assert "stereo_motorcycle" not in PHOTOS  # a stereo test pair, never a training photo


@pytest.mark.parametrize("name", sorted(PHOTOS))
def test_every_photo_loads_offline_rgb_and_grey(name):
    rgb, grey = load_photo(name), load_photo(name, grey=True)
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3
    assert grey.dtype == np.uint8 and grey.shape == rgb.shape[:2]
    assert min(rgb.shape[:2]) >= 240 and max(rgb.shape[:2]) >= 320  # a 240 x 320 view needs no upsampling
    assert rgb.std() > 10  # a real photo, not a flat placeholder
    assert not rgb.flags.writeable  # the cache cannot be corrupted by a caller


def test_no_photo_is_a_copy_of_another():
    thumbs = {n: cv2.resize(load_photo(n, grey=True), (32, 32), interpolation=cv2.INTER_AREA).astype(float).ravel()
              for n in PHOTOS}
    names = sorted(thumbs)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            correlation = np.corrcoef(thumbs[a], thumbs[b])[0, 1]
            assert correlation < 0.95, (a, b, correlation)
    # the check would catch an alias: skimage's cat is chelsea
    cat = cv2.resize(cv2.cvtColor(skimage.data.cat(), cv2.COLOR_RGB2GRAY), (32, 32), interpolation=cv2.INTER_AREA)
    assert np.corrcoef(cat.astype(float).ravel(), thumbs["chelsea"])[0, 1] > 0.99


def test_bad_names_and_splits():
    with pytest.raises(ValueError, match="name must be one of"):
        load_photo("lena")
    with pytest.raises(ValueError, match="split must be one of"):
        photo_split("validation")
