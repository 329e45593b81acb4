"""DETR / Relation-DETR / Group DETR through the encoder stacks: the same outputs as the layers
called one by one (the reference loop the models had before ``Encoder.forward`` took per-layer
relations), forward and backward; registry and option checks. HF equivalence: tests/interop."""
from __future__ import annotations

import pytest
import torch

from relformer.models import DETR, DETRConfig, create_model, list_models, model_config
from relformer.relations import Documents


def _by_hand(model: DETR, images: torch.Tensor, mask: torch.Tensor):
    """DETR's forward with every layer called explicitly (logits and boxes of every decoder layer)."""
    c = model.config
    x, pos, fmask = model._features(images, mask)
    keys = fmask.flatten(1)
    enc_rel = None if bool(keys.all()) else Documents(keys.long() - 1)
    for layer in model.encoder.layers:
        x = layer(x, enc_rel, pos=pos)
    groups = c.num_groups if model.training else 1
    Q, B = c.num_queries * groups, x.shape[0]
    query_pos = model.query_embed.weight[:Q].unsqueeze(0).expand(B, -1, -1)
    group_ids = torch.arange(groups).repeat_interleave(c.num_queries).expand(B, -1)
    self_rel = Documents(group_ids) if groups > 1 else None
    cross_rel = None if enc_rel is None else Documents(torch.zeros_like(group_ids), enc_rel.segment_ids)
    h, outputs = torch.zeros_like(query_pos), []
    for layer in model.decoder.layers:
        rel = self_rel
        if model.box_relation is not None and outputs:
            boxes = model.box_relation.bind(boxes=outputs[-1][1].detach())
            rel = boxes if rel is None else rel & boxes
        h = layer(h, x, rel, cross_rel, pos=query_pos, context_pos=pos)
        outputs.append(model._predict(model.decoder_norm(h)))
    return outputs


@pytest.mark.parametrize("options", [{}, dict(box_relation=True), dict(num_groups=2), dict(aux_loss=False)])
@pytest.mark.slow
def test_detr_equals_its_layers_called_by_hand(options):
    torch.manual_seed(0)
    model = create_model("detr_micro", dropout=0.0, **options).train()
    images = torch.randn(2, 1, 64, 64)
    mask = torch.ones(2, 64, 64, dtype=torch.long)
    mask[1, :, 40:] = 0  # padding: the encoder and cross-attention relations are masks
    torch.manual_seed(1)
    out = model(images, mask)
    torch.manual_seed(1)
    ref = _by_hand(model, images, mask)
    got = [(a["logits"], a["pred_boxes"]) for a in out.aux_outputs] + [(out.logits, out.pred_boxes)]
    assert len(got) == (len(ref) if model.config.aux_loss else 1)
    for (logits, boxes), (ref_logits, ref_boxes) in zip(got[::-1], ref[::-1]):
        torch.testing.assert_close(logits, ref_logits, rtol=0, atol=1e-5)
        torch.testing.assert_close(boxes, ref_boxes, rtol=0, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.logits.square().sum() + out.pred_boxes.sum(), params, allow_unused=True)
    ref_grads = torch.autograd.grad(ref[-1][0].square().sum() + ref[-1][1].sum(), params, allow_unused=True)
    for g, r in zip(grads, ref_grads):
        assert (g is None) == (r is None)
        if g is not None:
            torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5)


def test_detr_variants_are_relformer_models_and_options_are_checked():
    for name in ("detr_fashion", "relation_detr_fashion", "group_detr_fashion", "detr_micro"):
        assert name in list_models() and type(model_config(name)) is DETRConfig
    assert isinstance(create_model("detr_micro"), DETR)
    with pytest.raises(ValueError, match="implementation"):
        create_model("detr_micro", implementation="hf")  # HF's DETR is interop's hf_detr_* variant
    with pytest.raises(ValueError, match="num_classes"):
        create_model("detr_micro", num_classes=-3)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got -0\.1"):
        create_model("detr_micro", dropout=-0.1)


@pytest.mark.parametrize("options", [dict(num_groups=2), dict(aux_loss=False, eos_coef=0.3, weight_giou=1.5)])
def test_detr_labels_give_the_set_loss(options):
    """``labels=`` (HF's ``class_labels`` or relformer's ``labels`` key) gives ``loss`` / ``loss_dict`` equal
    to the set criterion applied to the outputs by hand, with the config's weights, Group DETR's groups
    in training and every auxiliary layer."""
    from relformer.models.detection.set_prediction import set_criterion

    torch.manual_seed(0)
    model = create_model("detr_micro", **options).train()
    c = model.config
    images = torch.randn(2, c.in_channels, 64, 64)
    g = torch.Generator().manual_seed(3)
    targets = [{"labels": torch.randint(0, c.num_classes, (m,), generator=g),
                "boxes": torch.cat([torch.rand(m, 2, generator=g) * 0.5 + 0.25, torch.rand(m, 2, generator=g) * 0.2 + 0.05], 1)}
               for m in (2, 0)]
    torch.manual_seed(1)
    out = model(images, labels=[{"class_labels": t["labels"], "boxes": t["boxes"]} for t in targets])
    torch.manual_seed(1)
    plain = model(images)
    loss_keys = ("cost_class", "cost_bbox", "cost_giou", "weight_class", "weight_bbox", "weight_giou", "eos_coef")
    expected = set_criterion(c.num_classes, num_groups=c.num_groups, **{k: getattr(c, k) for k in loss_keys})(plain, targets)
    assert out.loss_dict.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(out.loss_dict[key], expected[key], rtol=0, atol=1e-6)
    assert out[0] is out.loss and out.to_tuple()[1] is out.loss_dict
    assert any(k.endswith("_0") for k in expected) == c.aux_loss
    out.loss.backward()
    assert model.class_head.weight.grad is not None
    assert model(images).loss is None  # no labels: no loss, and out[0] is the logits
    with pytest.raises(TypeError, match="labels must be a list"):
        model(images, labels={"labels": targets[0]["labels"]})
    with pytest.raises(ValueError, match="both 'class_labels' and 'labels'"):
        model(images, labels=[{**t, "class_labels": t["labels"]} for t in targets])
    with pytest.raises(ValueError, match="eos_coef"):
        create_model("detr_micro", eos_coef=-1.0)
