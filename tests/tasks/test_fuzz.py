"""Fuzzing the set criterion (issue 19): random numbers of predictions and targets (0 included),
degenerate and out-of-range boxes, non-finite values, bad labels, focal and group modes. The
property: a finite loss with finite gradients, or a ValueError/TypeError — never another
exception, never a NaN. Budget: tests/fuzz.py (``RELFORMER_FUZZ=deep`` for release checks)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import event, given
from hypothesis import strategies as st

from relformer.models.detection.set_prediction import HungarianMatcher, SetCriterion, postprocess

from ..fuzz import budget

SPECIAL = [math.nan, math.inf, -math.inf]
values = st.floats(-20, 20, width=32)  # 0 and subnormals included: hypothesis favours edge values
centres, sizes = st.floats(-0.5, 1.5, width=32), st.floats(0, 1.5, width=32)  # size 0: degenerate boxes


def tensor(draw, shape, elements, dtype=torch.float32):
    n = int(np.prod(shape))
    return torch.tensor(draw(st.lists(elements, min_size=n, max_size=n)), dtype=dtype).reshape(shape)


def box_tensor(draw, shape):
    """``(..., 4)`` cxcywh boxes: centres anywhere near the image, sizes from 0 (degenerate) up."""
    n = int(np.prod(shape[:-1]))
    return torch.cat([tensor(draw, (n, 2), centres), tensor(draw, (n, 2), sizes)], -1).reshape(shape)


def spoil(draw, t: torch.Tensor) -> torch.Tensor:
    """``t`` with one entry replaced by NaN, inf, -inf or a negative size (the invalid inputs)."""
    if t.numel():
        flat = t.reshape(-1)
        flat[draw(st.integers(0, flat.numel() - 1))] = draw(st.sampled_from([*SPECIAL, -0.25]))
    return t


@st.composite
def problems(draw):
    """A criterion input; about half the draws are valid, the rest carry one kind of bad input."""
    focal = draw(st.booleans())
    groups = draw(st.sampled_from([1, 2]))
    B, K = draw(st.integers(1, 3)), draw(st.integers(1, 4))
    Q = groups * draw(st.integers(1, 4))
    bad = draw(st.sampled_from([None, None, None, "logits", "boxes", "target boxes", "labels", "label list"]))
    logits = tensor(draw, (B, Q, K if focal else K + 1), values)
    boxes = box_tensor(draw, (B, Q, 4))
    targets = []
    for _ in range(B):
        M = draw(st.integers(0, 4))
        targets.append({"labels": tensor(draw, (M,), st.integers(0, K - 1), torch.long),
                        "boxes": box_tensor(draw, (M, 4))})
    if bad == "logits":
        spoil(draw, logits)
    elif bad == "boxes":
        spoil(draw, boxes)
    elif bad == "target boxes":
        spoil(draw, targets[-1]["boxes"])
    elif bad == "labels" and len(targets[-1]["labels"]):
        targets[-1]["labels"][0] = draw(st.sampled_from([-1, K, 10 ** 6]))
    elif bad == "label list":
        targets[-1]["labels"] = targets[-1]["labels"].tolist()
    logits.requires_grad_()
    boxes.requires_grad_()
    aux = [{"logits": logits * 0.5, "pred_boxes": boxes}] if draw(st.booleans()) else []
    return focal, groups, K, {"logits": logits, "pred_boxes": boxes, "aux_outputs": aux}, targets


@budget(80)
@given(problems())
def test_set_criterion_is_finite_or_raises_value_error(problem):
    focal, groups, K, outputs, targets = problem
    criterion = SetCriterion(K, HungarianMatcher(focal=focal), focal=focal, num_groups=groups)
    try:
        losses = criterion(outputs, targets)
    except (ValueError, TypeError) as e:
        assert "targets[" in str(e) or "outputs" in str(e) or "aux_outputs" in str(e), str(e)  # names the input
        event("rejected")
        return
    event("finite loss")
    assert all(torch.isfinite(v).all() for v in losses.values()), losses
    losses["loss"].backward()
    assert torch.isfinite(outputs["logits"].grad).all() and torch.isfinite(outputs["pred_boxes"].grad).all()
    try:
        results = postprocess(outputs, [[32, 32]] * len(targets), focal=focal)
    except ValueError:
        return
    assert all(torch.isfinite(r["boxes"]).all() and torch.isfinite(r["scores"]).all() for r in results)


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_non_finite_target_boxes_are_a_value_error(value):
    """The reproduction: ±inf target boxes gave a NaN loss (NaN ones were already rejected)."""
    outputs = {"logits": torch.zeros(1, 3, 3), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    boxes = torch.tensor([[0.5, 0.5, 0.2, 0.2]])
    boxes[0, 0] = value
    with pytest.raises(ValueError, match=r"targets\[0\]\['boxes'\] contain NaN or inf"):
        SetCriterion(2, HungarianMatcher())(outputs, [{"labels": torch.tensor([1]), "boxes": boxes}])


def test_labels_as_a_list_are_a_type_error():
    """The reproduction: labels given as a Python list raised AttributeError."""
    outputs = {"logits": torch.zeros(1, 3, 3), "pred_boxes": torch.full((1, 3, 4), 0.5)}
    with pytest.raises(TypeError, match=r"targets\[0\]\['labels'\] must be a tensor, got list"):
        SetCriterion(2, HungarianMatcher())(outputs, [{"labels": [1], "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.2]])}])
