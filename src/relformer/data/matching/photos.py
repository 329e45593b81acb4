"""Offline photos for self-supervised matching (random homographies turn one photo into a pair).

Every photo ships inside an installed package, so nothing is downloaded: scikit-image's
``skimage.data`` images that need no ``pooch`` download, and scikit-learn's two sample images.

Split (fixed, by photo; a model never sees a test photo in training, nor picks a checkpoint on one):

* ``TEST_PHOTOS``: astronaut, coffee, coins, brick, flower (a portrait, a still life, a repetitive
  metal pattern, a brick texture, an outdoor close-up) — the held-out homography pairs.
* ``VAL_PHOTOS``: china, clock — for validation during training (model selection).
* ``TRAIN_PHOTOS``: camera, chelsea, rocket, moon, hubble_deep_field, immunohistochemistry, retina,
  grass, gravel, cell.

Left out on purpose: ``cat`` (the same pixels as ``chelsea``), ``stereo_motorcycle`` (a stereo test
pair, see :mod:`.pairs`), synthetic or binary images (checkerboard, colorwheel, logo, horse,
binary_blobs) and images smaller than 240 x 320 (page, text, microaneurysms).

Licences (dataset card, from each loader's docstring): CC0 or public domain — astronaut and
hubble_deep_field (NASA), rocket (SpaceX), camera, chelsea, clock, coffee, retina, cell, and the
CC0Textures brick, grass and gravel; "no known copyright restrictions" — coins,
immunohistochemistry; moon carries no statement (scikit-image's BSD-3 package). scikit-learn's
china.jpg and flower.jpg are CC-BY 2.0 Flickr photos (``sklearn/datasets/images/README.txt``).
"""
from __future__ import annotations

import functools
from typing import Callable

import cv2
import numpy as np
import skimage.data
from sklearn.datasets import load_sample_image

__all__ = ["PHOTOS", "TRAIN_PHOTOS", "VAL_PHOTOS", "TEST_PHOTOS", "load_photo", "photo_split"]


def _skimage(name: str) -> Callable[[], np.ndarray]:
    return lambda: getattr(skimage.data, name)()


def _sklearn(file: str) -> Callable[[], np.ndarray]:
    return lambda: load_sample_image(file)


TEST_PHOTOS = ("astronaut", "coffee", "coins", "brick", "flower")
VAL_PHOTOS = ("china", "clock")
TRAIN_PHOTOS = ("camera", "chelsea", "rocket", "moon", "hubble_deep_field", "immunohistochemistry", "retina", "grass",
                "gravel", "cell")
PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    **{name: _skimage(name) for name in TEST_PHOTOS + VAL_PHOTOS + TRAIN_PHOTOS if name not in ("flower", "china")},
    "flower": _sklearn("flower.jpg"), "china": _sklearn("china.jpg")}
_SPLITS = {"train": TRAIN_PHOTOS, "val": VAL_PHOTOS, "test": TEST_PHOTOS}


def photo_split(split: str) -> tuple[str, ...]:
    """The photo names of ``split`` in ``{"train", "val", "test"}`` (disjoint, fixed)."""
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {sorted(_SPLITS)}, got {split!r}")
    return _SPLITS[split]


@functools.lru_cache(maxsize=None)
def _rgb(name: str) -> np.ndarray:
    image = np.asarray(PHOTOS[name]())
    if image.ndim == 2:
        image = np.repeat(image[:, :, None], 3, axis=2)
    image = np.ascontiguousarray(image[:, :, :3], dtype=np.uint8)
    image.flags.writeable = False  # cached: callers get a read-only view, never a copy to corrupt
    return image


def load_photo(name: str, grey: bool = False) -> np.ndarray:
    """Photo ``name`` -> ``(H, W, 3)`` uint8 RGB, or ``(H, W)`` uint8 when ``grey`` (read-only, cached)."""
    if name not in PHOTOS:
        raise ValueError(f"name must be one of {sorted(PHOTOS)}, got {name!r}")
    image = _rgb(name)
    if not grey:
        return image
    grey_image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    grey_image.flags.writeable = False
    return grey_image
