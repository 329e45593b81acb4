"""MultiScaleDeformableAttention against HF transformers' ``RTDetrMultiscaleDeformableAttention`` with the
same weights: forward and backward (inputs and parameters) with 2-d reference points per level and 4-d
reference boxes, a value mask and position embeddings, fp32 within 1e-5; HF's initialisation; bad input."""
from __future__ import annotations

import pytest
import torch
from transformers import RTDetrConfig, RTDetrForObjectDetection, RTDetrResNetConfig
from transformers.models.rt_detr.modeling_rt_detr import RTDetrMultiscaleDeformableAttention

from relformer.attention.deformable import level_start_index_of
from relformer.nn import MultiScaleDeformableAttention

SHAPES = [(6, 5), (3, 3), (2, 1)]


def pair(dim=24, heads=3, points=2, levels=3, seed=0):
    torch.manual_seed(seed)
    hf = RTDetrMultiscaleDeformableAttention(RTDetrConfig(d_model=dim, num_feature_levels=levels), heads, points)
    with torch.no_grad():
        for p in hf.parameters():
            p.copy_(torch.randn_like(p) * 0.3)
    ours = MultiScaleDeformableAttention(dim, heads, levels, points)
    ours.load_state_dict(hf.state_dict(), strict=True)
    return ours, hf


def data(coords, B=2, Q=5, dim=24, levels=3, per_level=True, seed=1):
    g = torch.Generator().manual_seed(seed)
    S = sum(h * w for h, w in SHAPES)
    hidden, pos, memory = torch.randn(B, Q, dim, generator=g), torch.randn(B, Q, dim, generator=g), \
        torch.randn(B, S, dim, generator=g)
    ref = torch.rand(B, Q, levels if per_level else 1, coords, generator=g)
    if coords == 4:
        ref[..., 2:] = ref[..., 2:] * 0.5 + 0.1
    mask = torch.rand(B, S, generator=g) > 0.2
    return hidden, ref, memory, mask, pos


@pytest.mark.parametrize("coords, per_level", [(2, True), (2, False), (4, False)])
def test_matches_hf_forward_and_backward(coords, per_level):
    ours, hf = pair()
    hidden, ref, memory, mask, pos = data(coords, per_level=per_level)
    shapes = torch.tensor(SHAPES)
    leaves = {k: [t.clone().requires_grad_() for t in (hidden, ref, memory, pos)] for k in ("ours", "hf")}
    h, r, m, p = leaves["ours"]
    got = ours(h, r, m, shapes, level_start_index_of(shapes), value_mask=mask, position_embeddings=p)
    h, r, m, p = leaves["hf"]
    want, _ = hf(h, attention_mask=mask, encoder_hidden_states=m, position_embeddings=p, reference_points=r,
                 spatial_shapes=shapes, spatial_shapes_list=SHAPES, level_start_index=level_start_index_of(shapes))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    cot = torch.randn(got.shape, generator=torch.Generator().manual_seed(3))
    (got * cot).sum().backward()
    (want * cot).sum().backward()
    for name, a, b in zip(("hidden_states", "reference_points", "value_states", "position_embeddings"),
                          leaves["ours"], leaves["hf"]):
        assert b.grad.abs().max() > 0, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-5, atol=1e-5, msg=lambda msg: f"{name}: {msg}")
    hf_params = dict(hf.named_parameters())
    for name, param in ours.named_parameters():
        assert hf_params[name].grad.abs().max() > 0, name
        torch.testing.assert_close(param.grad, hf_params[name].grad, rtol=1e-5, atol=1e-5,
                                   msg=lambda msg: f"{name}: {msg}")


def test_value_mask_hides_padding():
    ours, _ = pair()
    hidden, ref, memory, mask, pos = data(2)
    shapes = torch.tensor(SHAPES)
    base = ours(hidden, ref, memory, shapes, value_mask=mask)
    changed = memory.masked_fill(~mask[..., None], 1e3)  # padding rows changed: nothing may move
    torch.testing.assert_close(ours(hidden, ref, changed, shapes, value_mask=mask), base, rtol=0, atol=1e-6)
    assert (ours(hidden, ref, changed, shapes) - base).abs().max() > 1.0


def test_initialisation_is_hfs():
    """The offsets' ring and the uniform weights equal those of HF's initialised model, exactly."""
    backbone = RTDetrResNetConfig(embedding_size=8, hidden_sizes=[8, 8, 8, 8], depths=[1, 1, 1, 1], layer_type="basic",
                                  out_features=["stage2", "stage3", "stage4"])
    config = RTDetrConfig(backbone_config=backbone, d_model=32, encoder_hidden_dim=32, encoder_in_channels=[8, 8, 8],
                          decoder_in_channels=[32, 32, 32], decoder_attention_heads=4, decoder_n_points=3,
                          decoder_layers=1, num_feature_levels=3)
    hf = RTDetrForObjectDetection(config).model.decoder.layers[0].encoder_attn
    ours = MultiScaleDeformableAttention(32, 4, 3, 3)
    for name in ("sampling_offsets.weight", "sampling_offsets.bias", "attention_weights.weight",
                 "attention_weights.bias", "value_proj.bias", "output_proj.bias"):
        torch.testing.assert_close(ours.state_dict()[name], hf.state_dict()[name], rtol=0, atol=0, msg=name)
    assert ours.sampling_offsets.bias.abs().max() > 0
    bound = (6 / 64) ** 0.5  # Xavier-uniform of a 32 x 32 projection
    assert ours.value_proj.weight.abs().max() <= bound and ours.value_proj.weight.std() > bound / 4


@pytest.mark.parametrize("change, match", [
    (dict(hidden_states=torch.randn(2, 5, 23)), "hidden_states"),
    (dict(reference_points=torch.rand(2, 5, 3, 3)), "reference_points"),
    (dict(reference_points=torch.rand(2, 5, 2, 2)), "reference_points"),
    (dict(value_states=torch.randn(1, 41, 24)), "value_states"),
    (dict(value_mask=torch.ones(2, 41)), "value_mask"),
    (dict(position_embeddings=torch.randn(2, 4, 24)), "position_embeddings"),
    (dict(spatial_shapes=torch.tensor([[6, 5], [3, 3]])), "spatial_shapes"),
    (dict(spatial_shapes=[(6, 5), (3, 3)]), "spatial_shapes"),
    (dict(spatial_shapes=torch.tensor([[6, 5], [3, 3], [2, 2]])), "spatial_shapes"),
])
def test_bad_input_names_the_argument(change, match):
    ours, _ = pair()
    hidden, ref, memory, mask, pos = data(2)
    args = dict(hidden_states=hidden, reference_points=ref, value_states=memory, spatial_shapes=torch.tensor(SHAPES),
                value_mask=mask, position_embeddings=pos)
    args.update(change)
    with pytest.raises(ValueError, match=match):
        ours(**args)


@pytest.mark.parametrize("kwargs, match", [(dict(dim=30, num_heads=4), "divisible"), (dict(dim=32, num_points=0), "num_points")])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MultiScaleDeformableAttention(**kwargs)


@pytest.mark.parametrize("coords", [2, 4])
def test_spatial_shapes_as_a_list_of_pairs(coords):
    ours, _ = pair()
    hidden, ref, memory, mask, pos = data(coords, per_level=coords == 2)
    torch.testing.assert_close(ours(hidden, ref, memory, SHAPES), ours(hidden, ref, memory, torch.tensor(SHAPES)),
                               rtol=0, atol=0)
