"""Grid relations equal Swin's / RMT's own constructions (re-derived here) and agree on every backend."""
import math

import pytest
import torch

import relformer
from relformer.relations import GridRelativeBias, ManhattanDecay, ShiftedWindowRegions, WindowMask
from tests.equivalence import assert_backends_agree, make_qkv

H = 4


# ---- Swin, written out as in the reference implementation (Liu et al. 2021) ---------------------
def swin_relative_position_index(Wh, Ww):
    coords = torch.stack(torch.meshgrid([torch.arange(Wh), torch.arange(Ww)], indexing="ij"))
    coords_flatten = torch.flatten(coords, 1)
    relative_coords = coords_flatten[:, :, None] - coords_flatten[:, None, :]
    relative_coords = relative_coords.permute(1, 2, 0).contiguous()
    relative_coords[:, :, 0] += Wh - 1
    relative_coords[:, :, 1] += Ww - 1
    relative_coords[:, :, 0] *= 2 * Ww - 1
    return relative_coords.sum(-1)


def swin_bias(table, Wh, Ww):
    idx = swin_relative_position_index(Wh, Ww)
    return table[idx.view(-1)].view(Wh * Ww, Wh * Ww, -1).permute(2, 0, 1)  # (H, N, N)


def window_partition(x, Wh, Ww):
    B, Hg, Wg, C = x.shape
    x = x.view(B, Hg // Wh, Wh, Wg // Ww, Ww, C)
    return x.permute(0, 1, 3, 2, 4, 5).contiguous().view(-1, Wh, Ww, C)


def swin_attn_mask(Hg, Wg, Wh, Ww, s):
    """(num_windows, N, N) with 0 / -100 as Swin builds it (``None`` when not shifted)."""
    if s == 0:
        return None
    img_mask = torch.zeros((1, Hg, Wg, 1))
    h_slices = (slice(0, -Wh), slice(-Wh, -s), slice(-s, None))
    w_slices = (slice(0, -Ww), slice(-Ww, -s), slice(-s, None))
    cnt = 0
    for hs in h_slices:
        for ws in w_slices:
            img_mask[:, hs, ws, :] = cnt
            cnt += 1
    mask_windows = window_partition(img_mask, Wh, Ww).view(-1, Wh * Ww)
    attn_mask = mask_windows.unsqueeze(1) - mask_windows.unsqueeze(2)
    return attn_mask.masked_fill(attn_mask != 0, float(-100.0)).masked_fill(attn_mask == 0, float(0.0))


def swin_attention(q, k, v, table, grid, window, s):
    """Swin block attention on the full grid: roll, partition, biased + masked softmax, reverse."""
    B, Hh, L, D = q.shape
    (Hg, Wg), (Wh, Ww) = grid, window

    def part(x):  # (B, H, L, D) -> (B * nW, H, N, D)
        x = x.permute(0, 2, 1, 3).reshape(B, Hg, Wg, Hh * D)
        x = torch.roll(x, shifts=(-s, -s), dims=(1, 2)) if s else x
        return window_partition(x, Wh, Ww).view(-1, Wh * Ww, Hh, D).transpose(1, 2)

    qw, kw, vw = part(q), part(k), part(v)
    attn = qw @ kw.transpose(-2, -1) * D ** -0.5 + swin_bias(table, Wh, Ww).unsqueeze(0)
    mask = swin_attn_mask(Hg, Wg, Wh, Ww, s)
    if mask is not None:
        nW = mask.shape[0]
        attn = attn.view(-1, nW, Hh, Wh * Ww, Wh * Ww) + mask.unsqueeze(1).unsqueeze(0)
        attn = attn.view(-1, Hh, Wh * Ww, Wh * Ww)
    out = attn.softmax(-1) @ vw  # (B * nW, H, N, D)
    out = out.transpose(1, 2).reshape(B, Hg // Wh, Wg // Ww, Wh, Ww, Hh * D)
    out = out.permute(0, 1, 3, 2, 4, 5).reshape(B, Hg, Wg, Hh * D)
    out = torch.roll(out, shifts=(s, s), dims=(1, 2)) if s else out
    return out.view(B, L, Hh, D).transpose(1, 2)


def _random_table(rel):
    with torch.no_grad():
        rel.relative_position_bias_table.uniform_(-1, 1)
    return rel


# ---- GridRelativeBias ------------------------------------------------------------------------
@pytest.mark.parametrize("window", [(7, 7), (3, 5)])
def test_relative_bias_is_swins_formula(window):
    rel = _random_table(GridRelativeBias(H, window))
    Wh, Ww = window
    assert torch.equal(rel.relative_position_index, swin_relative_position_index(Wh, Ww))
    ref = swin_bias(rel.relative_position_bias_table, Wh, Ww)
    torch.testing.assert_close(rel.dense_bias(1, H, Wh * Ww, Wh * Ww)[0], ref, rtol=0, atol=0)
    assert "relative_position_index" not in rel.state_dict()


def test_resize_same_size_is_identity_and_load_resizes():
    rel = _random_table(GridRelativeBias(H, 7))
    before = rel.relative_position_bias_table.detach().clone()
    assert torch.equal(rel.resize(7).relative_position_bias_table, before)

    sd = rel.state_dict()
    sd["relative_position_index"] = swin_relative_position_index(7, 7)  # Swin checkpoints carry it
    big = GridRelativeBias(H, (12, 12))
    big.load_state_dict(sd)  # strict: the derived index is dropped, the table resized
    assert big.relative_position_bias_table.shape == (23 * 23, H)
    bias = big.dense_bias(1, H, 144, 144)
    assert torch.isfinite(bias).all()
    # the same as resizing explicitly; the centre offset (0, 0) keeps roughly its value
    torch.testing.assert_close(big.relative_position_bias_table, _copy(rel).resize(12).relative_position_bias_table)
    assert torch.equal(big.relative_position_index, swin_relative_position_index(12, 12))
    centre = before.view(13, 13, H)[6, 6]
    assert (big.relative_position_bias_table.view(23, 23, H)[11, 11] - centre).abs().max() < 0.5


def _copy(rel):
    new = GridRelativeBias(H, rel.window_size)
    new.load_state_dict(rel.state_dict())
    return new


def test_window_batched_backends_agree():
    assert_backends_agree(lambda: _random_table(GridRelativeBias(H, (4, 4))), B=6, H=H, Lq=16, Lk=16)


# ---- windows on the full grid and partitioned --------------------------------------------------
GRID, WINDOW = (8, 12), (4, 4)


@pytest.mark.parametrize("shift", [0, 2])
def test_full_grid_window_attention_equals_swin(shift):
    rel = WindowMask(GRID, WINDOW, shift) & _random_table(GridRelativeBias(H, WINDOW, GRID))
    L = GRID[0] * GRID[1]
    q, k, v = make_qkv(2, H, L, L, 8, requires_grad=False)
    table = rel.parts[1].relative_position_bias_table.detach()
    ref = swin_attention(q, k, v, table, GRID, WINDOW, shift)
    torch.testing.assert_close(relformer.attend(q, k, v, rel, backend="eager"), ref, atol=1e-5, rtol=0)
    if shift:  # the mask itself: same window of the rolled grid and same Swin region
        m = WindowMask(GRID, WINDOW, shift).dense_mask(1, 1, L, L)[0, 0]
        ids = torch.roll(torch.arange(L).view(GRID), (-shift, -shift), (0, 1))  # token at each rolled slot
        wins = window_partition(ids[None, :, :, None], *WINDOW).view(-1, 16)  # (nW, N) token ids
        expect = torch.zeros(L, L, dtype=torch.bool)
        for w, am in zip(wins, swin_attn_mask(*GRID, *WINDOW, shift)):
            expect[w[:, None], w[None, :]] = am == 0
        assert torch.equal(m, expect)


def test_full_grid_backends_agree():
    L = GRID[0] * GRID[1]
    assert_backends_agree(lambda: WindowMask(GRID, WINDOW, 2) & _random_table(GridRelativeBias(H, WINDOW, GRID)),
                          B=2, H=H, Lq=L, Lk=L)


def test_shifted_window_regions_are_swins_mask():
    am = swin_attn_mask(*GRID, *WINDOW, 2)  # (nW, N, N)
    rel = ShiftedWindowRegions(WINDOW, GRID, 2)
    nW = am.shape[0]
    m = rel.dense_mask(3 * nW, 1, 16, 16)[:, 0]  # batch = 3 images * nW windows
    assert torch.equal(m, (am == 0).repeat(3, 1, 1))


def test_partitioned_shifted_backends_agree():
    nW = (GRID[0] // WINDOW[0]) * (GRID[1] // WINDOW[1])
    assert_backends_agree(lambda: ShiftedWindowRegions(WINDOW, GRID, 2) & _random_table(GridRelativeBias(H, WINDOW)),
                          B=2 * nW, H=H, Lq=16, Lk=16)


def test_window_validation():
    with pytest.raises(ValueError, match="divisible"):
        WindowMask((8, 10), 4)
    with pytest.raises(ValueError, match="shift"):
        WindowMask((8, 8), 4, shift=4)
    with pytest.raises(ValueError, match="num_windows"):
        ShiftedWindowRegions(4, (8, 8), 2).check(5, H, 16, 16)
    with pytest.raises(ValueError, match="grid_size"):
        GridRelativeBias(H, 4, (8, 8)).check(1, H, 63, 64)
    with pytest.raises(ValueError, match="heads"):
        GridRelativeBias(H, 4).check(1, H + 1, 16, 16)


# ---- RMT Manhattan decay -----------------------------------------------------------------------
def test_manhattan_decay_formula():
    rel = ManhattanDecay(H, (5, 7), initial_value=2.0, heads_range=4.0)
    got = rel.dense_bias(1, H, 35, 35)[0]
    for h in range(H):
        log_gamma = math.log(1 - 2 ** (-2.0 - 4.0 * h / H))
        for n in (0, 8, 34):
            for m in (0, 13, 34):
                d = abs(n // 7 - m // 7) + abs(n % 7 - m % 7)
                assert abs(got[h, n, m].item() - log_gamma * d) < 1e-5
    assert not list(rel.parameters()) and "log_decay" not in rel.state_dict()


def test_manhattan_decay_backends_agree():
    assert_backends_agree(lambda: ManhattanDecay(H, (5, 7)), B=2, H=H, Lq=35, Lk=35)
