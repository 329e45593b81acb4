"""RT-DETR's backbone, hybrid encoder, query selection and denoising groups against HF
``RTDetrForObjectDetection`` (random weights from small configs, fp32): HF's weights load strictly
(only prefixes stripped), and the feature maps, encoder maps, selected queries, reference boxes and
encoder top-k predictions equal HF's within 1e-4, forward and backward (image and parameter
gradients); denoising groups equal HF's ``get_contrastive_denoising_training_group`` draw for draw; bad
targets, inputs and options raise ValueError naming them."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetBackbone, RTDetrResNetConfig
from transformers.models.rt_detr.modeling_rt_detr import get_contrastive_denoising_training_group

from relformer.models import create_model
from relformer.models.detection import RTDETR
from relformer.models.detection.rtdetr_backbone import RTDetrResNetBackbone as Backbone
from relformer.models.detection.rtdetr_encoder import RTDetrHybridEncoder, input_projections
from relformer.models.detection.rtdetr_queries import QuerySelection, contrastive_denoising_group, generate_anchors

TOL = 1e-4


def assert_near(a: torch.Tensor, b: torch.Tensor, msg: str | None = None) -> None:
    """fp32 equality within 1e-4, relative to the reference's largest magnitude (at least 1): the encoder's
    maps reach the hundreds, where 1e-4 absolute is below fp32 rounding of a different summation order."""
    scale = max(1.0, b.detach().abs().max().item()) if b.numel() else 1.0
    torch.testing.assert_close(a, b, atol=TOL * scale, rtol=TOL, msg=None if msg is None else lambda m: f"{msg}: {m}")
ACT = {"relu": nn.ReLU, "gelu": nn.GELU, "silu": nn.SiLU}
QUERY_KEYS = ("decoder_input_proj.", "enc_output.", "enc_score_head.", "enc_bbox_head.", "denoising_class_embed.",
              "weight_embedding.")

BASIC = dict(backbone=dict(embedding_size=16, hidden_sizes=[16, 24, 32, 48], depths=[1, 2, 1, 1], layer_type="basic",
                           out_indices=[2, 3, 4]),
             model=dict(num_feature_levels=3, learn_initial_query=False, hidden_expansion=1.0, encoder_layers=1))
BOTTLENECK = dict(backbone=dict(embedding_size=16, hidden_sizes=[32, 48, 64, 96], depths=[1, 2, 1, 1],
                                layer_type="bottleneck", out_indices=[2, 3, 4]),
                  model=dict(num_feature_levels=6, learn_initial_query=True, hidden_expansion=0.5, encoder_layers=2,
                             encoder_activation_function="relu"))


def hf_config(spec: dict) -> RTDetrConfig:
    backbone = RTDetrResNetConfig(num_channels=3, **spec["backbone"])
    channels = [([backbone.embedding_size] + backbone.hidden_sizes)[i] for i in spec["backbone"]["out_indices"]]
    options = dict(encoder_hidden_dim=32, d_model=32, decoder_in_channels=[32] * 3, encoder_ffn_dim=64,
                   decoder_ffn_dim=64, encoder_attention_heads=4, decoder_attention_heads=4, num_queries=12,
                   decoder_layers=1, num_labels=5, num_denoising=20)
    return RTDetrConfig(use_timm_backbone=False, use_pretrained_backbone=False, backbone_config=backbone,
                        encoder_in_channels=channels, **{**options, **spec["model"]})


class _Tileable(nn.Embedding):
    """HF 5's ``RTDetrModel`` calls ``weight_embedding.tile``, which ``nn.Embedding`` lacks (learn_initial_query
    crashes); this gives it the meaning of RT-DETR's ``tgt_embed.weight.tile``."""

    def tile(self, dims):
        return self.weight.tile(dims)


