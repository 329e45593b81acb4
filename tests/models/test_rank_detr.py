"""Rank-DETR (Pu et al. 2023): each formula against a plain element-by-element re-implementation of the paper's
(and its code's) equations, float64 gradchecks, the high-order matcher against scipy on the combined cost, the
query rank layer's permutation invariance, and the flags off giving the plain DETR / RT-DETR path."""
from __future__ import annotations

import math

import pytest
import torch
from scipy.optimize import linear_sum_assignment
from torch import nn

from relformer.models.detection.boxes import box_cxcywh_to_xyxy, box_iou, generalized_box_iou
from relformer.models.detection.rank import (QueryRankLayer, RankAdaptiveClassHead, giou_aware_focal_loss,
                                             giou_aware_targets, high_order_cost, rank_order)
from relformer.models.detection.rtdetr_loss import RTDetrCriterion, rtdetr_matcher
from relformer.models.detection.set_prediction import HungarianMatcher, SetCriterion

B, Q, K, C = 3, 8, 4, 16
SIZES = (2, 0, 3)


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


def bce(x, t):
    p = sigmoid(x)
    return -(t * math.log(p) + (1 - t) * math.log(1 - p))


def plain_giou_aware(logits, onehot, target, alpha, gamma):
    """Rank-DETR's GIoU-aware loss written entry by entry (Python floats)."""
    out = torch.zeros_like(logits)
    for idx in torch.cartesian_prod(*[torch.arange(n) for n in logits.shape]):
        idx = tuple(idx.tolist())
        x, pos, t = float(logits[idx]), float(onehot[idx]) == 1, float(target[idx])
        p = sigmoid(x)
        out[idx] = alpha * abs(t - p) ** gamma * bce(x, t) if pos else (1 - alpha) * p ** gamma * bce(x, 0.0)
    return out


def make_batch(seed=0, sizes=SIZES, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(sizes), Q, K, generator=g, dtype=dtype)
    boxes = torch.cat([torch.rand(len(sizes), Q, 2, generator=g, dtype=dtype) * 0.6 + 0.2,
                       torch.rand(len(sizes), Q, 2, generator=g, dtype=dtype) * 0.3 + 0.05], -1)
    targets = []
    for n in sizes:
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        centre = wh / 2 + torch.rand(n, 2, generator=g) * (1 - wh)
        targets.append({"labels": torch.randint(0, K, (n,), generator=g),
                        "boxes": torch.cat([centre, wh], -1).to(dtype)})
    return logits, boxes, targets


# --- the formulas -------------------------------------------------------------------------------

def test_giou_aware_loss_equals_plain_formula():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 3, generator=g, dtype=torch.float64) * 2
    onehot = torch.zeros_like(logits)
    onehot[0, 1, 2] = onehot[1, 3, 0] = onehot[1, 4, 1] = 1
    target = onehot * torch.rand(logits.shape, generator=g, dtype=torch.float64)
    for alpha, gamma in [(0.25, 2.0), (0.6, 1.5)]:
        torch.testing.assert_close(giou_aware_focal_loss(logits, onehot, target, alpha, gamma),
                                   plain_giou_aware(logits, onehot, target, alpha, gamma), atol=1e-12, rtol=0)
    giou = torch.tensor([-0.9, 0.0, 0.5, 1.0], dtype=torch.float64)
    torch.testing.assert_close(giou_aware_targets(giou), torch.tensor([0.05, 0.5, 0.75, 1.0], dtype=torch.float64))


