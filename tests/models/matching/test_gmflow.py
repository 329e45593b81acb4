"""GMFlow (relformer.models.matching.gmflow): every attention and matching layer against a plain-torch
float64 reference written here (explicit window partition, Swin's region mask built from slices,
softmax), forward and backward; properties that recover a known translation; stereo matching
restricted to rows; the loss and metrics against their formulas; bad input; the registry round trip."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from relformer.models import create_model, from_pretrained, list_models, model_config, save_pretrained
from relformer.models.matching.gmflow import (GMFlow, GMFlowConfig, bad_pixel_rate, disparity_to_flow,
                                              end_point_error, flow_loss)
from relformer.models.matching.gmflow_parts import (ConvexUpsampler, FeatureTransformer, FlowPropagation,
                                                    GMFlowLayer, WindowLayout, global_matching, local_matching,
                                                    row_matching, warp)

F64 = dict(atol=1e-10, rtol=1e-9)  # float64 reference vs attend: only summation order differs


def _randn(*shape, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).requires_grad_()


# ---------------------------------------------------------------------------------------------
# plain-torch references
# ---------------------------------------------------------------------------------------------
def _swin_regions(grid, window, shift):
    """Swin's ``img_mask``: region labels of the rolled map, built from its three slices per axis."""
    (h, w), (wh, ww), (sh, sw) = grid, window, shift
    labels, n = torch.zeros(h, w, dtype=torch.long), 0
    for rows in (slice(0, h - wh), slice(h - wh, h - sh), slice(h - sh, h)):
        for cols in (slice(0, w - ww), slice(w - ww, w - sw), slice(w - sw, w)):
            labels[rows, cols] = n
            n += 1
    return labels


def _windows(t, grid, window):
    """``(B, h, w, C)`` -> list over (image, window row, window col) of ``(wh*ww, C)``, by slicing."""
    (h, w), (wh, ww) = grid, window
    return [t[b, i:i + wh, j:j + ww].reshape(wh * ww, -1) for b in range(t.shape[0])
            for i in range(0, h, wh) for j in range(0, w, ww)]


