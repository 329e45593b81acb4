"""Positional encodings against their defining properties and hand-checked values.

Tolerances: fp32 RoPE identities within 1e-4 (dot products of 32-dim vectors at positions up
to ~100); graph encodings are computed in float64 and returned as fp32: within 1e-5.
"""
import math

import pytest
import torch

from relformer.nn import (LearnedPositions, RotaryEmbedding, RotaryEmbedding2D, grid_positions, laplacian_eigenvectors,
                          random_sign_flip, random_walk_encoding, sinusoidal_encoding)


def test_sinusoidal_matches_formula():
    pos = torch.tensor([0, 1, 7, 50])
    pe = sinusoidal_encoding(pos, 10)
    assert pe.shape == (4, 10)
    for p in range(4):
        for i in range(5):
            angle = pos[p].item() / 10000 ** (2 * i / 10)
            assert pe[p, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[p, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)
    assert sinusoidal_encoding(pos, 7).shape == (4, 7)


def test_learned_positions_lookup_bounds_and_resize():
    lp = LearnedPositions(8, 4)
    torch.testing.assert_close(lp(torch.tensor([[0, 3]])), lp.weight[[0, 3]][None])
    with pytest.raises(ValueError, match=r"\[0, 8\)"):
        lp(torch.tensor([8]))
    first, last = lp.weight[0].clone(), lp.weight[-1].clone()
    lp.resize(15)
    assert lp.max_len == 15
    torch.testing.assert_close(lp.weight[0], first), torch.testing.assert_close(lp.weight[-1], last)


@pytest.mark.parametrize("interleaved", [False, True])
def test_rope_preserves_norm_and_depends_on_relative_position(interleaved):
    rope = RotaryEmbedding(32, interleaved=interleaved)
    q, k = torch.randn(2, 1, 3, 1, 32).unbind(0)  # (B=1, H=3, 1, D) each

    def dot(i, j):
        qi = rope(q, torch.tensor([i]))
        kj = rope(k, torch.tensor([j]))
        return (qi * kj).sum(-1)

    x = torch.randn(2, 3, 11, 32)
    torch.testing.assert_close(rope(x).norm(dim=-1), x.norm(dim=-1), atol=1e-5, rtol=1e-5)
    for i, j, s in [(0, 0, 5), (3, 9, 17), (10, 2, 90)]:
        torch.testing.assert_close(dot(i, j), dot(i + s, j + s), atol=1e-4, rtol=0)
    assert not torch.allclose(dot(0, 0), dot(0, 3), atol=1e-3)
    torch.testing.assert_close(rope(x, torch.zeros(11, dtype=torch.long)), x)  # position 0 is the identity


def test_rope_packed_positions_equal_per_item():
    rope = RotaryEmbedding(16)
    lengths = [[3, 5, 2], [6, 4]]  # two packed rows of total length 10
    positions = torch.stack([torch.cat([torch.arange(n) for n in row]) for row in lengths])  # (2, 10)
    x = torch.randn(2, 4, 10, 16)
    packed = rope(x, positions)
    for b, row in enumerate(lengths):
        start = 0
        for n in row:
            item = x[b:b + 1, :, start:start + n]
            torch.testing.assert_close(packed[b:b + 1, :, start:start + n], rope(item), atol=1e-6, rtol=0)
            start += n
    with pytest.raises(ValueError, match="positions"):
        rope(x, positions[:, :5])


def test_rope_2d_is_axial_and_relative():
    rope = RotaryEmbedding2D(16)
    pos = grid_positions(3, 4)  # (12, 2)
    assert pos[5].tolist() == [1, 1]
    x = torch.randn(1, 2, 12, 16)
    out = rope(x, pos)
    torch.testing.assert_close(out[..., :8], RotaryEmbedding(8)(x[..., :8], pos[:, 0]))
    torch.testing.assert_close(out[..., 8:], RotaryEmbedding(8)(x[..., 8:], pos[:, 1]))
    q, k = torch.randn(2, 1, 1, 1, 16).unbind(0)

    def dot(pq, pk):
        return (rope(q, torch.tensor([pq])) * rope(k, torch.tensor([pk]))).sum()

    torch.testing.assert_close(dot((1, 2), (3, 0)), dot((11, 7), (13, 5)), atol=1e-4, rtol=0)


# ---- graph encodings ---------------------------------------------------------------------------

def _undirected(edges, offset=0):
    e = torch.tensor(edges).t() + offset
    return torch.cat([e, e.flip(0)], dim=1)


def _packed_graphs():
    """A 5-path, a 4-cycle and a 2-node graph, packed PyG-style."""
    path = _undirected([(0, 1), (1, 2), (2, 3), (3, 4)])
    cycle = _undirected([(0, 1), (1, 2), (2, 3), (3, 0)], offset=5)
    pair = _undirected([(0, 1)], offset=9)
    batch = torch.tensor([0] * 5 + [1] * 4 + [2] * 2)
    return torch.cat([path, cycle, pair], dim=1), 11, batch


def _normalized_laplacian(edge_index, n):
    adj = torch.zeros(n, n, dtype=torch.float64)
    adj[edge_index[0], edge_index[1]] = 1
    d = adj.sum(1).rsqrt()
    return torch.eye(n, dtype=torch.float64) - d[:, None] * adj * d[None, :]


def test_laplacian_eigenvectors_are_eigenvectors_per_graph():
    edge_index, n, batch = _packed_graphs()
    k = 3
    pe, vals = laplacian_eigenvectors(edge_index, n, k, batch=batch, return_eigenvalues=True)
    assert pe.shape == vals.shape == (n, k)
    for g, (lo, hi) in enumerate([(0, 5), (5, 9), (9, 11)]):
        sel = (edge_index[0] >= lo) & (edge_index[0] < hi)
        lap = _normalized_laplacian(edge_index[:, sel] - lo, hi - lo)
        m = min(k, hi - lo - 1)
        v, lam = pe[lo:hi, :m].double(), vals[lo, :m].double()
        torch.testing.assert_close(lap @ v, v * lam, atol=1e-5, rtol=0)
        torch.testing.assert_close(v.t() @ v, torch.eye(m, dtype=torch.float64), atol=1e-5, rtol=0)
        torch.testing.assert_close(lam, torch.linalg.eigvalsh(lap)[1:m + 1], atol=1e-5, rtol=0)
        assert (pe[lo:hi, m:] == 0).all()  # zero padding for the 2-node graph
    assert vals[0, 0] > 1e-6  # the trivial eigenvalue 0 is skipped
    # per-graph computation: the same as encoding the graph alone
    alone = laplacian_eigenvectors(edge_index[:, edge_index[0] < 5], 5, k)
    torch.testing.assert_close(pe[:5].abs(), alone.abs(), atol=1e-5, rtol=0)


def test_random_sign_flip_is_per_graph_and_column():
    pe = torch.rand(11, 3) + 0.1
    batch = torch.tensor([0] * 5 + [1] * 4 + [2] * 2)
    flipped = random_sign_flip(pe, batch, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(flipped.abs(), pe)
    signs = (flipped / pe).round()
    for g in range(3):
        assert (signs[batch == g] == signs[batch == g][0]).all()


def test_random_walk_encoding_hand_checked():
    edge_index, n, batch = _packed_graphs()
    rw = random_walk_encoding(edge_index, n, 4, batch=batch)
    # 4-cycle: never back after an odd number of steps; 1/2 after 2 steps; after 4 steps
    # (+-1 steps summing to 0 or +-4): (6 + 2) / 16 = 1/2
    torch.testing.assert_close(rw[5:9], torch.tensor([[0.0, 0.5, 0.0, 0.5]]).expand(4, 4))
    # 5-path: an end node returns after 2 steps w.p. 1/2; the middle node w.p. 1/2
    assert rw[0, 1].item() == pytest.approx(0.5) and rw[2, 1].item() == pytest.approx(0.5)
    assert rw[1, 1].item() == pytest.approx(0.5 * 1 + 0.5 * 0.5)
    # 2-node graph: back after every even number of steps
    torch.testing.assert_close(rw[9:], torch.tensor([[0.0, 1.0, 0.0, 1.0]]).expand(2, 4))
    torch.testing.assert_close(random_walk_encoding(edge_index, n, 4), rw)  # no edges cross graphs
    with pytest.raises(ValueError, match="between different graphs"):
        random_walk_encoding(torch.tensor([[0], [6]]), n, 2, batch=batch)
