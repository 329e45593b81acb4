"""Grounding models: EA and RA against plain per-scene re-implementations of their formulas (forward and
backward, float64), packed == padded twin, scenes of a batch never attend across, the object encoder per
object == batched, the scene softmax and arg-max, every variant trains (finite loss, a gradient on every
trainable parameter), a few training steps beat chance on the generated train split, and bad input errors."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from relformer.data.grounding import GroundingBatch, ReferringDataset, collate
from relformer.data.packed import lengths_to_offsets
from relformer.models import create_model, list_models, model_config
from relformer.models.grounding import (EntityAwareAttention, GroundingConfig, ObjectEncoder, RelationAwareAttention,
                                        SceneLayout, grounding_loss, scene_argmax, scene_log_softmax)

TEXTS = ("the chair closest to the window", "find the lamp on the left of the bed", "the box on the table",
         "select the sofa that is farthest from the door")


def random_batch(object_counts=(3, 5, 2), seed: int = 0, points=(4, 40)) -> GroundingBatch:
    """Scenes of random boxes, each object with a random number of points inside its box."""
    g = torch.Generator().manual_seed(seed)
    n = sum(object_counts)
    centres = torch.rand(n, 3, generator=g) * torch.tensor([5.0, 4.0, 1.0])
    sizes = 0.2 + torch.rand(n, 3, generator=g)
    counts = torch.randint(points[0], points[1], (n,), generator=g)
    obj = torch.repeat_interleave(torch.arange(n), counts)
    xyz = centres[obj] + (torch.rand(int(counts.sum()), 3, generator=g) - 0.5) * sizes[obj]
    rgb = torch.rand(int(counts.sum()), 3, generator=g)
    B = len(object_counts)
    target = torch.tensor([int(torch.randint(0, c, (1,), generator=g)) for c in object_counts])
    return GroundingBatch(
        points=torch.cat([xyz, rgb], -1), point_offsets=lengths_to_offsets(counts),
        object_offsets=lengths_to_offsets(torch.tensor(object_counts)), centres=centres, sizes=sizes,
        classes=torch.randint(0, 22, (n,), generator=g), target=target,
        distractor_mask=torch.zeros(n, dtype=torch.bool), anchor_mask=torch.zeros(n, dtype=torch.bool),
        hard=torch.arange(B) % 2 == 0, view_dependent=torch.arange(B) % 2 == 1,
        texts=tuple(TEXTS[b % len(TEXTS)] for b in range(B)), reference_types=("closest",) * B,
        scan_ids=tuple(f"scene{b}" for b in range(B)))


def _mha(attn, x_q, x_kv):
    """Multi-head attention written out (Vaswani et al. 2017, Eq. 1 per head): ``(Lq, C), (Lk, C) -> (Lq, C)``."""
    H, D = attn.num_heads, attn.head_dim
    q = F.linear(x_q, attn.q.weight, attn.q.bias).view(-1, H, D).transpose(0, 1)
    k, v = F.linear(x_kv, attn.kv.weight, attn.kv.bias).split(H * D, -1)
    k, v = k.view(-1, H, D).transpose(0, 1), v.view(-1, H, D).transpose(0, 1)
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(D), -1)
    return F.linear((p @ v).transpose(0, 1).reshape(-1, H * D), attn.proj.weight, attn.proj.bias)


def _pair_features_direct(ci, si, cj, sj, eps=1e-3):
    """The 10 pair features of one pair, written out per pair."""
    d = cj - ci
    h = torch.sqrt(d[0] ** 2 + d[1] ** 2)
    return torch.stack([d[0], d[1], d[2], torch.sqrt((d ** 2).sum()), h, *torch.log((sj + eps) / (si + eps)),
                        d[1] / h, d[0] / h])


def _scene_inputs(object_counts=(3, 4, 2), word_counts=(5, 3, 6), dim=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    objects = torch.randn(sum(object_counts), dim, generator=g, dtype=torch.float64, requires_grad=True)
    words = torch.randn(sum(word_counts), dim, generator=g, dtype=torch.float64, requires_grad=True)
    layout = SceneLayout.build(torch.tensor(object_counts), torch.tensor(word_counts))
    return objects, words, layout, lengths_to_offsets(torch.tensor(object_counts)), \
        lengths_to_offsets(torch.tensor(word_counts))


def _assert_grads_match(loss_a, loss_b, tensors, tol=1e-9):
    ga = torch.autograd.grad(loss_a, tensors)
    gb = torch.autograd.grad(loss_b, tensors)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_entity_aware_attention_matches_the_formula_per_scene():
    objects, words, layout, o_off, w_off = _scene_inputs()
    ea = EntityAwareAttention(16, 4, 0.0, "auto").double()
    got = ea(objects, words, layout)
    want = torch.cat([_mha(ea.attn, objects[o_off[b]:o_off[b + 1]], words[w_off[b]:w_off[b + 1]])
                      for b in range(3)])
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    weight = torch.randn_like(got)
    _assert_grads_match((got * weight).sum(), (want * weight).sum(), [objects, words, *ea.parameters()])


def test_relation_aware_attention_matches_the_formula_per_pair():
    counts = (3, 4, 2)
    objects, words, layout, o_off, w_off = _scene_inputs(counts)
    g = torch.Generator().manual_seed(1)
    centres = torch.rand(sum(counts), 3, generator=g, dtype=torch.float64) * 4
    sizes = 0.1 + torch.rand(sum(counts), 3, generator=g, dtype=torch.float64)
    ra = RelationAwareAttention(16, 4, 8, 0.0, "auto").double()
    from relformer.models.grounding.layers import pair_geometry

    got = ra(objects, words, layout, pair_geometry(centres, sizes, layout))
    rows = []
    for b in range(3):
        lo, hi = int(o_off[b]), int(o_off[b + 1])
        w = words[w_off[b]:w_off[b + 1]]
        for i in range(lo, hi):
            r = torch.stack([F.layer_norm(ra.diff(objects[j] - objects[i])
                                          + ra.geometry(_pair_features_direct(centres[i], sizes[i], centres[j], sizes[j])),
                                          (16,), ra.norm.weight, ra.norm.bias, ra.norm.eps)
                             for j in range(lo, hi) if j != i])
            r_ii = F.layer_norm(ra.diff(objects[i] - objects[i]) + ra.geometry(torch.zeros(10, dtype=torch.float64)),
                                (16,), ra.norm.weight, ra.norm.bias, ra.norm.eps)  # a pair with itself: all zero
            rows.append(_mha(ra.attn, torch.cat([r, r_ii[None]]), w).amax(0))
    want = torch.stack(rows)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    weight = torch.randn_like(got)
    _assert_grads_match((got * weight).sum(), (want * weight).sum(), [objects, words, *ra.parameters()])


@pytest.mark.parametrize("name,options", [("transrefer3d_micro", {}), ("transrefer3d_micro", {"relation": "plain"}),
                                          ("transrefer3d_micro", {"arch": "referit3dnet"})])
def test_packed_equals_padded_twin(name, options):
    model = create_model(name, **options).eval()
    batch = random_batch((3, 7, 1, 5))
    packed, padded = model(batch), model(batch, padded=True)
    for field in ("logits", "object_logits", "text_logits"):
        torch.testing.assert_close(getattr(packed, field), getattr(padded, field), rtol=1e-5, atol=1e-5)
    params = [p for p in model.parameters() if p.requires_grad]
    ga = torch.autograd.grad(grounding_loss(packed, batch)[0], params)
    gb = torch.autograd.grad(grounding_loss(padded, batch)[0], params)
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"relation": "plain"}, {"arch": "referit3dnet"}])
def test_scenes_of_a_batch_never_attend_across(options):
    model = create_model("transrefer3d_micro", **options).eval()
    batch = random_batch((4, 6, 3))
    centres = batch.centres.clone().requires_grad_(True)
    points = batch.points.clone().requires_grad_(True)
    out = type(batch)(**{**batch.__dict__, "centres": centres, "points": points})
    logits = model(out).logits
    lo, hi = int(batch.object_offsets[1]), int(batch.object_offsets[2])  # scene 1
    g_centres, g_points = torch.autograd.grad(logits[lo:hi].sum(), [centres, points])
    assert g_centres[lo:hi].abs().sum() > 0
    outside = torch.ones(len(centres), dtype=torch.bool)
    outside[lo:hi] = False
    assert g_centres[outside].abs().max() == 0
    p_lo, p_hi = int(batch.point_offsets[lo]), int(batch.point_offsets[hi])
    assert g_points[:p_lo].abs().max() == 0 and g_points[p_hi:].abs().max() == 0
    # and another utterance for scene 0 changes nothing in scene 1
    other = type(batch)(**{**batch.__dict__, "texts": ("the box on the table",) + batch.texts[1:]})
    torch.testing.assert_close(model(other).logits[lo:hi], logits[lo:hi].detach(), rtol=0, atol=1e-6)


def test_object_encoder_per_object_equals_batched():
    enc = ObjectEncoder(16, 2, 2, 12).eval()
    b = random_batch((3, 4), points=(3, 30))
    together = enc(b.points, b.point_offsets, b.centres, b.sizes)
    for o in range(len(b.centres)):
        lo, hi = int(b.point_offsets[o]), int(b.point_offsets[o + 1])
        alone = enc(b.points[lo:hi], torch.tensor([0, hi - lo]), b.centres[o:o + 1], b.sizes[o:o + 1])
        torch.testing.assert_close(together[o:o + 1], alone, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(enc(b.points, b.point_offsets, b.centres, b.sizes, padded=True), together,
                               rtol=1e-5, atol=1e-6)


def test_scene_softmax_and_argmax_match_a_loop():
    logits = torch.randn(9, dtype=torch.float64)
    offsets = torch.tensor([0, 3, 4, 9])
    logp = scene_log_softmax(logits, offsets)
    for b in range(3):
        part = logits[offsets[b]:offsets[b + 1]]
        torch.testing.assert_close(logp[offsets[b]:offsets[b + 1]], torch.log_softmax(part, 0))
    ties = torch.tensor([1.0, 3.0, 3.0, 0.0, 2.0])
    assert scene_argmax(ties, torch.tensor([0, 3, 5])).tolist() == [1, 1]


@pytest.mark.parametrize("options", [{}, {"relation": "plain"}, {"arch": "referit3dnet"},
                                     pytest.param({"freeze_text": False, "depth": 1}, marks=pytest.mark.slow)])
def test_every_variant_trains(options):
    model = create_model("transrefer3d_micro", **options)
    batch = random_batch()
    total, terms = grounding_loss(model(batch), batch)
    assert set(terms) == {"referring", "object_class", "text_class"} and torch.isfinite(total)
    total.backward()
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    missing = [n for n, p in trainable if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    text = [p for n, p in model.named_parameters() if n.startswith("words.encoder.encoder.")]
    assert all(p.requires_grad for p in text) == (options.get("freeze_text") is False)


def test_registered_variants():
    assert {"transrefer3d", "transrefer3d_micro", "transrefer3d_plain", "referit3dnet"} <= set(list_models())
    assert model_config("transrefer3d_plain").relation == "plain"
    assert model_config("referit3dnet").arch == "referit3dnet"


@pytest.mark.slow
def test_a_few_training_steps_beat_chance(tmp_path):
    data = ReferringDataset.generated("train", num_scenes=(6, 1, 1), root=tmp_path)
    items = [data[i] for i in range(len(data))]
    chance = sum(1.0 / (1 + int(it["distractor_mask"].sum())) for it in items) / len(items)
    torch.manual_seed(0)
    model = create_model("transrefer3d_micro")
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    g = torch.Generator().manual_seed(0)

    def accuracy():
        model.eval()
        with torch.no_grad():
            batch = collate(items)
            return float((model(batch).predictions() == batch.target).float().mean())

    before = accuracy()
    model.train()
    for step in range(50):
        batch = collate([items[i] for i in torch.randperm(len(items), generator=g)[:16].tolist()])
        loss, _ = grounding_loss(model(batch), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = accuracy()
    assert after > chance + 0.1 and after > before, (before, after, chance)


def test_bad_input_errors():
    with pytest.raises(ValueError, match="GroundingConfig.relation"):
        GroundingConfig(relation="graph")
    with pytest.raises(ValueError, match="GroundingConfig.dim"):
        GroundingConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="GroundingConfig.points_per_object"):
        GroundingConfig(points_per_object=0)
    model = create_model("transrefer3d_micro")
    batch = random_batch()
    with pytest.raises(TypeError, match="GroundingBatch"):
        model({"points": batch.points})
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        model(type(batch)(**{**batch.__dict__, "texts": ("a", 3, "b")}))
    empty = batch.point_offsets.clone()
    empty[1] = empty[0]
    with pytest.raises(ValueError, match="at least one point"):
        model(type(batch)(**{**batch.__dict__, "point_offsets": empty}))
    bad = batch.centres.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="batch.centres must be finite"):
        model(type(batch)(**{**batch.__dict__, "centres": bad}))
    with pytest.raises(ValueError, match="points must be a float"):
        model(type(batch)(**{**batch.__dict__, "points": batch.points[:, :3]}))
