"""pair_features equals a per-pair Python computation (values and gradients); Pair3DBias agrees on
every backend with eager forward and backward (gradients to the MLP, centres and sizes), and scenes
packed in one sequence never attend across: each equals attention over that scene alone."""
import math

import pytest
import torch

import relformer
from relformer.data.packed import Packed
from relformer.relations import Pair3DBias
from relformer.relations.geometry3d import PAIR_FEATURES, pair_features
from tests.equivalence import assert_backends_agree, make_qkv

H = 4


def random_objects(n, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    centres = torch.rand(n, 3, generator=g, dtype=dtype) * torch.tensor([5.0, 4.0, 2.0], dtype=dtype)
    sizes = torch.rand(n, 3, generator=g, dtype=dtype) * 1.5 + 0.05
    centres[3] = centres[1]  # two objects at one centre: direction undefined, sin = cos = 0
    centres[4, :2] = centres[2, :2]  # one straight above another
    return centres, sizes


def loop_features(centres, sizes, eps=1e-3):
    """The features of every (i, j) pair, one pair at a time in plain Python / torch scalar ops."""
    n = centres.shape[0]
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            dx, dy, dz = (centres[j, a] - centres[i, a] for a in range(3))
            feats = [dx, dy, dz]
            if float(dx.detach()) == 0 and float(dy.detach()) == 0:
                dist = dz.abs()
                feats += [dist, dx * 0, *(torch.log((sizes[j, a] + eps) / (sizes[i, a] + eps)) for a in range(3)),
                          dx * 0, dx * 0]
            else:
                hyp = torch.sqrt(dx * dx + dy * dy)
                dist = torch.sqrt(dx * dx + dy * dy + dz * dz)
                azimuth = math.atan2(float(dy.detach()), float(dx.detach()))
                sin, cos = dy / hyp, dx / hyp
                assert math.isclose(float(sin.detach()), math.sin(azimuth), abs_tol=1e-12)
                assert math.isclose(float(cos.detach()), math.cos(azimuth), abs_tol=1e-12)
                ratios = [torch.log((sizes[j, a] + eps) / (sizes[i, a] + eps)) for a in range(3)]
                feats += [dist, hyp, *ratios, sin, cos]
            row.append(torch.stack(feats))
        rows.append(torch.stack(row))
    return torch.stack(rows)


def test_pair_features_match_a_per_pair_loop_forward_and_backward():
    centres, sizes = random_objects(7)
    c1, s1 = centres.clone().requires_grad_(), sizes.clone().requires_grad_()
    c2, s2 = centres.clone().requires_grad_(), sizes.clone().requires_grad_()
    got, ref = pair_features(c1, s1), loop_features(c2, s2)
    assert got.shape == (7, 7, len(PAIR_FEATURES))
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-12)
    w = torch.randn(got.shape, generator=torch.Generator().manual_seed(1), dtype=got.dtype)
    (got * w).sum().backward()
    (ref * w).sum().backward()
    for a, b in ((c1, c2), (s1, s2)):
        assert torch.isfinite(a.grad).all()
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-10, atol=1e-10)


def test_pair_features_broadcast_form_equals_the_all_pairs_form():
    centres, sizes = random_objects(6)
    full = pair_features(centres, sizes)
    torch.testing.assert_close(pair_features(centres[:, None], sizes[:, None], centres[None], sizes[None]), full)


def packed_scenes(sizes_per_scene=(5, 3, 6), seed=0, requires_grad=False):
    """Three scenes' objects as one packed (1, N) sequence plus a trailing empty slot."""
    g = torch.Generator().manual_seed(seed)
    items = [torch.rand(n, 6, generator=g) for n in sizes_per_scene]
    packed = Packed.from_list(items)
    boxes = packed.values * torch.tensor([6.0, 5.0, 2.5, 1.5, 1.5, 1.5]) + torch.tensor([0, 0, 0, 0.05, 0.05, 0.05])
    seg = torch.cat([packed.segment_ids(), torch.tensor([-1])])[None]  # (1, N + 1)
    boxes = torch.cat([boxes, torch.zeros(1, 6)])[None]                  # (1, N + 1, 6)
    centres, sizes = (boxes[..., :3].clone().requires_grad_(requires_grad),
                      boxes[..., 3:].clone().requires_grad_(requires_grad))
    return centres, sizes, seg


