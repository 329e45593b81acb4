"""Fashion-MNIST detection: real Fashion-MNIST items pasted on black canvases, with COCO boxes.

**Canvases.** Each split holds ``N`` single-channel uint8 canvases ``(canvas, canvas)`` (black
background). A canvas gets ``k ~ uniform{min_objects..max_objects}`` items; an item is a
Fashion-MNIST image resized from ``28 x 28`` to ``s x s`` (``s ~ uniform{min_size..max_size}``,
``torch.nn.functional.interpolate``, bilinear, ``antialias=True``, rounded to uint8), pasted at a
uniform random position with the whole ``s x s`` patch inside the canvas, and composited with the
pixel-wise maximum. Its ground-truth box is the tight box of its own pixels ``> THRESHOLD``
(10 of 255) in canvas pixels; the label is its Fashion-MNIST class.

**Occlusion.** Writing ``cover(A)`` for the sum over the other boxes ``B`` of the canvas of
``area(A & B)`` (an upper bound on the area of ``A`` covered by the union of the others), every box
keeps ``cover(A) <= max_occlusion * area(A)``; in particular every pair of boxes overlaps by at most
``max_occlusion`` of either box. An item's position is redrawn up to ``PLACEMENT_TRIES`` times
(all candidates are drawn at once, the first valid one is used); an item that still does not fit
is dropped, as is an item with no pixel above the threshold (neither happens with
``max_occlusion >= 1``, which disables the check). So a canvas holds *at most* ``k`` boxes; the
COCO image record keeps ``num_drawn`` (``k``) and the JSON ``info`` the dropped counts (about 5 %
of the items with the defaults).

**Sources are disjoint across splits**: train draws from Fashion-MNIST train images 0..49,999,
val from train images 50,000..59,999, test from the official 10,000 test images. Within a split,
items visit a random permutation of that pool (a fresh permutation when it is used up), so no
source image repeats before the whole pool has been used. Each annotation records its
``source_index`` (row in the Fashion-MNIST file: ``train`` for train/val, ``t10k`` for test),
``scale`` (``s``) and ``paste_xy`` (top-left corner of the ``s x s`` patch), enough to re-render it.

**Determinism and cache.** Every draw comes from ``numpy.random.default_rng`` seeded with
``(seed, split)``, so the same arguments give byte-identical files. The splits are written under
``<root>/fashion-detection-<hash of the arguments>/`` as ``<split>.npz`` (``images`` uint8
``(N, canvas, canvas)``) and ``<split>.json`` (COCO: image ids ``1..N`` are the rows of the npz,
category id = class index + 1), atomically (temporary file, fsync, ``os.replace``); later calls
load them (a split whose files are missing or do not parse is regenerated). ``root`` defaults to
:func:`relformer.utils.cache_root`.

**The crowded multi-scale variant** (:func:`build_fashion_crowded_detection`, arguments
:data:`CROWDED`): 256 x 256 canvases, 4-20 items of 12-128 px, the same occlusion limit (0.3),
the same source pools. Items reach 128 px (not 96) because COCO's ``large`` range starts at an
area of 96²: a tight box of a 96 px item is at most 96 x 96, so with 96 px items ``AP_large`` would
have no ground truth. Dataset card of its evaluated splits (``sizes=(4000, 500, 500)``, seed 0;
boxes per COCO area range counted as ``COCOeval`` does, bounds inclusive; ``dropped``: items with
no room under the occlusion limit; checked by ``tests/data/test_fashion_detection.py``)::

    split  canvases  boxes  small  medium  large  dropped
    val    500       4909   1540   3056    317    1188
    test   500       4764   1433   3037    295    1137

COCO box mAP on these splits and the drawing of boxes live with the detection task
(:mod:`relformer.tasks.coco`).
"""
from __future__ import annotations

import hashlib
import json
import os
import zipfile
from pathlib import Path
from types import MappingProxyType
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from ..utils import atomic_write_bytes, atomic_write_with, cache_root
from .fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist

__all__ = ["CLASSES", "SPLITS", "THRESHOLD", "PLACEMENT_TRIES", "CROWDED", "CROWDED_SIZES", "COCO_AREA_RANGES",
           "FashionDetection", "build_fashion_detection", "build_fashion_crowded_detection", "area_counts",
           "fashion_detection_dir"]

