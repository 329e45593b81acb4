"""Hungarian matcher, set criterion and post-processing: equivalence to HF's DETR / Deformable-DETR losses,
the batched cost against a naive one, Group DETR against explicit per-group loops."""
from __future__ import annotations

from dataclasses import dataclass, field
from types import SimpleNamespace

import importlib

import pytest
import torch

from relformer.models.detection.boxes import box_cxcywh_to_xyxy, generalized_box_iou
from relformer.models.detection.set_prediction import HungarianMatcher, SetCriterion, postprocess, to_coco_results

B, Q, K, LAYERS = 3, 20, 10, 3          # LAYERS decoder layers: the last is the output, two are auxiliary
SIZES = (4, 0, 17)                      # an image with no targets and one with many


def make_batch(focal=False, sizes=SIZES, q=Q, seed=0, requires_grad=False, dtype=torch.float32):
    """``(outputs, targets, (logits (LAYERS, B, Q, C), boxes (LAYERS, B, Q, 4)))`` with aux outputs."""
    g = torch.Generator().manual_seed(seed)
    C = K if focal else K + 1
    logits = torch.randn(LAYERS, len(sizes), q, C, generator=g, dtype=dtype).requires_grad_(requires_grad)
    boxes = torch.randn(LAYERS, len(sizes), q, 4, generator=g, dtype=dtype).requires_grad_(requires_grad)
    pred_boxes = boxes.sigmoid()
    targets = []
    for n in sizes:
        centre = torch.rand(n, 2, generator=g) * 0.8 + 0.1
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.02
        targets.append({"labels": torch.randint(0, K, (n,), generator=g), "boxes": torch.cat([centre, wh], -1)})
    outputs = {"logits": logits[-1], "pred_boxes": pred_boxes[-1],
               "aux_outputs": [{"logits": logits[i], "pred_boxes": pred_boxes[i]} for i in range(LAYERS - 1)]}
    return outputs, targets, (logits, boxes, pred_boxes)


def hf_targets(targets):
    return [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]


def assert_same_indices(mine, theirs):
    assert len(mine) == len(theirs)
    for (q1, t1), (q2, t2) in zip(mine, theirs):
        assert q1.dtype == t1.dtype == torch.int64
        assert q1.tolist() == q2.tolist() and t1.tolist() == t2.tolist()


def hf_config(**kw):
    cfg = dict(class_cost=1.0, bbox_cost=5.0, giou_cost=2.0, num_labels=K, eos_coefficient=0.1,
               auxiliary_loss=True, decoder_layers=LAYERS, bbox_loss_coefficient=4.0, giou_loss_coefficient=3.0,
               focal_alpha=0.25)
    cfg.update(kw)
    return SimpleNamespace(**cfg)


# --- (a), (b): equivalence to HF ---------------------------------------------------------------

@pytest.mark.parametrize("costs", [(1.0, 5.0, 2.0), (2.0, 1.0, 0.5)])
def test_matcher_equals_hf(costs):
    hf = importlib.import_module("transformers.loss.loss_for_object_detection")  # the peer must be there: fail, never skip
    outputs, targets, _ = make_batch()
    theirs = hf.HungarianMatcher(*costs)(outputs, hf_targets(targets))
    mine = HungarianMatcher(*costs)(outputs, targets)
    assert_same_indices(mine, theirs)
    assert [len(q) for q, _ in mine] == [min(Q, n) for n in SIZES]


