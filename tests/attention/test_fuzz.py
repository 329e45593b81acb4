"""Fuzzing ``attend`` (issue 19): hypothesis draws shapes (0 and 1 included for B, H, Hkv, Lq, Lk,
D, Dv), dtypes (fp32, fp64, bf16), non-finite values (in q, k and the relation's own tensors),
every relation class of :mod:`relformer.relations` alone or composed with ``&``, and every backend.

Properties:

* bad input raises ``ValueError`` or ``TypeError`` and nothing else; valid input never raises;
* the output has the shape ``(B, H, Lq, Dv)`` and the dtype of q;
* every row agrees with a float64 eager reference (:func:`tests.attention.reference.reference`,
  tolerance by dtype) where the reference is finite, and is not finite where it is not;
* rows the mask leaves without any key are exactly zero.

Depth: the default profile (``relformer-fuzz``, fixed seed) keeps the file within about a minute on
one core; Flex, which compiles a kernel per shape and relation, runs a few fixed-shape examples.
``RELFORMER_FUZZ=deep`` (profiles registered in ``tests/attention/conftest.py``) runs 2,000
examples per property with a fresh seed, and Flex over every relation, for release checks.
"""
from __future__ import annotations

import pytest
import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from relformer import relations as R
from relformer.attention.relation import Relation
from tests.attention.conftest import FUZZ_DEEP
from tests.attention.reference import reference, run

PROFILE = settings.get_profile("relformer-fuzz-deep" if FUZZ_DEEP else "relformer-fuzz")
FLEX_PROFILE = settings.get_profile("relformer-fuzz-flex-deep" if FUZZ_DEEP else "relformer-fuzz-flex")
DTYPES = (torch.float32, torch.float64, torch.bfloat16)
SPECIALS = (float("nan"), float("inf"), float("-inf"))


def _grid(L: int, draw) -> tuple[int, int]:
    """A ``(Gh, Gw)`` with ``Gh * Gw == L`` (L >= 1)."""
    divisors = [d for d in range(1, L + 1) if L % d == 0]
    gw = draw(st.sampled_from(divisors))
    return L // gw, gw


def _divisor(n: int, draw) -> int:
    return draw(st.sampled_from([d for d in range(1, n + 1) if n % d == 0]))


def _randn(*shape, scale=1.0):
    return torch.randn(*shape) * scale


