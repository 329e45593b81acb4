"""Box operations for set-prediction detectors (DETR, Carion et al. 2020).

Formats: ``cxcywh`` = (centre x, centre y, width, height), the format DETR predicts, normalised
to [0, 1]; ``xyxy`` = (x0, y0, x1, y1) corners; ``xywh`` = (x0, y0, width, height), COCO's.
Every conversion works on ``(..., 4)``; the pairwise functions take ``a (..., N, 4)`` and
``b (..., M, 4)`` in xyxy and return ``(..., N, M)`` (leading dims broadcast, so a batch of
images is one call). Everything is plain differentiable PyTorch; half-precision inputs are
computed in fp32 (areas of pixel boxes overflow fp16).

Generalized IoU (Rezatofighi et al. 2019): ``GIoU = IoU - (|C| - |A u B|) / |C|`` with ``C``
the smallest box enclosing both; it lies in (-1, 1] and is -> -1 for far-apart small boxes.
"""
from __future__ import annotations

import torch
from torch import Tensor

AREA_FLOOR = 1e-12  # an area below any box's: a 1-pixel box on a 10^5 x 10^5 canvas has 1e-10

__all__ = ["box_cxcywh_to_xyxy", "box_xyxy_to_cxcywh", "box_xyxy_to_xywh", "box_xywh_to_xyxy", "box_area",
           "box_iou", "box_iou_aligned", "generalized_box_iou", "generalized_box_iou_aligned"]


def box_cxcywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` (cx, cy, w, h) -> ``(..., 4)`` (x0, y0, x1, y1)."""
    cx, cy, w, h = boxes.unbind(-1)
    return torch.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], dim=-1)


def box_xyxy_to_cxcywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` (x0, y0, x1, y1) -> ``(..., 4)`` (cx, cy, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([(x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0], dim=-1)


def box_xyxy_to_xywh(boxes: Tensor) -> Tensor:
    """``(..., 4)`` (x0, y0, x1, y1) -> ``(..., 4)`` COCO (x0, y0, w, h)."""
    x0, y0, x1, y1 = boxes.unbind(-1)
    return torch.stack([x0, y0, x1 - x0, y1 - y0], dim=-1)


def box_xywh_to_xyxy(boxes: Tensor) -> Tensor:
    """``(..., 4)`` COCO (x0, y0, w, h) -> ``(..., 4)`` (x0, y0, x1, y1)."""
    x0, y0, w, h = boxes.unbind(-1)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=-1)


def _upcast(boxes: Tensor) -> Tensor:
    # fp16/bf16 -> fp32 (products of pixel extents overflow fp16); fp32/fp64 unchanged
    return boxes if boxes.dtype in (torch.float32, torch.float64) else boxes.float()


def box_area(boxes: Tensor) -> Tensor:
    """``(..., 4)`` xyxy -> ``(...)`` areas (no check: degenerate boxes give negative areas)."""
    boxes = _upcast(boxes)
    return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes_a: Tensor, boxes_b: Tensor) -> tuple[Tensor, Tensor]:
    """Pairwise IoU. ``a (..., N, 4)``, ``b (..., M, 4)`` xyxy -> ``(iou (..., N, M), union (..., N, M))``."""
    a, b = _upcast(boxes_a), _upcast(boxes_b)
    area_a, area_b = box_area(a), box_area(b)                        # (..., N), (..., M)
    top_left = torch.max(a[..., :, None, :2], b[..., None, :, :2])       # (..., N, M, 2)
    bottom_right = torch.min(a[..., :, None, 2:], b[..., None, :, 2:])   # (..., N, M, 2)
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]                                  # (..., N, M)
    union = area_a[..., :, None] + area_b[..., None, :] - inter
    return inter / union, union


def _check_xyxy(boxes: Tensor, name: str) -> None:
    if boxes.shape[-1] != 4:
        raise ValueError(f"{name} must have shape (..., 4) in xyxy, got {tuple(boxes.shape)}")
    bad = (boxes[..., 2] < boxes[..., 0]) | (boxes[..., 3] < boxes[..., 1])
    has_nan, has_bad = torch.stack([torch.isnan(boxes).any(), bad.any()]).tolist()   # one device sync
    if has_nan:
        raise ValueError(f"{name} contains NaN")
    if has_bad:
        first = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} has degenerate boxes (x1 < x0 or y1 < y0), e.g. at index {first}: "
                         f"{boxes[first].tolist()}; are they xyxy (not cxcywh) and with w, h >= 0?")


