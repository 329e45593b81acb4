"""OpenCV's classical matchers, flow and stereo as baselines with one calling convention each.

* matcher: ``match(image0, image1) -> (kpts0 (N, 2), kpts1 (N, 2), scores (N,))`` float32, pixel
  ``(x, y)`` with OpenCV's convention (pixel centres at integers); N = 0 is a valid answer.
  :class:`SiftMatcher` (Lowe 2004: SIFT, nearest neighbour with the ratio test at 0.8, score
  ``1 - d1 / d2``) and :class:`OrbMatcher` (Rublee et al. 2011: ORB, brute-force Hamming matching
  with a cross check, score ``1 - d / 256``). Homographies are estimated by the metric
  (:func:`relformer.tasks.matching_metrics.estimate_homography`), not by the matcher.
* flow: ``flow(image0, image1) -> (h, w, 2)`` float32 ``(dx, dy)`` with ``image1[y + dy, x + dx] ~
  image0[y, x]``: :func:`dis_flow` (Kroeger et al. 2016, DIS) and :func:`farneback_flow` (Farneback 2003).
* stereo: ``stereo(left, right) -> (h, w)`` float32 disparity of the left view, left ``(x, y)`` is
  right ``(x - d, y)``: :class:`SgbmStereo` (Hirschmueller 2008, semi-global block matching).
* :func:`sift_features`: SIFT keypoints and descriptors for other matchers (e.g. LightGlue-SIFT).

Images: ``(h, w)`` grey or ``(h, w, 3)`` RGB NumPy arrays, or torch tensors ``(h, w)``,
``(1|3, h, w)``, uint8 or float in [0, 1]; they are converted to uint8 grey (matchers, flow, SGBM), so a grey
image may be matched against an RGB one. Anything else (other channel counts, empty images, NaN)
is a ValueError naming the argument; an image too small or too flat for keypoints gives no matches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import cv2
import numpy as np
import torch
from scipy import ndimage

__all__ = ["to_grey_uint8", "SiftMatcher", "OrbMatcher", "SiftFeatures", "sift_features", "dis_flow",
           "farneback_flow", "SgbmStereo"]


def to_grey_uint8(image, name: str = "image") -> np.ndarray:
    """``image`` (module docstring) -> ``(h, w)`` uint8 grey; a ValueError naming ``name`` otherwise."""
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu()
        if image.ndim == 3:
            image = image.permute(1, 2, 0)  # (C, h, w) -> (h, w, C)
        image = image.numpy()
    if not isinstance(image, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array or a torch tensor, got {type(image).__name__}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
        raise ValueError(f"{name} must be (h, w) grey or (h, w, 3) RGB (tensors (1|3, h, w)), got shape {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"{name} is empty (shape {image.shape})")
    if image.dtype != np.uint8:
        if image.dtype.kind != "f":
            raise ValueError(f"{name} must be uint8 or float in [0, 1], got dtype {image.dtype}")
        if not np.isfinite(image).all():
            raise ValueError(f"{name} holds NaN or infinite values")
        if image.min() < 0 or image.max() > 1:
            raise ValueError(f"{name} is float with values in [{image.min():g}, {image.max():g}]: floats must be in [0, 1]")
        image = np.rint(image.astype(np.float32) * 255).astype(np.uint8)
    image = np.ascontiguousarray(image)
    return cv2.cvtColor(image, cv2.COLOR_RGB2GRAY) if image.ndim == 3 else image


class SiftFeatures(NamedTuple):
    """``keypoints (N, 2)`` float32 ``(x, y)``; ``descriptors (N, 128)`` float32; ``responses``,
    ``scales`` (the keypoint size in px), ``angles`` (degrees): ``(N,)`` float32."""
    keypoints: np.ndarray
    descriptors: np.ndarray
    responses: np.ndarray
    scales: np.ndarray
    angles: np.ndarray


def sift_features(image, max_keypoints: int = 2048, root: bool = False, name: str = "image") -> SiftFeatures:
    """SIFT keypoints and descriptors of ``image``, the ``max_keypoints`` strongest (OpenCV's
    default detector settings). ``root``: RootSIFT (Arandjelovic & Zisserman 2012: L1-normalise,
    square root), the descriptor LightGlue's SIFT weights expect."""
    if max_keypoints < 1:
        raise ValueError(f"max_keypoints must be >= 1, got {max_keypoints}")
    grey = to_grey_uint8(image, name)
    keypoints, descriptors = cv2.SIFT_create(nfeatures=max_keypoints).detectAndCompute(grey, None)
    if descriptors is None or not keypoints:
        empty = np.zeros(0, np.float32)
        return SiftFeatures(np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32), empty, empty, empty)
    descriptors = descriptors.astype(np.float32)
    if root:
        descriptors = np.sqrt(descriptors / np.maximum(descriptors.sum(axis=1, keepdims=True), 1e-12))
    as_array = lambda values: np.array(values, dtype=np.float32)
    return SiftFeatures(as_array([k.pt for k in keypoints]).reshape(-1, 2), descriptors,
                        as_array([k.response for k in keypoints]), as_array([k.size for k in keypoints]),
                        as_array([k.angle for k in keypoints]))