CLASSES: tuple[str, ...] = tuple(FASHION_MNIST_CLASSES)
SPLITS = ("train", "val", "test")
THRESHOLD = 10          # an item pixel belongs to its box when > THRESHOLD (of 255)
PLACEMENT_TRIES = 50    # positions drawn per item before it is dropped
_FORMAT = "fashion-detection-v1"
# split -> (Fashion-MNIST file, first row, end row) of its source pool
_SOURCES = {"train": ("train", 0, 50000), "val": ("train", 50000, 60000), "test": ("test", 0, 10000)}
#: the generator arguments of the crowded multi-scale variant (:func:`build_fashion_crowded_detection`)
CROWDED = MappingProxyType({"canvas": 256, "min_objects": 4, "max_objects": 20, "min_size": 12, "max_size": 128,
                            "max_occlusion": 0.3})
CROWDED_SIZES = (4000, 500, 500)  # canvases per split (train, val, test) of the crowded variant
#: COCO's box area ranges (``COCOeval.params.areaRng``: bounds inclusive)
COCO_AREA_RANGES = MappingProxyType({"small": (0.0, 32.0 ** 2), "medium": (32.0 ** 2, 96.0 ** 2),
                                     "large": (96.0 ** 2, 1e10)})


# ---- arguments and cache -------------------------------------------------------------------------

def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_args(canvas, sizes, min_objects, max_objects, min_size, max_size, max_occlusion, seed) -> dict[str, Any]:
    """Validate the generator arguments; return them as a JSON-able dict (the cache key)."""
    if not _is_int(canvas) or canvas < 1:
        raise ValueError(f"canvas must be a positive int, got {canvas!r}")
    if isinstance(sizes, (str, bytes)) or len(sizes) != 3 or not all(_is_int(n) and n >= 0 for n in sizes):
        raise ValueError(f"sizes must be three non-negative ints (train, val, test), got {sizes!r}")
    if not _is_int(min_objects) or min_objects < 0:
        raise ValueError(f"min_objects must be a non-negative int, got {min_objects!r}")
    if not _is_int(max_objects) or max_objects < 1:
        raise ValueError(f"max_objects must be a positive int, got {max_objects!r}")
    if min_objects > max_objects:
        raise ValueError(f"min_objects ({min_objects}) must be <= max_objects ({max_objects})")
    if not _is_int(min_size) or min_size < 1:
        raise ValueError(f"min_size must be a positive int, got {min_size!r}")
    if not _is_int(max_size) or max_size < min_size:
        raise ValueError(f"max_size must be an int >= min_size ({min_size}), got {max_size!r}")
    if max_size > canvas:
        raise ValueError(f"max_size ({max_size}) must be <= canvas ({canvas})")
    if isinstance(max_occlusion, bool) or not isinstance(max_occlusion, (int, float)) \
            or not 0.0 <= float(max_occlusion) <= 1.0:
        raise ValueError(f"max_occlusion must be a number in [0, 1], got {max_occlusion!r}")
    if not _is_int(seed) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    return {"format": _FORMAT, "canvas": int(canvas), "sizes": [int(n) for n in sizes],
            "min_objects": int(min_objects), "max_objects": int(max_objects), "min_size": int(min_size),
            "max_size": int(max_size), "max_occlusion": float(max_occlusion), "seed": int(seed),
            "threshold": THRESHOLD, "placement_tries": PLACEMENT_TRIES}


def fashion_detection_dir(root: str | os.PathLike | None, args: dict[str, Any]) -> Path:
    """``<root>/fashion-detection-<12 hex of sha256(args)>``; ``root`` defaults to :func:`~relformer.utils.cache_root`."""
    base = Path(root) if root is not None else cache_root()
    digest = hashlib.sha256(json.dumps(args, sort_keys=True).encode()).hexdigest()[:12]
    return base.expanduser() / f"fashion-detection-{digest}"