def _reference_layer(layer, x, grid, window, shift, y=None):
    """GMFlow's layer written out: roll, window slices, per-head softmax(q k^T / sqrt(D) + mask) v,
    windows put back, roll back, projection, LayerNorm, feed-forward on [x, message], residual."""
    B, L, C = x.shape
    (h, w), (wh, ww), (sh, sw) = grid, window, shift
    attn, H = layer.attn, layer.attn.num_heads
    if layer.cross:
        wq, (wk, wv), context = attn.q.weight, attn.kv.weight.split(C), y
    else:
        (wq, wk, wv), context = attn.qkv.weight.split(C), x
    rolled = [torch.roll(t.view(B, h, w, C), (-sh, -sw), (1, 2)) for t in (x, context)]
    labels = _swin_regions(grid, window, shift) if sh or sw else torch.zeros(h, w)  # unshifted: one region
    labels = _windows(labels.view(1, h, w, 1), grid, window)
    out = torch.zeros(B, h, w, C, dtype=x.dtype)
    per_image = (h // wh) * (w // ww)
    for n, (xq, xk) in enumerate(zip(_windows(rolled[0], grid, window), _windows(rolled[1], grid, window))):
        q, k, v = (xq @ wq.T).view(-1, H, C // H), (xk @ wk.T).view(-1, H, C // H), (xk @ wv.T).view(-1, H, C // H)
        scores = torch.einsum("ihd,jhd->hij", q, k) / math.sqrt(C // H)
        lab = labels[n % per_image].view(-1)
        scores = scores.masked_fill(lab[:, None] != lab[None, :], float("-inf"))
        message = torch.einsum("hij,jhd->ihd", scores.softmax(-1), v).reshape(-1, C) @ attn.proj.weight.T
        b, m = divmod(n, per_image)
        i, j = divmod(m, w // ww)
        out[b, i * wh:(i + 1) * wh, j * ww:(j + 1) * ww] = message.view(wh, ww, C)
    message = torch.roll(out, (sh, sw), (1, 2)).view(B, L, C)
    message = F.layer_norm(message, (C,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
    if layer.mlp is not None:
        hidden = F.gelu(torch.cat([x, message], -1) @ layer.mlp.fc1.weight.T) @ layer.mlp.fc2.weight.T
        message = F.layer_norm(hidden, (C,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
    return x + message


def _grads(out, leaves, seed=5):
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed), dtype=out.dtype)
    return torch.autograd.grad((out * cot).sum(), leaves)


def _assert_same(got, expected, leaves):
    torch.testing.assert_close(got, expected, **F64)
    for a, b in zip(_grads(got, leaves), _grads(expected, leaves)):
        torch.testing.assert_close(a, b, **F64)


# ---------------------------------------------------------------------------------------------
# the transformer layers
# ---------------------------------------------------------------------------------------------
GRID, WINDOW = (8, 12), (4, 6)  # a non-square map in 2 x 2 windows


@pytest.mark.parametrize("backend", ["auto", "eager", "sdpa"])
@pytest.mark.parametrize("shift", [(0, 0), (2, 3)])
def test_windowed_self_attention_equals_the_reference(shift, backend):
    torch.manual_seed(0)
    layer = GMFlowLayer(16, 2, cross=False, ffn_expansion=None, backend=backend).double()
    x = _randn(2, GRID[0] * GRID[1], 16)
    got = layer(x, WindowLayout(GRID, WINDOW, shift, x.device))
    expected = _reference_layer(layer, x, GRID, WINDOW, shift)
    _assert_same(got, expected, [x, *layer.parameters()])


@pytest.mark.parametrize("window, shift", [(WINDOW, (0, 0)), (WINDOW, (2, 3)), (GRID, (0, 0)), ((1, GRID[1]), (0, 0))],
                         ids=["window", "shifted-window", "global", "rows"])
def test_cross_attention_equals_the_reference(window, shift):
    torch.manual_seed(0)
    layer = GMFlowLayer(16, 2, cross=True, ffn_expansion=2).double()
    x, y = _randn(2, GRID[0] * GRID[1], 16), _randn(2, GRID[0] * GRID[1], 16, seed=1)
    got = layer(x, WindowLayout(GRID, window, shift, x.device), y)
    expected = _reference_layer(layer, x, GRID, window, shift, y)
    _assert_same(got, expected, [x, y, *layer.parameters()])


def test_window_layout_split_and_merge_are_inverse():
    x = torch.randn(3, GRID[0] * GRID[1], 5)
    for shift in ((0, 0), (2, 3), (0, 3)):
        layout = WindowLayout(GRID, WINDOW, shift, x.device)
        windows = layout.split(x)
        assert windows.shape == (3 * 4, 24, 5)
        assert torch.equal(layout.merge(windows), x)


@pytest.mark.parametrize("cross", FeatureTransformer.CROSS)
def test_transformer_treats_the_two_images_alike(cross):
    """Both images go through the same layers, each reading the other: swapping them swaps the outputs."""
    torch.manual_seed(0)
    transformer = FeatureTransformer(16, 2, 1, 2, cross).double()
    f0, f1 = _randn(1, 16, 8, 8), _randn(1, 16, 8, 8, seed=1)
    a0, a1 = transformer(f0, f1, splits=2)
    b1, b0 = transformer(f1, f0, splits=2)
    torch.testing.assert_close(a0, b0, **F64)
    torch.testing.assert_close(a1, b1, **F64)
    assert not torch.allclose(a0, f0)


def test_transformer_rejects_maps_that_do_not_split():
    transformer = FeatureTransformer(16, 1, 1, 2)
    with pytest.raises(ValueError, match="does not split into 2 windows"):
        transformer(torch.randn(1, 16, 7, 8), torch.randn(1, 16, 7, 8), splits=2)


# ---------------------------------------------------------------------------------------------
# matching and propagation
# ---------------------------------------------------------------------------------------------
def _grid(h, w):
    y, x = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    return torch.stack([x, y], -1).view(-1, 2)  # (h*w, 2) as (x, y)


def test_global_matching_equals_the_direct_computation():
    f0, f1 = _randn(2, 8, 5, 7), _randn(2, 8, 5, 7, seed=1)
    a, b = f0.flatten(2).transpose(1, 2), f1.flatten(2).transpose(1, 2)  # (B, hw, C)
    prob = (a @ b.transpose(1, 2) / math.sqrt(8)).softmax(-1)
    expected = (prob @ _grid(5, 7) - _grid(5, 7)).transpose(1, 2).reshape(2, 2, 5, 7)
    _assert_same(global_matching(f0, f1), expected, [f0, f1])


def test_row_matching_equals_the_direct_computation():
    f0, f1 = _randn(2, 8, 3, 9), _randn(2, 8, 3, 9, seed=1)
    a, b = f0.permute(0, 2, 3, 1), f1.permute(0, 2, 3, 1)  # (B, h, w, C)
    scores = a @ b.transpose(-1, -2) / math.sqrt(8)  # (B, h, w0, w1)
    x = torch.arange(9, dtype=torch.float64)
    scores = scores.masked_fill(x[None, :] > x[:, None], float("-inf"))  # only x1 <= x0
    expected = (x - scores.softmax(-1) @ x).unsqueeze(1)
    got = row_matching(f0, f1)
    _assert_same(got, expected, [f0, f1])
    assert (got >= 0).all()


def _direct_local(f0, keys, values, radius):
    """Softmax over each pixel's in-map neighbours, by loops: ``(B, C, h, w)`` maps -> ``(B, D, h, w)``;
    ``values(b, y, x, dy, dx) -> (D,)``."""
    B, C, h, w = f0.shape
    ry, rx = radius
    out = []
    for b in range(B):
        for y in range(h):
            for x in range(w):
                near = [(dy, dx) for dy in range(-ry, ry + 1) for dx in range(-rx, rx + 1)
                        if 0 <= y + dy < h and 0 <= x + dx < w]
                s = torch.stack([f0[b, :, y, x] @ keys[b, :, y + dy, x + dx] for dy, dx in near]) / math.sqrt(C)
                v = torch.stack([values(b, y, x, dy, dx) for dy, dx in near])
                out.append(s.softmax(0) @ v)
    return torch.stack(out).view(B, h, w, -1).permute(0, 3, 1, 2)


@pytest.mark.parametrize("radius", [(1, 1), (2, 1), (0, 2)])
def test_local_matching_equals_the_direct_computation(radius):
    f0, f1 = _randn(1, 4, 4, 5), _randn(1, 4, 4, 5, seed=1)
    offset = lambda b, y, x, dy, dx: torch.tensor([dx, dy], dtype=torch.float64)  # noqa: E731
    _assert_same(local_matching(f0, f1, radius), _direct_local(f0, f1, offset, radius), [f0, f1])


@pytest.mark.parametrize("radius", [-1, 1])
def test_flow_propagation_equals_the_direct_computation(radius):
    torch.manual_seed(0)
    prop = FlowPropagation(8).double()
    feature, flow = _randn(2, 8, 4, 5), _randn(2, 2, 4, 5, seed=1)
    got = prop(feature, flow, radius)
    tokens = feature.flatten(2).transpose(1, 2)
    q, k = prop.q_proj(tokens), prop.k_proj(tokens)  # (B, hw, C)
    if radius < 0:
        prob = (q @ k.transpose(1, 2) / math.sqrt(8)).softmax(-1)
        expected = (prob @ flow.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 2, 4, 5)
    else:
        q_map, k_map = (t.transpose(1, 2).reshape(2, 8, 4, 5) for t in (q, k))
        expected = _direct_local(q_map, k_map, lambda b, y, x, dy, dx: flow[b, :, y + dy, x + dx], (1, 1))
    _assert_same(got, expected, [feature, flow, *prop.parameters()])


def _distinctive(C, h, w, seed=0):
    """Random features far apart: each pixel's own score beats any other's by far (softmax one-hot)."""
    return torch.randn(1, C, h, w, generator=torch.Generator().manual_seed(seed)) * 4


@pytest.mark.parametrize("shift", [(0, 3), (-2, 1), (4, -5)])
def test_global_matching_recovers_a_translation(shift):
    """Image 1 = image 0 rolled by (dy, dx): pixel p matches p + (dy, dx), wrapped into the map."""
    h, w = 12, 16
    f0 = _distinctive(64, h, w)
    f1 = torch.roll(f0, shift, dims=(2, 3))
    flow = global_matching(f0, f1)
    dy, dx = shift
    y, x = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    expected = torch.stack([(x + dx) % w - x, (y + dy) % h - y]).float()[None]
    torch.testing.assert_close(flow, expected, atol=1e-4, rtol=0)


def test_row_matching_recovers_a_disparity_and_local_matching_an_offset():
    h, w, d = 6, 16, 3
    f0 = _distinctive(64, h, w)
    f1 = torch.roll(f0, -d, dims=3)  # image 1 = image 0 moved left by d: x1 = x0 - d
    disparity = row_matching(f0, f1)
    torch.testing.assert_close(disparity[..., d:], torch.full((1, 1, h, w - d), float(d)), atol=1e-4, rtol=0)
    f1 = torch.roll(f0, (1, -2), dims=(2, 3))
    offset = local_matching(f0, f1, (2, 2))
    expected = torch.tensor([-2.0, 1.0]).view(1, 2, 1, 1).expand(1, 2, h - 1, w - 2)
    torch.testing.assert_close(offset[:, :, :-1, 2:], expected, atol=1e-4, rtol=0)


def test_stereo_matching_sees_only_its_row():
    f0, f1 = torch.randn(1, 8, 5, 10), torch.randn(1, 8, 5, 10)
    before = row_matching(f0, f1)
    for row in (0, 4):
        g0, g1 = f0.clone(), f1.clone()
        g0[..., row, :] += torch.randn(8, 10) * 3
        g1[..., row, :] += torch.randn(8, 10) * 3
        after = row_matching(g0, g1)
        others = [r for r in range(5) if r != row]
        assert torch.equal(after[..., others, :], before[..., others, :])
        assert not torch.allclose(after[..., row, :], before[..., row, :])  # the perturbed row did change


# ---------------------------------------------------------------------------------------------
# warping and upsampling
# ---------------------------------------------------------------------------------------------
def test_warp_by_an_integer_flow_moves_the_features():
    feature = torch.randn(1, 3, 6, 7)
    flow = torch.tensor([2.0, -1.0]).view(1, 2, 1, 1).expand(1, 2, 6, 7)
    warped = warp(feature, flow)  # warped[y, x] = feature[y - 1, x + 2]
    torch.testing.assert_close(warped[:, :, 1:, :-2], feature[:, :, :-1, 2:], atol=1e-5, rtol=0)
    torch.testing.assert_close(warped[:, :, 0], torch.zeros(1, 3, 7), atol=1e-6, rtol=0)  # outside: zeros
    torch.testing.assert_close(warped[:, :, :, -2:], torch.zeros(1, 3, 6, 2), atol=1e-6, rtol=0)


def test_convex_upsampling_is_a_convex_combination():
    """Of the 3x3 coarse neighbours (zeros outside the map, as RAFT), times the factor."""
    torch.manual_seed(0)
    up = ConvexUpsampler(8, factor=4)
    constant = torch.tensor([1.5, -2.0]).view(1, 2, 1, 1).expand(2, 2, 4, 5)
    out = up(constant, torch.randn(2, 8, 4, 5))
    interior = out[:, :, 4:-4, 4:-4]  # coarse pixels whose neighbours all lie inside
    torch.testing.assert_close(interior, torch.tensor([6.0, -8.0]).view(1, 2, 1, 1).expand_as(interior),
                               atol=1e-5, rtol=0)
    flow = torch.randn(1, 2, 3, 5)
    out = up(flow, torch.randn(1, 8, 3, 5))
    assert out.shape == (1, 2, 12, 20)
    near = F.max_pool2d(F.pad(flow, (1, 1, 1, 1)), 3, 1) * 4  # the largest neighbour (or the zero padding), x4
    assert (out <= near.repeat_interleave(4, 2).repeat_interleave(4, 3) + 1e-5).all()


# ---------------------------------------------------------------------------------------------
# loss and metrics
# ---------------------------------------------------------------------------------------------
def test_flow_loss_is_the_weighted_l1_sequence():
    g = torch.Generator().manual_seed(0)
    target = torch.randn(2, 2, 4, 6, generator=g)
    target[0, :, 0, 0] = 500.0  # beyond max_flow: not scored
    preds = [torch.randn(2, 2, 4, 6, generator=g) for _ in range(3)]
    valid = torch.rand(2, 4, 6, generator=g)
    mask = ((valid >= 0.5) & (target.norm(dim=1) < 400)).unsqueeze(1).float()
    expected = sum(w * (mask * (p - target).abs()).mean() for w, p in zip((0.81, 0.9, 1.0), preds))
    torch.testing.assert_close(flow_loss(preds, target, valid), expected)
    target[0, :, 0, 0] = 0.0
    torch.testing.assert_close(flow_loss(preds, target, gamma=0.5),
                               sum(w * (p - target).abs().mean() for w, p in zip((0.25, 0.5, 1.0), preds)))


def test_end_point_error_and_bad_pixel_rate():
    target = torch.zeros(1, 2, 2, 3)
    pred = target.clone()
    pred[0, :, 0, 0] = torch.tensor([3.0, 4.0])  # error 5
    pred[0, :, 1, 2] = torch.tensor([1.0, 0.0])  # error 1
    valid = torch.ones(1, 2, 3, dtype=torch.bool)
    assert end_point_error(pred, target, valid).item() == pytest.approx(6 / 6)
    assert bad_pixel_rate(pred, target, valid).item() == pytest.approx(1 / 6)
    valid[0, 0, 0] = False
    assert end_point_error(pred, target, valid).item() == pytest.approx(1 / 5)
    assert bad_pixel_rate(pred, target, valid).item() == 0.0


@pytest.mark.parametrize("bad, match", [
    (dict(target=torch.zeros(1, 2, 4, 4)), "target must have"),
    (dict(valid=torch.ones(1, 4, 5)), "valid must be"),
    (dict(gamma=0.0), "gamma"),
])
def test_flow_loss_rejects_bad_input(bad, match):
    args = dict(predictions=[torch.zeros(1, 2, 4, 6)], target=torch.zeros(1, 2, 4, 6)) | bad
    with pytest.raises(ValueError, match=match):
        flow_loss(**args)


# ---------------------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------------------
def _pair(size=(32, 48), batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, *size, generator=g), torch.rand(batch, 3, *size, generator=g)


def test_variants_are_registered_with_the_papers_sizes():
    assert {"gmflow", "gmflow_refine", "gmflow_micro"} <= set(list_models("gmflow*"))
    c = model_config("gmflow")
    assert (c.num_layers, c.feature_channels, c.num_heads, c.attn_splits, c.stride) == (6, 128, 1, (2,), 16)
    assert model_config("gmflow_refine").stride == 32
    model = create_model("gmflow")
    assert 4.5e6 < sum(p.numel() for p in model.parameters()) < 4.9e6  # the paper's 4.7M


@pytest.mark.parametrize("task", ["flow", "stereo"])
def test_micro_trains_in_both_tasks(task):
    torch.manual_seed(0)
    model = create_model("gmflow_micro")
    image0, image1 = _pair(batch=2)
    target = torch.rand(2, 2 if task == "flow" else 1, 32, 48) * 4
    out = model(image0, image1, task=task, target=target, valid=torch.ones(2, 32, 48))
    assert len(out.predictions) == 4 and all(p.shape == target.shape for p in out.predictions)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing
    if task == "stereo":
        assert (out.disparity >= 0).all()
        assert torch.equal(out.flow, disparity_to_flow(out.disparity))
    else:
        assert out.disparity is None and out.flow.shape == (2, 2, 32, 48)


def test_stereo_by_config_equals_stereo_by_argument():
    torch.manual_seed(0)
    flow_model = create_model("gmflow_micro").eval()
    stereo_model = create_model("gmflow_micro", task="stereo").eval()
    stereo_model.load_state_dict(flow_model.state_dict())
    image0, image1 = _pair()
    with torch.no_grad():
        torch.testing.assert_close(stereo_model(image0, image1).disparity,
                                   flow_model(image0, image1, task="stereo").disparity, rtol=0, atol=0)


def test_inference_mode_first_then_training():
    """Nothing built under inference_mode (window masks, neighbourhoods) leaks into a later training call."""
    torch.manual_seed(0)
    model = create_model("gmflow_micro")
    image0, image1 = _pair()
    with torch.inference_mode():
        expected = model.eval()(image0, image1).flow
    with torch.no_grad():
        torch.testing.assert_close(model(image0, image1).flow, expected, rtol=0, atol=0)
    model.train()
    out = model(image0, image1, target=torch.zeros(1, 2, 32, 48))
    out.loss.backward()
    assert all(p.grad is not None for p in model.parameters())


def test_bilinear_upsampler_scales_the_propagated_flow():
    """upsampler="bilinear": the final flow is the propagation's 1/8 output, bilinearly resized and times 8."""
    torch.manual_seed(0)
    model = create_model("gmflow_micro", upsampler="bilinear", cross_attention="rows", num_scales=1,
                         attn_splits=(2,), corr_radius=(-1,), prop_radius=(-1,))
    assert model.upsampler is None
    seen = []
    model.propagation.register_forward_hook(lambda module, args, out: seen.append(out))
    out = model(*_pair())
    coarse = seen[-1]
    assert coarse.shape == (1, 2, 4, 6)
    expected = F.interpolate(coarse, size=(32, 48), mode="bilinear", align_corners=True) * 8
    torch.testing.assert_close(out.flow, expected, rtol=0, atol=1e-6)


def test_save_and_load_give_the_same_outputs(tmp_path):
    torch.manual_seed(0)
    model = create_model("gmflow_micro").eval()
    save_pretrained(model, tmp_path)
    loaded = from_pretrained(tmp_path)
    assert isinstance(loaded, GMFlow) and loaded.config == model.config and loaded.variant == "gmflow_micro"
    assert GMFlow.from_pretrained(tmp_path).config == model.config
    image0, image1 = _pair()
    with torch.no_grad():
        a, b = model(image0, image1), loaded(image0, image1)
    for x, y in zip(a.predictions, b.predictions):
        assert torch.equal(x, y)


@pytest.mark.parametrize("images, match", [
    (lambda a, b: (a, b[..., :32]), "same shape"),
    (lambda a, b: (a[..., :40], b[..., :40]), "multiples of the stride 16"),
    (lambda a, b: (a, b.masked_fill(torch.rand_like(b) > 0.99, float("nan"))), "NaN"),
    (lambda a, b: (a[:, :1], b[:, :1]), "1 channels, the model expects 3"),
    (lambda a, b: ((a * 255).to(torch.uint8), b), "floating point"),
    (lambda a, b: (a[0], b[0]), r"\(B, C, H, W\)"),
    (lambda a, b: (a[:0], b[:0]), "batch 0"),
])
def test_bad_images_are_rejected(images, match):
    model = create_model("gmflow_micro")
    with pytest.raises(ValueError, match=match):
        model(*images(*_pair()))


def test_bad_task_and_options_are_rejected():
    model = create_model("gmflow_micro")
    with pytest.raises(ValueError, match="task must be one of"):
        model(*_pair(), task="depth")
    with pytest.raises(ValueError, match="valid was given without a target"):
        model(*_pair(), valid=torch.ones(1, 32, 48))
    with pytest.raises(ValueError, match=r"target must have the predictions' shape \(1, 1, 32, 48\)"):
        model(*_pair(), task="stereo", target=torch.zeros(1, 2, 32, 48))
    for option, match in ((dict(num_scales=3), "num_scales"), (dict(attn_splits=(2,)), "attn_splits"),
                          (dict(corr_radius=(-1, 0)), "corr_radius"), (dict(cross_attention="all"), "cross_attention"),
                          (dict(feature_channels=42), "multiple of 4"), (dict(pixel_mean=(0.5,)), "pixel_mean"),
                          (dict(upsampler="nearest"), "upsampler")):
        with pytest.raises(ValueError, match=match):
            GMFlowConfig(**(dict(num_scales=2, attn_splits=(2, 4), corr_radius=(-1, 3), prop_radius=(-1, 1)) | option))
