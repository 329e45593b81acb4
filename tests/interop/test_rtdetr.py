"""``from_hf(RTDetrForObjectDetection)`` end to end (random weights from small configs, fp32): the relformer
RT-DETR gives HF's logits and boxes of every decoder layer within 1e-4 in eval (with the denoising
embedding built or not; labels given or not, HF adds no denoising queries at inference), the same
image and parameter gradients, and in training with labels the same denoising queries for the same
seed; HF options relformer does not reproduce are refused by name."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import RTDetrForObjectDetection

from relformer.interop.rtdetr import RTDETR_KEYMAP
from relformer.interop.transformers import from_hf
from relformer.models.keymap import plan
from relformer.models.detection import RTDETR
from tests.models.test_rtdetr_encoder import BASIC, BOTTLENECK, assert_grads_near, assert_near, assert_selection_margin, hf_config, hf_model

NO_DENOISING = dict(BASIC, model=dict(BASIC["model"], num_denoising=0, decoder_layers=2))
LABELS = [{"class_labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.5, 0.4]])},
          {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.9, 0.9]])}]


def _loss(logits, boxes):
    g = torch.Generator().manual_seed(0)
    return (logits * torch.randn(logits.shape, generator=g)).sum() + (boxes * torch.randn(boxes.shape, generator=g)).sum()


@pytest.mark.slow
@pytest.mark.parametrize("spec", [BASIC, BOTTLENECK, NO_DENOISING], ids=["basic", "bottleneck-6lvl-learnq", "no-dn"])
def test_from_hf_gives_hf_logits_boxes_and_gradients_in_eval(spec):
    hf = hf_model(spec)
    ours = from_hf(hf)
    assert isinstance(ours, RTDETR) and not ours.training
    x = torch.randn(2, 3, 64, 96)
    x_hf, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = hf(x_hf, pixel_mask=torch.ones(2, 64, 96, dtype=torch.long))
    out = ours(x_ours, labels=LABELS)  # eval: no denoising queries, as HF
    assert_selection_margin(ref.enc_outputs_class, hf.config.num_queries)
    assert_near(out.logits, ref.logits)
    assert_near(out.pred_boxes, ref.pred_boxes)
    assert_near(out.layer_logits, ref.intermediate_logits)
    assert_near(out.layer_boxes, ref.intermediate_reference_points)
    assert_near(out.enc_topk_logits, ref.enc_topk_logits)
    assert out.denoising_meta_values is None
    _loss(out.layer_logits, out.layer_boxes).backward()
    _loss(ref.intermediate_logits, ref.intermediate_reference_points).backward()
    assert_near(x_ours.grad, x_hf.grad)
    hf_grads = {k: p.grad for k, p in hf.named_parameters()}
    ours_grads = {k: p.grad for k, p in ours.named_parameters()}
    pairs = plan(hf_grads, RTDETR_KEYMAP).items()
    checked = assert_grads_near({name: ours_grads[name] for name, _ in pairs}, {name: hf_grads[src] for name, (src,) in pairs})
    assert checked > 80


@pytest.mark.slow
def test_from_hf_in_training_makes_hf_denoising_queries():
    hf = hf_model(BASIC).train()
    ours = from_hf(hf)
    assert ours.training
    x = torch.randn(2, 3, 64, 64)
    torch.manual_seed(3)
    ref = hf.model(x, labels=LABELS)
    torch.manual_seed(3)
    out = ours(x, labels=LABELS)
    assert_selection_margin(ref.enc_outputs_class, hf.config.num_queries)
    N = ref.denoising_meta_values["dn_num_split"][0]
    assert out.denoising_meta_values["dn_num_split"] == [N, 12] and out.logits.shape[1] == N + 12
    assert_near(out.layer_logits, ref.intermediate_logits)
    assert_near(out.layer_boxes, ref.intermediate_reference_points)
    assert_near(out.init_reference_points, ref.init_reference_points)


@pytest.mark.parametrize("option, match", [(dict(eval_size=640), "eval_size"),
                                           (dict(normalize_before=True), "normalize_before"),
                                           (dict(activation_dropout=0.1), "activation_dropout"),
                                           (dict(decoder_activation_function="gelu"), "relu")])
def test_from_hf_refuses_options_it_does_not_reproduce(option, match):
    config = hf_config(NO_DENOISING)
    for key, value in option.items():
        setattr(config, key, value)
    with pytest.raises(NotImplementedError, match=match):
        from_hf(RTDetrForObjectDetection(copy.deepcopy(config)))