def _write_npz(f, images: np.ndarray) -> None:
    """``np.savez_compressed(f, images=images)`` with a fixed zip timestamp, so equal arrays give equal bytes."""
    info = zipfile.ZipInfo("images.npy", date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_DEFLATED
    with zipfile.ZipFile(f, "w") as z, z.open(info, "w", force_zip64=True) as g:
        np.lib.format.write_array(g, np.ascontiguousarray(images), allow_pickle=False)


def build_fashion_detection(root: str | os.PathLike | None = None, *, canvas: int = 128,
                            sizes: Sequence[int] = (10000, 1000, 1000), min_objects: int = 1, max_objects: int = 8,
                            min_size: int = 16, max_size: int = 64, max_occlusion: float = 0.3, seed: int = 0,
                            source: str | os.PathLike | None = None,
                            rebuild: bool = False) -> dict[str, "FashionDetection"]:
    """The ``{"train", "val", "test"}`` :class:`FashionDetection` splits (module docstring), generated
    on the first call (seconds) and loaded from the cache afterwards.

    ``root``: the cache root; ``sizes``: canvases per split (train, val, test); ``source``: the
    Fashion-MNIST folder (default: Debian's package, see :func:`~relformer.data.fashion_mnist.fashion_mnist_root`;
    not part of the cache key); ``rebuild``: ignore an existing cache.
    """
    args = _check_args(canvas, sizes, min_objects, max_objects, min_size, max_size, max_occlusion, seed)
    folder = fashion_detection_dir(root, args)
    out: dict[str, FashionDetection] = {}
    loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # Fashion-MNIST file -> (images, labels), read once
    for split in SPLITS:
        if not rebuild:
            try:
                out[split] = FashionDetection.load(folder, split, expected_args=args)
                continue
            except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
                pass  # missing, truncated, foreign or stale files: regenerate this split
        file = _SOURCES[split][0]
        if file not in loaded:
            loaded[file] = tuple(t.numpy() for t in load_fashion_mnist(file, root=source))
        images, coco = _generate_split(split, args, *loaded[file])
        atomic_write_bytes(folder / f"{split}.json", json.dumps(coco, separators=(",", ":")).encode())
        atomic_write_with(folder / f"{split}.npz", lambda f: _write_npz(f, images))
        out[split] = FashionDetection.load(folder, split, expected_args=args)
    return out


def build_fashion_crowded_detection(root: str | os.PathLike | None = None, *, sizes: Sequence[int] = CROWDED_SIZES,
                                    seed: int = 0, source: str | os.PathLike | None = None, rebuild: bool = False,
                                    **overrides: Any) -> dict[str, "FashionDetection"]:
    """The crowded multi-scale variant (module docstring): :func:`build_fashion_detection` with the
    arguments :data:`CROWDED`, any of them replaced by ``overrides`` (unknown names are a TypeError)."""
    unknown = sorted(set(overrides) - set(CROWDED))
    if unknown:
        raise TypeError(f"build_fashion_crowded_detection: unknown argument(s) {', '.join(unknown)}; "
                        f"known: {', '.join(CROWDED)}, sizes, seed, source, rebuild")
    return build_fashion_detection(root, sizes=sizes, seed=seed, source=source, rebuild=rebuild,
                                   **{**CROWDED, **overrides})


def area_counts(coco: dict) -> dict[str, int]:
    """Non-crowd boxes of a COCO dict per :data:`COCO_AREA_RANGES` range (as ``COCOeval`` counts
    them: a box on a bound counts in both ranges)."""
    areas = np.array([a["area"] for a in coco["annotations"] if not a.get("iscrowd", 0)], dtype=np.float64)
    return {name: int(((areas >= lo) & (areas <= hi)).sum()) for name, (lo, hi) in COCO_AREA_RANGES.items()}


# ---- generation ----------------------------------------------------------------------------------

def _resize_items(src_images: np.ndarray, source: np.ndarray, sizes: np.ndarray):
    """Resize items ``src_images[source] (A, 28, 28)`` to ``sizes (A,)``, one interpolate call per size.

    Returns ``patches`` (list of A uint8 ``(s, s)`` arrays), ``boxes (A, 4)`` int64 local
    ``x0, y0, x1, y1`` (exclusive ends) of the pixels ``> THRESHOLD``, and ``nonempty (A,)`` bool.
    """
    A = len(sizes)
    patches: list[np.ndarray | None] = [None] * A
    boxes = np.zeros((A, 4), dtype=np.int64)
    nonempty = np.zeros(A, dtype=bool)
    for s in np.unique(sizes).tolist():
        idx = np.flatnonzero(sizes == s)
        x = torch.from_numpy(src_images[source[idx]]).unsqueeze(1).float()                   # (B, 1, 28, 28)
        y = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False, antialias=True)
        y = y.squeeze(1).round_().clamp_(0, 255).to(torch.uint8).numpy()                     # (B, s, s)
        mask = y > THRESHOLD
        rows, cols = mask.any(2), mask.any(1)                                               # (B, s) each
        nonempty[idx] = rows.any(1)
        boxes[idx, 0] = cols.argmax(1)
        boxes[idx, 1] = rows.argmax(1)
        boxes[idx, 2] = s - cols[:, ::-1].argmax(1)
        boxes[idx, 3] = s - rows[:, ::-1].argmax(1)
        for j, i in enumerate(idx.tolist()):
            patches[i] = y[j]
    return patches, boxes, nonempty