def generalized_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """Pairwise GIoU. ``a (..., N, 4)``, ``b (..., M, 4)`` xyxy -> ``(..., N, M)``.

    Raises ValueError on NaN or degenerate boxes (x1 < x0 or y1 < y0); zero-size boxes are allowed.
    """
    _check_xyxy(boxes_a, "boxes_a")
    _check_xyxy(boxes_b, "boxes_b")
    return _generalized_box_iou(boxes_a, boxes_b)


def _generalized_box_iou(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    # unchecked: for callers that validated their boxes once (the Hungarian matcher, the set criterion)
    iou, union = box_iou(boxes_a, boxes_b)
    a, b = _upcast(boxes_a), _upcast(boxes_b)
    top_left = torch.min(a[..., :, None, :2], b[..., None, :, :2])       # (..., N, M, 2)
    bottom_right = torch.max(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    enclosing = wh[..., 0] * wh[..., 1]                              # (..., N, M)
    return iou - (enclosing - union) / enclosing


def generalized_box_iou_aligned(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """GIoU of matched pairs: ``a (..., N, 4)``, ``b (..., N, 4)`` xyxy -> ``(..., N)``.

    Equals ``generalized_box_iou(a, b).diagonal(dim1=-2, dim2=-1)`` without the N x N work. Same
    checks as :func:`generalized_box_iou`.
    """
    if boxes_a.shape != boxes_b.shape:
        raise ValueError(f"aligned GIoU needs equal shapes, got {tuple(boxes_a.shape)} and {tuple(boxes_b.shape)}")
    _check_xyxy(boxes_a, "boxes_a")
    _check_xyxy(boxes_b, "boxes_b")
    return _generalized_box_iou_aligned(boxes_a, boxes_b)


def box_iou_aligned(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    """IoU of matched pairs: ``a (..., N, 4)``, ``b (..., N, 4)`` xyxy -> ``(..., N)``; the diagonal of
    :func:`box_iou` without the N x N work. Same checks as :func:`generalized_box_iou`."""
    if boxes_a.shape != boxes_b.shape:
        raise ValueError(f"aligned IoU needs equal shapes, got {tuple(boxes_a.shape)} and {tuple(boxes_b.shape)}")
    _check_xyxy(boxes_a, "boxes_a")
    _check_xyxy(boxes_b, "boxes_b")
    return _box_iou_aligned(boxes_a, boxes_b)[0]


def _box_iou_aligned(boxes_a: Tensor, boxes_b: Tensor) -> tuple[Tensor, Tensor]:
    # unchecked: (iou, union) of matched pairs. A zero-area box matched to a zero-area box makes the
    # union 0 (0/0 = NaN in a loss): it is floored at AREA_FLOOR, far below the area of any real box,
    # so the floor is the identity there (forward and backward) and such a pair gets a finite IoU with
    # a zero gradient through the floor.
    a, b = _upcast(boxes_a), _upcast(boxes_b)
    wh = (torch.min(a[..., 2:], b[..., 2:]) - torch.max(a[..., :2], b[..., :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (box_area(a) + box_area(b) - inter).clamp(min=AREA_FLOOR)
    return inter / union, union


def _generalized_box_iou_aligned(boxes_a: Tensor, boxes_b: Tensor) -> Tensor:
    # unchecked twin of generalized_box_iou_aligned; union and enclosing floored as in _box_iou_aligned
    iou, union = _box_iou_aligned(boxes_a, boxes_b)
    a, b = _upcast(boxes_a), _upcast(boxes_b)
    wh_c = (torch.max(a[..., 2:], b[..., 2:]) - torch.min(a[..., :2], b[..., :2])).clamp(min=0)
    enclosing = (wh_c[..., 0] * wh_c[..., 1]).clamp(min=AREA_FLOOR)
    return iou - (enclosing - union) / enclosing
