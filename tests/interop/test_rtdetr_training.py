"""RT-DETR's loss in the model against HF ``RTDetrForObjectDetection(pixel_values, labels=...)`` in training
(random weights from small configs, fp32, the same weights through ``from_hf``): every loss term within
1e-5 absolute + 1e-5 relative (the two models' logits already differ by fp32 rounding, ~1e-5, and the
terms reach ~10; the criteria alone agree within 1e-5 absolute in tests/models/test_rtdetr_loss.py;
HF's terms are weighted, relformer's are not: compared times the config's weight), the total, the
same matching indices on every output and the same parameter gradients (1e-4, scale-relative), with
denoising disabled and with denoising on under the same torch seed (the same noise), with HF's default
loss fields and with other ones (read by ``from_hf``'s config conversion); bad targets give clear
errors or finite losses."""
from __future__ import annotations

import copy
import dataclasses
import importlib

import pytest
import torch
from transformers import RTDetrForObjectDetection

from relformer.interop.rtdetr import RTDETR_KEYMAP
from relformer.interop.transformers import from_hf
from relformer.models.detection import RTDETR, rtdetr_micro
from relformer.models.detection.rtdetr import LOSS_FIELDS
from relformer.models.detection.rtdetr_loss import rtdetr_loss_outputs
from relformer.models.keymap import plan
from tests.interop.test_rtdetr import LABELS, NO_DENOISING
from tests.models.test_rtdetr_encoder import BASIC, assert_grads_near, assert_selection_margin, hf_config, hf_model

hf_loss = importlib.import_module("transformers.loss.loss_rt_detr")  # the peer must be there: fail, never skip

ATOL = RTOL = 1e-5
OTHER = dict(matcher_class_cost=1.0, matcher_bbox_cost=4.0, matcher_giou_cost=3.0, matcher_alpha=0.3, matcher_gamma=1.5,
             weight_loss_vfl=2.0, weight_loss_bbox=3.0, weight_loss_giou=1.5, focal_loss_alpha=0.5, focal_loss_gamma=1.5)
DENOISING = dict(BASIC, model=dict(BASIC["model"], decoder_layers=2))


def _with(spec: dict, **loss) -> dict:
    return dict(spec, model=dict(spec["model"], **loss))


def _weight(name: str, config) -> float:
    role = name.split("_aux_")[0].split("_dn_")[0]
    return {"loss_vfl": config.weight_loss_vfl, "loss_bbox": config.weight_loss_bbox,
            "loss_giou": config.weight_loss_giou}[role]


def _matching(out_logits, out_boxes, matcher, targets):
    return [(q.tolist(), t.tolist()) for q, t in matcher({"logits": out_logits.detach(),
                                                          "pred_boxes": out_boxes.detach()}, targets)]


@pytest.mark.slow
@pytest.mark.parametrize("spec", [NO_DENOISING, DENOISING, _with(DENOISING, **OTHER), _with(NO_DENOISING, **OTHER)],
                         ids=["no-dn", "dn", "dn-other-loss", "no-dn-other-loss"])
def test_training_loss_terms_matching_and_gradients_equal_hf(spec):
    hf = hf_model(spec).train()
    ours = from_hf(hf).train()
    assert all(getattr(ours.config, k) == pytest.approx(getattr(hf.config, k)) for k in LOSS_FIELDS)
    x = torch.randn(2, 3, 64, 96)   # (at 64 x 64 the backbone's own gradients differ from HF's: not a loss matter)
    torch.manual_seed(3)
    ref = hf(x, labels=copy.deepcopy(LABELS))
    torch.manual_seed(3)
    out = ours(x, labels=copy.deepcopy(LABELS))
    assert_selection_margin(ref.enc_outputs_class, hf.config.num_queries)
    dn = hf.config.num_denoising > 0
    assert (out.denoising_meta_values is not None) == dn and (ref.denoising_meta_values is not None) == dn
    assert set(out.loss_dict) == set(ref.loss_dict) | {"loss"}
    assert any("_dn_" in name for name in out.loss_dict) == dn
    for name, value in ref.loss_dict.items():
        torch.testing.assert_close(out.loss_dict[name] * _weight(name, hf.config), value, atol=ATOL, rtol=RTOL, msg=name)
    torch.testing.assert_close(out.loss, ref.loss, atol=ATOL, rtol=RTOL)
    # the same matching on the final, every auxiliary and the encoder output
    matcher, hf_matcher = ours.criterion().matcher, hf_loss.RTDetrHungarianMatcher(hf.config)
    targets = [{"labels": t["class_labels"], "boxes": t["boxes"]} for t in LABELS]
    mine = rtdetr_loss_outputs(out.logits, out.pred_boxes, out.layer_logits, out.layer_boxes, out.enc_topk_logits,
                               out.enc_topk_bboxes, out.denoising_meta_values)
    theirs = rtdetr_loss_outputs(ref.logits, ref.pred_boxes, ref.intermediate_logits, ref.intermediate_reference_points,
                                 ref.enc_topk_logits, ref.enc_topk_bboxes, ref.denoising_meta_values)
    for a, b in zip([mine, *mine["aux_outputs"], mine["enc_outputs"]],
                    [theirs, *theirs["aux_outputs"], theirs["enc_outputs"]]):
        assert _matching(a["logits"], a["pred_boxes"], matcher, targets) == \
            _matching(b["logits"], b["pred_boxes"], hf_matcher, LABELS)
    out.loss.backward()
    ref.loss.backward()
    hf_grads = {k: p.grad for k, p in hf.named_parameters()}
    ours_grads = {k: p.grad for k, p in ours.named_parameters()}
    pairs = plan(hf_grads, RTDETR_KEYMAP).items()
    assert assert_grads_near({n: ours_grads[n] for n, _ in pairs}, {n: hf_grads[s] for n, (s,) in pairs}) > 60