def test_high_order_cost_and_gradchecks():
    g = torch.Generator().manual_seed(1)
    score = torch.rand(4, 3, generator=g, dtype=torch.float64)
    iou = torch.rand(4, 3, generator=g, dtype=torch.float64)
    plain = torch.tensor([[-float(score[i, j]) * float(iou[i, j]) ** 4 for j in range(3)] for i in range(4)],
                         dtype=torch.float64)
    torch.testing.assert_close(high_order_cost(score, iou, 4.0), plain, atol=1e-15, rtol=0)
    assert torch.autograd.gradcheck(lambda s, i: high_order_cost(s, i, 3.0),
                                    (score.requires_grad_(), (iou + 0.1).requires_grad_()))
    logits = torch.randn(2, 4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    onehot = torch.zeros(2, 4, 3, dtype=torch.float64)
    onehot[0, 0, 1] = onehot[1, 2, 2] = 1
    target = onehot * 0.7
    assert torch.autograd.gradcheck(lambda x: giou_aware_focal_loss(x, onehot, target), (logits,))


def _plain_matched_giou_aware(logits, boxes, targets, indices, alpha, gamma):
    """Sum over the batch of the GIoU-aware loss with targets (GIoU + 1) / 2 of the matched pairs, / num_boxes."""
    onehot, target = torch.zeros_like(logits), torch.zeros_like(logits)
    for b, (q, j) in enumerate(indices):
        for qi, ji in zip(q.tolist(), j.tolist()):
            giou = generalized_box_iou(box_cxcywh_to_xyxy(boxes[b, qi][None]),
                                       box_cxcywh_to_xyxy(targets[b]["boxes"][ji][None]))[0, 0]
            c = int(targets[b]["labels"][ji])
            onehot[b, qi, c], target[b, qi, c] = 1, (float(giou) + 1) / 2
    return plain_giou_aware(logits.detach(), onehot, target, alpha, gamma).sum() / max(sum(SIZES), 1)


def test_set_criterion_giou_aware_equals_plain():
    logits, boxes, targets = make_batch()
    matcher = HungarianMatcher(2.0, 5.0, 2.0, focal=True)
    criterion = SetCriterion(K, matcher, focal=True, giou_aware=True, focal_alpha=0.25, focal_gamma=2.0)
    terms = criterion({"logits": logits, "pred_boxes": boxes}, targets)
    assert "loss_giou_aware" in terms and "loss_focal" not in terms
    plain = _plain_matched_giou_aware(logits, boxes, targets, matcher({"logits": logits, "pred_boxes": boxes}, targets),
                                      0.25, 2.0)
    torch.testing.assert_close(terms["loss_giou_aware"], plain.float(), atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="giou_aware .* needs focal=True"):
        SetCriterion(K, HungarianMatcher(), giou_aware=True)


def test_rtdetr_criterion_giou_aware_on_decoder_outputs_only():
    logits, boxes, targets = make_batch()
    enc_logits, enc_boxes, _ = make_batch(seed=5)
    outputs = {"logits": logits, "pred_boxes": boxes, "aux_outputs": [{"logits": logits * 0.5, "pred_boxes": boxes}],
               "enc_outputs": {"logits": enc_logits, "pred_boxes": enc_boxes}}
    rank = RTDetrCriterion(K, giou_aware=True, rank_alpha=0.3, rank_gamma=1.5)(outputs, targets)
    plain = RTDetrCriterion(K)(outputs, targets)
    assert {"loss_giou_aware", "loss_giou_aware_aux_0", "loss_vfl_aux_1"} <= set(rank)
    assert not {"loss_vfl", "loss_vfl_aux_0"} & set(rank)
    torch.testing.assert_close(rank["loss_vfl_aux_1"], plain["loss_vfl_aux_1"])             # the encoder keeps VFL
    for name in ("loss_bbox", "loss_giou", "loss_bbox_aux_0"):
        torch.testing.assert_close(rank[name], plain[name])
    indices = rtdetr_matcher()(outputs, targets)
    expected = _plain_matched_giou_aware(logits, boxes, targets, indices, 0.3, 1.5)
    torch.testing.assert_close(rank["loss_giou_aware"], expected.float(), atol=1e-6, rtol=1e-6)


# --- the high-order matching cost ---------------------------------------------------------------

@pytest.mark.parametrize("focal", [True, False])
def test_high_order_matcher_equals_scipy_on_the_plain_cost(focal):
    logits, boxes, targets = make_batch(seed=2, sizes=(3, 0, 5))
    matcher = (rtdetr_matcher(iou_order=4.0) if focal else HungarianMatcher(focal=False, iou_order=4.0))
    if not focal:
        logits = torch.cat([logits, torch.randn(3, Q, 1)], -1)                         # + the no-object class
    outputs = {"logits": logits, "pred_boxes": boxes}
    cost, sizes = matcher.cost(outputs, targets)
    indices = matcher(outputs, targets)
    for b, t in enumerate(targets):
        prob = logits[b].sigmoid() if focal else logits[b].softmax(-1)
        iou = box_iou(box_cxcywh_to_xyxy(boxes[b]), box_cxcywh_to_xyxy(t["boxes"]))[0]
        plain = torch.tensor([[-float(prob[q, int(t["labels"][j])]) * float(iou[q, j]) ** 4
                               for j in range(len(t["labels"]))] for q in range(Q)])
        torch.testing.assert_close(cost[b, :, :sizes[b]], plain.reshape(Q, sizes[b]), atol=1e-7, rtol=1e-6)
        rows, cols = linear_sum_assignment(plain.reshape(Q, sizes[b]).numpy())
        assert indices[b][0].tolist() == rows.tolist() and indices[b][1].tolist() == cols.tolist()
    with pytest.raises(ValueError, match="iou_order must be > 0"):
        HungarianMatcher(iou_order=0.0)


def test_matcher_without_high_order_is_the_plain_cost():
    logits, boxes, targets = make_batch(seed=3)
    outputs = {"logits": logits, "pred_boxes": boxes}
    plain = HungarianMatcher(2.0, 5.0, 2.0, focal=True)
    assert [(q.tolist(), j.tolist()) for q, j in plain(outputs, targets)] == \
        [(q.tolist(), j.tolist()) for q, j in rtdetr_matcher()(outputs, targets)]
    assert not torch.equal(plain.cost(outputs, targets)[0],
                           rtdetr_matcher(iou_order=4.0).cost(outputs, targets)[0])


# --- the architecture ---------------------------------------------------------------------------

def _queries(seed=0, q=Q):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, q, C, generator=g), torch.randn(B, q, K, generator=g),
            torch.randn(B, q, C, generator=g), torch.rand(B, q, 4, generator=g))


