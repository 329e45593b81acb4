"""``from_hf``: relformer ViT / Swin converted from HF ``transformers`` models (random weights,
built from configs) give the same outputs: ``last_hidden_state``, ``pooler_output``, ``logits``
and every hidden state within 1e-4 (fp32), and the same input gradients within 1e-4."""
from __future__ import annotations

import copy

import pytest
import torch
import transformers

from relformer.interop.transformers import from_hf
from relformer.models import Swin, ViT

ATOL = 1e-4
VIT_CONFIGS = [
    dict(image_size=28, patch_size=4, num_channels=1, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
         intermediate_size=64),
    dict(image_size=32, patch_size=8, num_channels=3, hidden_size=48, num_hidden_layers=3, num_attention_heads=3,
         intermediate_size=96, qkv_bias=False),
    dict(image_size=48, patch_size=16, num_channels=3, hidden_size=64, num_hidden_layers=1, num_attention_heads=4,
         intermediate_size=128, layer_norm_eps=1e-6),
]
SWIN_CONFIGS = [
    dict(image_size=28, patch_size=2, num_channels=1, embed_dim=16, depths=(2, 2), num_heads=(2, 4), window_size=7),
    dict(image_size=64, patch_size=4, embed_dim=16, depths=(2, 2, 2), num_heads=(2, 2, 4), window_size=4),
    # 60 / 4 = 15 patches: maps of 15 and 8 are zero-padded to windows of 4 (odd map merged with padding)
    dict(image_size=60, patch_size=4, embed_dim=16, depths=(2, 2), num_heads=(2, 2), window_size=4),
    dict(image_size=32, patch_size=2, embed_dim=24, depths=(1, 3), num_heads=(3, 3), window_size=8,
         use_absolute_embeddings=True, mlp_ratio=2.0),
]


def _hf(cls, config, attn_implementation):
    model = cls._from_config(copy.deepcopy(config), attn_implementation=attn_implementation)
    with torch.no_grad():  # HF initialises tables and position embeddings to zero: make them matter
        for name, p in model.named_parameters():
            if "relative_position_bias_table" in name or "position_embeddings" in name or "cls_token" in name:
                p.normal_(0, 0.5)
    return model.eval()


def _compare(hf, pixel_values):
    ours = from_hf(hf)
    assert not ours.training
    x_hf, x_ours = (pixel_values.clone().requires_grad_(True) for _ in range(2))
    a, b = hf(x_hf, output_hidden_states=True), ours(x_ours, output_hidden_states=True)
    for field in ("last_hidden_state", "pooler_output", "logits"):
        expected = getattr(a, field, None)
        if expected is not None:
            torch.testing.assert_close(getattr(b, field), expected, rtol=0, atol=ATOL, msg=field)
    assert len(b.hidden_states) == len(a.hidden_states)
    for i, (got, expected) in enumerate(zip(b.hidden_states, a.hidden_states)):
        torch.testing.assert_close(got, expected, rtol=0, atol=ATOL, msg=f"hidden_states[{i}]")
    with torch.inference_mode():  # the in-place inference path too
        c = ours(pixel_values)
    for field in ("last_hidden_state", "pooler_output", "logits"):
        expected = getattr(a, field, None)
        if expected is not None:
            torch.testing.assert_close(getattr(c, field), expected.detach(), rtol=0, atol=ATOL, msg=field)
    target = a.logits if getattr(a, "logits", None) is not None else a.last_hidden_state
    mine = b.logits if getattr(a, "logits", None) is not None else b.last_hidden_state
    target.square().sum().backward()
    mine.square().sum().backward()
    torch.testing.assert_close(x_ours.grad, x_hf.grad, rtol=0, atol=ATOL * max(1.0, x_hf.grad.abs().max().item()))
    return ours


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kwargs", VIT_CONFIGS)
def test_vit_equals_hf(kwargs, attn):
    config = transformers.ViTConfig(num_labels=7, **kwargs)
    x = torch.randn(2, config.num_channels, config.image_size, config.image_size)
    ours = _compare(_hf(transformers.ViTModel, config, attn), x)
    assert isinstance(ours, ViT) and ours.head is None and ours.pooler is not None
    ours = _compare(_hf(transformers.ViTForImageClassification, config, attn), x)
    assert ours.head.out_features == 7 and ours.pooler is None


def test_vit_without_pooler():
    config = transformers.ViTConfig(**VIT_CONFIGS[0])
    hf = transformers.ViTModel(copy.deepcopy(config), add_pooling_layer=False).eval()
    ours = _compare(hf, torch.randn(2, 1, 28, 28))
    assert ours.pooler is None


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
@pytest.mark.parametrize("kwargs", SWIN_CONFIGS)
@pytest.mark.slow
def test_swin_equals_hf(kwargs, attn):
    config = transformers.SwinConfig(num_labels=5, **kwargs)
    x = torch.randn(2, config.num_channels, config.image_size, config.image_size)
    ours = _compare(_hf(transformers.SwinModel, config, attn), x)
    assert isinstance(ours, Swin) and ours.head is None
    ours = _compare(_hf(transformers.SwinForImageClassification, config, attn), x)
    assert ours.head.out_features == 5


def test_swin_input_not_a_multiple_of_the_patch():
    config = transformers.SwinConfig(**SWIN_CONFIGS[1])
    _compare(_hf(transformers.SwinModel, config, "eager"), torch.randn(1, 3, 62, 57))


def test_converted_model_keeps_training_mode_and_weights_are_copies():
    hf = transformers.ViTModel(transformers.ViTConfig(**VIT_CONFIGS[0])).train()
    ours = from_hf(hf)
    assert ours.training
    with torch.no_grad():
        ours.encoder.layers[0].mlp.fc1.weight.zero_()
    assert hf.layers[0].mlp.fc1.weight.abs().sum() > 0


def test_unsupported_models_and_options_fail_clearly():
    with pytest.raises(TypeError, match="ViTModel"):
        from_hf(torch.nn.Linear(2, 2))
    hf = transformers.ViTModel(transformers.ViTConfig(hidden_act="relu", **VIT_CONFIGS[0]))
    with pytest.raises(NotImplementedError, match="hidden_act"):
        from_hf(hf)