def test_criterion_equals_hf_detr_loss():
    hf = importlib.import_module("transformers.loss.loss_for_object_detection")  # the peer must be there: fail, never skip
    outputs, targets, (logits, _, pred_boxes) = make_batch()
    cfg = hf_config()
    hf_loss, hf_dict, _ = hf.ForObjectDetectionLoss(
        logits[-1], hf_targets(targets), "cpu", pred_boxes[-1], cfg, outputs_class=logits, outputs_coord=pred_boxes)
    criterion = SetCriterion(K, HungarianMatcher(1.0, 5.0, 2.0), weight_class=1.0, weight_bbox=4.0, weight_giou=3.0,
                             eos_coef=0.1)
    mine = criterion(outputs, targets)
    assert set(mine) == set(hf_dict) | {"loss"}
    assert {"loss_ce_0", "loss_bbox_1", "cardinality_error_1"} <= set(mine)
    for name, value in hf_dict.items():
        torch.testing.assert_close(mine[name], value, atol=1e-6, rtol=0, msg=name)
    torch.testing.assert_close(mine["loss"], hf_loss, atol=1e-6, rtol=0)


def test_focal_equals_hf_deformable_detr():
    hf = importlib.import_module("transformers.loss.loss_deformable_detr")  # the peer must be there: fail, never skip
    outputs, targets, (logits, _, pred_boxes) = make_batch(focal=True)
    assert_same_indices(HungarianMatcher(focal=True)(outputs, targets),
                        hf.DeformableDetrHungarianMatcher(1.0, 5.0, 2.0)(outputs, hf_targets(targets)))
    cfg = hf_config()
    hf_loss, hf_dict, _ = hf.DeformableDetrForObjectDetectionLoss(
        logits[-1], hf_targets(targets), "cpu", pred_boxes[-1], cfg, outputs_class=logits, outputs_coord=pred_boxes)
    criterion = SetCriterion(K, HungarianMatcher(focal=True), weight_bbox=4.0, weight_giou=3.0, focal=True)
    mine = criterion(outputs, targets)
    renamed = {k.replace("loss_focal", "loss_ce"): v for k, v in mine.items()}   # HF calls the focal term loss_ce
    assert set(renamed) == set(hf_dict) | {"loss"}
    for name, value in hf_dict.items():
        torch.testing.assert_close(renamed[name], value, atol=1e-6, rtol=0, msg=name)
    torch.testing.assert_close(mine["loss"], hf_loss, atol=1e-6, rtol=0)


# --- (c): the batched cost -------------------------------------------------------------------

@pytest.mark.parametrize("focal", [False, True])
def test_batched_cost_equals_naive(focal):
    outputs, targets, _ = make_batch(focal=focal, sizes=(4, 0, 17, 1))
    matcher = HungarianMatcher(1.5, 5.0, 2.0, focal=focal, focal_alpha=0.3, focal_gamma=1.5)
    cost, sizes = matcher.cost(outputs, targets)
    assert cost.shape == (4, Q, 17) and sizes == [4, 0, 17, 1]
    for b, tgt in enumerate(targets):
        logits, boxes = outputs["logits"][b], outputs["pred_boxes"][b]              # (Q, C), (Q, 4)
        if focal:
            p = logits.sigmoid()[:, tgt["labels"]]
            cls = 0.3 * (1 - p) ** 1.5 * -torch.log(p + 1e-8) - 0.7 * p ** 1.5 * -torch.log(1 - p + 1e-8)
        else:
            cls = -logits.softmax(-1)[:, tgt["labels"]]
        l1 = (boxes[:, None, :] - tgt["boxes"][None, :, :]).abs().sum(-1)
        giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes), box_cxcywh_to_xyxy(tgt["boxes"]))
        naive = 1.5 * cls + 5.0 * l1 - 2.0 * giou
        torch.testing.assert_close(cost[b, :, :sizes[b]], naive, atol=1e-6, rtol=0)


# --- (d), (e): Group DETR --------------------------------------------------------------------

def slice_outputs(outputs, sl):
    return {"logits": outputs["logits"][:, sl], "pred_boxes": outputs["pred_boxes"][:, sl],
            "aux_outputs": [{k: v[:, sl] for k, v in aux.items()} for aux in outputs["aux_outputs"]]}