def hf_model(spec: dict) -> RTDetrForObjectDetection:
    torch.manual_seed(0)
    model = RTDetrForObjectDetection(copy.deepcopy(hf_config(spec))).eval()
    if model.config.learn_initial_query:
        old = model.model.weight_embedding
        model.model.weight_embedding = _Tileable(*old.weight.shape)
        model.model.weight_embedding.load_state_dict(old.state_dict())
    with torch.no_grad():
        # PyTorch's default init instead of HF's std-0.01 one (under which attention is uniform and positions
        # do not matter), He init for convs, and norm statistics and scales that are not identities
        for name, module in model.named_modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                module.reset_parameters()
            if isinstance(module, nn.Conv2d):  # He init keeps the image's signal above the norms' shifts
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if name.endswith(("q_proj", "k_proj")):
                    module.weight.mul_(4)
        for name, t in [*model.named_buffers(), *model.named_parameters()]:
            if name.endswith("running_mean"):
                t.normal_(0, 0.1)
            elif name.endswith(("running_var", "norm.weight", "normalization.weight")) or (
                    name.endswith(".1.weight") and t.dim() == 1):
                t.uniform_(0.5, 1.5)
        for proj in model.model.encoder_input_proj:  # AIFI's inputs of order 1: a saturated softmax is ill-conditioned
            proj[1].weight.uniform_(0.02, 0.06)
    return model


class Parts(nn.Module):
    """relformer's backbone, encoder input projections, hybrid encoder and query selection, built from an HF config."""

    def __init__(self, c: RTDetrConfig) -> None:
        super().__init__()
        b = c.backbone_config
        self.backbone = Backbone(b.num_channels, b.embedding_size, b.hidden_sizes, b.depths, b.layer_type,
                                 b.out_indices, "frozen", ACT[b.hidden_act], b.downsample_in_first_stage,
                                 b.downsample_in_bottleneck)
        self.encoder_input_proj = input_projections(self.backbone.channels, c.encoder_hidden_dim)
        self.encoder = RTDetrHybridEncoder(
            c.encoder_hidden_dim, len(c.encoder_in_channels), c.encode_proj_layers, c.encoder_layers,
            c.encoder_attention_heads, c.encoder_ffn_dim, ACT[c.encoder_activation_function], ACT[c.activation_function],
            c.dropout, c.normalize_before, c.hidden_expansion, c.layer_norm_eps, c.batch_norm_eps,
            c.positional_encoding_temperature)
        self.queries = QuerySelection(c.d_model, c.num_labels, c.num_queries, c.decoder_in_channels,
                                      c.num_feature_levels, c.learn_initial_query, c.num_denoising, c.label_noise_ratio,
                                      c.box_noise_scale, c.layer_norm_eps, c.batch_norm_eps)

    def forward(self, images, targets=None):
        maps = self.backbone(images)
        encoded = self.encoder([proj(m) for proj, m in zip(self.encoder_input_proj, maps)])
        return maps, encoded, self.queries(encoded, targets)


def hf_state(model: RTDetrForObjectDetection) -> dict:
    """HF's weights under relformer's names: prefixes stripped, nothing else renamed."""
    out = {}
    for key, value in model.state_dict().items():
        key = key[len("model."):] if key.startswith("model.") else key
        if key.startswith("backbone.model."):
            out["backbone." + key[len("backbone.model."):]] = value
        elif key.startswith(("encoder_input_proj.", "encoder.")):
            out[key] = value
        elif key.startswith(QUERY_KEYS):
            out["queries." + key] = value
    return out


def parts_from(model: RTDetrForObjectDetection) -> Parts:
    parts = Parts(model.config).train(model.training)
    parts.load_state_dict(hf_state(model), strict=True)
    return parts


def run_hf(model: RTDetrForObjectDetection, images, pixel_mask=None, labels=None) -> dict:
    seen = {}
    hooks = [model.model.backbone.register_forward_hook(lambda m, a, out: seen.update(maps=[f for f, _ in out])),
             model.model.decoder.register_forward_pre_hook(lambda m, a, kw: seen.update(kw), with_kwargs=True)]
    try:
        out = model.model(images, pixel_mask=pixel_mask, labels=labels)
    finally:
        for h in hooks:
            h.remove()
    return dict(seen, out=out)


def assert_selection_margin(enc_outputs_class: torch.Tensor, num_queries: int, margin: float = 1e-5) -> None:
    """The test's precondition: the top ``num_queries + 1`` token scores are ``margin`` apart, so rounding
    differences within the tolerance cannot reorder RT-DETR's (discontinuous) top-k selection."""
    top = enc_outputs_class.max(-1).values.topk(num_queries + 1, dim=1).values
    gap = (top[:, :-1] - top[:, 1:]).min().item()
    assert gap > margin, f"near-tie in the test data's top-k scores (gap {gap:.2g}): change the seed or init"


