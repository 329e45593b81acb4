"""HF DETR equivalence: ``from_hf(DetrForObjectDetection)`` (HF ResNet backbone, random weights and
frozen-BatchNorm statistics) gives the same logits and boxes, with and without a pixel mask, and
the same Hungarian matching, loss terms and gradients for the same targets."""
from __future__ import annotations

import pytest
import torch
from transformers import DetrConfig, DetrForObjectDetection, ResNetConfig

from relformer.interop.transformers import from_hf
from relformer.models import DETR
from relformer.models.detection.set_prediction import HungarianMatcher, SetCriterion

ATOL = 1e-4
CONFIGS = {
    "basic-2-stages": dict(backbone=dict(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1], layer_type="basic"),
                           d_model=32, heads=4, enc=2, dec=2, ffn=(64, 48), queries=8, labels=5),
    "bottleneck-3-stages": dict(backbone=dict(embedding_size=8, hidden_sizes=[16, 32, 32], depths=[2, 1, 1],
                                              layer_type="bottleneck", downsample_in_bottleneck=True),
                                d_model=48, heads=6, enc=1, dec=3, ffn=(96, 96), queries=12, labels=3),
    "no-encoder": dict(backbone=dict(embedding_size=8, hidden_sizes=[8, 8], depths=[1, 2], layer_type="basic",
                                     downsample_in_first_stage=True),
                       d_model=32, heads=2, enc=0, dec=1, ffn=(32, 32), queries=5, labels=2),
}


def hf_detr(name: str, attn: str = "sdpa", seed: int = 0) -> DetrForObjectDetection:
    c = CONFIGS[name]
    torch.manual_seed(seed)
    stages = len(c["backbone"]["hidden_sizes"])
    backbone = ResNetConfig(num_channels=1, out_features=[f"stage{stages}"], **c["backbone"])
    config = DetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone, num_channels=1,
                        d_model=c["d_model"], encoder_layers=c["enc"], decoder_layers=c["dec"],
                        encoder_attention_heads=c["heads"], decoder_attention_heads=c["heads"],
                        encoder_ffn_dim=c["ffn"][0], decoder_ffn_dim=c["ffn"][1], num_queries=c["queries"],
                        num_labels=c["labels"], dropout=0.0)
    model = DetrForObjectDetection(config).eval()
    model.config._attn_implementation = attn  # the encoder and decoder read the shared config
    assert model.model.encoder.config._attn_implementation == attn
    with torch.no_grad():  # frozen BatchNorm statistics and affine values other than the identity
        for n, b in model.named_buffers():
            if n.endswith("running_var"):
                b.uniform_(0.5, 2.0)
            elif n.endswith(("running_mean", "bias")):
                b.normal_(0.0, 0.1)
            elif n.endswith("weight"):
                b.uniform_(0.5, 1.5)
    return model