def _relation(requires_grad=False, seed=0):
    rel = Pair3DBias(H, hidden=8)
    centres, sizes, seg = packed_scenes(seed=seed, requires_grad=requires_grad)
    return rel.bind(centres=centres, sizes=sizes, segment_ids=seg)


def test_backends_agree_forward_and_backward_with_box_gradients():
    state = {}

    def make():
        state["rel"] = _relation(requires_grad=True)
        return state["rel"]

    L = packed_scenes()[2].shape[1]
    assert_backends_agree(make, B=1, H=H, Lq=L, Lk=L, backends=("sdpa", "chunked"),  # flex: below
                          leaves_fn=lambda rel: (rel.centres, rel.sizes))
    rel = state["rel"]
    rel.dense_bias(1, H, L, L).masked_fill(~rel.dense_mask(1, H, L, L), 0).sum().backward()
    assert rel.centres.grad.abs().sum() > 0 and rel.sizes.grad.abs().sum() > 0
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in rel.mlp.parameters())


def test_bias_is_the_mlp_of_the_pair_features_and_masked_across_scenes():
    rel = _relation()
    L = rel.segment_ids.shape[1]
    dense = rel.dense_bias(1, H, L, L)[0]  # (H, L, L)
    feats = pair_features(rel.centres[0], rel.sizes[0])
    expected = rel.mlp(feats).permute(2, 0, 1)
    seg = rel.segment_ids[0]
    same = (seg[:, None] == seg[None]) & (seg[:, None] >= 0)
    torch.testing.assert_close(dense[:, same], expected[:, same].detach(), rtol=1e-5, atol=1e-6)
    assert torch.isinf(dense[:, ~same]).all() and (dense[:, ~same] < 0).all()
    torch.testing.assert_close(rel.flex_view().dense[0][:, same], expected[:, same].detach(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["eager", "sdpa", "chunked",
                                     pytest.param("flex", marks=pytest.mark.slow)])  # flex compiles a kernel
def test_packed_scenes_equal_each_scene_alone(backend):
    rel = _relation()
    L = rel.segment_ids.shape[1]
    q, k, v = make_qkv(1, H, L, L, 8, requires_grad=False)
    with torch.no_grad():
        out = relformer.attend(q, k, v, rel, backend=backend)
        seg = rel.segment_ids[0]
        for s in range(int(seg.max()) + 1):
            idx = (seg == s).nonzero().flatten()
            alone = Pair3DBias(H, hidden=8)
            alone.load_state_dict(rel.state_dict())
            alone = alone.bind(centres=rel.centres[:, idx], sizes=rel.sizes[:, idx])
            ref = relformer.attend(q[:, :, idx], k[:, :, idx], v[:, :, idx], alone, backend="eager")
            torch.testing.assert_close(out[:, :, idx], ref, atol=1e-5, rtol=0)
        assert (out[:, :, seg < 0] == 0).all()  # the empty slot attends nothing


def test_validation():
    rel = Pair3DBias(H)
    L = 5
    with pytest.raises(ValueError, match="centres"):
        rel.check(1, H, L, L)
    good = dict(centres=torch.rand(1, L, 3), sizes=torch.rand(1, L, 3))
    with pytest.raises(ValueError, match="heads"):
        rel.bind(**good).check(1, H + 1, L, L)
    with pytest.raises(ValueError, match="sizes"):
        rel.bind(centres=good["centres"], sizes=torch.rand(1, L, 2)).check(1, H, L, L)
    with pytest.raises(ValueError, match="sizes"):
        rel.bind(centres=good["centres"], sizes=-good["sizes"]).check(1, H, L, L)
    with pytest.raises(ValueError, match="finite"):
        rel.bind(centres=good["centres"].clone().fill_(float("nan")), sizes=good["sizes"]).check(1, H, L, L)
    with pytest.raises(ValueError, match="segment_ids"):
        rel.bind(**good, segment_ids=torch.zeros(1, L + 1, dtype=torch.long)).check(1, H, L, L)
    with pytest.raises(ValueError, match="segment_ids"):
        relformer.attend(*make_qkv(1, H, L, L, 8), rel.bind(**good, segment_ids=torch.zeros(1, L)))
    with pytest.raises(ValueError, match="centres"):
        pair_features(torch.rand(4, 2), torch.rand(4, 2))
    with pytest.raises(ValueError, match="num_heads"):
        Pair3DBias(0)
