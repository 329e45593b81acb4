"""The rotary relation with per-token angles: equal to RoPE (relformer.nn.RotaryEmbedding) when the
angles are position x frequency, to the interleaved rotation of the original LightGlue once the channels
are permuted, and its scores depend only on angle differences (float64, 1e-12)."""
from __future__ import annotations

import pytest
import torch

from relformer.nn import RotaryEmbedding
from relformer.relations import Rotary
from relformer.relations.rotary import interleaved_to_half


def test_equals_rope_for_positions_times_frequencies():
    x = torch.randn(1, 3, 10, 16, dtype=torch.float64)  # (B, H, L, D)
    rope = RotaryEmbedding(16)
    positions = torch.arange(10)
    angles = positions[:, None].double() * rope.inv_freq.double()  # (L, D/2)
    got = Rotary(angles).apply(x[0].transpose(0, 1))  # (L, H, D)
    torch.testing.assert_close(got.transpose(0, 1)[None], rope(x, positions), rtol=0, atol=1e-12)


def _interleaved(x, angles):
    """The original LightGlue's rotation: pairs (2i, 2i + 1) rotate by angles[i]."""
    cos, sin = angles.cos().repeat_interleave(2, -1)[:, None], angles.sin().repeat_interleave(2, -1)[:, None]
    pairs = x.unflatten(-1, (-1, 2))
    rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), -1).flatten(-2)
    return x * cos + rotated * sin


def test_equals_the_interleaved_rotation_after_the_channel_permutation():
    x, angles = torch.randn(12, 4, 8, dtype=torch.float64), torch.randn(12, 4, dtype=torch.float64)
    perm = interleaved_to_half(8)
    torch.testing.assert_close(Rotary(angles).apply(x[..., perm]), _interleaved(x, angles)[..., perm],
                               rtol=0, atol=1e-12)


def test_scores_depend_only_on_angle_differences_and_select_keeps_tokens():
    q, k = torch.randn(6, 1, 8, dtype=torch.float64), torch.randn(6, 1, 8, dtype=torch.float64)
    angles = torch.randn(6, 4, dtype=torch.float64) * 3
    shift = torch.randn(4, dtype=torch.float64)
    scores = lambda a: Rotary(a).apply(q)[:, 0] @ Rotary(a).apply(k)[:, 0].T  # noqa: E731
    torch.testing.assert_close(scores(angles + shift), scores(angles), rtol=0, atol=1e-12)
    keep = torch.tensor([4, 1])
    torch.testing.assert_close(Rotary(angles).select(keep).apply(q[keep]), Rotary(angles).apply(q)[keep])


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="angles"):
        Rotary(torch.zeros(3))
    with pytest.raises(ValueError, match="x must be"):
        Rotary(torch.zeros(3, 4)).apply(torch.zeros(3, 2, 6))
    with pytest.raises(ValueError, match="even"):
        interleaved_to_half(5)
