"""Rank-DETR's flags on RT-DETR, wiring: with the query rank layers' fusion set to a pass-through and zero rank
biases, the rank-architecture model computes the plain model's predictions for the same weights, every decoder
layer's matching queries permuted by the composed sorts of the previous layers' scores (descending) and the
denoising queries untouched in place, so its loss equals the plain model's (the matching is order-free), within
1e-5; ``rank_loss`` changes only the decoder's class terms (GIoU-aware), ``high_order_cost`` only the matching;
flags off build the plain model (same parameter names, outputs, losses)."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch

from relformer.models.detection import RTDETR, rtdetr_micro
from relformer.models.detection.rank import QueryRankLayer, RankAdaptiveClassHead

ATOL = 1e-5
LABELS = [{"class_labels": torch.tensor([1, 4, 2]),
           "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.5, 0.4], [0.2, 0.7, 0.1, 0.2]])},
          {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.9, 0.9]])}]


def _config(**kw):
    return dataclasses.replace(rtdetr_micro(), decoder_layers=3, **kw)


def _pair(**flags):
    """(plain model, flagged model) with the plain model's weights; the rank parts set to pass-throughs."""
    torch.manual_seed(0)
    plain = RTDETR(_config())
    ranked = RTDETR(_config(**flags))
    state = plain.state_dict()
    if flags.get("rank_architecture"):
        state = {(k.replace(".weight", ".linear.weight")
                  .replace(".bias", ".linear.bias") if k.startswith("decoder.class_embed.") else k): v
                 for k, v in state.items()}
        with torch.no_grad():
            for layer in ranked.decoder.query_rank:
                C = layer.dim
                layer.post.weight.copy_(torch.cat([torch.eye(C), torch.randn(C, C)], 1))
                layer.post.bias.zero_()
                layer.pre.bias.zero_()
                layer.rank_embed.weight.zero_()               # zero-initialised, as Rank-DETR: no rank signal yet
    missing, unexpected = ranked.load_state_dict(state, strict=False)
    assert not unexpected and all(k.startswith(("decoder.query_rank.", "decoder.class_embed.")) for k in missing)
    return plain, ranked


def _run(model, x, train, seed=5):
    model.train(train)
    torch.manual_seed(seed)
    return model(x, labels=copy.deepcopy(LABELS))


def test_flags_off_build_the_plain_model():
    plain, same = _pair()
    assert list(plain.state_dict()) == list(same.state_dict())
    assert not any(isinstance(m, (QueryRankLayer, RankAdaptiveClassHead)) for m in plain.modules())
    x = torch.rand(2, 1, 64, 64)
    a, b = _run(plain, x, True), _run(same, x, True)
    torch.testing.assert_close(a.layer_logits, b.layer_logits, atol=0, rtol=0)
    assert a.loss_dict.keys() == b.loss_dict.keys() and all(torch.equal(a.loss_dict[k], b.loss_dict[k]) for k in a.loss_dict)


@pytest.mark.slow
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train-denoising"])
def test_rank_architecture_sorts_queries_by_previous_scores_and_keeps_denoising(train):
    plain, ranked = _pair(rank_architecture=True)
    assert isinstance(ranked.decoder.class_embed[0], RankAdaptiveClassHead) and len(ranked.decoder.query_rank) == 2
    x = torch.rand(2, 1, 64, 64)
    a, b = _run(plain, x, train), _run(ranked, x, train)
    N = 0 if a.denoising_meta_values is None else a.denoising_meta_values["dn_num_split"][0]
    assert (N > 0) == train
    # denoising queries: in place and unchanged on every layer
    torch.testing.assert_close(b.layer_logits[:, :, :N], a.layer_logits[:, :, :N], atol=ATOL, rtol=0)
    torch.testing.assert_close(b.layer_boxes[:, :, :N], a.layer_boxes[:, :, :N], atol=ATOL, rtol=0)
    # matching queries: layer i holds the plain layer i's predictions in the order sorted by layer i - 1's scores
    order = torch.arange(a.layer_logits.shape[2] - N).expand(2, -1)          # plain index of each ranked slot
    torch.testing.assert_close(b.layer_logits[:, 0, N:], a.layer_logits[:, 0, N:], atol=ATOL, rtol=0)
    for i in range(1, a.layer_logits.shape[1]):
        score = b.layer_logits[:, i - 1, N:].sigmoid().amax(-1)
        step = score.argsort(dim=1, descending=True, stable=True)
        assert not torch.equal(step, torch.arange(step.shape[1]).expand_as(step))   # a real permutation
        order = order.gather(1, step)
        assert (b.layer_logits[:, i - 1, N:].sigmoid().amax(-1).gather(1, step).diff(dim=1) <= 0).all()
        pick = lambda t: t[:, i, N:].gather(1, order[..., None].expand(-1, -1, t.shape[-1]))
        torch.testing.assert_close(b.layer_logits[:, i, N:], pick(a.layer_logits), atol=ATOL, rtol=0)
        torch.testing.assert_close(b.layer_boxes[:, i, N:], pick(a.layer_boxes), atol=ATOL, rtol=0)
    # the set loss does not see the order
    assert a.loss_dict.keys() == b.loss_dict.keys()
    for k in a.loss_dict:
        torch.testing.assert_close(b.loss_dict[k], a.loss_dict[k], atol=ATOL, rtol=1e-6, msg=k)


