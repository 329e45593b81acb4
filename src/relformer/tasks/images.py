"""Image files to tensors for the generic tasks: a class-per-folder tree, one image at a time.

Images are read with Pillow when it is installed, else with matplotlib's reader (PNG only
without Pillow), converted to 1 (grey) or 3 (RGB) channels, and resized to a square
``image_size`` with antialiased bilinear interpolation (torch's ``interpolate``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

try:  # the optional reader for JPEG and the other formats
    from PIL import Image as _PIL
except ImportError:  # pragma: no cover - Pillow is a dependency of matplotlib on most installs
    _PIL = None

__all__ = ["IMAGE_SUFFIXES", "read_image", "image_files", "load_image_folder", "resize"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")


def read_image(path: str | Path, channels: int | None = None) -> Tensor:
    """``(C, H, W)`` uint8 pixels of an image file; ``channels`` 1 (grey) or 3 (RGB), None: as stored
    (grey stays 1, anything else 3)."""
    path = Path(path)
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if _PIL is not None:
        with _PIL.open(path) as image:
            mode = {1: "L", 3: "RGB"}.get(channels) or ("L" if image.mode in ("L", "1", "I;16", "I") else "RGB")
            pixels = np.array(image.convert(mode))
    else:
        from matplotlib.image import imread  # the fallback reader, imported only without Pillow
        pixels = imread(path)
        pixels = (pixels * 255).round().astype(np.uint8) if pixels.dtype != np.uint8 else pixels
        pixels = _channels(pixels, channels)
    array = pixels[:, :, None] if pixels.ndim == 2 else pixels
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)  # (C, H, W)


def _channels(pixels: np.ndarray, channels: int | None) -> np.ndarray:
    """An ``(H, W)`` or ``(H, W, 3|4)`` array -> grey ``(H, W)`` or RGB ``(H, W, 3)``."""
    if pixels.ndim == 3:
        pixels = pixels[:, :, :3]
    if channels == 1 and pixels.ndim == 3:
        return (pixels.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)
    if channels == 3 and pixels.ndim == 2:
        return np.repeat(pixels[:, :, None], 3, axis=2)
    return pixels


def resize(image: Tensor, size: int) -> Tensor:
    """``(C, H, W)`` float -> ``(C, size, size)``, antialiased bilinear."""
    if image.shape[-2:] == (size, size):
        return image
    return F.interpolate(image[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]


def image_files(folder: Path) -> list[Path]:
    """The image files directly in ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def load_image_folder(root: str | Path, split: str, classes: Sequence[str] | None = None, *,
                      image_size: int | None = None, channels: int | None = None) -> tuple[Tensor, Tensor, list[str]]:
    """``root/<split>/<class>/*.png|jpg`` -> ``images (N, C, S, S)`` float in [0, 1], ``labels (N,)``
    and the class names (sorted folder names, or ``classes`` to keep another split's indices).
    ``image_size`` None: the first image's size (then every image must have it)."""
    folder = Path(root) / split
    if not folder.is_dir():
        raise ValueError(f"data.root: {folder} is not a folder (expected root/<split>/<class>/*.png)")
    found = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if classes is None:
        classes = found
    unknown = sorted(set(found) - set(classes))
    if unknown:
        raise ValueError(f"{folder} has class folders {unknown} that the train split does not have")
    images, labels = [], []
    for label, name in enumerate(classes):
        for path in image_files(folder / name) if (folder / name).is_dir() else []:
            pixels = read_image(path, channels)
            if channels is None and images and pixels.shape[0] != images[0].shape[0]:
                pixels = pixels.expand(3, -1, -1) if pixels.shape[0] == 1 else pixels
                images = [i.expand(3, -1, -1) for i in images]
            images.append(pixels)
            labels.append(label)
    if not images:
        raise ValueError(f"{folder} holds no images ({', '.join(IMAGE_SUFFIXES)}) in class folders")
    size = image_size or images[0].shape[-1]
    if image_size is None and any(i.shape[-2:] != images[0].shape[-2:] for i in images):
        raise ValueError(f"the images of {folder} differ in size; set data.image_size to resize them")
    stacked = torch.stack([resize(i.float().div(255), size) for i in images])
    return stacked, torch.tensor(labels), list(classes)
