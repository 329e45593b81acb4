"""Every sequence relation agrees on every backend, forward and backward (tables included)."""
import pytest
import torch

from relformer.relations import ALiBi, Causal, Documents, RelativeBias, SlidingWindow, T5Bias, URPE
from tests.equivalence import assert_backends_agree

H = 4


def _segments(B, L, n, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, n, (B, L), generator=g).sort(-1).values


def _random_table(rel, low=-1.0, high=1.0):
    with torch.no_grad():
        rel.table.uniform_(low, high)
    return rel


RELATIONS = {
    "causal": lambda Lq, Lk: Causal(),
    "causal_offset": lambda Lq, Lk: Causal(offset=Lk - Lq),
    "window": lambda Lq, Lk: SlidingWindow(5),
    "window_causal": lambda Lq, Lk: SlidingWindow(7, causal=True),
    "documents": lambda Lq, Lk: Documents(_segments(2, Lq, 3, 1), _segments(2, Lk, 3, 2)),
    "relative": lambda Lq, Lk: _random_table(RelativeBias(H, 8)),
    "t5": lambda Lq, Lk: T5Bias(H, num_buckets=16, max_distance=32),
    "t5_causal": lambda Lq, Lk: T5Bias(H, num_buckets=16, max_distance=32, bidirectional=False),
    "alibi": lambda Lq, Lk: ALiBi(H),
    "urpe": lambda Lq, Lk: _random_table(URPE(H, 6), 0.5, 1.5),
    "documents&relative": lambda Lq, Lk: Documents(_segments(2, Lq, 3, 1), _segments(2, Lk, 3, 2))
    & _random_table(RelativeBias(H, 8)),
    "causal+alibi+urpe": lambda Lq, Lk: Causal(Lk - Lq) & ALiBi(H) & _random_table(URPE(H, 6), 0.5, 1.5),
}

SHAPES = [  # (B, Lq, Lk, Hkv): Lq != Lk, one token, batch 1, grouped-query
    (2, 37, 53, None),
    (1, 1, 1, None),
    (1, 1, 20, None),
    (2, 130, 130, 2),
]


@pytest.mark.parametrize("name", list(RELATIONS))
@pytest.mark.parametrize("B,Lq,Lk,Hkv", SHAPES)
@pytest.mark.slow
def test_backends_agree(name, B, Lq, Lk, Hkv):
    if name == "documents" or name == "documents&relative":
        make = lambda: Documents(_segments(B, Lq, 3, 1), _segments(B, Lk, 3, 2)) if name == "documents" else (
            Documents(_segments(B, Lq, 3, 1), _segments(B, Lk, 3, 2)) & _random_table(RelativeBias(H, 8)))
    else:
        make = lambda: RELATIONS[name](Lq, Lk)
    rel = make()
    backends = ["chunked"] + ([] if rel.has_prob else ["sdpa", "flex"])
    assert_backends_agree(lambda: rel, B=B, H=H, Lq=Lq, Lk=Lk, D=16, Hkv=Hkv, backends=backends)


def test_chunked_small_tiles_agree():
    """Many tiles, including skipped all-masked tiles and ragged tail tiles."""
    from relformer.attention.chunked import chunked_attention
    from tests.equivalence import make_qkv

    rel = SlidingWindow(10) & _random_table(RelativeBias(H, 8))
    q, k, v = make_qkv(2, H, 150, 150, 16)
    ref = __import__("relformer").attend(q, k, v, rel, backend="eager")
    (ref ** 2).sum().backward()
    ref_grads = [t.grad.clone() for t in (q, k, v, *rel.parameters())]
    for t in (q, k, v, *rel.parameters()):
        t.grad = None
    out = chunked_attention(q, k, v, rel, scale=16 ** -0.5, tile_q=32, tile_k=24)
    (out ** 2).sum().backward()
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=0)
    for g, rg in zip([t.grad for t in (q, k, v, *rel.parameters())], ref_grads):
        torch.testing.assert_close(g, rg, atol=1e-5 * max(1, rg.abs().max().item()), rtol=1e-4)


def test_t5_bucket_matches_reference_formula():
    """Buckets equal HF T5's `_relative_position_bucket` (re-derived here independently)."""
    import math

    rel = T5Bias(H, num_buckets=32, max_distance=128)
    rp = torch.arange(-300, 301)
    got = rel.bucket(rp)
    exp = []
    for r in rp.tolist():
        bucket = 16 if r > 0 else 0
        a = abs(r)
        if a < 8:
            exp.append(bucket + a)
        else:
            exp.append(bucket + min(15, 8 + int(math.log(a / 8) / math.log(128 / 8) * 8)))
    assert got.tolist() == exp


def test_alibi_slopes_match_paper():
    from relformer.relations.sequence import alibi_slopes

    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -(i + 1) for i in range(8)]))
    s12 = alibi_slopes(12)  # 8 from the power-of-2 sequence, then every other of the 16-sequence
    assert torch.allclose(s12[:8], alibi_slopes(8)) and torch.allclose(s12[8:], alibi_slopes(16)[0::2][:4])


def test_documents_padding_attends_nothing():
    seg = torch.tensor([[0, 0, 1, 1, -1, -1]])
    m = Documents(seg).dense_mask(1, 1, 6, 6)[0, 0]
    assert m[:4].sum(-1).tolist() == [2, 2, 2, 2] and not m[4:].any() and not m[:, 4:].any()


@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_urpe_cannot_be_fused(backend):
    from tests.equivalence import make_qkv
    import relformer

    q, k, v = make_qkv(1, H, 8, 8, 16, requires_grad=False)
    with pytest.raises(ValueError, match="post-softmax multiplier"):
        relformer.attend(q, k, v, URPE(H, 4), backend=backend)
    assert relformer.explain(q, k, v, URPE(H, 4)).backend in ("eager", "chunked")
