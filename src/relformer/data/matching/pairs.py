"""Real image pairs with ground truth, offline.

Dataset card:

* **graf** (``graf1.png`` -> ``graf3.png``, 640 x 800 RGB, and ``H1to3p.xml``, the 3 x 3 homography
  mapping graf1 pixel coordinates to graf3's): a graffiti wall, the reference view and the third of the
  viewpoint sequence (its images 2-6 turn by 20-60 degrees), from the Oxford affine-covariant regions benchmark (Mikolajczyk et al., IJCV 2005).
* **aloe** (``aloeL.jpg`` / ``aloeR.jpg``, 1110 x 1282 RGB, rectified, and ``aloeGT.png``): Middlebury
  2006 (Scharstein & Pal, CVPR 2007; Hirschmueller & Scharstein, CVPR 2007). ``aloeGT.png`` is uint8
  disparity of the *left* view in pixels at this resolution, scale 1 (checked here: SIFT matches of the
  pair along rows agree with it to a median 0.3 px, ratio 0.996), 0 = unknown (3.5% of pixels),
  values 43-211.
* **motorcycle** (``skimage.data.stereo_motorcycle()``, 500 x 741 RGB): Middlebury 2014 (Scharstein et
  al., GCPR 2014) downsampled 4x by scikit-image; left-view disparity in pixels, float32, 7.2-59.9,
  unknown pixels are ``inf`` in the file (7.3%), not the NaN its docstring promises.

Both stereo pairs use Middlebury's convention: left pixel ``(x, y)`` is right pixel ``(x - d, y)``.
Here unknown disparity is always NaN. The graf and aloe files come from OpenCV's ``samples/data``,
as packaged by Debian's ``opencv-doc`` (licence of the package: Apache-2.0, OpenCV's; the images
keep their benchmark's terms: research use, with the citations above). The motorcycle pair ships
with scikit-image (BSD-3).

Where the opencv-doc files are looked for: ``RELFORMER_OPENCV_DATA``, then
``sys.prefix/share/opencv-doc/usr/share/doc/opencv-doc/examples/data`` (where ``bash run.sh setup``
unpacks the package beside the environment), then ``/usr/share/doc/opencv-doc/examples/data``.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import skimage.data

__all__ = ["HomographyPair", "StereoPair", "opencv_data_dir", "load_graf", "load_aloe", "load_motorcycle",
           "STEREO_PAIRS", "OPENCV_DATA_FILES"]

OPENCV_DATA_FILES = ("graf1.png", "graf3.png", "H1to3p.xml", "aloeL.jpg", "aloeR.jpg", "aloeGT.png")
_DOC_DATA = Path("share/doc/opencv-doc/examples/data")


@dataclass(frozen=True, eq=False)
class HomographyPair:
    """``image0``, ``image1``: ``(h, w, 3)`` uint8 RGB; ``H_0to1``: ``(3, 3)`` float64, image 0 -> image 1."""
    name: str
    image0: np.ndarray
    image1: np.ndarray
    H_0to1: np.ndarray


@dataclass(frozen=True, eq=False)
class StereoPair:
    """Rectified ``left``, ``right``: ``(h, w, 3)`` uint8 RGB; ``disparity``: ``(h, w)`` float32 of the left
    view in pixels (left ``(x, y)`` is right ``(x - d, y)``), NaN where unknown."""
    name: str
    left: np.ndarray
    right: np.ndarray
    disparity: np.ndarray

    @property
    def valid(self) -> np.ndarray:
        """``(h, w)`` bool: pixels with known disparity."""
        return np.isfinite(self.disparity)


def _candidates() -> list[Path]:
    found = [Path(os.environ["RELFORMER_OPENCV_DATA"])] if os.environ.get("RELFORMER_OPENCV_DATA") else []
    return found + [Path(sys.prefix) / "share/opencv-doc/usr" / _DOC_DATA, Path("/usr") / _DOC_DATA]


def opencv_data_dir() -> Path:
    """The folder with OpenCV's example data (graf, aloe); a FileNotFoundError says how to install it."""
    candidates = _candidates()
    for folder in candidates:
        if all((folder / name).is_file() for name in OPENCV_DATA_FILES):
            return folder
    raise FileNotFoundError(
        f"OpenCV's example pairs ({', '.join(OPENCV_DATA_FILES)}) were not found in any of "
        f"{', '.join(str(c) for c in candidates)}. Install them with `bash run.sh setup` (it unpacks Debian's "
        "opencv-doc beside the environment), or `sudo apt-get install -y opencv-doc`, or point "
        "RELFORMER_OPENCV_DATA at a folder holding those files. relformer never downloads data.")


def _read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"{path} is not a readable image")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _read_matrix(path: Path, node: str) -> np.ndarray:
    """Matrix ``node`` of an OpenCV FileStorage file (the storage stays open while the node is read)."""
    storage = cv2.FileStorage(str(path), cv2.FILE_STORAGE_READ)
    try:
        matrix = storage.getNode(node).mat() if storage.isOpened() else None
    finally:
        storage.release()
    if matrix is None or matrix.shape != (3, 3):
        raise ValueError(f"{path} holds no 3x3 matrix {node!r}")
    return matrix.astype(np.float64)


def load_graf() -> HomographyPair:
    """graf1 -> graf3 with its ground-truth homography (module docstring)."""
    folder = opencv_data_dir()
    return HomographyPair("graf1-graf3", _read_rgb(folder / "graf1.png"), _read_rgb(folder / "graf3.png"),
                          _read_matrix(folder / "H1to3p.xml", "H13"))


def load_aloe() -> StereoPair:
    """Middlebury 2006 Aloe, full size; disparity from ``aloeGT.png`` (scale 1, 0 -> NaN)."""
    folder = opencv_data_dir()
    gt = cv2.imread(str(folder / "aloeGT.png"), cv2.IMREAD_UNCHANGED)
    if gt is None or gt.ndim != 2:
        raise ValueError(f"{folder / 'aloeGT.png'} is not a single-channel disparity image")
    disparity = np.where(gt == 0, np.nan, gt.astype(np.float32)).astype(np.float32)
    return StereoPair("aloe", _read_rgb(folder / "aloeL.jpg"), _read_rgb(folder / "aloeR.jpg"), disparity)


def load_motorcycle() -> StereoPair:
    """Middlebury 2014 Motorcycle from scikit-image (quarter size); ``inf`` disparity -> NaN."""
    left, right, disparity = skimage.data.stereo_motorcycle()
    disparity = np.where(np.isfinite(disparity), disparity, np.nan).astype(np.float32)
    return StereoPair("motorcycle", np.ascontiguousarray(left), np.ascontiguousarray(right), disparity)


STEREO_PAIRS = {"aloe": load_aloe, "motorcycle": load_motorcycle}
