"""The RT-DETR decoder against HF transformers' ``RTDetrDecoder`` (taken from a random-weight
``RTDetrForObjectDetection``, whose detection head sets ``decoder.class_embed`` / ``bbox_embed``):
HF's state dict loads strictly, and on the same queries, unsigmoided reference boxes, encoder memory
and level layout every layer's hidden states, logits and refined boxes agree within 1e-4 (fp32), with
and without HF's contrastive-denoising self-attention mask (given to relformer as a GraphAdjacency
Relation), and so do the gradients of the inputs and of every parameter."""
from __future__ import annotations

import copy

import pytest
import torch
from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig
from transformers.models.rt_detr.modeling_rt_detr import get_contrastive_denoising_training_group

from relformer.attention.deformable import level_start_index_of
from relformer.models.detection.rtdetr_decoder import RTDetrDecoder, inverse_sigmoid
from relformer.relations import GraphAdjacency

ATOL = 1e-4
CONFIGS = {  # name: (decoder config, spatial shapes of the memory)
    "3-levels-4-points-2-layers": (dict(d_model=32, decoder_attention_heads=4, decoder_layers=2, num_feature_levels=3,
                                        decoder_n_points=4, decoder_ffn_dim=64, num_labels=5, num_queries=10),
                                   [(8, 8), (4, 4), (2, 2)]),
    "4-levels-2-points-3-layers": (dict(d_model=24, decoder_attention_heads=3, decoder_layers=3, num_feature_levels=4,
                                        decoder_n_points=2, decoder_ffn_dim=40, num_labels=3, num_queries=7),
                                   [(6, 9), (3, 5), (2, 3), (1, 2)]),
}


def hf_decoder(name: str, seed: int = 0):
    """HF's decoder with the detection head's per-layer heads, every parameter moved off its
    (partly zero) initialisation so that no gradient is trivially zero."""
    c, _ = CONFIGS[name]
    torch.manual_seed(seed)
    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1],
                                  layer_type="basic", out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(backbone_config=backbone, encoder_hidden_dim=c["d_model"], encoder_in_channels=[8, 8, 8],
                          encoder_ffn_dim=32, encoder_attention_heads=c["decoder_attention_heads"],
                          decoder_in_channels=[c["d_model"]] * 3, **c)
    model = RTDetrForObjectDetection(copy.deepcopy(config)).eval()
    model.config._attn_implementation = "eager"
    decoder = model.model.decoder
    assert decoder.class_embed is model.model.decoder.class_embed and len(decoder.bbox_embed) == c["decoder_layers"]
    with torch.no_grad():
        for p in decoder.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return decoder, config


def ours_from(decoder, config) -> RTDetrDecoder:
    ours = RTDetrDecoder(config.d_model, config.decoder_layers, config.decoder_attention_heads,
                         config.num_feature_levels, config.decoder_n_points, config.decoder_ffn_dim,
                         config.num_labels, layer_norm_eps=config.layer_norm_eps, ).eval()
    ours.load_state_dict(decoder.state_dict(), strict=True)
    return ours


def inputs(name: str, config, denoising: bool, B: int = 2, seed: int = 1):
    """Queries, unsigmoided reference boxes, memory, spatial shapes; with ``denoising`` HF's own
    contrastive-denoising queries are put in front, with HF's float ``-inf`` mask."""
    _, shapes = CONFIGS[name]
    g = torch.Generator().manual_seed(seed)
    Q, C = config.num_queries, config.d_model
    embeds = torch.randn(B, Q, C, generator=g)
    ref = torch.randn(B, Q, 4, generator=g)
    memory = torch.randn(B, sum(h * w for h, w in shapes), C, generator=g)
    mask = None
    if denoising:
        torch.manual_seed(seed)
        targets = [{"class_labels": torch.tensor([1, 0, 2]), "boxes": torch.rand(3, 4, generator=g) * 0.5 + 0.25},
                   {"class_labels": torch.tensor([2]), "boxes": torch.tensor([[0.5, 0.5, 0.2, 0.3]])}]
        dn_embed = torch.nn.Embedding(config.num_labels + 1, C, padding_idx=config.num_labels)
        dn_class, dn_ref, mask, _ = get_contrastive_denoising_training_group(
            targets, config.num_labels, Q, dn_embed, num_denoising_queries=12, label_noise_ratio=0.5,
            box_noise_scale=1.0)
        embeds, ref = torch.cat([dn_class.detach(), embeds], 1), torch.cat([dn_ref, ref], 1)
        assert mask.dtype == torch.float32 and bool((mask == float("-inf")).any())
    return embeds, ref, memory, torch.tensor(shapes), mask


def run_hf(decoder, embeds, ref, memory, shapes, mask):
    out = decoder(inputs_embeds=embeds, encoder_hidden_states=memory, encoder_attention_mask=mask,
                  reference_points=ref, spatial_shapes=shapes, spatial_shapes_list=[tuple(s) for s in shapes.tolist()],
                  level_start_index=level_start_index_of(shapes))
    return out.intermediate_hidden_states, out.intermediate_logits, out.intermediate_reference_points


def run_ours(ours, embeds, ref, memory, shapes, mask):
    relation = None
    if mask is not None:  # HF's additive (Q, Q) mask -> the pairs that may attend, as a Relation
        relation = GraphAdjacency((mask == 0).expand(embeds.shape[0], -1, -1), self_loops=False)
    out = ours(embeds, ref, memory, shapes, level_start_index_of(shapes), attention_mask=relation)
    assert torch.equal(out.last_hidden_state, out.hidden_states[:, -1])
    return out.hidden_states, out.logits, out.boxes


