"""ViT and Swin: registry-wide checks (timm's habit), backend equivalence of the relations the
models build, padding, resizing and input validation. HF equivalence is in tests/interop."""
from __future__ import annotations

import pytest
import torch

from relformer.models import Swin, SwinConfig, ViT, ViTConfig, create_model, list_models, model_config
from relformer.models.vision import SwinStage, window_partition
from tests.equivalence import assert_trains_and_round_trips

SMALL = {  # registered variants shrunk in depth so every one runs in CI
    "vit_tiny": dict(depth=2), "vit_small": dict(depth=1), "vit_micro": dict(depth=2),
    "swin_tiny": dict(depths=(1, 1, 2, 1)), "swin_micro": dict(depths=(2, 2)),
}


def _pixels(config, batch=2, seed=0):
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    return torch.randn(batch, config.in_chans, size, size, generator=torch.Generator().manual_seed(seed))


def test_registry_lists_the_variants():
    assert {"vit_tiny", "vit_small", "swin_tiny", "vit_micro", "swin_micro"} <= set(list_models())
    assert list_models("swin_*") == [n for n in list_models() if n.startswith("swin_")]
    vision = {n for n in list_models() if isinstance(model_config(n), (ViTConfig, SwinConfig))}
    assert set(SMALL) == vision, "every registered vision variant must be covered by the registry-wide test"


def test_unknown_names_and_options_are_rejected():
    with pytest.raises(ValueError, match="vit_tiny"):
        create_model("vit_tyni")
    with pytest.raises(ValueError, match="'dimm'.*'dim'"):
        create_model("vit_micro", dimm=64)
    with pytest.raises(ValueError, match="num_heads"):
        create_model("vit_micro", dim=100, num_heads=3)
    with pytest.raises(ValueError, match="num_heads"):
        create_model("swin_micro", depths=(2, 2, 2))


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.slow
def test_every_variant_runs_trains_and_round_trips(name, tmp_path):
    config = model_config(name, **SMALL[name])
    x = _pixels(config)

    def run(model):
        logits = model(x).logits
        assert logits.shape == (2, config.num_classes)
        return logits.square().mean(), logits

    assert_trains_and_round_trips(config, run, tmp_path)


def _backends_agree(make, x, backends=("sdpa", "chunked")):
    """Same weights on each backend: logits within 1e-5 and input gradients within 1e-5 of eager."""
    ref = make("eager")
    results = {}
    for backend in ("eager", *backends):
        model = make(backend)
        model.load_state_dict(ref.state_dict())
        xi = x.clone().requires_grad_(True)
        logits = model(xi).logits
        logits.square().sum().backward()
        results[backend] = (logits.detach(), xi.grad)
    for backend in backends:
        torch.testing.assert_close(results[backend][0], results["eager"][0], rtol=0, atol=1e-5)
        torch.testing.assert_close(results[backend][1], results["eager"][1], rtol=1e-5, atol=1e-5)


def test_swin_shifted_windows_agree_across_backends():
    # 16x16 grid, windows of 4: four shifted/unshifted windows per row, padding-free
    make = lambda b: create_model("swin_micro", image_size=32, in_chans=1, embed_dim=16, depths=(2, 2),
                                  num_heads=(2, 2), window_size=4, drop_path=0.0, backend=b)
    _backends_agree(make, _pixels(make("eager").config))


@pytest.mark.parametrize("options", [dict(rel_pos_bias=True), dict(rel_pos_bias=True, pool="mean"),
                                     dict(pos_embed="rope")])
def test_vit_relation_variants_agree_across_backends(options):
    make = lambda b: create_model("vit_micro", dim=32, depth=2, num_heads=2, backend=b, **options)
    _backends_agree(make, _pixels(make("eager").config))


