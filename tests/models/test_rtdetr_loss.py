"""RT-DETR's criterion against HF ``RTDetrLoss`` (transformers.loss.loss_rt_detr): the same matching indices on
every output, every loss term and the total within 1e-5, the gradients w.r.t. logits and boxes within 1e-5, with
auxiliary, encoder and denoising outputs; bad targets raise ValueError."""
from __future__ import annotations

import copy
import importlib

import pytest
import torch
from transformers import RTDetrConfig

from relformer.models.detection.rtdetr_loss import (RTDetrCriterion, _denoising_indices, rtdetr_loss_outputs,
                                                    rtdetr_matcher)
from relformer.models.detection.set_prediction import HungarianMatcher

hf = importlib.import_module("transformers.loss.loss_rt_detr")  # the peer must be there: fail, never skip
from transformers.loss.loss_for_object_detection import sigmoid_focal_loss as hf_sigmoid_focal_loss  # noqa: E402

B, L, Q, K, G = 4, 3, 12, 6, 2          # images, decoder layers, queries, classes, denoising groups
SIZES = (3, 0, 5, 1)                    # objects per image, one image without any
ATOL = 1e-5

OTHER = dict(matcher_class_cost=1.0, matcher_bbox_cost=4.0, matcher_giou_cost=3.0, matcher_alpha=0.3,
             matcher_gamma=1.5, weight_loss_vfl=2.0, weight_loss_bbox=3.0, weight_loss_giou=1.5,
             focal_loss_alpha=0.5, focal_loss_gamma=1.5)


def make_targets(sizes=SIZES, seed=0):
    g = torch.Generator().manual_seed(seed)
    targets = []
    for n in sizes:
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.02
        centre = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)       # inside the image
        targets.append({"labels": torch.randint(0, K, (n,), generator=g), "boxes": torch.cat([centre, wh], -1)})
    return targets


def make_dn_meta(sizes, groups=G):
    """Denoising queries as RT-DETR lays them out: per group 2 * max(M) queries, positives first."""
    span = 2 * max(max(sizes), 1)
    positive = [torch.cat([torch.arange(n) + g * span for g in range(groups)]) if n
                else torch.zeros(0, dtype=torch.long) for n in sizes]
    return {"dn_positive_idx": positive, "dn_num_group": groups, "dn_num_split": [span * groups, Q]}


def make_raw(sizes=SIZES, q=Q, dn=True, seed=1):
    """Leaf tensors: layer logits / box logits (B, L, Qd + Q, ...), encoder logits / box logits (B, Q, ...)."""
    g = torch.Generator().manual_seed(seed)
    meta = make_dn_meta(sizes) if dn else None
    total = q + (meta["dn_num_split"][0] if dn else 0)
    n = len(sizes)
    raw = {"layers": torch.randn(n, L, total, K, generator=g), "layer_boxes": torch.randn(n, L, total, 4, generator=g),
           "enc": torch.randn(n, q, K, generator=g), "enc_boxes": torch.randn(n, q, 4, generator=g)}
    for v in raw.values():
        v.requires_grad_(True)
    if meta is not None:
        meta["dn_num_split"][1] = q
    return raw, meta


def hf_config(**kw):
    return RTDetrConfig(num_labels=K, decoder_layers=L, **kw)


def hf_loss(raw, meta, targets, cfg):
    boxes, enc_boxes = raw["layer_boxes"].sigmoid(), raw["enc_boxes"].sigmoid()
    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    loss, terms, _ = hf.RTDetrForObjectDetectionLoss(
        raw["layers"][:, -1], hf_targets, "cpu", boxes[:, -1], copy.deepcopy(cfg), outputs_class=raw["layers"],
        outputs_coord=boxes, enc_topk_logits=raw["enc"], enc_topk_bboxes=enc_boxes, denoising_meta_values=meta)
    return loss, terms


def my_outputs(raw, meta, aux=True):
    boxes, enc_boxes = raw["layer_boxes"].sigmoid(), raw["enc_boxes"].sigmoid()
    if not aux:
        return rtdetr_loss_outputs(raw["layers"][:, -1], boxes[:, -1], dn_meta=meta)
    return rtdetr_loss_outputs(raw["layers"][:, -1], boxes[:, -1], raw["layers"], boxes, raw["enc"], enc_boxes, meta)


def my_criterion(cfg, **kw):
    matcher = rtdetr_matcher(cfg.matcher_class_cost, cfg.matcher_bbox_cost, cfg.matcher_giou_cost,
                             focal=cfg.use_focal_loss, focal_alpha=cfg.matcher_alpha, focal_gamma=cfg.matcher_gamma)
    return RTDetrCriterion(K, matcher, cfg.weight_loss_vfl, cfg.weight_loss_bbox, cfg.weight_loss_giou,
                           alpha=cfg.focal_loss_alpha, gamma=cfg.focal_loss_gamma, **kw)


