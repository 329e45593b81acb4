"""Box operations: hand-computed IoU / GIoU, round trips, gradients, and agreement with HF's DETR box ops."""
from __future__ import annotations

import importlib

import pytest
import torch

from relformer.models.detection.boxes import (box_area, box_cxcywh_to_xyxy, box_iou, box_xywh_to_xyxy, box_xyxy_to_cxcywh,
                                   box_xyxy_to_xywh, generalized_box_iou, generalized_box_iou_aligned)


def random_xyxy(n, generator, scale=1.0):
    xy = torch.rand(n, 2, generator=generator) * 0.8 * scale
    wh = (torch.rand(n, 2, generator=generator) * 0.5 + 0.01) * scale
    return torch.cat([xy, xy + wh], dim=-1)


def t(*rows):
    return torch.tensor(rows, dtype=torch.float64)


@pytest.mark.parametrize("a, b, iou, giou", [
    ((0, 0, 2, 2), (0, 0, 2, 2), 1.0, 1.0),                   # identical
    ((0, 0, 1, 1), (2, 0, 3, 1), 0.0, -1 / 3),                # disjoint: hull 3, union 2
    ((0, 0, 4, 4), (1, 1, 3, 3), 0.25, 0.25),                 # nested: hull = outer box
    ((0, 0, 1, 1), (1, 0, 2, 1), 0.0, 0.0),                   # sharing an edge: hull = union
    ((0, 0, 1, 1), (1, 1, 2, 2), 0.0, -0.5),                  # touching corners: hull 4, union 2
    ((0, 0, 2, 2), (1, 1, 3, 3), 1 / 7, 1 / 7 - 2 / 9),       # overlap 1, union 7, hull 9
])
def test_hand_computed(a, b, iou, giou):
    a, b = t(a), t(b)
    got_iou, union = box_iou(a, b)
    assert got_iou.item() == pytest.approx(iou, abs=1e-12)
    assert union.item() == pytest.approx(box_area(a).item() + box_area(b).item() - iou * union.item(), abs=1e-12)
    assert generalized_box_iou(a, b).item() == pytest.approx(giou, abs=1e-12)
    assert generalized_box_iou(b, a).item() == pytest.approx(giou, abs=1e-12)     # symmetric
    assert generalized_box_iou_aligned(a, b).item() == pytest.approx(giou, abs=1e-12)


def test_pairwise_shapes_and_aligned_is_diagonal():
    g = torch.Generator().manual_seed(0)
    a, b = random_xyxy(7, g), random_xyxy(5, g)
    iou, union = box_iou(a, b)
    assert iou.shape == union.shape == (7, 5)
    assert generalized_box_iou(a, b).shape == (7, 5)
    a5 = a[:5]
    torch.testing.assert_close(generalized_box_iou_aligned(a5, b), generalized_box_iou(a5, b).diagonal(),
                               atol=1e-7, rtol=0)
    # leading batch dims broadcast: (2, 7, 4) x (2, 5, 4) -> (2, 7, 5), as a loop over the batch
    A, Bx = torch.stack([a, a.flip(0)]), torch.stack([b, b.flip(0)])
    batched = generalized_box_iou(A, Bx)
    assert batched.shape == (2, 7, 5)
    for i in range(2):
        torch.testing.assert_close(batched[i], generalized_box_iou(A[i], Bx[i]), atol=0, rtol=0)


def test_round_trips():
    g = torch.Generator().manual_seed(1)
    xyxy = random_xyxy(11, g).double()
    torch.testing.assert_close(box_cxcywh_to_xyxy(box_xyxy_to_cxcywh(xyxy)), xyxy, atol=1e-12, rtol=0)
    torch.testing.assert_close(box_xywh_to_xyxy(box_xyxy_to_xywh(xyxy)), xyxy, atol=1e-12, rtol=0)
    assert box_xyxy_to_cxcywh(t(1, 2, 5, 10)).tolist() == [3, 6, 4, 8]
    assert box_xyxy_to_xywh(t(1, 2, 5, 10)).tolist() == [1, 2, 4, 8]
    assert box_cxcywh_to_xyxy(t(3, 6, 4, 8)).tolist() == [1, 2, 5, 10]
    assert box_area(t((1, 2, 5, 10), (0, 0, 0, 3))).tolist() == [32, 0]


def test_gradients_finite():
    g = torch.Generator().manual_seed(2)
    a = random_xyxy(6, g).requires_grad_()
    b = random_xyxy(4, g).requires_grad_()
    (generalized_box_iou(a, b).sum() + box_iou(a, b)[0].sum()
     + generalized_box_iou_aligned(a[:4], b).sum()).backward()
    for x in (a, b):
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    cxcywh = box_xyxy_to_cxcywh(random_xyxy(3, g)).requires_grad_()
    box_xyxy_to_xywh(box_cxcywh_to_xyxy(cxcywh)).sum().backward()
    assert torch.isfinite(cxcywh.grad).all()


def test_half_precision_upcast():
    pix = torch.tensor([[0.0, 0.0, 400.0, 300.0]], dtype=torch.float16)   # area 120000 > fp16 max
    assert box_area(pix).dtype == torch.float32 and box_area(pix).item() == 120000
    assert generalized_box_iou(pix, pix).item() == 1.0


def test_invalid_boxes_raise():
    good = t((0, 0, 1, 1))
    with pytest.raises(ValueError, match=r"boxes_b has degenerate boxes.*index \(0,\)"):
        generalized_box_iou(good, t((0.5, 0.5, 0.2, 0.2)))         # cxcywh passed as xyxy: x1 < x0
    with pytest.raises(ValueError, match="boxes_a has degenerate"):
        generalized_box_iou(t((0, 1, 1, 0)), good)                 # y1 < y0
    with pytest.raises(ValueError, match="boxes_a contains NaN"):
        generalized_box_iou(t((0, 0, float("nan"), 1)), good)
    with pytest.raises(ValueError, match=r"shape \(\.\.\., 4\)"):
        generalized_box_iou(torch.zeros(2, 3), good)
    with pytest.raises(ValueError, match="equal shapes"):
        generalized_box_iou_aligned(good, t((0, 0, 1, 1), (0, 0, 2, 2)))


def test_agrees_with_hf():
    hf = importlib.import_module("transformers.loss.loss_for_object_detection")  # the peer must be there: fail, never skip
    from transformers.image_transforms import center_to_corners_format

    g = torch.Generator().manual_seed(3)
    a, b = random_xyxy(9, g), random_xyxy(13, g)
    torch.testing.assert_close(box_area(a), hf.box_area(a), atol=1e-6, rtol=0)
    for mine, theirs in zip(box_iou(a, b), hf.box_iou(a, b)):
        torch.testing.assert_close(mine, theirs, atol=1e-6, rtol=0)
    torch.testing.assert_close(generalized_box_iou(a, b), hf.generalized_box_iou(a, b), atol=1e-6, rtol=0)
    cxcywh = box_xyxy_to_cxcywh(a)
    torch.testing.assert_close(box_cxcywh_to_xyxy(cxcywh), center_to_corners_format(cxcywh), atol=1e-6, rtol=0)