def _generate_split(split: str, args: dict[str, Any], images_src: np.ndarray,
                    labels_src: np.ndarray) -> tuple[np.ndarray, dict]:
    """Render one split from its Fashion-MNIST file ``images_src (P, 28, 28)`` uint8, ``labels_src (P,)``:
    ``images (N, canvas, canvas)`` uint8 and its COCO dict."""
    file, start, end = _SOURCES[split]
    n, C, limit = args["sizes"][SPLITS.index(split)], args["canvas"], args["max_occlusion"]
    rng = np.random.default_rng([args["seed"], SPLITS.index(split)])

    # every random draw up front, in a fixed order (so the output depends only on the arguments)
    drawn = rng.integers(args["min_objects"], args["max_objects"] + 1, size=n)              # (N,) k per canvas
    ptr = np.concatenate([[0], np.cumsum(drawn)])                                            # (N + 1,)
    A = int(ptr[-1])
    sizes = rng.integers(args["min_size"], args["max_size"] + 1, size=A)                    # (A,)
    pool = np.arange(start, end)
    passes = -(-A // len(pool))
    source = np.concatenate([rng.permutation(pool) for _ in range(passes)])[:A] if A else pool[:0]  # (A,)
    xy = rng.integers(0, (C - sizes + 1)[:, None, None], size=(A, PLACEMENT_TRIES, 2))       # (A, T, 2) x, y
    xyxy = np.concatenate([xy, xy], axis=2)                                                  # (A, T, 4)

    patches, local, nonempty = _resize_items(images_src, source, sizes)
    canvases = np.zeros((n, C, C), dtype=np.uint8)
    annotations: list[dict] = []
    image_records: list[dict] = []
    dropped_no_room = dropped_blank = 0
    for c in range(n):
        placed = np.zeros((0, 4), dtype=np.int64)     # (m, 4) x0, y0, x1, y1 of the boxes on this canvas
        covered = np.zeros(0, dtype=np.int64)         # (m,) sum of their intersections with the others
        for a in range(ptr[c], ptr[c + 1]):
            if not nonempty[a]:
                dropped_blank += 1
                continue
            cand = xyxy[a] + local[a]                                                        # (T, 4)
            area = int((local[a, 2] - local[a, 0]) * (local[a, 3] - local[a, 1]))
            t = 0
            if len(placed) and limit < 1.0:
                iw = np.minimum(cand[:, None, 2], placed[None, :, 2]) - np.maximum(cand[:, None, 0], placed[None, :, 0])
                ih = np.minimum(cand[:, None, 3], placed[None, :, 3]) - np.maximum(cand[:, None, 1], placed[None, :, 1])
                inter = np.maximum(iw, 0) * np.maximum(ih, 0)                                   # (T, m)
                areas = (placed[:, 2] - placed[:, 0]) * (placed[:, 3] - placed[:, 1])        # (m,)
                ok = (inter.sum(1) <= limit * area) & ((covered + inter) <= limit * areas).all(1)
                if not ok.any():
                    dropped_no_room += 1
                    continue
                t = int(ok.argmax())
                covered = np.append(covered + inter[t], inter[t].sum())
            else:
                covered = np.append(covered, 0)
            box = cand[t]
            placed = np.concatenate([placed, box[None]])
            x, y, s = int(xy[a, t, 0]), int(xy[a, t, 1]), int(sizes[a])
            view = canvases[c, y:y + s, x:x + s]
            np.maximum(view, patches[a], out=view)
            x0, y0, x1, y1 = (int(v) for v in box)
            annotations.append({"id": len(annotations) + 1, "image_id": c + 1,
                                "category_id": int(labels_src[source[a]]) + 1,
                                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0), "iscrowd": 0,
                                "source_index": int(source[a]), "scale": s, "paste_xy": [x, y]})
        image_records.append({"id": c + 1, "width": C, "height": C, "file_name": f"{split}.npz#{c}",
                              "num_drawn": int(drawn[c])})
    coco = {"info": {"description": "Fashion-MNIST detection canvases (relformer.data.fashion_detection)",
                     "split": split, "source_file": file, "source_rows": [start, end], "arguments": args,
                     "num_drawn": A, "num_placed": len(annotations),
                     "dropped_no_room": dropped_no_room, "dropped_blank": dropped_blank},
            "images": image_records, "annotations": annotations,
            "categories": [{"id": i + 1, "name": name, "supercategory": "fashion"} for i, name in enumerate(CLASSES)]}
    return canvases, coco


# ---- dataset -------------------------------------------------------------------------------------