def weight_of(name, cfg):
    role = name.split("_aux_")[0].split("_dn_")[0]
    return {"loss_vfl": cfg.weight_loss_vfl, "loss_bbox": cfg.weight_loss_bbox, "loss_giou": cfg.weight_loss_giou}[role]


def assert_same_indices(mine, theirs):
    assert len(mine) == len(theirs)
    for (q1, t1), (q2, t2) in zip(mine, theirs):
        assert q1.tolist() == q2.tolist() and t1.tolist() == t2.tolist()


def assert_equals_hf(raw, meta, targets, cfg, aux=True):
    loss, terms = hf_loss(raw, meta, targets, cfg)
    mine = my_criterion(cfg)(my_outputs(raw, meta, aux), targets)
    assert set(mine) == set(terms) | {"loss"}
    for name, value in terms.items():     # HF's terms are weighted, relformer's are not
        torch.testing.assert_close(mine[name] * weight_of(name, cfg), value, atol=ATOL, rtol=0, msg=name)
    torch.testing.assert_close(mine["loss"], loss, atol=ATOL, rtol=1e-6)
    leaves = list(raw.values())
    theirs = torch.autograd.grad(loss, leaves, allow_unused=True)
    ours = torch.autograd.grad(mine["loss"], leaves, allow_unused=True)
    for name, g1, g2 in zip(raw, ours, theirs):
        if g2 is None:
            assert g1 is None, name
        else:
            torch.testing.assert_close(g1, g2, atol=ATOL, rtol=0, msg=name)
    return mine


# --- matcher ------------------------------------------------------------------------------------

@pytest.mark.parametrize("focal", [True, False])
@pytest.mark.parametrize("other", [False, True])
def test_matcher_equals_hf_on_every_output(focal, other):
    cfg = hf_config(use_focal_loss=focal, **(OTHER if other else {}))
    raw, meta = make_raw(dn=False)
    targets = make_targets()
    hf_targets = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets]
    outputs = my_outputs(raw, meta)
    theirs, mine = hf.RTDetrHungarianMatcher(cfg), my_criterion(cfg).matcher
    for out in [outputs, *outputs["aux_outputs"], outputs["enc_outputs"]]:
        out = {"logits": out["logits"].detach(), "pred_boxes": out["pred_boxes"].detach()}
        indices = mine(out, targets)
        assert_same_indices(indices, theirs(out, hf_targets))
        assert [len(q) for q, _ in indices] == [min(Q, n) for n in SIZES]


def test_denoising_indices_equal_hf():
    raw, meta = make_raw()
    targets = make_targets()
    theirs = hf.RTDetrLoss.get_cdn_matched_indices(meta, [{"class_labels": t["labels"]} for t in targets])
    mine, groups = _denoising_indices(meta, targets, meta["dn_num_split"][0])
    assert groups == G
    assert_same_indices(mine, theirs)


# --- the loss -------------------------------------------------------------------------------------

@pytest.mark.parametrize("dn", [True, False])
@pytest.mark.parametrize("kw", [{}, OTHER, {"use_focal_loss": False}], ids=["default", "other", "softmax_cost"])
def test_criterion_equals_hf(kw, dn):
    raw, meta = make_raw(dn=dn)
    mine = assert_equals_hf(raw, meta, make_targets(), hf_config(**kw))
    assert {"loss_vfl_aux_0", f"loss_giou_aux_{L - 1}"} <= set(mine)            # a decoder layer, the encoder
    assert ({f"loss_bbox_dn_{i}" for i in range(L)} <= set(mine)) == dn


def test_criterion_equals_hf_without_auxiliary_loss():
    raw, meta = make_raw()
    mine = assert_equals_hf(raw, meta, make_targets(), hf_config(auxiliary_loss=False), aux=False)
    assert set(mine) == {"loss_vfl", "loss_bbox", "loss_giou", "loss"}


def test_bce_class_loss_equals_hf():
    cfg = hf_config(**OTHER)
    raw, meta = make_raw()
    targets = make_targets()
    criterion = hf.RTDetrLoss(copy.deepcopy(cfg))
    criterion.losses = ["bce", "boxes"]
    criterion.weight_dict["loss_bce"] = 1.0
    hf_outputs = {"logits": raw["layers"][:, -1, -Q:], "pred_boxes": raw["layer_boxes"][:, -1, -Q:].sigmoid()}
    theirs = criterion(hf_outputs, [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets])
    mine = my_criterion(cfg, class_loss="bce")(hf_outputs, targets)
    torch.testing.assert_close(mine["loss_bce"], theirs["loss_bce"], atol=ATOL, rtol=0)