def test_query_rank_layer_equals_plain_formula():
    layer = QueryRankLayer(C, Q)
    nn.init.normal_(layer.rank_embed.weight)                                            # non-trivial embeddings
    queries, logits, pos, ref = _queries()
    out, order, (pos_out, ref_out) = layer(queries, logits, pos, ref)
    for b in range(B):
        scores = [max(sigmoid(float(x)) for x in logits[b, q]) for q in range(Q)]
        expected_order = sorted(range(Q), key=lambda q: -scores[q])
        assert order[b].tolist() == expected_order
        for r, q in enumerate(expected_order):
            fused = layer.post(torch.cat([queries[b, q], layer.pre(layer.rank_embed.weight[r])]))
            torch.testing.assert_close(out[b, r], fused, atol=1e-6, rtol=0)
            assert torch.equal(pos_out[b, r], pos[b, q]) and torch.equal(ref_out[b, r], ref[b, q])


def test_query_rank_layer_is_permutation_invariant():
    # the paper ranks queries by score: any input order of the same queries gives the same ranked output
    layer = QueryRankLayer(C, Q)
    nn.init.normal_(layer.rank_embed.weight)
    queries, logits, pos, ref = _queries(seed=1)
    perm = torch.stack([torch.randperm(Q, generator=torch.Generator().manual_seed(b)) for b in range(B)])
    take = lambda x: x.gather(1, perm[..., None].expand(-1, -1, x.shape[-1]))    # noqa: E731
    out, order, aligned = layer(queries, logits, pos, ref)
    out_p, order_p, aligned_p = layer(take(queries), take(logits), take(pos), take(ref))
    torch.testing.assert_close(out_p, out, atol=0, rtol=0)
    assert torch.equal(perm.gather(1, order_p), order)                                # the same queries, in rank order
    for x, y in zip(aligned, aligned_p):
        assert torch.equal(x, y)