def images_and_mask(seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(2, 1, 64, 48, generator=g)
    mask = torch.ones(2, 64, 48, dtype=torch.long)
    mask[1, :, 30:] = 0  # a padded image: right and bottom padding
    mask[1, 52:, :] = 0
    return x, mask


def targets(num_labels: int, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    out = []
    for m in (3, 0):  # the second image has no objects
        xy = torch.rand(m, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(m, 2, generator=g) * 0.3 + 0.05
        out.append({"labels": torch.randint(0, num_labels, (m,), generator=g), "boxes": torch.cat([xy, wh], 1)})
    return out


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.slow
def test_detr_outputs_match(name, attn):
    hf = hf_detr(name, attn)
    ours = from_hf(hf)
    assert isinstance(ours, DETR) and not ours.training
    x, mask = images_and_mask()
    for pixel_mask in (None, mask):
        with torch.no_grad():
            ref = hf(pixel_values=x, pixel_mask=pixel_mask)
            out = ours(x, pixel_mask)
        torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=ATOL)
        torch.testing.assert_close(out.pred_boxes, ref.pred_boxes, rtol=0, atol=ATOL)
        torch.testing.assert_close(out.last_hidden_state, ref.last_hidden_state, rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", ["basic-2-stages", "bottleneck-3-stages"])
def test_detr_matching_loss_and_gradients_match(name):
    """The same targets give HF's matching indices, its loss terms (CE with the no-object weight 0.1,
    L1 x 5, GIoU x 2) and the same gradients on the heads and the first decoder layer."""
    hf = hf_detr(name).train()  # dropout is 0: train mode only switches the loss on
    ours = from_hf(hf)
    x, mask = images_and_mask()
    tgt = targets(hf.config.num_labels)
    ref = hf(pixel_values=x, pixel_mask=mask, labels=[{"class_labels": t["labels"], "boxes": t["boxes"]} for t in tgt])
    out = ours(x, mask)
    c = hf.config
    matcher = HungarianMatcher(c.class_cost, c.bbox_cost, c.giou_cost)
    from transformers.loss.loss_for_object_detection import HungarianMatcher as HFMatcher

    hf_indices = HFMatcher(c.class_cost, c.bbox_cost, c.giou_cost)(
        {"logits": ref.logits, "pred_boxes": ref.pred_boxes}, [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in tgt])
    for (qa, ta), (qb, tb) in zip(matcher(out, tgt), hf_indices):
        assert torch.equal(qa, qb) and torch.equal(ta, tb)
    criterion = SetCriterion(c.num_labels, matcher, weight_bbox=c.bbox_loss_coefficient,
                             weight_giou=c.giou_loss_coefficient, eos_coef=c.eos_coefficient)
    losses = criterion(out, tgt)
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(losses[key], ref.loss_dict[key], rtol=0, atol=1e-5)
    torch.testing.assert_close(losses["loss"], ref.loss, rtol=0, atol=1e-5)
    losses["loss"].backward()
    ref.loss.backward()
    pairs = [(ours.class_head.weight, hf.class_labels_classifier.weight),
             (ours.box_head.layers[0].weight, hf.bbox_predictor.layers[0].weight),
             (ours.decoder.layers[0].cross_attn.q.weight, hf.model.decoder.layers[0].encoder_attn.q_proj.weight),
             (ours.input_proj.weight, hf.model.input_projection.weight)]
    for a, b in pairs:
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5)


def test_unsupported_detr_configs_are_named():
    hf = hf_detr("basic-2-stages")
    hf.config.auxiliary_loss = True
    with pytest.raises(NotImplementedError, match="auxiliary_loss"):
        from_hf(hf)


def test_hf_baseline_starts_from_relformer_weights():
    """``hf_detr_micro`` (``HFDETRConfig``) -- the benchmark baseline -- is HF's model with the weights the
    relformer DETR gets for the same seed: equal outputs; with aux_loss, one auxiliary output per
    decoder layer but the last; every backbone parameter trainable."""
    from relformer.interop.transformers import HFDETR
    from relformer.models import create_model

    torch.manual_seed(0)
    ours = create_model("detr_micro", backbone_norm="frozen", aux_loss=False).eval()
    torch.manual_seed(0)
    hf = create_model("hf_detr_micro", backbone_norm="frozen", aux_loss=False).eval()
    assert isinstance(hf, HFDETR)
    x, mask = images_and_mask()
    with torch.no_grad():
        out, ref = ours(x, mask), hf(x, mask)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.pred_boxes, ref.pred_boxes, rtol=0, atol=ATOL)
    torch.manual_seed(0)
    hf = create_model("hf_detr_micro", backbone_norm="frozen").train()
    assert len(hf(x).aux_outputs) == hf.config.decoder_layers - 1
    assert all(p.requires_grad for p in hf.parameters())
    with pytest.raises(NotImplementedError, match="Group DETR"):
        create_model("hf_detr_micro", backbone_norm="frozen", num_groups=2)


def test_hf_baseline_with_trainable_batch_norms():
    """backbone_norm="batch": HF's frozen backbone norms become trainable BatchNorms; in training mode
    (batch statistics) both models give the same outputs and update the same running statistics."""
    from relformer.models import create_model

    torch.manual_seed(0)
    ours = create_model("detr_micro", dropout=0.0).train()
    torch.manual_seed(0)
    hf = create_model("hf_detr_micro", dropout=0.0).train()
    assert not any(type(m).__name__ == "DetrFrozenBatchNorm2d" for m in hf.modules())
    x, _ = images_and_mask()
    out, ref = ours(x), hf(x)
    torch.testing.assert_close(out.logits, ref.logits, rtol=0, atol=ATOL)
    torch.testing.assert_close(out.pred_boxes, ref.pred_boxes, rtol=0, atol=ATOL)
    torch.testing.assert_close(ours.backbone.stem.norm.running_var,
                               hf.hf.model.backbone.model.embedder.embedder.normalization.running_var)


@pytest.mark.parametrize("coefficients", [{}, dict(class_cost=2, bbox_cost=3, giou_cost=1,
                                                   bbox_loss_coefficient=4, giou_loss_coefficient=1,
                                                   eos_coefficient=0.3)])
def test_detr_labels_give_hf_loss(coefficients):
    """``model(images, pixel_mask, labels=...)`` as HF's: the same ``loss``, ``loss_dict`` terms and
    gradients, with HF's default and with other matching costs / loss weights (read by from_hf)."""
    hf = hf_detr("basic-2-stages")
    for key, value in coefficients.items():
        setattr(hf.config, key, value)
    hf.train()  # dropout is 0: train mode only switches the loss on
    ours = from_hf(hf).train()
    x, mask = images_and_mask()
    labels = [{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets(hf.config.num_labels)]
    ref = hf(pixel_values=x, pixel_mask=mask, labels=labels)
    out = ours(x, mask, labels=labels)
    assert out[0] is out.loss and out["loss_dict"] is out.loss_dict
    torch.testing.assert_close(out.loss, ref.loss, rtol=0, atol=1e-5)
    for key in ("loss_ce", "loss_bbox", "loss_giou"):
        torch.testing.assert_close(out.loss_dict[key], ref.loss_dict[key], rtol=0, atol=1e-5)
    out.loss.backward()
    ref.loss.backward()
    torch.testing.assert_close(ours.class_head.weight.grad, hf.class_labels_classifier.weight.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(ours.input_proj.weight.grad, hf.model.input_projection.weight.grad, rtol=1e-4, atol=1e-5)