def _no_matches() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    return np.zeros((0, 2), np.float32), np.zeros((0, 2), np.float32), np.zeros(0, np.float32)


@dataclass(frozen=True)
class SiftMatcher:
    """SIFT + nearest-neighbour matching with Lowe's ratio test (``d1 < ratio * d2``)."""
    max_keypoints: int = 2048
    ratio: float = 0.8

    def __call__(self, image0, image1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        features0 = sift_features(image0, self.max_keypoints, name="image0")
        features1 = sift_features(image1, self.max_keypoints, name="image1")
        if len(features0.keypoints) == 0 or len(features1.keypoints) < 2:  # the ratio needs two neighbours
            return _no_matches()
        pairs = cv2.BFMatcher(cv2.NORM_L2).knnMatch(features0.descriptors, features1.descriptors, k=2)
        kept = [(best.queryIdx, best.trainIdx, 1.0 - best.distance / max(second.distance, 1e-12))
                for best, second in (p for p in pairs if len(p) == 2) if best.distance < self.ratio * second.distance]
        if not kept:
            return _no_matches()
        index0, index1, scores = (np.array(column) for column in zip(*kept))
        return (features0.keypoints[index0.astype(int)], features1.keypoints[index1.astype(int)],
                scores.astype(np.float32))


@dataclass(frozen=True)
class OrbMatcher:
    """ORB (oriented FAST + rotated BRIEF) with brute-force Hamming matching and a cross check."""
    max_keypoints: int = 2048

    def __call__(self, image0, image1) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        orb = cv2.ORB_create(nfeatures=self.max_keypoints)
        keypoints0, descriptors0 = orb.detectAndCompute(to_grey_uint8(image0, "image0"), None)
        keypoints1, descriptors1 = orb.detectAndCompute(to_grey_uint8(image1, "image1"), None)
        if descriptors0 is None or descriptors1 is None:
            return _no_matches()
        matches = cv2.BFMatcher(cv2.NORM_HAMMING, crossCheck=True).match(descriptors0, descriptors1)
        if not matches:
            return _no_matches()
        kpts0 = np.array([keypoints0[m.queryIdx].pt for m in matches], dtype=np.float32)
        kpts1 = np.array([keypoints1[m.trainIdx].pt for m in matches], dtype=np.float32)
        return kpts0, kpts1, np.array([1.0 - m.distance / 256.0 for m in matches], dtype=np.float32)


def _same_size(image0, image1) -> tuple[np.ndarray, np.ndarray]:
    grey0, grey1 = to_grey_uint8(image0, "image0"), to_grey_uint8(image1, "image1")
    if grey0.shape != grey1.shape:
        raise ValueError(f"image0 and image1 must have the same size for dense flow, got {grey0.shape} and {grey1.shape}")
    return grey0, grey1


def dis_flow(image0, image1, preset: str = "medium") -> np.ndarray:
    """Dense inverse-search optical flow ``image0 -> image1`` (OpenCV's ``DISOpticalFlow`` preset
    ``"ultrafast"``, ``"fast"`` or ``"medium"``: finer patch grids and more refinement)."""
    presets = {"ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST, "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
               "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM}
    if preset not in presets:
        raise ValueError(f"preset must be one of {sorted(presets)}, got {preset!r}")
    grey0, grey1 = _same_size(image0, image1)
    return cv2.DISOpticalFlow_create(presets[preset]).calc(grey0, grey1, None).astype(np.float32)


def farneback_flow(image0, image1) -> np.ndarray:
    """Farneback's polynomial-expansion flow ``image0 -> image1``: a 5-level pyramid at scale 0.5,
    15 px windows, 3 iterations, degree-2 expansions over 5 px (sigma 1.2), the Gaussian window —
    OpenCV's documented example settings, one pyramid level more for large motion."""
    grey0, grey1 = _same_size(image0, image1)
    flow = cv2.calcOpticalFlowFarneback(grey0, grey1, None, pyr_scale=0.5, levels=5, winsize=15, iterations=3,
                                        poly_n=5, poly_sigma=1.2, flags=cv2.OPTFLOW_FARNEBACK_GAUSSIAN)
    return flow.astype(np.float32)


@dataclass(frozen=True)
class SgbmStereo:
    """Semi-global block matching (OpenCV ``StereoSGBM``, 3-way mode) -> ``(h, w)`` float32 disparity.

    ``max_disparity``: the search range (rounded up to a multiple of 16), by default a fifth of the
    width (256 px for Aloe's 1282, whose largest disparity is 211; 160 for Motorcycle's 741, largest 60).
    On grey images, smoothness ``P1 = 8 * block_size^2``, ``P2 = 32 * block_size^2`` (OpenCV's
    recommended values for one channel), uniqueness 10%, left-right check 1 px, speckle filter over 100-px blobs
    varying by up to 2 px. Pixels without a disparity (occlusions, filtered speckles) are filled with
    the nearest valid one when ``fill`` (the metrics score every pixel with known ground truth),
    else NaN."""
    block_size: int = 5
    max_disparity: int | None = None
    fill: bool = True

    def __call__(self, left, right) -> np.ndarray:
        grey_left, grey_right = _same_size(left, right)
        h, w = grey_left.shape
        if self.block_size < 1 or self.block_size % 2 == 0:
            raise ValueError(f"block_size must be odd and >= 1, got {self.block_size}")
        limit = self.max_disparity if self.max_disparity is not None else max(16, w // 5)
        num_disparities = 16 * int(np.ceil(limit / 16))
        if num_disparities >= w:
            raise ValueError(f"left is {w} px wide: too narrow for a disparity range of {num_disparities} px")
        area = self.block_size ** 2
        sgbm = cv2.StereoSGBM_create(minDisparity=0, numDisparities=num_disparities, blockSize=self.block_size,
                                     P1=8 * area, P2=32 * area, disp12MaxDiff=1, uniquenessRatio=10,
                                     speckleWindowSize=100, speckleRange=2, mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY)
        raw = sgbm.compute(grey_left, grey_right)  # int16, disparity * 16; invalid: (minDisparity - 1) * 16
        valid = raw >= 0
        disparity = raw.astype(np.float32) / 16.0
        if not valid.any():
            return np.full((h, w), np.nan, np.float32)
        if not self.fill:
            return np.where(valid, disparity, np.nan).astype(np.float32)
        nearest = ndimage.distance_transform_edt(~valid, return_distances=False, return_indices=True)
        return disparity[tuple(nearest)].astype(np.float32)