@pytest.mark.parametrize("groups", [2, 4])
def test_group_matching(groups):
    outputs, targets, _ = make_batch()
    matcher = HungarianMatcher()
    indices = matcher(outputs, targets, num_groups=groups)
    qg = Q // groups
    per_group = [matcher(slice_outputs(outputs, slice(g * qg, (g + 1) * qg)), targets) for g in range(groups)]
    for b, ((rows, cols), n) in enumerate(zip(indices, SIZES)):
        assert len(rows) == len(cols) == groups * min(qg, n)
        for g in range(groups):
            in_group = (rows >= g * qg) & (rows < (g + 1) * qg)
            r, c = rows[in_group], cols[in_group]
            assert len(r) == min(qg, n) and len(set(r.tolist())) == len(r)              # one-to-one
            assert len(set(c.tolist())) == len(c) and all(0 <= j < n for j in c.tolist())
            if qg >= n:
                assert sorted(c.tolist()) == list(range(n))                         # every target matched
            ref_rows, ref_cols = per_group[g][b]
            assert (r - g * qg).tolist() == ref_rows.tolist() and c.tolist() == ref_cols.tolist()


@pytest.mark.parametrize("focal, groups, sizes", [(False, 2, SIZES), (False, 4, SIZES), (True, 2, SIZES),
                                                  (True, 4, (0, 0, 0))])
def test_group_loss_is_mean_over_groups(focal, groups, sizes):
    # float64: the identity is exact; in fp32 the two summation orders differ by ~eps * |loss| ~ 2e-6
    outputs, targets, _ = make_batch(focal=focal, sizes=sizes, dtype=torch.float64)
    make = lambda g: SetCriterion(K, HungarianMatcher(focal=focal), eos_coef=0.2, focal=focal, num_groups=g)
    grouped = make(groups)(outputs, targets)
    single = make(1)
    qg = Q // groups
    loops = [single(slice_outputs(outputs, slice(g * qg, (g + 1) * qg)), targets) for g in range(groups)]
    assert set(grouped) == set(loops[0])
    for name in grouped:
        torch.testing.assert_close(grouped[name], torch.stack([d[name] for d in loops]).mean(), atol=1e-6, rtol=0,
                                   msg=name)
    # at inference a Group DETR model keeps its first group: num_groups=1 overrides per call
    first = slice_outputs(outputs, slice(0, qg))
    torch.testing.assert_close(make(groups)(first, targets, num_groups=1)["loss"], loops[0]["loss"])


# --- (f): gradients; output containers; distributed normalisation -----------------------------

@pytest.mark.parametrize("focal", [False, True])
def test_gradients_reach_logits_and_boxes(focal):
    outputs, targets, (logits, boxes, _) = make_batch(focal=focal, requires_grad=True)
    losses = SetCriterion(K, HungarianMatcher(focal=focal), focal=focal, num_groups=2)(outputs, targets)
    assert not losses["cardinality_error"].requires_grad
    losses["loss"].backward()
    for x in (logits, boxes):
        assert torch.isfinite(x.grad).all()
        assert (x.grad.abs().flatten(1).sum(1) > 0).all()                           # every layer gets a gradient


def test_dataclass_outputs_and_hf_aux_name():
    @dataclass
    class Out:
        logits: torch.Tensor
        pred_boxes: torch.Tensor
        aux_outputs: list = field(default_factory=list)

    outputs, targets, _ = make_batch()
    criterion = SetCriterion(K, HungarianMatcher())
    ref = criterion(outputs, targets)
    got = criterion(Out(outputs["logits"], outputs["pred_boxes"], outputs["aux_outputs"]), targets)
    hf_named = {"logits": outputs["logits"], "pred_boxes": outputs["pred_boxes"],
                "auxiliary_outputs": outputs["aux_outputs"]}
    for other in (got, criterion(hf_named, targets)):
        assert other.keys() == ref.keys() and all(torch.equal(other[k], ref[k]) for k in ref)


