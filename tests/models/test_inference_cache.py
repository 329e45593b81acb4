"""The folded-weight cache of the detection convolutions (``inference_cached``): in inference the folded
conv + norm (and RepVGG's fused kernel) is computed once per state of the weights, and any change of the
weights or statistics (in place, replaced, train / eval switch) is seen by the next call; channels-last
and contiguous inputs give the same outputs (AIFI keeps its input format); with gradients nothing is cached."""
from __future__ import annotations

import torch
from torch import nn

from relformer.models.detection.backbone import ConvNorm
from relformer.models.detection.rtdetr_encoder import RepVggBlock

ATOL = 1e-5


def _randomise(module: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def _plain_repvgg(block: RepVggBlock, x):
    with torch.enable_grad():  # the two-branch path
        return block(x.clone().requires_grad_()).detach()


def test_the_cache_follows_every_change_of_the_weights():
    torch.manual_seed(0)
    block = RepVggBlock(8)
    _randomise(block, 1)
    block.eval()
    x = torch.randn(2, 8, 6, 6)
    with torch.inference_mode():
        first = block(x)
        assert "_fused" in block.__dict__
        torch.testing.assert_close(block(x), first, atol=0, rtol=0)  # the kept kernel
    torch.testing.assert_close(first, _plain_repvgg(block, x), atol=ATOL, rtol=ATOL)

    with torch.no_grad():  # in place: a new version of a conv weight
        block.conv1.conv.weight.mul_(1.5)
    with torch.inference_mode():
        changed = block(x)
    assert not torch.allclose(changed, first, atol=1e-3)
    torch.testing.assert_close(changed, _plain_repvgg(block, x), atol=ATOL, rtol=ATOL)

    block.load_state_dict({k: v * 0.5 if v.is_floating_point() else v for k, v in block.state_dict().items()})
    with torch.inference_mode():
        loaded = block(x)
    torch.testing.assert_close(loaded, _plain_repvgg(block, x), atol=ATOL, rtol=ATOL)

    block.train()  # a BN in training: statistics of the batch, nothing folded
    with torch.inference_mode():
        trained = block(x)
    block.train()
    torch.testing.assert_close(trained, block.activation(block.conv1(x) + block.conv2(x)), atol=ATOL, rtol=ATOL)
    block.eval()
    with torch.no_grad():
        block.conv2.norm.running_var.add_(1.0)  # a buffer changed in place
    with torch.inference_mode():
        torch.testing.assert_close(block(x), _plain_repvgg(block, x), atol=ATOL, rtol=ATOL)


def test_channels_last_inputs_get_their_own_kept_weights_and_the_same_outputs(monkeypatch):
    from relformer.models.detection import backbone

    torch.manual_seed(0)
    unit = ConvNorm(8, 16, 3)
    _randomise(unit, 2)
    unit.eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.inference_mode():
        plain = unit(x)
        packed = unit(x.contiguous(memory_format=torch.channels_last))  # oneDNN's packed kernel, where built
        monkeypatch.setitem(backbone._onednn, "usable", False)  # a build without it: F.conv2d on kept weights
        cl = unit(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(packed, plain, atol=ATOL, rtol=ATOL)
    assert unit.conv.__dict__["_folded_cl"][1][0].is_contiguous(memory_format=torch.channels_last)
    assert unit.conv.__dict__["_folded"][1][0].is_contiguous()
    torch.testing.assert_close(cl, plain, atol=ATOL, rtol=ATOL)
    with torch.no_grad():
        torch.testing.assert_close(plain, nn.functional.relu(unit.norm(unit.conv(x))), atol=ATOL, rtol=ATOL)


def test_with_gradients_nothing_is_kept_and_gradients_flow():
    torch.manual_seed(0)
    unit = ConvNorm(4, 4, 3)
    unit.eval()
    x = torch.randn(1, 4, 5, 5)
    unit(x).sum().backward()
    assert "_folded" not in unit.conv.__dict__ and unit.conv.weight.grad is not None


def test_aifi_returns_the_input_memory_format_with_the_same_values():
    """AIFI hands CCFM a map in its input's format (a channels-last view of the tokens for a
    channels-last input), so CCFM never concatenates mixed formats."""
    from relformer.models.detection.rtdetr_encoder import AIFI

    torch.manual_seed(0)
    aifi = AIFI(16, 1, num_heads=2, ffn_dim=32).eval()
    x = torch.randn(2, 16, 5, 7)
    with torch.inference_mode():
        plain, cl = aifi(x), aifi(x.contiguous(memory_format=torch.channels_last))
    assert plain.is_contiguous() and cl.is_contiguous(memory_format=torch.channels_last) and not cl.is_contiguous()
    torch.testing.assert_close(cl, plain, atol=ATOL, rtol=ATOL)


def test_prepacked_onednn_convolution_equals_conv2d_and_follows_shapes_and_weights():
    """oneDNN's fused convolution on a weight packed once: equal to ``F.conv2d`` + the activation; a new
    input shape or a weight update packs again; not used with gradients, contiguous inputs or an
    activation it cannot fuse."""
    from relformer.models.detection.backbone import _onednn_usable, prepacked_conv_act

    assert _onednn_usable() == torch.backends.mkldnn.is_available()
    if not torch.backends.mkldnn.is_available():  # the F.conv2d path is the one this build runs
        return
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 16, 3, stride=2, padding=1)
    for act in (None, nn.ReLU(), nn.SiLU()):
        for size in (9, 12):  # two shapes: packed again for the second
            x = torch.randn(2, 8, size, size).contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                out = prepacked_conv_act(x, lambda: (conv.weight, conv.bias), conv, act, conv, conv)
                ref = nn.functional.conv2d(x, conv.weight, conv.bias, 2, 1)
            ref = ref if act is None else act(ref)
            assert out is not None and conv.__dict__["_prepacked"][0][-4:] == tuple(x.shape)
            torch.testing.assert_close(out, ref, atol=ATOL, rtol=ATOL)
    with torch.no_grad():
        conv.weight.mul_(-1)
    with torch.inference_mode():
        out = prepacked_conv_act(x, lambda: (conv.weight, conv.bias), conv, nn.ReLU(), conv, conv)
    torch.testing.assert_close(out, nn.functional.relu(nn.functional.conv2d(x, conv.weight, conv.bias, 2, 1)),
                               atol=ATOL, rtol=ATOL)
    assert prepacked_conv_act(x, lambda: (conv.weight, conv.bias), conv, nn.ReLU(), conv, conv) is None  # gradients on
    with torch.inference_mode():
        assert prepacked_conv_act(x.contiguous(), lambda: (conv.weight, conv.bias), conv, None, conv, conv) is None
        assert prepacked_conv_act(x, lambda: (conv.weight, conv.bias), conv, nn.GELU(), conv, conv) is None


def test_the_backbone_runs_the_prepacked_convolutions_in_inference():
    from relformer.models.detection import RTDETR, rtdetr_micro

    model = RTDETR(rtdetr_micro()).eval()
    x = torch.rand(1, model.config.in_channels, 64, 64)
    with torch.inference_mode():
        fast = model(x)
    packed = [m for m in model.modules() if "_prepacked" in m.__dict__]
    assert len(packed) > 5 or not torch.backends.mkldnn.is_available()
    with torch.no_grad():  # the reference: no folding, no packing (gradients recorded on the input)
        slow = model(x.requires_grad_())
    torch.testing.assert_close(fast.logits, slow.logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast.pred_boxes, slow.pred_boxes, atol=1e-4, rtol=1e-4)
