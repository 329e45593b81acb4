"""BoxRelationBias equals Relation-DETR's position relation (re-derived here) on every backend,
with gradients to the projection and to the boxes."""
import math

import pytest
import torch

from relformer.relations import BoxRelationBias
from tests.equivalence import assert_backends_agree

H, B, Q = 4, 2, 30


def random_boxes(B, Q, seed=0, requires_grad=False):
    g = torch.Generator().manual_seed(seed)
    centres, sizes = torch.rand(B, Q, 2, generator=g), torch.rand(B, Q, 2, generator=g) * 0.3 + 0.02
    return torch.cat([centres, sizes], -1).requires_grad_(requires_grad)


def reference_bias(boxes, weight, bias, embed_dim=16, temperature=10000.0, scale=100.0, eps=1e-5):
    """Relation-DETR's ``box_rel_encoding`` + ``get_sine_pos_embed`` + 1x1 conv + ReLU, loop-free."""
    cx, cy, w, h = boxes.unbind(-1)  # (B, Q)
    feats = torch.stack([
        torch.log((cx[:, :, None] - cx[:, None, :]).abs() / (w[:, :, None] + eps) + 1),
        torch.log((cy[:, :, None] - cy[:, None, :]).abs() / (h[:, :, None] + eps) + 1),
        torch.log((w[:, :, None] + eps) / (w[:, None, :] + eps)),
        torch.log((h[:, :, None] + eps) / (h[:, None, :] + eps)),
    ], -1)  # (B, Q, Q, 4)
    embs = []
    for c in range(4):
        dim_t = torch.tensor([temperature ** (2 * (k // 2) / embed_dim) for k in range(embed_dim)])
        x = feats[..., c:c + 1] * scale / dim_t  # (B, Q, Q, E)
        embs.append(torch.stack((x[..., 0::2].sin(), x[..., 1::2].cos()), -1).flatten(-2))
    pos = torch.cat(embs, -1).permute(0, 3, 1, 2)  # (B, 4E, Q, Q)
    conv = torch.nn.functional.conv2d(pos, weight[:, :, None, None], bias)  # (B, H, Q, Q)
    return conv.relu()


def _relation(requires_grad=False):
    rel = BoxRelationBias(H)
    with torch.no_grad():
        rel.proj.weight.normal_(0, 0.5)
        rel.proj.bias.uniform_(-0.2, 0.5)
    return rel.bind(boxes=random_boxes(B, Q, requires_grad=requires_grad))


def test_matches_relation_detr():
    rel = _relation()
    got = rel.dense_bias(B, H, Q, Q)
    ref = reference_bias(rel.boxes, rel.proj.weight.detach(), rel.proj.bias.detach())
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)
    assert (ref == 0).any() and (ref > 0).any()  # the ReLU is active on some pairs, off on others
    # Flex's view precomputes the same dense bias
    torch.testing.assert_close(rel.flex_view().dense, ref, atol=1e-5, rtol=1e-5)


def test_backends_agree_with_box_gradients():
    state = {}

    def make():
        state["rel"] = _relation(requires_grad=True)
        return state["rel"]

    assert_backends_agree(make, B=B, H=H, Lq=Q, Lk=Q, leaves_fn=lambda rel: (rel.boxes,))
    rel = state["rel"]
    rel.dense_bias(B, H, Q, Q).sum().backward()
    assert rel.boxes.grad.abs().sum() > 0 and rel.proj.weight.grad.abs().sum() > 0


def test_validation():
    rel = BoxRelationBias(H)
    with pytest.raises(ValueError, match="boxes"):
        rel.check(B, H, Q, Q)
    with pytest.raises(ValueError, match="boxes"):
        rel.bind(boxes=random_boxes(B, Q + 1)).check(B, H, Q, Q)
    with pytest.raises(ValueError, match="heads"):
        rel.bind(boxes=random_boxes(B, Q)).check(B, H + 1, Q, Q)
    assert math.isclose(rel.dim_t[3].item(), 10000.0 ** (2 / 16), rel_tol=1e-6)