def test_num_boxes_under_distributed(tmp_path):
    import torch.distributed as dist
    outputs, targets, _ = make_batch()
    criterion = SetCriterion(K, HungarianMatcher(), num_groups=2)
    ref = criterion(outputs, targets)
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        assert criterion.num_boxes(targets, 2, torch.device("cpu")).item() == 2 * sum(SIZES)
        got = criterion(outputs, targets)
    finally:
        dist.destroy_process_group()
    assert all(torch.equal(got[k], ref[k]) for k in ref)
    assert criterion.num_boxes([{"labels": torch.zeros(0)}], 3, torch.device("cpu")).item() == 3   # clamped to 1


# --- (g): focal matcher on an easy case --------------------------------------------------------

def test_focal_matcher_prefers_the_right_boxes():
    targets = [{"labels": torch.tensor([2, 0]), "boxes": torch.tensor([[0.2, 0.2, 0.1, 0.1], [0.7, 0.6, 0.3, 0.2]])}]
    pred_boxes = torch.tensor([[[0.7, 0.6, 0.3, 0.2], [0.5, 0.5, 0.9, 0.9], [0.2, 0.2, 0.1, 0.1],
                                [0.4, 0.8, 0.1, 0.1]]])
    logits = torch.full((1, 4, 3), -4.0)
    logits[0, 0, 0] = logits[0, 2, 2] = 4.0                      # the right classes, confidently
    logits[0, 1, 2] = logits[0, 3, 0] = 4.0                      # confident in a right class, but wrong boxes
    rows, cols = HungarianMatcher(focal=True)({"logits": logits, "pred_boxes": pred_boxes}, targets)[0]
    assert dict(zip(rows.tolist(), cols.tolist())) == {0: 1, 2: 0}
    losses = SetCriterion(3, HungarianMatcher(focal=True), focal=True)({"logits": logits, "pred_boxes": pred_boxes},
                                                                       targets)
    assert {"loss_focal", "loss_bbox", "loss_giou", "cardinality_error", "loss"} == set(losses)
    assert losses["loss_bbox"].item() == 0 and losses["loss_giou"].item() == pytest.approx(0, abs=1e-6)
    assert losses["cardinality_error"].item() == 2                   # 4 queries above 0.5, 2 targets


# --- (h): post-processing ------------------------------------------------------------------------

def test_postprocess_detr_and_coco():
    logits = torch.tensor([[[0.0, 5.0, 0.0], [0.0, 0.0, 9.0]]])          # K=2 + no-object
    boxes = torch.tensor([[[0.5, 0.5, 0.2, 0.4], [0.25, 0.75, 0.5, 0.5]]])
    (res,) = postprocess({"logits": logits, "pred_boxes": boxes}, torch.tensor([[100, 200]]))   # (h, w)
    assert res["labels"].tolist() == [1, 0]
    torch.testing.assert_close(res["scores"], logits[0].softmax(-1)[:, :2].max(-1).values)
    torch.testing.assert_close(res["boxes"], torch.tensor([[80.0, 30.0, 120.0, 70.0], [0.0, 50.0, 100.0, 100.0]]))
    coco = to_coco_results([res], [42], category_offset=1)
    assert [c["category_id"] for c in coco] == [2, 1] and {c["image_id"] for c in coco} == {42}
    assert coco[0]["bbox"] == pytest.approx([80.0, 30.0, 40.0, 40.0])
    assert coco[1]["bbox"] == pytest.approx([0.0, 50.0, 100.0, 50.0])
    assert coco[0]["score"] == pytest.approx(res["scores"][0].item())


