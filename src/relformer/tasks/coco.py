"""COCO box mAP and box drawing for the detection task (:mod:`relformer.tasks.detection`).

:func:`coco_evaluate` runs COCO box mAP with ``faster_coco_eval`` (or ``pycocotools``) on a list
of COCO results (model outputs become that list through
:func:`relformer.models.detection.set_prediction.postprocess` and ``to_coco_results``); :func:`draw_detections`
shows boxes on a canvas for the run's report.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
from typing import Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from ..data.fashion_detection import CLASSES

__all__ = ["coco_evaluate", "draw_detections", "COCO_METRICS"]

COCO_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")
_AREA_RANGES = ((0.0, 1e10), (0.0, 32.0 ** 2), (32.0 ** 2, 96.0 ** 2), (96.0 ** 2, 1e10))  # COCO's all/s/m/l


# ---- evaluation ----------------------------------------------------------------------------------

def _gt_dict(gt_json: str | os.PathLike | dict) -> dict:
    if isinstance(gt_json, dict):
        gt = gt_json
    else:
        with open(gt_json, "rb") as f:
            gt = json.load(f)
    # shallow copies: the evaluators add keys ("ignore", ...) to the annotation dicts
    return {**gt, "images": [dict(im) for im in gt["images"]], "annotations": [dict(a) for a in gt["annotations"]],
            "categories": [dict(c) for c in gt["categories"]]}


def _check_detections(detections: Iterable[dict], gt: dict) -> list[dict]:
    image_ids = {im["id"] for im in gt["images"]}
    category_ids = {c["id"] for c in gt["categories"]}
    out = []
    for d in detections:
        if d["image_id"] not in image_ids:
            raise ValueError(f"detection for image_id {d['image_id']!r}, which is not in the ground truth")
        if d["category_id"] not in category_ids:
            raise ValueError(f"detection with category_id {d['category_id']!r}, not one of {sorted(category_ids)} "
                             "(COCO category id = class index + 1)")
        bbox = [float(v) for v in d["bbox"]]
        if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
            raise ValueError(f"detection bbox must be finite [x, y, w, h] with w, h >= 0, got {d['bbox']!r}")
        out.append({"image_id": int(d["image_id"]), "category_id": int(d["category_id"]), "bbox": bbox,
                    "score": float(d["score"])})
    return out


def coco_evaluate(gt_json: str | os.PathLike | dict, detections: Iterable[dict], *,
                  backend: str = "faster_coco_eval") -> dict[str, float]:
    """COCO box mAP: ``{"AP", "AP50", "AP75", "APs", "APm", "APl"}`` (``COCOeval.stats[0:6]``, in [0, 1]).

    ``gt_json``: a COCO file (e.g. ``dataset.coco_json``) or dict; ``detections``: COCO results
    ``{"image_id", "category_id", "bbox": [x, y, w, h] pixels, "score"}``; ``backend``:
    ``"faster_coco_eval"`` (C++) or ``"pycocotools"``. A metric whose area range holds no ground-truth
    box (COCO reports -1; e.g. ``APl`` here, since no box reaches 96 x 96) is ``nan``, as detectron2
    reports it. No detections give 0 for every other metric.
    """
    if backend not in ("faster_coco_eval", "pycocotools"):
        raise ValueError(f"backend must be 'faster_coco_eval' or 'pycocotools', got {backend!r}")
    gt = _gt_dict(gt_json)
    dets = _check_detections(detections, gt)
    if not dets:  # pycocotools' loadRes cannot take an empty list; COCO's answer is 0 where there is ground truth
        areas = np.array([a["area"] for a in gt["annotations"] if not a.get("iscrowd", 0)], dtype=np.float64)
        has = [bool(((areas >= lo) & (areas <= hi)).any()) for lo, hi in _AREA_RANGES]
        return {k: (0.0 if h else math.nan) for k, h in zip(COCO_METRICS, (has[0], has[0], has[0], *has[1:]))}
    if backend == "faster_coco_eval":
        from faster_coco_eval import COCO, COCOeval_faster

        def quiet(*args, **kwargs):
            return None
        coco_gt = COCO(gt, print_function=quiet)
        evaluator = COCOeval_faster(coco_gt, coco_gt.loadRes(dets), iouType="bbox", print_function=quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    else:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = gt
            coco_gt.createIndex()
            evaluator = COCOeval(coco_gt, coco_gt.loadRes(dets), iouType="bbox")
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
    stats = [float(v) for v in evaluator.stats[:6]]
    return {k: (v if v >= 0 else math.nan) for k, v in zip(COCO_METRICS, stats)}


# ---- plotting ------------------------------------------------------------------------------------

def draw_detections(ax, image: Tensor | np.ndarray, boxes_xyxy: Tensor | np.ndarray, labels: Sequence[int],
                    scores: Sequence[float] | None = None, *, color: str = "lime", classes: Sequence[str] = CLASSES,
                    linewidth: float = 1.0, fontsize: float = 6.0):
    """Show a grey (``(1, H, W)`` / ``(H, W)``) or RGB (``(3, H, W)``) ``image`` on a matplotlib ``ax`` with ``boxes_xyxy (M, 4)`` in
    pixels (pixel-edge coordinates: a box ``[x0, x1)`` covers pixels ``x0 .. x1 - 1``), each labelled
    ``classes[label]`` (and its score). Returns ``ax``."""
    from matplotlib.patches import Rectangle

    img = np.asarray(torch.as_tensor(image).detach().cpu().float()).squeeze()
    peak = 1.0 if img.max(initial=0.0) <= 1.0 else 255.0
    if img.ndim == 3:  # (3, H, W) RGB
        ax.imshow(np.clip(img.transpose(1, 2, 0) / peak, 0.0, 1.0), interpolation="nearest")
    else:
        ax.imshow(img, cmap="gray", vmin=0.0, vmax=peak, interpolation="nearest")
    boxes = np.asarray(torch.as_tensor(boxes_xyxy).detach().cpu().double()).reshape(-1, 4)
    labels = [int(v) for v in (labels.tolist() if hasattr(labels, "tolist") else labels)]
    if scores is not None:
        scores = [float(v) for v in (scores.tolist() if hasattr(scores, "tolist") else scores)]
    for j, (x0, y0, x1, y1) in enumerate(boxes.tolist()):
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=color,
                               linewidth=linewidth))
        text = classes[labels[j]] + ("" if scores is None else f" {scores[j]:.2f}")
        ax.text(x0 - 0.5, y0 - 1.0, text, color=color, fontsize=fontsize, va="bottom")
    ax.set_xticks([])
    ax.set_yticks([])
    return ax