def test_eval_with_labels_gives_the_loss_without_denoising_as_hf():
    hf = hf_model(DENOISING).eval()
    ours = from_hf(hf)
    x = torch.randn(2, 3, 64, 64)
    ref, out = hf(x, labels=copy.deepcopy(LABELS)), ours(x, labels=copy.deepcopy(LABELS))
    assert out.denoising_meta_values is None and not any("_dn_" in name for name in out.loss_dict)
    torch.testing.assert_close(out.loss, ref.loss, atol=ATOL, rtol=RTOL)


def test_without_auxiliary_loss_only_the_final_output_is_supervised_as_hf():
    hf = hf_model(_with(NO_DENOISING, auxiliary_loss=False)).train()
    ours = from_hf(hf).train()
    x = torch.randn(2, 3, 64, 64)
    ref, out = hf(x, labels=copy.deepcopy(LABELS)), ours(x, labels=copy.deepcopy(LABELS))
    assert set(out.loss_dict) == {"loss", "loss_vfl", "loss_bbox", "loss_giou"} == set(ref.loss_dict) | {"loss"}
    torch.testing.assert_close(out.loss, ref.loss, atol=ATOL, rtol=RTOL)


# --- bad targets ---------------------------------------------------------------------------------

def _micro(**kw) -> RTDETR:
    torch.manual_seed(0)
    return RTDETR(dataclasses.replace(rtdetr_micro(), **kw)).train()


def _target(labels, boxes):
    return {"class_labels": torch.tensor(labels, dtype=torch.long), "boxes": torch.tensor(boxes, dtype=torch.float32)}


def _finite_loss_and_grads(model, labels):
    out = model(torch.rand(len(labels), 1, 64, 64), labels=labels)
    assert torch.isfinite(out.loss) and all(torch.isfinite(v) for v in out.loss_dict.values())
    out.loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    return out


def test_images_without_objects_give_finite_losses():
    empty = {"class_labels": torch.zeros(0, dtype=torch.long), "boxes": torch.zeros(0, 4)}
    out = _finite_loss_and_grads(_micro(), [empty, copy.deepcopy(empty)])
    assert out.denoising_meta_values is None          # no target to noise: no denoising queries, as HF
    out = _finite_loss_and_grads(_micro(), [empty, _target([2], [[0.5, 0.5, 0.2, 0.3]])])
    assert out.denoising_meta_values is not None and out.loss_dict["loss_bbox"] > 0


def test_more_targets_than_queries_give_finite_losses():
    g = torch.Generator().manual_seed(0)
    n = 11                                             # rtdetr_micro: 8 queries, 8 denoising queries
    wh = torch.rand(n, 2, generator=g) * 0.2 + 0.05
    boxes = torch.cat([wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh), wh], 1)
    out = _finite_loss_and_grads(_micro(), [_target(list(range(5)) * 2 + [0], boxes.tolist())])
    assert out.denoising_meta_values["dn_num_group"] == 1


@pytest.mark.parametrize("boxes, match", [([[0.5, 0.5, 0.0, 0.2]], "boxes"), ([[0.5, 0.5, 1.5, 0.2]], "boxes"),
                                          ([[float("nan"), 0.5, 0.2, 0.2]], "NaN|boxes"),
                                          ([[0.5, 0.5, -0.1, 0.2]], "boxes")],
                         ids=["degenerate", "out-of-range", "nan", "negative"])
def test_bad_target_boxes_raise_naming_them(boxes, match):
    with pytest.raises(ValueError, match=match):
        _micro()(torch.rand(1, 1, 64, 64), labels=[_target([1], boxes)])


def test_bad_labels_raise_naming_them():
    model = _micro()
    with pytest.raises(ValueError, match="class_labels|labels"):
        model(torch.rand(1, 1, 64, 64), labels=[_target([7], [[0.5, 0.5, 0.2, 0.2]])])   # 5 classes
    with pytest.raises(TypeError, match="labels"):
        model(torch.rand(1, 1, 64, 64), labels=_target([1], [[0.5, 0.5, 0.2, 0.2]]))     # not a list


def test_loss_fields_are_checked():
    with pytest.raises(ValueError, match="weight_loss_vfl"):
        dataclasses.replace(rtdetr_micro(), weight_loss_vfl=float("nan"))
    with pytest.raises(ValueError, match="use_focal_loss"):
        dataclasses.replace(rtdetr_micro(), use_focal_loss=1)