def test_query_rank_layer_keeps_denoising_queries_and_gradchecks():
    layer = QueryRankLayer(C, Q - 3)
    queries, logits, pos, _ = _queries(seed=2)
    out, order, (pos_out,) = layer(queries, logits, pos, num_fixed=3)
    assert torch.equal(out[:, :3], queries[:, :3]) and torch.equal(pos_out[:, :3], pos[:, :3])
    assert order[:, :3].tolist() == [[0, 1, 2]] * B and (order[:, 3:] >= 3).all()
    assert torch.equal(order[:, 3:], rank_order(logits[:, 3:]) + 3)
    small = QueryRankLayer(3, 4).double()
    nn.init.normal_(small.rank_embed.weight)
    q = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    lg = torch.randn(2, 4, 2, dtype=torch.float64)
    # the rank embedding is perturbed in place by gradcheck, so passing the parameter checks its gradient too
    assert torch.autograd.gradcheck(lambda x, e: small(x, lg)[0], (q, small.rank_embed.weight))


def test_rank_adaptive_head_equals_plain_formula():
    head = RankAdaptiveClassHead(C, K, Q)
    nn.init.normal_(head.bias.weight)
    queries = _queries()[0]
    logits = head(queries)
    for b in range(B):
        for r in range(Q):
            expected = head.linear.weight @ queries[b, r] + head.linear.bias + head.bias.weight[r]
            torch.testing.assert_close(logits[b, r], expected, atol=1e-6, rtol=0)
    fixed = head(queries, num_fixed=2)
    torch.testing.assert_close(fixed[:, :2], head.linear(queries[:, :2]))
    torch.testing.assert_close(fixed[:, 2:], head.linear(queries[:, 2:]) + head.bias.weight[:Q - 2])
    with pytest.raises(ValueError, match="rank biases for 8"):
        head(torch.randn(1, Q + 1, C))


def test_flags_off_is_the_plain_path():
    queries, logits, pos, ref = _queries(seed=3)
    off = QueryRankLayer(C, Q, sort=False, fuse=False)
    out, order, aligned = off(queries, logits, pos, ref)
    assert out is queries and aligned[0] is pos and aligned[1] is ref
    assert order.tolist() == [list(range(Q))] * B
    head, linear = RankAdaptiveClassHead(C, K, Q, rank_bias=False), nn.Linear(C, K)
    linear.load_state_dict(head.linear.state_dict())
    assert torch.equal(head(queries), linear(queries))
    assert sum(p.numel() for p in head.parameters()) == sum(p.numel() for p in linear.parameters())
    sort_only = QueryRankLayer(C, Q, fuse=False)
    out, order, _ = sort_only(queries, logits)
    assert torch.equal(out, queries.gather(1, order[..., None].expand(-1, -1, C)))
    # zero-initialised rank tables: the head starts as the plain head
    fresh = RankAdaptiveClassHead(C, K, Q)
    assert torch.equal(fresh(queries), fresh.linear(queries))


def test_rank_modules_reject_bad_input():
    layer = QueryRankLayer(C, Q)
    queries, logits, pos, _ = _queries()
    with pytest.raises(ValueError, match=r"queries must be \(B, Q, 16\)"):
        layer(queries[..., :4], logits)
    with pytest.raises(ValueError, match=r"prev_logits must be \(3, 8, K\)"):
        layer(queries, logits[:, :5])
    with pytest.raises(ValueError, match=r"aligned\[0\] must start with \(3, 8\)"):
        layer(queries, logits, pos[:, :2])
    with pytest.raises(ValueError, match="num_fixed must lie in"):
        layer(queries, logits, num_fixed=Q + 1)
    with pytest.raises(ValueError, match="rank embeddings for 4"):
        QueryRankLayer(C, 4)(queries, logits)
    with pytest.raises(ValueError, match="fuse=True needs sort=True"):
        QueryRankLayer(C, Q, sort=False)