def test_focal_class_loss_equals_hf_focal_function():
    # HF's RTDetrLoss.loss_labels_focal passes alpha, gamma into sigmoid_focal_loss's (num_boxes, alpha) slots:
    # the comparison uses HF's sigmoid_focal_loss with its arguments in place, on HF's matching
    cfg = hf_config(**OTHER)
    raw, _ = make_raw(dn=False)
    targets = make_targets()
    logits, boxes = raw["layers"][:, -1], raw["layer_boxes"][:, -1].sigmoid()
    indices = hf.RTDetrHungarianMatcher(cfg)({"logits": logits, "pred_boxes": boxes},
                                            [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets])
    onehot = torch.zeros_like(logits)
    for b, (q, j) in enumerate(indices):
        onehot[b, q, targets[b]["labels"][j]] = 1
    theirs = hf_sigmoid_focal_loss(logits, onehot, sum(SIZES), cfg.focal_loss_alpha, cfg.focal_loss_gamma) * Q
    mine = my_criterion(cfg, class_loss="focal")({"logits": logits, "pred_boxes": boxes}, targets)
    torch.testing.assert_close(mine["loss_focal"], theirs, atol=ATOL, rtol=0)


def test_more_targets_than_queries_as_hf():
    # HF matches min(Q, M) of them (scipy on a (Q, M) cost), and normalises by all M: the same here
    q, sizes = 4, (7, 2, 0)
    raw, meta = make_raw(sizes=sizes, q=q)
    targets = make_targets(sizes)
    assert_equals_hf(raw, meta, targets, hf_config())
    indices = rtdetr_matcher()(my_outputs(raw, meta), targets)
    assert [len(i) for i, _ in indices] == [4, 2, 0]


def test_images_without_objects_give_finite_losses():
    sizes = (0, 0, 0)
    raw, meta = make_raw(sizes=sizes)
    mine = assert_equals_hf(raw, meta, make_targets(sizes), hf_config())
    assert all(torch.isfinite(v) for v in mine.values())
    assert mine["loss_bbox"].detach() == 0 and mine["loss_vfl"].detach() > 0                # negatives only


# --- bad input ----------------------------------------------------------------------------------

def _bad(targets, i, box):
    targets = [dict(t) for t in targets]
    targets[i]["boxes"] = targets[i]["boxes"].clone()
    targets[i]["boxes"][0] = torch.tensor(box)
    return targets


@pytest.mark.parametrize("box, message", [
    ([float("nan"), 0.5, 0.1, 0.1], "NaN"),
    ([0.5, 0.5, 0.0, 0.2], "degenerate"),
    ([0.5, 0.5, -0.1, 0.2], "negative width"),
    ([1.2, 0.5, 0.1, 0.1], "outside the image"),
    ([0.05, 0.5, 0.2, 0.1], "outside the image"),
])
def test_bad_target_boxes_raise(box, message):
    raw, meta = make_raw()
    with pytest.raises(ValueError, match=rf"targets\[2\]\['boxes'\].*{message}|{message}.*targets\[2\]"):
        RTDetrCriterion(K)(my_outputs(raw, meta), _bad(make_targets(), 2, box))


def test_bad_labels_logits_and_dn_meta_raise():
    raw, meta = make_raw()
    targets = make_targets()
    bad_labels = [dict(t) for t in targets]
    bad_labels[0]["labels"] = torch.tensor([0, K, 1])
    with pytest.raises(ValueError, match=r"targets\[0\]\['labels'\] must lie in \[0, 6\)"):
        RTDetrCriterion(K)(my_outputs(raw, meta), bad_labels)
    outputs = my_outputs(raw, meta)
    outputs["aux_outputs"][1] = {"logits": outputs["aux_outputs"][1]["logits"] * float("nan"),
                                 "pred_boxes": outputs["aux_outputs"][1]["pred_boxes"]}
    with pytest.raises(ValueError, match=r"aux_outputs\[1\] logits contain NaN"):
        RTDetrCriterion(K)(outputs, targets)
    with pytest.raises(ValueError, match=r"logits must be \(4, queries, 5\)"):
        RTDetrCriterion(K - 1)(my_outputs(raw, meta), targets)
    short = dict(meta, dn_positive_idx=[p[:1] for p in meta["dn_positive_idx"]])
    with pytest.raises(ValueError, match=r"dn_positive_idx'\]\[0\] must be \(3 targets x 2 groups,\)"):
        RTDetrCriterion(K)(my_outputs(raw, short), targets)
    far = dict(meta, dn_positive_idx=[p + 1000 for p in meta["dn_positive_idx"]])
    with pytest.raises(ValueError, match="must index the 20 denoising queries"):
        RTDetrCriterion(K)(my_outputs(raw, far), targets)
    no_meta = {k: v for k, v in my_outputs(raw, meta).items() if k != "dn_meta"}
    with pytest.raises(ValueError, match="'dn_outputs' but no 'dn_meta'"):
        RTDetrCriterion(K)(no_meta, targets)
    with pytest.raises(ValueError, match="dn_num_split"):
        rtdetr_loss_outputs(raw["layers"][:, -1], raw["layer_boxes"][:, -1], dn_meta=dict(meta, dn_num_split=[3, Q]))
    with pytest.raises(ValueError, match="class_loss must be one of"):
        RTDetrCriterion(K, class_loss="ce")
    with pytest.raises(ValueError, match="no_object_class=False"):
        RTDetrCriterion(K, HungarianMatcher(focal=False))
