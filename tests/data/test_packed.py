"""Packed batches: lossless round trips, row plans (first-fit decreasing), and attention on packed layouts
equals per-item attention."""
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import relformer
from relformer.data import Packed, plan_rows

lengths_st = st.lists(st.integers(0, 12), min_size=1, max_size=8).filter(lambda ls: sum(ls) > 0)


def _items(lengths, dim=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, dim, generator=g) for n in lengths]


@settings(max_examples=40, deadline=None)
@given(lengths=lengths_st, row_extra=st.integers(0, 10))
def test_round_trips(lengths, row_extra):
    items = _items(lengths)
    p = Packed.from_list(items)
    assert p.lengths.tolist() == lengths
    assert all(torch.equal(a, b) for a, b in zip(p.unpack(), items))
    padded, mask = p.to_padded()
    assert mask.sum(1).tolist() == lengths
    back = Packed.from_padded(padded, mask=mask)
    assert torch.equal(back.values, p.values) and torch.equal(back.offsets, p.offsets)
    assert torch.equal(Packed.from_padded(padded, lengths=torch.tensor(lengths)).values, p.values)
    rows = p.to_rows(max(lengths) + row_extra)
    assert torch.equal(rows.scatter(rows.gather(p.values)), p.values)
    # every item sits whole inside one row, positions restart at 0
    for i, n in enumerate(lengths):
        where = (rows.segment_ids == i).nonzero()
        assert len(where) == n
        if n:
            assert where[:, 0].unique().numel() == 1
            assert rows.positions[rows.segment_ids == i].tolist() == list(range(n))
    assert torch.equal(p.positions()[p.offsets[:-1][p.lengths > 0]], torch.zeros(int((p.lengths > 0).sum()), dtype=torch.long))


@settings(max_examples=15, deadline=None)
@given(lengths=lengths_st)
def test_packed_attention_equals_per_item(lengths):
    """Attention over rows (and over one long sequence) equals attending each item alone."""
    H, D = 2, 8
    items = _items(lengths, dim=H * D, seed=1)
    p = Packed.from_list(items)
    ref = []
    for x in items:
        if len(x) == 0:
            continue
        q = x.view(1, -1, H, D).transpose(1, 2)  # (1, H, L, D)
        ref.append(relformer.attend(q, q, q, backend="eager").transpose(1, 2).reshape(-1, H * D))
    ref = torch.cat(ref)

    rows = p.to_rows()
    x = rows.gather(p.values)  # (R, Lrow, H*D)
    R, L = x.shape[:2]
    q = x.view(R, L, H, D).transpose(1, 2)
    for backend in ("eager", "sdpa", "chunked"):
        out = relformer.attend(q, q, q, rows.relation(), backend=backend).transpose(1, 2).reshape(R, L, H * D)
        torch.testing.assert_close(rows.scatter(out), ref, atol=1e-5, rtol=0)

    q1 = p.values.view(1, -1, H, D).transpose(1, 2)
    out1 = relformer.attend(q1, q1, q1, p.relation(), backend="sdpa").transpose(1, 2).reshape(-1, H * D)
    torch.testing.assert_close(out1, ref, atol=1e-5, rtol=0)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="offsets"):
        Packed(torch.zeros(5, 2), torch.tensor([0, 2, 4]))
    with pytest.raises(ValueError, match="offsets"):
        Packed(torch.zeros(5, 2), torch.tensor([0, 3, 2, 5]))
    with pytest.raises(ValueError, match="offsets"):
        Packed(torch.zeros(5, 2), torch.tensor([0.0, 5.0]))
    with pytest.raises(ValueError, match="row_len"):
        Packed.from_list([torch.zeros(5, 2)]).to_rows(3)
    with pytest.raises(ValueError, match="empty"):
        Packed.from_list([])
    with pytest.raises(ValueError, match="lengths or mask"):
        Packed.from_padded(torch.zeros(2, 3, 1))


def test_plan_rows_first_fit_decreasing():
    lengths = [5, 17, 1, 9, 30, 2, 12, 30]
    plan = plan_rows(lengths)
    assert sorted(i for row in plan for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 30 for row in plan)
    assert plan[0] == [4] and plan[1] == [7]  # longest first, each alone in a full row
    assert len(plan) == 4  # 106 tokens: 17+12+1, 9+5+2 fill two more rows of 30
    assert plan_rows([3, 3, 3], row_len=9) == [[0, 1, 2]]
    assert plan_rows([]) == []
    with pytest.raises(ValueError, match="row_len"):
        plan_rows([4, 8], row_len=6)


def test_rows_from_a_plan():
    packed = Packed(torch.arange(10.0)[:, None], torch.tensor([0, 4, 5, 10]))
    rows = packed.to_rows(plan=[[2], [0, 1]])
    assert rows.index.tolist() == [[5, 6, 7, 8, 9], [0, 1, 2, 3, 4]]
    assert rows.segment_ids.tolist() == [[2] * 5, [0, 0, 0, 0, 1]]
    torch.testing.assert_close(rows.scatter(rows.gather(packed.values)), packed.values)
    with pytest.raises(ValueError, match="exactly once"):
        packed.to_rows(plan=[[0, 1]])
