"""Random homographies with exact ground truth: self-supervised matching pairs from single photos.

As in SuperPoint's homographic adaptation (DeTone et al. 2018, §3.3 and App. A) and LightGlue's
pre-training (Lindenberger et al. 2023, §4; glue-factory's ``sample_homography_corners``), each
view of a photo is the full output frame mapped from a random quadrilateral that lies *inside* the
photo, so no view has empty borders. A quadrilateral starts as a centred rectangle of the output's
aspect ratio, is scaled (log-uniform), its four corners are jittered (perspective and affine
distortion), it is rotated, then translated uniformly to where it still fits. With ``H0``, ``H1``
(photo -> view) the ground truth is exact: ``H_0to1 = H1 @ inv(H0)``.

Coordinates follow OpenCV: pixel ``(row i, column j)`` has its centre at ``(x, y) = (j, i)``, the
frame of an ``h x w`` image spans ``[-0.5, w - 0.5] x [-0.5, h - 0.5]``; ``cv2.warpPerspective``
samples with this convention, so :func:`warp_points` maps points exactly as :func:`warp_image`
moves pixels. Photometric augmentation (brightness, contrast, blur, Gaussian noise) follows
SuperPoint's list, applied to each view independently. Every random draw comes from one
``numpy.random.Generator``, so a seed fixes a pair completely.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor

from .photos import PHOTOS, load_photo, photo_split

__all__ = ["HomographyConfig", "PhotometricConfig", "sample_view", "warp_image", "warp_points",
           "correspondence_map", "photometric_augment", "make_pair", "HomographyPairs", "heldout_pairs",
           "HELDOUT_SEED", "HELDOUT_LENGTH", "DEFAULT_SIZE"]

DEFAULT_SIZE = (240, 320)
HELDOUT_SEED, HELDOUT_LENGTH = 0, 240
_OVERSAMPLE = 1.6  # the photo is resized so the largest rectangle of the output's shape is 1.6x the output


@dataclass(frozen=True)
class HomographyConfig:
    """Ranges of one view's quadrilateral. ``scale``: its size over the largest fitting rectangle
    (log-uniform; with the 1.6x photo resize, a view shows the photo at 0.6-1.3x the output's size);
    ``perspective``: each corner moves up to this fraction of the side in x and y; ``max_angle``:
    rotation in degrees, uniform in ``[-max_angle, max_angle]``; ``translation``: the fraction of the
    room left around the centred quadrilateral that its shift may use (glue-factory's, so two views
    overlap); ``min_overlap``: the share of each view that must be seen in the other (view 1 is
    drawn again until it is); ``attempts``: draws until a quadrilateral fits (then a centred
    rectangle at the smallest scale, which always fits) and until the views overlap enough."""
    scale: tuple[float, float] = (0.4, 0.8)
    perspective: float = 0.12
    max_angle: float = 25.0
    translation: float = 0.5
    min_overlap: float = 0.3
    attempts: int = 50

    def __post_init__(self):
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {self.scale}")
        if not 0 <= self.perspective < 0.25:
            raise ValueError(f"perspective must be in [0, 0.25) (the quadrilateral stays convex), got {self.perspective}")
        if (not 0 <= self.max_angle <= 180 or not 0 <= self.translation <= 1 or not 0 <= self.min_overlap <= 1
                or self.attempts < 1):
            raise ValueError("max_angle must be in [0, 180], translation and min_overlap in [0, 1], attempts >= 1, "
                             f"got {self.max_angle}, {self.translation}, {self.min_overlap}, {self.attempts}")


@dataclass(frozen=True)
class PhotometricConfig:
    """Per-view augmentation on images in [0, 1]: ``brightness`` (additive, uniform +-),
    ``contrast`` (factor about the mean, uniform in the range), ``blur`` (Gaussian sigma uniform in
    ``[0, blur]``, applied with probability 1/2), ``noise`` (Gaussian std uniform in ``[0, noise]``)."""
    brightness: float = 0.15
    contrast: tuple[float, float] = (0.7, 1.3)
    blur: float = 1.2
    noise: float = 0.03


def _frame(size: tuple[int, int]) -> np.ndarray:
    """The 4 frame corners ``(x, y)`` of an ``h x w`` image, clockwise from the top left."""
    h, w = size
    return np.array([[-0.5, -0.5], [w - 0.5, -0.5], [w - 0.5, h - 0.5], [-0.5, h - 0.5]])


def _is_convex(quad: np.ndarray) -> bool:
    edges = np.roll(quad, -1, axis=0) - quad
    cross = edges[:, 0] * np.roll(edges, -1, axis=0)[:, 1] - edges[:, 1] * np.roll(edges, -1, axis=0)[:, 0]
    return bool((cross > 0).all())


def _sample_quad(rng: np.random.Generator, photo_shape: tuple[int, int], size: tuple[int, int],
                 config: HomographyConfig) -> np.ndarray:
    """A random quadrilateral ``(4, 2)`` inside ``[0, W-1] x [0, H-1]`` of the photo (bilinear
    sampling never reads outside), clockwise from the top left."""
    (photo_h, photo_w), (h, w) = photo_shape, size
    fit = min((photo_w - 1) / w, (photo_h - 1) / h)  # largest centred rectangle of the output's shape
    unit = np.array([[-0.5, -0.5], [0.5, -0.5], [0.5, 0.5], [-0.5, 0.5]])
    log_low, log_high = math.log(config.scale[0]), math.log(config.scale[1])
    limit = np.array([photo_w - 1, photo_h - 1], dtype=float)
    for _ in range(config.attempts):
        side = np.array([w, h]) * fit * math.exp(rng.uniform(log_low, log_high))
        quad = (unit + rng.uniform(-config.perspective, config.perspective, (4, 2))) * side
        angle = math.radians(rng.uniform(-config.max_angle, config.max_angle))
        rotation = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
        quad = quad @ rotation.T
        low, high = -quad.min(axis=0), limit - quad.max(axis=0)
        if (low <= high).all() and _is_convex(quad):
            middle = (low + high) / 2
            return quad + middle + config.translation * (rng.uniform(low, high) - middle)
    return unit * np.array([w, h]) * fit * config.scale[0] + limit / 2


def sample_view(rng: np.random.Generator, photo_shape: tuple[int, int], size: tuple[int, int] = DEFAULT_SIZE,
                config: HomographyConfig = HomographyConfig()) -> np.ndarray:
    """``H (3, 3)`` float64 mapping photo coordinates to those of a random ``size = (h, w)`` view
    whose every pixel lies inside the photo of shape ``(H, W)``."""
    quad = _sample_quad(rng, photo_shape, size, config)
    return cv2.getPerspectiveTransform(quad.astype(np.float32), _frame(size).astype(np.float32)).astype(np.float64)


def warp_image(image: np.ndarray, H: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``image`` (h, w[, C]) seen through ``H`` (its coordinates -> the output's) as a ``size = (h, w)``
    image, bilinear; pixels from outside ``image`` are 0."""
    h, w = size
    return cv2.warpPerspective(image, np.asarray(H, dtype=np.float64), (w, h), flags=cv2.INTER_LINEAR,
                               borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def warp_points(points: np.ndarray | Tensor, H: np.ndarray | Tensor) -> np.ndarray | Tensor:
    """``points (..., 2)`` ``(x, y)`` mapped by ``H (3, 3)``: ``(x', y') = (H [x, y, 1])_{1,2} / (H [x, y, 1])_3``.
    NumPy or torch (the result has the points' type); a point sent to infinity becomes NaN."""
    if isinstance(points, Tensor):
        H = torch.as_tensor(H, dtype=points.dtype, device=points.device)
    else:
        points, H = np.asarray(points, dtype=np.float64), np.asarray(H, dtype=np.float64)
    if tuple(H.shape) != (3, 3) or points.shape[-1] != 2:
        raise ValueError(f"H must be (3, 3) and points (..., 2), got {tuple(H.shape)} and {tuple(points.shape)}")
    projected = points @ H[:, :2].T + H[:, 2]  # (..., 3)
    w = projected[..., 2:]
    tiny = abs(w) < 1e-12
    w = w + tiny * 1.0  # keeps the division finite; those points are set to NaN just below
    mapped = projected[..., :2] / w
    return mapped.masked_fill(tiny, float("nan")) if isinstance(mapped, Tensor) else np.where(tiny, np.nan, mapped)


def correspondence_map(H: np.ndarray, shape0: tuple[int, int], shape1: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Dense ground truth of ``H`` (image 0 -> image 1): ``coords (h0, w0, 2)`` float32, where each
    pixel of image 0 lands in image 1, and ``valid (h0, w0)`` bool, that it lands inside image 1's
    frame. The flow is ``coords - grid``."""
    (h0, w0), (h1, w1) = shape0, shape1
    ys, xs = np.mgrid[0:h0, 0:w0]
    coords = warp_points(np.stack([xs, ys], axis=-1).astype(np.float64), H)
    with np.errstate(invalid="ignore"):
        valid = ((coords[..., 0] >= -0.5) & (coords[..., 0] <= w1 - 0.5)
                 & (coords[..., 1] >= -0.5) & (coords[..., 1] <= h1 - 0.5))
    return coords.astype(np.float32), valid


def photometric_augment(image: np.ndarray, rng: np.random.Generator,
                        config: PhotometricConfig = PhotometricConfig()) -> np.ndarray:
    """``image`` (h, w[, C]) float32 in [0, 1] -> augmented, clipped to [0, 1]. Draws a fixed number
    of values in a fixed order whatever applies, so later draws of ``rng`` do not shift."""
    brightness = rng.uniform(-config.brightness, config.brightness)
    contrast = rng.uniform(*config.contrast)
    blur, sigma = rng.random() < 0.5, rng.uniform(0.0, config.blur)
    noise_std = rng.uniform(0.0, config.noise)
    noise = rng.standard_normal(image.shape).astype(np.float32)
    out = (image - image.mean()) * contrast + image.mean() + brightness
    if blur and sigma > 0.1:
        out = cv2.GaussianBlur(out, (0, 0), sigmaX=sigma)
    return np.clip(out + noise_std * noise, 0.0, 1.0).astype(np.float32)


def _overlap(H_0to1: np.ndarray, size: tuple[int, int], steps: int = 16) -> float:
    """The smaller share of each view's pixels (a ``steps x steps`` grid) that land inside the other."""
    h, w = size
    grid = np.stack(np.meshgrid(np.linspace(0, w - 1, steps), np.linspace(0, h - 1, steps)), axis=-1)
    shares = []
    for H in (H_0to1, np.linalg.inv(H_0to1)):
        x, y = np.moveaxis(warp_points(grid, H), -1, 0)
        with np.errstate(invalid="ignore"):
            shares.append(float(((x >= -0.5) & (x <= w - 0.5) & (y >= -0.5) & (y <= h - 0.5)).mean()))
    return min(shares)


@functools.lru_cache(maxsize=64)
def _working_photo(name: str, size: tuple[int, int], grey: bool) -> np.ndarray:
    """Photo ``name`` resized (area filter) so the largest rectangle of ``size``'s shape it holds
    is 1.6x ``size``: views then never downsample by more than ~2.5x (little aliasing)."""
    photo = load_photo(name, grey=grey)
    (h, w), (photo_h, photo_w) = size, photo.shape[:2]
    factor = _OVERSAMPLE * max(h / photo_h, w / photo_w)
    new_size = (max(2, round(photo_w * factor)), max(2, round(photo_h * factor)))
    interpolation = cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR
    resized = cv2.resize(photo, new_size, interpolation=interpolation)
    resized.flags.writeable = False
    return resized


def make_pair(photo: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = DEFAULT_SIZE,
              homography: HomographyConfig = HomographyConfig(),
              photometric: PhotometricConfig | None = PhotometricConfig()) -> dict[str, np.ndarray]:
    """Two random views of ``photo`` (h, w[, C]) uint8 -> ``image0``, ``image1`` (size[0], size[1][, C])
    float32 in [0, 1], ``H_0to1`` (3, 3) float64 (image 0 coordinates -> image 1's) and the views'
    own maps from the photo, ``H_photo_to_0`` and ``H_photo_to_1``."""
    photo_shape = photo.shape[:2]
    H0 = sample_view(rng, photo_shape, size, homography)
    for _ in range(homography.attempts):
        H1 = sample_view(rng, photo_shape, size, homography)
        if _overlap(H1 @ np.linalg.inv(H0), size) >= homography.min_overlap:
            break
    images = [warp_image(photo, H, size).astype(np.float32) / 255.0 for H in (H0, H1)]
    if photometric is not None:
        images = [photometric_augment(image, rng, photometric) for image in images]
    H_0to1 = H1 @ np.linalg.inv(H0)
    return {"image0": images[0], "image1": images[1], "H_0to1": H_0to1 / H_0to1[2, 2], "H_photo_to_0": H0,
            "H_photo_to_1": H1}


def _check_size(size: Sequence[int]) -> tuple[int, int]:
    if len(size) != 2 or not all(isinstance(s, int) and s >= 16 for s in size):
        raise ValueError(f"size must be (height, width), two ints >= 16, got {size!r}")
    return int(size[0]), int(size[1])


def _check_photos(photos: str | Sequence[str]) -> tuple[str, ...]:
    names = photo_split(photos) if isinstance(photos, str) else tuple(photos)
    unknown = [n for n in names if n not in PHOTOS]
    if not names or unknown:
        raise ValueError(f"photos must be a split name or known photo names, got {photos!r} (unknown: {unknown})")
    return names


class HomographyPairs(torch.utils.data.Dataset):
    """Pairs of random views of photos with exact ground truth (module docstring). Item ``i`` ->

    * ``image0``, ``image1``: ``(C, h, w)`` float32 in [0, 1] (C = 1 when ``grey``, else 3, RGB);
    * ``H_0to1``: ``(3, 3)`` float64, image 0 coordinates -> image 1's;
    * ``flow_0to1``: ``(2, h, w)`` float32, ``(dx, dy)`` of each image-0 pixel, and ``valid_0to1``:
      ``(h, w)`` bool, whether it lands inside image 1 (only when ``dense``);
    * ``photo``: the source photo's name.

    ``deterministic=True`` (evaluation): item ``i`` is photo ``photos[i % len(photos)]`` with a
    generator seeded by ``(seed, i)``: the same pairs in any order, process or worker.
    ``deterministic=False`` (training): a random photo and fresh randomness per call, drawn from
    torch's generator (so ``torch.manual_seed`` and DataLoader worker seeding govern it).
    """

    def __init__(self, photos: str | Sequence[str] = "test", size: Sequence[int] = DEFAULT_SIZE,
                 length: int = HELDOUT_LENGTH, seed: int = HELDOUT_SEED, deterministic: bool = True,
                 grey: bool = False, dense: bool = True, homography: HomographyConfig = HomographyConfig(),
                 photometric: PhotometricConfig | None = PhotometricConfig()):
        if not isinstance(length, int) or length < 1:
            raise ValueError(f"length must be a positive int, got {length!r}")
        self.photos, self.size = _check_photos(photos), _check_size(size)
        self.length, self.seed, self.deterministic = length, int(seed), deterministic
        self.grey, self.dense, self.homography, self.photometric = grey, dense, homography, photometric

    def __len__(self) -> int:
        return self.length

    def _generator(self, index: int) -> tuple[np.random.Generator, str]:
        if self.deterministic:
            return np.random.default_rng([self.seed, index]), self.photos[index % len(self.photos)]
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return rng, self.photos[int(rng.integers(len(self.photos)))]

    def __getitem__(self, index: int) -> dict[str, Tensor | str]:
        if not -self.length <= index < self.length:
            raise IndexError(f"index {index} out of range for {self.length} pairs")
        rng, name = self._generator(index % self.length)
        pair = make_pair(_working_photo(name, self.size, self.grey), rng, self.size, self.homography, self.photometric)
        item: dict[str, Tensor | str] = {
            key: torch.from_numpy(np.ascontiguousarray(np.atleast_3d(pair[key]).transpose(2, 0, 1)))
            for key in ("image0", "image1")}
        item["H_0to1"], item["photo"] = torch.from_numpy(pair["H_0to1"]), name
        if self.dense:
            coords, valid = correspondence_map(pair["H_0to1"], self.size, self.size)
            grid = np.stack(np.meshgrid(np.arange(self.size[1]), np.arange(self.size[0])), axis=-1)
            item["flow_0to1"] = torch.from_numpy((coords - grid).transpose(2, 0, 1).astype(np.float32))
            item["valid_0to1"] = torch.from_numpy(valid)
        return item


def heldout_pairs(size: Sequence[int] = DEFAULT_SIZE, length: int = HELDOUT_LENGTH, grey: bool = False,
                  dense: bool = False) -> HomographyPairs:
    """The fixed evaluation set: ``length`` (240) pairs of the test photos, seed 0, augmented (with
    ``flow_0to1`` / ``valid_0to1`` only when ``dense``)."""
    return HomographyPairs("test", size=size, length=length, seed=HELDOUT_SEED, deterministic=True,
                           grey=grey, dense=dense)