def _relation(draw, name: str, B: int, H: int, Lq: int, Lk: int):
    """One relation of class ``name`` fitted to the shapes (``H`` may differ from q's on purpose)."""
    L = max(Lq, 1)
    Lg = max(Lk, 1)
    ids = st.integers(-1, 2)
    if name == "Causal":
        return R.Causal(draw(st.integers(-2, 2)))
    if name == "SlidingWindow":
        return R.SlidingWindow(draw(st.integers(0, 4)), causal=draw(st.booleans()))
    if name == "Documents":
        seg = torch.tensor(draw(st.lists(ids, min_size=B * Lq, max_size=B * Lq))).view(B, Lq)
        kv = torch.tensor(draw(st.lists(ids, min_size=B * Lk, max_size=B * Lk))).view(B, Lk)
        return R.Documents(seg.long(), kv.long())
    if name == "RelativeBias":
        rel = R.RelativeBias(H, draw(st.integers(0, 4)))
        with torch.no_grad():
            rel.table.normal_()
        return rel
    if name == "T5Bias":
        return R.T5Bias(H, 8, 16, bidirectional=draw(st.booleans()))
    if name == "ALiBi":
        return R.ALiBi(H)
    if name == "URPE":
        rel = R.URPE(H, draw(st.integers(0, 3)))
        with torch.no_grad():
            rel.table.uniform_(0.5, 1.5)
        return rel
    if name == "GridRelativeBias":
        prefix = draw(st.integers(0, min(1, L - 1)))
        grid = _grid(L - prefix, draw)
        window = (_divisor(grid[0], draw), _divisor(grid[1], draw))
        return R.GridRelativeBias(H, window, grid, num_prefix_tokens=prefix)
    if name == "WindowMask":
        grid = _grid(L, draw)
        window = (_divisor(grid[0], draw), _divisor(grid[1], draw))
        return R.WindowMask(grid, window, shift=(draw(st.integers(0, window[0] - 1)), draw(st.integers(0, window[1] - 1))))
    if name == "ShiftedWindowRegions":
        window = _grid(L, draw)
        grid = (window[0] * draw(st.integers(1, 2)), window[1])
        return R.ShiftedWindowRegions(window, grid, (draw(st.integers(0, window[0] - 1)), 0))
    if name == "ManhattanDecay":
        return R.ManhattanDecay(H, _grid(L, draw))
    if name == "GraphAdjacency":
        return R.GraphAdjacency(torch.rand(B, Lq, Lk) < 0.4, self_loops=draw(st.booleans()))
    if name == "ShortestPathBias":
        return R.ShortestPathBias(H, draw(st.integers(0, 3))).bind(spd=torch.randint(-1, 5, (B, Lq, Lk)))
    E = draw(st.integers(0, 4))
    edge_ids = torch.randint(-1, E, (B, Lq, Lk)) if E else torch.full((B, Lq, Lk), -1)
    if name == "EdgeBias":
        return R.EdgeBias(H).bind_values(edge_ids, _randn(E, H))
    if name == "EdgeFeatureBias":
        return R.EdgeFeatureBias(3, H).bind_edges(edge_ids, _randn(E, 3))
    if name == "EdgePathBias":
        K = draw(st.integers(1, 3))
        paths = torch.randint(-1, E, (B, Lq, Lk, K)) if E else torch.full((B, Lq, Lk, K), -1)
        return R.EdgePathBias(H, K).bind_paths(paths, _randn(E, H))
    if name == "Pair3DBias":
        seg = torch.tensor(draw(st.lists(ids, min_size=B * Lg, max_size=B * Lg)), dtype=torch.long).view(B, Lg)
        return R.Pair3DBias(H, hidden=4).bind(centres=torch.rand(B, Lg, 3) * 4, sizes=torch.rand(B, Lg, 3) + 0.1,
                                              segment_ids=seg)
    assert name == "BoxRelationBias"
    return R.BoxRelationBias(H, embed_dim=4).bind(boxes=torch.rand(B, Lg, 4) * 0.5 + 0.1)


# every Relation relations exports (Rotary rotates q and k before attend: a transform, not a Relation)
RELATIONS = sorted(n for n in R.__all__ if isinstance(getattr(R, n), type) and issubclass(getattr(R, n), Relation))


def _poison(draw, tensors: list[torch.Tensor]) -> None:
    """Write a NaN or +-inf into one element of one of the float ``tensors`` (maybe none)."""
    floats = [t for t in tensors if t.is_floating_point() and t.numel()]
    if not floats or not draw(st.booleans()):
        return
    t = draw(st.sampled_from(floats))
    with torch.no_grad():
        where = torch.unravel_index(torch.tensor(draw(st.integers(0, t.numel() - 1))), t.shape)  # any strides
        t[where] = draw(st.sampled_from(SPECIALS))


