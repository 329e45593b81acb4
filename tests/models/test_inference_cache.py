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


def test_channels_last_inputs_get_their_own_kept_weights_and_the_same_outputs():
    torch.manual_seed(0)
    unit = ConvNorm(8, 16, 3)
    _randomise(unit, 2)
    unit.eval()
    x = torch.randn(1, 8, 12, 12)
    with torch.inference_mode():
        plain = unit(x)
        cl = unit(x.contiguous(memory_format=torch.channels_last))
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
