"""Fashion-MNIST (Xiao et al. 2017) from Debian's ``dataset-fashion-mnist`` package, offline.

60,000 training and 10,000 test images, ``28 x 28`` uint8, 10 classes. The package installs
``/usr/share/datasets/fashion-mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``; the
``RELFORMER_FASHION_MNIST`` environment variable (or ``root=``) points elsewhere. Nothing is
ever downloaded.
"""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

__all__ = ["load_fashion_mnist", "fashion_mnist_root", "FASHION_MNIST_CLASSES", "DEFAULT_ROOT"]

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": "train", "test": "t10k"}
_SIZES = {"train": 60000, "test": 10000}


def fashion_mnist_root(root: str | os.PathLike | None = None) -> Path:
    """The folder holding the four ``.gz`` files; a clear error telling how to install them if absent."""
    path = Path(root or os.environ.get("RELFORMER_FASHION_MNIST") or DEFAULT_ROOT)
    missing = [f"{_FILES[s]}-{kind}-ubyte.gz" for s in _FILES for kind in ("images-idx3", "labels-idx1")
               if not (path / f"{_FILES[s]}-{kind}-ubyte.gz").is_file()]
    if missing:
        raise FileNotFoundError(
            f"Fashion-MNIST not found in {path} (missing {', '.join(missing)}). Install Debian's package: "
            "`sudo apt-get install -y dataset-fashion-mnist` (it puts the files in "
            f"{DEFAULT_ROOT}), or set RELFORMER_FASHION_MNIST to a folder with the original idx .gz files. "
            "relformer never downloads data.")
    return path


def _read_idx(path: Path, magic: int, dims: int) -> np.ndarray:
    """An IDX file (LeCun's MNIST format): big-endian magic, ``dims`` sizes, then uint8 data."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    header = np.frombuffer(data, dtype=">i4", count=1 + dims)
    if header[0] != magic:
        raise ValueError(f"{path} is not an IDX file with magic {magic:#x} (got {header[0]:#x})")
    shape = tuple(int(n) for n in header[1:])
    array = np.frombuffer(data, dtype=np.uint8, offset=4 * (1 + dims))
    if array.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header says {shape}, file holds {array.size} bytes of data (truncated?)")
    return array.reshape(shape)


def load_fashion_mnist(split: str, root: str | os.PathLike | None = None) -> tuple[Tensor, Tensor]:
    """``split`` in ``{"train", "test"}`` -> ``images (N, 28, 28) uint8``, ``labels (N,) int64``."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {sorted(_FILES)}, got {split!r}")
    folder = fashion_mnist_root(root)
    prefix = _FILES[split]
    images = _read_idx(folder / f"{prefix}-images-idx3-ubyte.gz", 0x803, 3)
    labels = _read_idx(folder / f"{prefix}-labels-idx1-ubyte.gz", 0x801, 1)
    if len(images) != len(labels) or len(images) != _SIZES[split]:
        raise ValueError(f"Fashion-MNIST {split}: {len(images)} images and {len(labels)} labels, "
                         f"expected {_SIZES[split]} of each")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.astype(np.int64))