@pytest.mark.parametrize("patch, size, chans", [(2, 28, 1), (4, 28, 1), (16, 64, 3)])
def test_vit_conv_stem_gives_the_patch_grid(patch, size, chans):
    patchify = create_model("vit_micro", image_size=size, patch_size=patch, in_chans=chans, dim=32, depth=1,
                            num_heads=2)
    conv = create_model("vit_micro", image_size=size, patch_size=patch, in_chans=chans, dim=32, depth=1,
                        num_heads=2, stem="conv")
    x = torch.randn(2, chans, size, size)
    assert conv.patch_embed(x).shape == patchify.patch_embed(x).shape == (2, 32, size // patch, size // patch)
    strides = [m.stride for m in conv.patch_embed if isinstance(m, torch.nn.Conv2d)]
    assert strides == [(2, 2)] * (patch.bit_length() - 1) + [(1, 1)]
    conv.eval()  # BatchNorm running statistics: eval is deterministic per image
    with torch.no_grad():
        torch.testing.assert_close(conv(x[:1]).logits, conv(x).logits[:1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("options, match", [(dict(stem="convs"), "stem"), (dict(stem="conv", patch_size=7), "power"),
                                            (dict(stem="conv", patch_size=(4, 2)), "square"),
                                            (dict(stem="conv", patch_size=8, dim=34, num_heads=2), "divisible")])
def test_vit_conv_stem_rejects_what_it_cannot_build(options, match):
    with pytest.raises(ValueError, match=match):
        create_model("vit_micro", image_size=56, **options)


def test_vit_relative_bias_leaves_the_class_token_unbiased():
    model = create_model("vit_micro", dim=32, depth=1, num_heads=2, rel_pos_bias=True)
    rel = model.rel_bias[0]
    bias = rel.dense_bias(1, 2, 50, 50)
    assert torch.all(bias[..., 0, :] == 0) and torch.all(bias[..., :, 0] == 0)
    assert bias[..., 1:, 1:].abs().sum() > 0


def test_window_partition_round_trip():
    x = torch.randn(2, 8, 12, 3)
    w = window_partition(x, 4)
    assert w.shape == (2 * 2 * 3, 16, 3)
    torch.testing.assert_close(w[1].view(4, 4, 3), x[0, :4, 4:8])  # second window of the first row
    back = w.view(2, 2, 3, 4, 4, 3).permute(0, 1, 3, 2, 4, 5).reshape(2, 8, 12, 3)  # every pixel once
    torch.testing.assert_close(back, x, rtol=0, atol=0)


@pytest.mark.parametrize("grid", [(8, 8), (8, 12), (4, 4)])
def test_swin_stage_window_order_stream_equals_block_by_block(grid):
    """A stage keeps its residual stream in window order (one gather between blocks); the result
    and the gradients equal running each block on the grid-ordered map (two gathers per block).
    (4, 4) is one window: no shift, no gather at all."""
    torch.manual_seed(0)
    stage = SwinStage(16, 4, 2, 4, downsample=False, drop_path=[0.0] * 4)
    x = torch.randn(2, grid[0] * grid[1], 16, requires_grad=True)
    ref = x
    for block in stage.blocks:
        ref = block(ref, grid)
    got, _ = stage(x, grid)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-5)
    cot = torch.randn_like(got)
    grads = [torch.autograd.grad((out * cot).sum(), [x, *stage.parameters()]) for out in (got, ref)]
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_swin_pads_maps_that_are_not_a_multiple_of_the_window():
    model = create_model("swin_micro", image_size=36, in_chans=1, embed_dim=16, depths=(2, 2), num_heads=(2, 2),
                         window_size=4, drop_path=0.0).eval()
    x = torch.randn(2, 1, 36, 36)  # 18x18 grid: pads to 20x20, then 9x9 -> 12x12
    with torch.no_grad():
        out = model(x, output_hidden_states=True)
    assert [h.shape[1] for h in out.hidden_states] == [18 * 18, 9 * 9, 9 * 9]
    assert torch.isfinite(out.logits).all()  # equality with HF's padding: tests/interop


def test_swin_loads_a_checkpoint_made_for_another_window():
    small = create_model("swin_micro", embed_dim=16, num_heads=(2, 2), window_size=4)
    large = create_model("swin_micro", embed_dim=16, num_heads=(2, 2), window_size=7)
    large.load_state_dict(small.state_dict())  # 7x7 tables -> 13x13 rows, resized on load
    table = large.stages[0].blocks[0].rel_bias.relative_position_bias_table
    assert table.shape == (13 * 13, 2)
    with torch.no_grad():
        assert torch.isfinite(large(torch.randn(1, 1, 28, 28)).logits).all()


def test_vit_interpolates_positions_for_other_image_sizes():
    model = create_model("vit_micro", dim=32, depth=1, num_heads=2).eval()
    with torch.no_grad():
        same = model._position_embeddings((7, 7))
        assert same is model.pos_embed
        out = model(torch.randn(2, 1, 36, 36))  # 9x9 patches
    assert out.last_hidden_state.shape == (2, 1 + 81, 32)


def test_attention_maps():
    vit = create_model("vit_micro", dim=32, depth=2, num_heads=2).eval()
    x = torch.randn(3, 1, 28, 28)
    maps = vit.attention_maps(x)
    assert maps.shape == (3, 7, 7) and torch.all(maps >= 0) and torch.all(maps.sum((1, 2)) <= 1 + 1e-5)
    swin = create_model("swin_micro", embed_dim=16, num_heads=(2, 2)).eval()
    maps = swin.attention_maps(x)
    assert maps.shape == (3, 7, 7) and torch.allclose(maps.sum((1, 2)), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("bad, match", [
    (torch.randn(1, 28, 28), r"\(B, C, H, W\)"),
    (torch.randn(1, 3, 28, 28), "channels"),
    (torch.zeros(1, 1, 28, 28, dtype=torch.uint8), "floating point"),
    (torch.randn(0, 1, 28, 28), "empty"),
])
def test_bad_pixel_values_are_rejected(bad, match):
    for model in (create_model("vit_micro", depth=1), create_model("swin_micro", depths=(2, 2))):
        with pytest.raises(ValueError, match=match):
            model(bad)


def test_model_classes_are_the_builders():
    assert isinstance(create_model("vit_micro", depth=1), ViT)
    assert isinstance(create_model("swin_micro", depths=(2, 2)), Swin)


@pytest.mark.parametrize("name", ["swin_micro", "vit_micro"])
@pytest.mark.slow
def test_inference_mode_first_then_training(name):
    """Layouts cached during a first call under inference_mode must still work with autograd."""
    model = create_model(name).eval()
    x = torch.randn(2, 1, 28, 28)
    with torch.inference_mode():
        expected = model(x).logits
    model.train()
    out = model(x).logits
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    assert sum(p.grad.abs().sum() for p in model.parameters()) > 0
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x).logits, expected, rtol=0, atol=1e-5)


# ---- bad options and inputs: the reproductions of issue 19 (item 11) ---------------------------
@pytest.mark.parametrize("name", ["vit_micro", "swin_micro"])
@pytest.mark.parametrize("option, value, match", [
    ("norm_eps", -1.0, "norm_eps"), ("norm_eps", float("nan"), "norm_eps"), ("num_classes", -3, "num_classes"),
    ("drop_path", -0.1, r"drop_path must be a number in \[0, 1\), got -0\.1$"), ("dropout", 1.0, "dropout"),
])
def test_bad_options_fail_when_the_config_is_made(name, option, value, match):
    with pytest.raises(ValueError, match=match):
        create_model(name, **{option: value})


def test_model_names_must_be_strings():
    with pytest.raises(TypeError, match="name must be a str, got int"):
        create_model(123)
    with pytest.raises(TypeError, match="name must be a str"):
        model_config(None)


def test_vit_rejects_images_smaller_than_a_patch():
    model = create_model("vit_micro", depth=1)
    with pytest.raises(ValueError, match=r"pixel_values is \(3, 2\) pixels, smaller than one \(4, 4\) patch"):
        model(torch.randn(1, 1, 3, 2))
    with pytest.raises(ValueError, match="pixel_values has 3 channels, the model expects 1"):
        model(torch.randn(1, 3, 28, 28))


@pytest.mark.parametrize("name", ["vit_micro", "swin_micro"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_other_float_precisions_are_cast_to_the_model_dtype_as_hf_vit(name, dtype):
    """HF ViTModel casts pixel_values to its weights' dtype; so do ViT and Swin (fp32 model here)."""
    model = create_model(name, depth=1) if name == "vit_micro" else create_model(name, depths=(2, 2))
    x = torch.randn(2, 1, 28, 28).to(dtype)
    with torch.no_grad():
        out = model.eval()(x).logits
        ref = model(x.float()).logits
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