@st.composite
def cases(draw, backends=("eager", "sdpa", "chunked", "auto"), fixed_shape=None, relation_names=RELATIONS,
          dtypes=DTYPES):
    backend = draw(st.sampled_from(backends))
    dtype = draw(st.sampled_from(dtypes))
    if fixed_shape is None:
        # sizes of 0 now and then (each alone is refused, except B = 0), of 1 often
        B, Hkv, groups = draw(st.sampled_from([0, 1, 1, 2, 2])), draw(st.sampled_from([0] + [1, 2] * 4)), draw(st.integers(1, 2))
        Lq = draw(st.sampled_from([0] + list(range(1, 10)) * 2))
        Lk = Lq if draw(st.integers(0, 3)) else draw(st.integers(0, 9))
        D, Dv = draw(st.sampled_from([0] + [1, 4, 8] * 3)), draw(st.sampled_from([0] + [1, 3] * 4))
    else:
        B, Hkv, groups, Lq, Lk, D, Dv = fixed_shape
    H = Hkv * groups
    torch.manual_seed(draw(st.integers(0, 2 ** 16)))
    scale = draw(st.sampled_from([1.0, 4.0]))
    q, k = _randn(B, H, Lq, D, scale=scale), _randn(B, Hkv, Lk, D, scale=scale)
    v = _randn(B, Hkv, Lk, Dv)
    relation = None
    names = draw(st.lists(st.sampled_from(relation_names), min_size=0, max_size=2))
    rel_heads = H if H and draw(st.integers(0, 9)) else max(1, H + 1)  # now and then a wrong head count
    for name in names:
        part = _relation(draw, name, B, rel_heads, Lq, Lk)
        relation = part if relation is None else relation & part
    if relation is not None and dtype == torch.float64 and draw(st.booleans()):
        relation = relation.double()
    _poison(draw, [q, k, *(relation.tensors() if relation is not None else ())])
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    grad = backend != "flex" and draw(st.booleans())
    return backend, q.requires_grad_(grad), k, v, relation


def _valid(backend, q, k, v, relation) -> bool:
    """Whether attend must accept these inputs (else it must refuse them with ValueError/TypeError)."""
    B, H, Lq, D = q.shape
    Hkv, Lk, Dv = k.shape[1], k.shape[2], v.shape[3]
    if min(H, Hkv, Lq, Lk, D, Dv) == 0 or H % Hkv:
        return False
    if relation is not None:
        try:
            relation.check(B, H, Lq, Lk)
        except ValueError:
            return False
        if relation.has_prob and backend in ("sdpa", "flex"):
            return False
    return not (backend == "flex" and q.dtype == torch.float64)


TOLERANCE = {torch.float64: 1e-9, torch.float32: 2e-4, torch.bfloat16: 0.08}


def _check(case):
    backend, q, k, v, relation = case
    valid = _valid(backend, q, k, v, relation)
    event(f"{backend} {'valid' if valid else 'invalid'}")
    try:
        out = run(q, k, v, relation, backend)
    except (ValueError, TypeError) as e:
        assert not valid, f"valid input refused on {backend}: {e}"
        assert str(e)
        return
    assert valid, f"invalid input accepted on {backend}"
    B, H, Lq, _ = q.shape
    assert out.shape == (B, H, Lq, v.shape[-1]) and out.dtype == q.dtype
    ref = reference(q, k, v, relation)
    finite = torch.isfinite(ref).all(-1)  # (B, H, Lq) rows
    got = out.detach().double()
    size = ref[finite].abs().max().item() if finite.any() else 0.0
    torch.testing.assert_close(got[finite], ref[finite], rtol=0, atol=TOLERANCE[q.dtype] * (1 + size))
    assert not torch.isfinite(got[~finite]).all(-1).any(), "a row the reference cannot finish came out finite"
    if relation is not None and relation.has_mask:
        dead = ~relation.dense_mask(B, H, Lq, k.shape[2]).any(-1).expand(B, H, Lq)
        assert (got[dead] == 0).all()


@PROFILE
@given(cases())
def test_fuzz_attend(case):
    _check(case)


@pytest.mark.slow  # Flex compiles a kernel per relation
@FLEX_PROFILE
@given(cases(backends=("flex",), fixed_shape=(1, 2, 1, 12, 12, 8, 8),
             relation_names=RELATIONS if FUZZ_DEEP else ["SlidingWindow", "ALiBi", "Documents", "RelativeBias"],
             dtypes=DTYPES if FUZZ_DEEP else (torch.float32, torch.float32, torch.float32, torch.bfloat16, torch.float64)))
def test_fuzz_flex(case):
    _check(case)