def test_postprocess_focal_top_k():
    logits = torch.full((2, 3, 4), -5.0)
    logits[0, 2, 1], logits[0, 0, 3], logits[0, 2, 0] = 3.0, 2.0, 1.0
    boxes = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.1, 0.1, 0.1, 0.1], [0.5, 0.25, 0.5, 0.5]]).expand(2, 3, 4)
    res = postprocess({"logits": logits, "pred_boxes": boxes}, [[10, 20], [1, 1]], focal=True, top_k=3)
    assert res[0]["labels"].tolist() == [1, 3, 0]
    torch.testing.assert_close(res[0]["scores"], torch.tensor([3.0, 2.0, 1.0]).sigmoid())
    torch.testing.assert_close(res[0]["boxes"], torch.tensor([[5.0, 0.0, 15.0, 5.0], [0.0, 0.0, 20.0, 10.0],
                                                              [5.0, 0.0, 15.0, 5.0]]))
    assert len(postprocess({"logits": logits, "pred_boxes": boxes}, [[1, 1]] * 2, focal=True)[1]["scores"]) == 12
    coco = to_coco_results(res, [7, 8], category_offset=0)
    assert len(coco) == 6 and coco[0] == {"image_id": 7, "category_id": 1, "bbox": pytest.approx([5, 0, 10, 5]),
                                          "score": pytest.approx(torch.tensor(3.0).sigmoid().item())}


# --- (i): invalid inputs -------------------------------------------------------------------------

def test_invalid_inputs_raise():
    outputs, targets, _ = make_batch()
    matcher = HungarianMatcher()
    criterion = SetCriterion(K, matcher)
    nan_logits = dict(outputs, logits=outputs["logits"].clone().index_fill_(1, torch.tensor([3]), float("nan")))
    nan_boxes = dict(outputs, pred_boxes=outputs["pred_boxes"].clone().index_fill_(1, torch.tensor([0]), float("nan")))
    bad_targets = [dict(targets[0], boxes=targets[0]["boxes"].clone().fill_(float("nan")))] + targets[1:]
    cases = [
        (lambda: matcher(nan_logits, targets), "logits contain NaN"),
        (lambda: matcher(nan_boxes, targets), "pred_boxes contain NaN"),
        (lambda: matcher(outputs, bad_targets), r"targets\[0\]\['boxes'\] contain NaN"),
        (lambda: matcher(outputs, targets, num_groups=3), "20 queries can't be split into 3"),
        (lambda: matcher(outputs, targets[:2]), "2 targets for a batch of 3"),
        (lambda: matcher(dict(outputs, pred_boxes=outputs["pred_boxes"][..., :3]), targets), r"\(B, Q, 4\)"),
        (lambda: matcher(outputs, [{"labels": torch.tensor([K]), "boxes": torch.rand(1, 4)}] + targets[1:]),
         r"must lie in \[0, 10\)"),
        (lambda: matcher(outputs, [{"labels": torch.tensor([1.0]), "boxes": torch.rand(1, 4)}] + targets[1:]),
         "integer"),
        (lambda: matcher(outputs, [{"labels": torch.tensor([1]), "boxes": torch.rand(2, 4)}] + targets[1:]),
         r"must be \(1, 4\)"),
        (lambda: matcher(dict(outputs, pred_boxes=outputs["pred_boxes"] - 0.5), targets), "negative width"),
        (lambda: criterion(nan_logits, targets), "logits contain NaN"),
        (lambda: SetCriterion(K + 1, matcher)(outputs, targets), r"logits must be \(3, 20, 12\)"),
        (lambda: criterion(dict(outputs, aux_outputs=[{"logits": outputs["logits"]}]), targets),
         r"aux_outputs\[0\] must have"),
        (lambda: SetCriterion(K, matcher, num_groups=3)(outputs, targets), "can't be split into 3"),
        (lambda: SetCriterion(K, matcher, focal=True), "matcher focal=False"),
        (lambda: HungarianMatcher(0, 0, 0), "can't all be 0"),
        (lambda: postprocess(outputs, [[1, 1]]), r"image_sizes must be \(B, 2\)"),
        (lambda: to_coco_results([{}], [1, 2]), "1 results but 2 image ids"),
    ]
    for fn, message in cases:
        with pytest.raises(ValueError, match=message):
            fn()