class FashionDetection(Dataset):
    """One split. ``ds[i] -> (image (1, H, W) float32 in [0, 1], target)`` with ``target =
    {"labels": (M,) int64 class index 0..9, "boxes": (M, 4) float32 (cx, cy, w, h) / canvas,
    "image_id": int}`` (the COCO image id, ``i + 1``); ``ds.__getitems__(indices) -> (images
    (B, 1, H, W), [target, ...])`` (what ``DataLoader`` calls; pass ``collate_fn=FashionDetection.collate``).

    Attributes: ``images (N, H, W)`` uint8 tensor, ``coco`` (the COCO dict), ``coco_json`` (its
    path), ``canvas``, ``split``, ``classes``.
    """

    classes = CLASSES

    def __init__(self, images: np.ndarray | Tensor, coco: dict, coco_json: str | os.PathLike, split: str = "") -> None:
        images = torch.as_tensor(images)
        if images.dtype != torch.uint8 or images.dim() != 3 or images.shape[1] != images.shape[2]:
            raise ValueError(f"images must be uint8 (N, H, H), got {images.dtype} {tuple(images.shape)}")
        N, C = images.shape[0], images.shape[1]
        if [im["id"] for im in coco["images"]] != list(range(1, N + 1)):
            raise ValueError(f"the COCO images must have ids 1..{N}, in order, for {N} canvases")
        self.images, self.coco, self.coco_json, self.split, self.canvas = images, coco, Path(coco_json), split, int(C)
        anns = coco["annotations"]
        image_id = np.array([a["image_id"] for a in anns], dtype=np.int64).reshape(-1)          # (A,)
        if len(anns) and (image_id.min() < 1 or image_id.max() > N):
            raise ValueError("an annotation refers to an image id outside 1..N")
        order = np.argsort(image_id, kind="stable")
        xywh = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4)[order]       # (A, 4) pixels
        cxcywh = np.concatenate([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], axis=1) / C
        self._boxes = torch.from_numpy(cxcywh.astype(np.float32))                               # (A, 4)
        self._labels = torch.tensor([anns[i]["category_id"] - 1 for i in order.tolist()], dtype=torch.int64)
        self._ptr = np.searchsorted(image_id[order], np.arange(1, N + 2)).tolist()              # (N + 1,)

    @classmethod
    def load(cls, folder: str | os.PathLike, split: str, expected_args: dict | None = None) -> "FashionDetection":
        """Read ``<folder>/<split>.npz`` and ``.json``; ValueError when they disagree or (given
        ``expected_args``) were made with other arguments."""
        folder = Path(folder)
        coco_json = folder / f"{split}.json"
        with open(coco_json, "rb") as f:
            coco = json.load(f)
        with np.load(folder / f"{split}.npz", allow_pickle=False) as z:
            images = z["images"]
        if expected_args is not None:
            if coco.get("info", {}).get("arguments") != expected_args:
                raise ValueError(f"{coco_json} was made with other arguments")
            n, C = expected_args["sizes"][SPLITS.index(split)], expected_args["canvas"]
            if images.shape != (n, C, C):
                raise ValueError(f"{folder / split}.npz holds {images.shape}, expected {(n, C, C)}")
        return cls(images, coco, coco_json, split)

    def __len__(self) -> int:
        return self.images.shape[0]

    def _target(self, i: int) -> dict[str, Any]:
        a, b = self._ptr[i], self._ptr[i + 1]
        return {"labels": self._labels[a:b].clone(), "boxes": self._boxes[a:b].clone(), "image_id": i + 1}

    def _index(self, i) -> int:
        i = int(i)
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} out of range for {len(self)} canvases")
        return i % len(self)

    def __getitem__(self, i: int) -> tuple[Tensor, dict[str, Any]]:
        i = self._index(i)
        return self.images[i].unsqueeze(0).float().div_(255), self._target(i)             # (1, H, W)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, list[dict[str, Any]]]:
        idx = [self._index(i) for i in indices]
        images = self.images[torch.tensor(idx, dtype=torch.int64)].unsqueeze(1).float().div_(255)  # (B, 1, H, W)
        return images, [self._target(i) for i in idx]

    @staticmethod
    def collate(batch) -> tuple[Tensor, list[dict[str, Any]]]:
        """``collate_fn`` for ``DataLoader``: passes :meth:`__getitems__`' batch through and stacks a
        list of ``(image, target)`` samples."""
        if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[0], Tensor) and batch[0].dim() == 4:
            return batch
        images, targets = zip(*batch)
        return torch.stack(images), list(targets)

    def __repr__(self) -> str:
        return (f"FashionDetection(split={self.split!r}, canvases={len(self)}, canvas={self.canvas}, "
                f"boxes={len(self._labels)}, coco_json={str(self.coco_json)!r})")