@pytest.mark.parametrize("denoising", [False, True], ids=["plain", "denoising-mask"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_decoder_matches_hf_forward_and_backward(name, denoising):
    decoder, config = hf_decoder(name)
    ours = ours_from(decoder, config)
    embeds, ref, memory, shapes, mask = inputs(name, config, denoising)
    leaves = {"hf": [t.clone().requires_grad_() for t in (embeds, ref, memory)],
              "ours": [t.clone().requires_grad_() for t in (embeds, ref, memory)]}
    got = run_ours(ours, *leaves["ours"], shapes, mask)
    want = run_hf(decoder, *leaves["hf"], shapes, mask)
    L = config.decoder_layers
    for what, a, b in zip(("hidden states", "logits", "boxes"), got, want):
        assert a.shape == b.shape and a.shape[1] == L, what
        torch.testing.assert_close(a, b, rtol=0, atol=ATOL, msg=lambda m: f"{what}: {m}")
    # the refinement is not the identity, and the denoising mask changes the matching queries' outputs
    assert (got[2][:, 0] - ref.sigmoid()).abs().max() > 1e-3
    g = torch.Generator().manual_seed(7)
    cotangents = [torch.randn(t.shape, generator=g) for t in got]
    loss = {k: sum((t * c).sum() for t, c in zip(outs, cotangents)) for k, outs in (("ours", got), ("hf", want))}
    for side, module in (("ours", ours), ("hf", decoder)):
        module.zero_grad()
        loss[side].backward()
    for what, a, b in zip(("d inputs_embeds", "d reference_points", "d encoder_hidden_states"),
                          leaves["ours"], leaves["hf"]):
        assert b.grad.abs().max() > 0, what
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=ATOL, msg=lambda m: f"{what}: {m}")
    hf_params = dict(decoder.named_parameters())
    for key, p in ours.named_parameters():
        assert hf_params[key].grad.abs().max() > 0, key
        torch.testing.assert_close(p.grad, hf_params[key].grad, rtol=1e-4, atol=ATOL, msg=lambda m: f"{key}: {m}")


def test_denoising_mask_keeps_matching_queries_apart():
    """With the mask, the matching queries' outputs do not depend on the denoising queries (HF's rule:
    matching queries cannot see the reconstruction groups)."""
    decoder, config = hf_decoder("3-levels-4-points-2-layers")
    ours = ours_from(decoder, config)
    embeds, ref, memory, shapes, mask = inputs("3-levels-4-points-2-layers", config, True)
    num_dn = embeds.shape[1] - config.num_queries
    first = run_ours(ours, embeds, ref, memory, shapes, mask)
    embeds2 = embeds.clone()
    embeds2[:, :num_dn] += 1.0
    second = run_ours(ours, embeds2, ref, memory, shapes, mask)
    for a, b in zip(first, second):
        torch.testing.assert_close(a[:, :, num_dn:], b[:, :, num_dn:], rtol=0, atol=1e-6)
        assert (a[:, :, :num_dn] - b[:, :, :num_dn]).abs().max() > 1e-3


def test_inverse_sigmoid_inverts_sigmoid_and_stays_finite_at_the_ends():
    x = torch.tensor([-4.0, -0.3, 0.0, 2.5])
    torch.testing.assert_close(inverse_sigmoid(x.sigmoid()), x, rtol=1e-4, atol=1e-4)
    assert torch.isfinite(inverse_sigmoid(torch.tensor([0.0, 1.0, -0.5, 1.5]))).all()


def test_initialisation_is_rtdetrs():
    """Fresh heads: the last box layer is zero (the first refinement returns the reference boxes) and the
    class bias is the prior-probability bias."""
    ours = RTDetrDecoder(dim=16, num_layers=2, num_heads=2, num_levels=2, num_points=2, ffn_dim=32, num_classes=4).eval()
    ref = torch.randn(1, 5, 4)
    out = ours(torch.randn(1, 5, 16), ref, torch.randn(1, 20, 16), torch.tensor([[4, 4], [2, 2]]))
    torch.testing.assert_close(out.boxes[:, 0], ref.sigmoid().clamp(1e-5, 1 - 1e-5), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours.class_embed[0].bias, torch.full((4,), -torch.log(torch.tensor(4.0)).item()))


@pytest.mark.parametrize("call, match", [
    (lambda m: m(torch.randn(1, 5, 8), torch.randn(1, 5, 4), torch.randn(1, 20, 16), torch.tensor([[4, 4], [2, 2]])),
     "inputs_embeds"),
    (lambda m: m(torch.randn(1, 5, 16), torch.randn(1, 5, 2), torch.randn(1, 20, 16), torch.tensor([[4, 4], [2, 2]])),
     "reference_points"),
    (lambda m: m(torch.randn(1, 5, 16), torch.randn(1, 5, 4), torch.randn(1, 21, 16), torch.tensor([[4, 4], [2, 2]])),
     "spatial_shapes"),
    (lambda m: m(torch.randn(1, 5, 16), torch.randn(1, 5, 4), torch.randn(1, 20, 16), torch.tensor([[4, 4], [2, 2]]),
                 attention_mask=torch.zeros(5, 5)), "attention_mask"),
    (lambda m: m(torch.randn(1, 5, 16), torch.randn(1, 5, 4), torch.randn(1, 20, 16), torch.tensor([[4, 4], [2, 2]]),
                 attention_mask=GraphAdjacency(torch.ones(1, 4, 4, dtype=torch.bool))), "adjacency"),
])
def test_bad_input_names_the_argument(call, match):
    ours = RTDetrDecoder(dim=16, num_layers=1, num_heads=2, num_levels=2, num_points=2, ffn_dim=32, num_classes=4)
    with pytest.raises(ValueError, match=match):
        call(ours)