@pytest.mark.slow
def test_rank_bias_is_added_by_rank_to_matching_queries_only():
    plain, ranked = _pair(rank_architecture=True)
    x = torch.rand(2, 1, 64, 64)
    base = _run(ranked, x, True)
    with torch.no_grad():
        for head in ranked.decoder.class_embed:
            head.bias.weight.normal_()
    out = _run(ranked, x, True)
    N = out.denoising_meta_values["dn_num_split"][0]
    # layer 0: the rank-r query (encoder top-k order) gets bias S_0[r]; denoising queries none
    torch.testing.assert_close(out.layer_logits[:, 0, N:] - base.layer_logits[:, 0, N:],
                               ranked.decoder.class_embed[0].bias.weight.expand(2, -1, -1), atol=ATOL, rtol=0)
    torch.testing.assert_close(out.layer_logits[:, :, :N], base.layer_logits[:, :, :N], atol=ATOL, rtol=0)


def test_rank_loss_changes_only_the_decoder_class_terms():
    plain, ranked = _pair(rank_loss=True)
    x = torch.rand(2, 1, 64, 64)
    a, b = _run(plain, x, True), _run(ranked, x, True)
    torch.testing.assert_close(b.layer_logits, a.layer_logits, atol=0, rtol=0)
    L = a.layer_logits.shape[1]
    renamed = {k.replace("loss_vfl", "loss_giou_aware"): v for k, v in a.loss_dict.items()
               if k != f"loss_vfl_aux_{L - 1}"}          # the encoder keeps VFL, as Rank-DETR's code
    assert set(b.loss_dict) == set(renamed) | {f"loss_vfl_aux_{L - 1}"}
    for k, v in b.loss_dict.items():
        if "giou_aware" in k or k == "loss":
            assert not torch.allclose(v, renamed[k]), k
        else:
            torch.testing.assert_close(v, a.loss_dict[k], atol=0, rtol=0, msg=k)
    assert torch.isfinite(b.loss)
    b.loss.backward()


def test_high_order_cost_changes_the_matching_not_the_outputs():
    plain, ranked = _pair(high_order_cost=True)
    assert ranked.criterion().matcher.iou_order == 4.0 and plain.criterion().matcher.iou_order is None
    x = torch.rand(2, 1, 64, 64)
    a, b = _run(plain, x, False), _run(ranked, x, False)
    torch.testing.assert_close(b.layer_logits, a.layer_logits, atol=0, rtol=0)
    assert a.loss_dict.keys() == b.loss_dict.keys() and torch.isfinite(b.loss)
    assert any(not torch.equal(a.loss_dict[k], b.loss_dict[k]) for k in a.loss_dict)   # other matches somewhere


def test_the_high_order_cost_switches_on_late_in_training():
    """Rank-DETR's schedule: the plain cost until ``high_order_start`` of training, the high-order one
    from there; a model never told its progress uses the flag alone."""
    plain, ranked = _pair(high_order_cost=True, high_order_start=0.5)
    x = torch.rand(2, 1, 64, 64)
    assert ranked.high_order_active and ranked.criterion().matcher.iou_order == 4.0
    ranked.set_training_progress(0.49)
    assert not ranked.high_order_active and ranked.criterion().matcher.iou_order is None
    torch.testing.assert_close(_run(ranked, x, False).loss, _run(plain, x, False).loss, atol=0, rtol=0)
    ranked.set_training_progress(0.5)
    assert ranked.high_order_active and ranked.criterion().matcher.iou_order == 4.0
    assert RTDETR(_config(high_order_cost=False)).high_order_active is False
    for bad in (-0.1, 1.5, float("nan"), "late"):
        with pytest.raises(ValueError, match="high_order_start"):
            _config(high_order_cost=True, high_order_start=bad)


def test_rank_flags_are_checked():
    with pytest.raises(ValueError, match="rank_architecture"):
        _config(rank_architecture="yes")
    with pytest.raises(ValueError, match="decoder_layers"):
        dataclasses.replace(rtdetr_micro(), decoder_layers=1, rank_architecture=True)
    with pytest.raises(ValueError, match="iou_order"):
        _config(high_order_cost=True, iou_order=0.0)