def assert_grads_near(ours: dict, ref: dict) -> int:
    """Parameter gradients (name -> gradient or None) equal; a key projection's bias has an exact zero
    gradient (softmax ignores a shift per query), so there both must be rounding noise. -> gradients compared."""
    checked = 0
    for name, a in ours.items():
        b = ref[name]
        assert (a is None) == (b is None), name
        if a is None:
            continue
        if name.endswith("k_proj.bias"):
            assert a.abs().max() < 1e-2 and b.abs().max() < 1e-2, name
        else:
            assert_near(a, b, msg=name)
        checked += 1
    return checked


def _weights(t: torch.Tensor, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(t.shape, generator=g)


@pytest.mark.slow
@pytest.mark.parametrize("spec", [BASIC, BOTTLENECK], ids=["basic-3lvl", "bottleneck-6lvl-learnq"])
@pytest.mark.parametrize("size", [(64, 64), (64, 96)])
def test_backbone_encoder_and_query_selection_equal_hf_forward_and_backward(spec, size):
    hf = hf_model(spec)
    ours = parts_from(hf)
    torch.manual_seed(1)
    x = torch.randn(2, 3, *size)
    pixel_mask = torch.ones(2, *size, dtype=torch.long)
    pixel_mask[1, :, size[1] // 2:] = 0  # HF's RT-DETR computes the feature masks and reads none of them
    x_hf, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    ref = run_hf(hf, x_hf, pixel_mask)
    maps, encoded, q = ours(x_ours)
    o = ref["out"]
    assert_selection_margin(o.enc_outputs_class, hf.config.num_queries)
    for a, b in zip(maps, ref["maps"], strict=True):
        assert_near(a, b)
    for a, b in zip(encoded, o.encoder_last_hidden_state, strict=True):
        assert_near(a, b)
    assert_near(q.memory, ref["encoder_hidden_states"])
    assert torch.equal(q.spatial_shapes, ref["spatial_shapes"]) and q.spatial_shapes_list == ref["spatial_shapes_list"]
    assert torch.equal(q.level_start_index, ref["level_start_index"])
    assert torch.equal(q.topk_ind, o.enc_outputs_class.max(-1).values.topk(hf.config.num_queries, dim=1).indices)
    pairs = [(q.enc_outputs_class, o.enc_outputs_class),
             (q.enc_topk_logits, o.enc_topk_logits), (q.enc_topk_bboxes, o.enc_topk_bboxes),
             (q.reference_points_unact, o.init_reference_points), (q.target, ref["inputs_embeds"])]
    for a, b in pairs:
        assert_near(a, b)
    assert q.attn_mask is None and ref["encoder_attention_mask"] is None and not q.reference_points_unact.requires_grad

    def loss(maps, encoded, memory, logits, boxes, target):
        terms = [t for t in (*maps, *encoded, memory, logits, boxes, target)]
        return sum((t * _weights(t, i)).sum() for i, t in enumerate(terms))

    loss(maps, encoded, q.memory, q.enc_topk_logits, q.enc_topk_bboxes, q.target).backward()
    loss(ref["maps"], o.encoder_last_hidden_state, ref["encoder_hidden_states"], o.enc_topk_logits,
         o.enc_topk_bboxes, ref["inputs_embeds"]).backward()
    assert_near(x_ours.grad, x_hf.grad)
    names = {k: ("model." + k.replace("backbone.", "backbone.model.", 1).replace("queries.", "", 1))
             for k, _ in ours.named_parameters()}
    hf_grads = {k: p.grad for k, p in hf.named_parameters()}
    checked = assert_grads_near({k: p.grad for k, p in ours.named_parameters()},
                                {k: hf_grads[names[k]] for k, _ in ours.named_parameters()})
    assert checked > 40
    if spec["model"]["learn_initial_query"]:
        assert ours.queries.weight_embedding.weight.grad is not None


@pytest.mark.slow
def test_query_selection_with_denoising_in_training_equals_hf():
    hf = hf_model(BASIC).train()
    ours = parts_from(hf).train()
    torch.manual_seed(1)  # an input without near-ties in the top-k scores (asserted below)
    x = torch.randn(2, 3, 64, 64)
    labels = [{"class_labels": torch.tensor([1, 4]), "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.6, 0.6, 0.5, 0.4]])},
              {"class_labels": torch.tensor([0]), "boxes": torch.tensor([[0.5, 0.5, 0.9, 0.9]])}]
    torch.manual_seed(7)
    ref = run_hf(hf, x, labels=labels)
    assert_selection_margin(ref["out"].enc_outputs_class, hf.config.num_queries)
    torch.manual_seed(7)
    _, _, q = ours(x, labels)
    N = 2 * 2 * (20 // 2)
    assert q.target.shape[1] == N + 12 and q.denoising_meta_values["dn_num_split"] == [N, 12]
    assert_near(q.target, ref["inputs_embeds"])
    assert_near(q.reference_points_unact, ref["reference_points"])
    assert torch.equal(q.attn_mask, ref["encoder_attention_mask"] == 0)
    hf_meta = ref["out"].denoising_meta_values
    assert q.denoising_meta_values["dn_num_group"] == hf_meta["dn_num_group"]
    for a, b in zip(q.denoising_meta_values["dn_positive_idx"], hf_meta["dn_positive_idx"], strict=True):
        assert torch.equal(a, b)
    ours.eval()  # no denoising queries at inference, targets or not
    assert ours(x, labels)[2].attn_mask is None


def _targets(counts, num_classes=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in counts:
        cxcy = torch.rand(n, 2, generator=g) * 0.6 + 0.2
        wh = torch.rand(n, 2, generator=g) * 0.3 + 0.05
        out.append({"class_labels": torch.randint(0, num_classes, (n,), generator=g), "boxes": torch.cat([cxcy, wh], 1)})
    return out


@pytest.mark.parametrize("label_noise, box_noise", [(0.5, 1.0), (0.0, 1.0), (0.5, 0.0), (0.0, 0.0), (1.0, 0.4)])
@pytest.mark.parametrize("counts, num_denoising", [((2, 0, 3), 20), ((5, 1), 3), ((1,), 7)])
def test_denoising_group_equals_hf(label_noise, box_noise, counts, num_denoising):
    torch.manual_seed(3)
    embed_ours = nn.Embedding(6, 8, padding_idx=5)
    embed_hf = copy.deepcopy(embed_ours)
    targets = _targets(counts)
    torch.manual_seed(11)
    ref = get_contrastive_denoising_training_group(targets, 5, 10, embed_hf, num_denoising, label_noise, box_noise)
    torch.manual_seed(11)
    got = contrastive_denoising_group(targets, 5, 10, embed_ours, num_denoising, label_noise, box_noise)
    torch.testing.assert_close(got.query_class, ref[0], atol=0, rtol=0)
    torch.testing.assert_close(got.query_bbox_unact, ref[1], atol=1e-6, rtol=1e-6)
    assert got.attn_mask.dtype == torch.bool and torch.equal(got.attn_mask, ref[2] == 0)
    assert got.meta["dn_num_group"] == ref[3]["dn_num_group"] and got.meta["dn_num_split"] == ref[3]["dn_num_split"]
    for a, b in zip(got.meta["dn_positive_idx"], ref[3]["dn_positive_idx"], strict=True):
        assert torch.equal(a, b)
    w = torch.randn_like(ref[0])
    (got.query_class * w).sum().backward()
    (ref[0] * w).sum().backward()
    torch.testing.assert_close(embed_ours.weight.grad, embed_hf.weight.grad)


def test_denoising_group_draws_as_hf_does():
    """Same seed, then the same generator state after the call: the same number of draws."""
    embed = nn.Embedding(6, 8, padding_idx=5)
    targets = _targets((2, 3))
    torch.manual_seed(5)
    get_contrastive_denoising_training_group(targets, 5, 10, embed, 20, 0.5, 1.0)
    after_hf = torch.rand(3)
    torch.manual_seed(5)
    contrastive_denoising_group(targets, 5, 10, embed, 20, 0.5, 1.0)
    assert torch.equal(torch.rand(3), after_hf)


def test_denoising_group_without_targets_or_queries_is_none_as_hf():
    embed = nn.Embedding(6, 8, padding_idx=5)
    empty = _targets((0, 0))
    assert get_contrastive_denoising_training_group(empty, 5, 10, embed, 20)[0] is None
    assert contrastive_denoising_group(empty, 5, 10, embed, 20) is None
    assert contrastive_denoising_group(_targets((2,)), 5, 10, embed, 0) is None


@pytest.mark.parametrize("bad, match", [
    (lambda t: t[0]["boxes"].__setitem__((0, 1), float("nan")), "NaN"),
    (lambda t: t[0]["boxes"].__setitem__((0, 2), 1.5), r"\[0, 1\]"),
    (lambda t: t[0].__setitem__("class_labels", torch.tensor([0, 5])), r"\[0, 5\)"),
    (lambda t: t[0].__setitem__("boxes", torch.rand(2, 3)), r"\(2, 4\)"),
    (lambda t: t[0].__setitem__("class_labels", torch.tensor([0.0, 1.0])), "integer"),
])
def test_bad_targets_raise_value_errors(bad, match):
    embed = nn.Embedding(6, 8, padding_idx=5)
    targets = _targets((2, 1))
    bad(targets)
    with pytest.raises(ValueError, match=match):
        contrastive_denoising_group(targets, 5, 10, embed, 20)


def test_backbone_alone_loads_hf_resnet_backbone_strictly():
    """``norm="batch"``: the names (with ``num_batches_tracked``) of HF's stand-alone ``RTDetrResNetBackbone``."""
    config = RTDetrResNetConfig(embedding_size=16, hidden_sizes=[32, 48, 64], depths=[2, 1, 1], layer_type="bottleneck",
                                out_indices=[0, 1, 3], downsample_in_bottleneck=True)
    torch.manual_seed(0)
    hf = RTDetrResNetBackbone(copy.deepcopy(config)).eval()
    ours = Backbone(3, 16, [32, 48, 64], [2, 1, 1], "bottleneck", [0, 1, 3], "batch",
                    downsample_in_bottleneck=True).eval()
    ours.load_state_dict(hf.state_dict(), strict=True)
    x = torch.randn(1, 3, 48, 80)
    for a, b in zip(ours(x), hf(x).feature_maps, strict=True):
        assert_near(a, b)
    assert ours.channels == list(hf.channels)


def test_bad_inputs_raise_value_errors():
    with pytest.raises(ValueError, match="stem_channels == widths"):
        Backbone(3, 16, [24, 32], [1, 1], "basic", [1, 2])
    with pytest.raises(ValueError, match="out_indices"):
        Backbone(3, 16, [16, 32], [1, 1], "basic", [3])
    backbone = Backbone(3, 16, [16, 32], [1, 1], "basic", [1, 2])
    with pytest.raises(ValueError, match="channels"):
        backbone(torch.randn(1, 1, 32, 32))
    encoder = RTDetrHybridEncoder(16, 2, (1,), num_heads=2, ffn_dim=32)
    with pytest.raises(ValueError, match="twice"):
        encoder([torch.randn(1, 16, 5, 5), torch.randn(1, 16, 3, 3)])
    with pytest.raises(ValueError, match="2 maps"):
        encoder([torch.randn(1, 16, 4, 4)])
    queries = QuerySelection(16, 3, 30, (16, 16), 2, num_denoising=0)
    with pytest.raises(ValueError, match="fewer than num_queries"):
        queries([torch.randn(1, 16, 4, 4), torch.randn(1, 16, 2, 2)])


@pytest.mark.parametrize("shapes", [((8, 8), (4, 4), (2, 2)), ((2, 120), (1, 60), (1, 1), (1, 1), (1, 1), (1, 1))])
def test_anchors_and_valid_mask_equal_hf(shapes):
    """Wide maps put cell centres within 1e-2 of the border; level 5's size (1.6) is out of range."""
    from transformers.models.rt_detr.modeling_rt_detr import RTDetrModel

    ref_anchors, ref_valid = RTDetrModel._cached_generate_anchors(shapes, 0.05, "cpu", torch.float32)
    anchors, valid = generate_anchors(shapes, 0.05, "cpu", torch.float32)
    assert torch.equal(valid, ref_valid) and valid.dtype == torch.bool
    torch.testing.assert_close(anchors, ref_anchors, atol=1e-6, rtol=1e-6)
    assert (len(shapes) < 6) == bool(valid.all())


def test_rtdetr_variant_and_config_checks():
    model = create_model("rtdetr_micro")
    assert isinstance(model, RTDETR)
    out = model(torch.randn(1, 1, 64, 64))
    assert out.logits.shape == (1, 8, 5) and out.pred_boxes.shape == (1, 8, 4)
    for option, match in [(dict(num_queries=0), "num_queries"), (dict(encoder_act="tanh"), "encoder_act"),
                          (dict(dropout=1.5), "dropout"), (dict(num_levels=2), "num_levels"),
                          (dict(box_noise_scale=-1.0), "box_noise_scale")]:
        with pytest.raises(ValueError, match=match):
            create_model("rtdetr_micro", **option)
    with pytest.raises(ValueError, match="pixel_mask"):
        model(torch.randn(1, 1, 64, 64), pixel_mask=torch.ones(1, 32, 32))
    with pytest.raises(ValueError, match="fewer than num_queries"):
        create_model("rtdetr_micro", num_queries=200)(torch.randn(1, 1, 64, 64))


def test_repvgg_block_fuses_its_branches_in_inference_as_hf_computes_them():
    """In inference the 3x3 + 1x1 branches run as one re-parameterised 3x3 conv with HF's two-branch output
    within 1e-4 (relative); with gradients (eval or training) the two branches give HF's output and gradients."""
    from transformers.models.rt_detr.modeling_rt_detr import RTDetrRepVggBlock

    from relformer.models.detection.rtdetr_encoder import RepVggBlock

    config = RTDetrConfig(encoder_hidden_dim=16, hidden_expansion=1.0, activation_function="silu")
    torch.manual_seed(0)
    hf = RTDetrRepVggBlock(config)
    with torch.no_grad():
        for name, t in hf.named_buffers():
            if name.endswith("running_mean"):
                t.normal_(0, 0.5)
            elif name.endswith("running_var"):
                t.uniform_(0.5, 1.5)
        for name, t in hf.named_parameters():
            if t.dim() == 1:
                t.uniform_(0.5, 1.5) if name.endswith("norm.weight") else t.normal_(0, 0.5)
    ours = RepVggBlock(16, nn.SiLU)
    ours.load_state_dict(hf.state_dict(), strict=True)
    for train in (False, True):
        hf.train(train), ours.train(train)
        assert (ours.fused() is None) == train
        x = torch.randn(2, 16, 9, 7)
        x_hf, x_ours = x.clone().requires_grad_(), x.clone().requires_grad_()
        ref, out = hf(x_hf), ours(x_ours)
        assert_near(out, ref)
        (out * _weights(out, 0)).sum().backward()
        (ref * _weights(ref, 0)).sum().backward()
        assert_near(x_ours.grad, x_hf.grad)
        for (name, p), (_, q) in zip(ours.named_parameters(), hf.named_parameters(), strict=True):
            assert_near(p.grad, q.grad, msg=name)
            p.grad = q.grad = None
    ours.eval(), hf.eval()
    x = torch.randn(2, 16, 9, 7)
    for no_grad in (torch.no_grad, torch.inference_mode):
        with no_grad():
            fused = ours.fused()
            assert_near(torch.nn.functional.conv2d(x, fused[0], fused[1], padding=1), hf.conv1(x) + hf.conv2(x))
            assert_near(ours(x), hf(x))


@pytest.mark.slow
def test_backbone_runs_channels_last_in_inference_with_the_same_values():
    hf = hf_model(BASIC)
    ours = parts_from(hf).backbone.eval()
    x = torch.randn(2, 3, 64, 96)
    ref = run_hf(hf, x)["maps"]
    with torch.no_grad():
        maps = ours(x)
        ours.channels_last = False
        plain = ours(x)
    assert all(m.is_contiguous(memory_format=torch.channels_last) and not m.is_contiguous() for m in maps)
    assert all(m.is_contiguous() for m in plain)
    for a, b, c in zip(maps, plain, ref, strict=True):
        assert_near(a, c)
        assert_near(b, c)
    ours.channels_last = True
    assert all(m.is_contiguous() for m in ours(x))  # gradients recorded: the plain layout
    assert all(m.is_contiguous() for m in ours.train()(x))
