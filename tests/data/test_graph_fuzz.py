"""Fuzzing GraphBatch construction (hypothesis): random graph counts and sizes (0 and 1 included),
edges, feature dtypes, and one corruption at a time (out-of-range, negative or cross-graph edges,
wrong dtypes and shapes, NaN / inf features, bad offsets, non-tensors).

Properties: a valid batch constructs and round-trips (unpacked into graphs and collated again it is
the same batch; moving it keeps it equal); an invalid one raises ValueError or TypeError whose
message names the corrupted argument, never another exception. Bounded: 50 examples per property."""
from __future__ import annotations

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from relformer.data.graph import GraphBatch
from tests.fuzz import budget

FUZZ = settings(budget(50), database=None)  # 25x under RELFORMER_FUZZ=deep; no example database written to the tree


@st.composite
def graph_batches(draw) -> dict:
    """The keyword arguments of a valid GraphBatch: G graphs of 0..6 nodes, edges inside each."""
    sizes = draw(st.lists(st.integers(0, 6), min_size=0, max_size=5))
    seed = draw(st.integers(0, 2**16))
    g = torch.Generator().manual_seed(seed)
    ptr = torch.tensor([0, *sizes]).cumsum(0)
    edges = []
    for k, n in enumerate(sizes):
        m = draw(st.integers(0, 8)) if n else 0
        edges.append(torch.randint(0, max(n, 1), (2, m), generator=g) + int(ptr[k]))
    edge_index = torch.cat(edges, 1) if edges else torch.zeros(2, 0, dtype=torch.long)
    N, E, G = int(ptr[-1]), edge_index.shape[1], len(sizes)
    if draw(st.booleans()):
        x = torch.randn(N, draw(st.integers(1, 3)), generator=g)
    else:
        x = torch.randint(0, 5, (N,), generator=g, dtype=draw(st.sampled_from([torch.int32, torch.int64])))
    edge_attr = draw(st.sampled_from([None, "float", "long"]))
    if edge_attr == "float":
        edge_attr = torch.randn(E, 2, generator=g)
    elif edge_attr == "long":
        edge_attr = torch.randint(0, 4, (E,), generator=g)
    y = torch.randn(G, generator=g) if draw(st.booleans()) else None
    lap_pe = torch.randn(N, 2, generator=g) if draw(st.booleans()) else None
    return dict(x=x, edge_index=edge_index.to(draw(st.sampled_from([torch.int32, torch.int64]))), ptr=ptr,
                edge_attr=edge_attr, y=y, lap_pe=lap_pe)


def _graphs(batch: GraphBatch) -> list[dict]:
    """The batch unpacked into per-graph mappings with local node ids (what from_list collates)."""
    out = []
    for k in range(batch.num_graphs):
        lo, hi = int(batch.ptr[k]), int(batch.ptr[k + 1])
        keep = (batch.edge_index[0] >= lo) & (batch.edge_index[0] < hi)
        item = dict(x=batch.x[lo:hi], edge_index=batch.edge_index[:, keep] - lo)
        if batch.edge_attr is not None:
            item["edge_attr"] = batch.edge_attr[keep]
        if batch.y is not None:
            item["y"] = batch.y[k]
        if batch.lap_pe is not None:
            item["lap_pe"] = batch.lap_pe[lo:hi]
        out.append(item)
    return out


def _assert_same(a: GraphBatch, b: GraphBatch) -> None:
    for name in ("x", "edge_index", "ptr", "edge_attr", "y", "lap_pe"):
        u, v = getattr(a, name), getattr(b, name)
        assert (u is None) == (v is None), name
        if u is not None:
            assert torch.equal(u.long() if not u.is_floating_point() else u,
                               v.long() if not v.is_floating_point() else v), name


@FUZZ
@given(graph_batches())
def test_valid_batches_construct_and_round_trip(kwargs):
    batch = GraphBatch(**kwargs)
    assert batch.num_nodes == kwargs["x"].shape[0] and batch.num_edges == kwargs["edge_index"].shape[1]
    assert batch.ptr.dtype == torch.long and batch.edge_index.dtype == torch.long
    assert batch.batch.shape == (batch.num_nodes,) and int(batch.sizes.sum()) == batch.num_nodes
    if batch.num_graphs and batch.edge_index.numel():  # edges sorted by source stay in order per graph
        order = torch.argsort(batch.edge_index[0], stable=True)
        batch = GraphBatch(batch.x, batch.edge_index[:, order], batch.ptr,
                           None if batch.edge_attr is None else batch.edge_attr[order], batch.y, batch.lap_pe)
    if batch.num_graphs:
        _assert_same(GraphBatch.from_list(_graphs(batch)), batch)
    _assert_same(batch.to("cpu"), batch)


def _cross_graph_edge(kw: dict, draw) -> tuple[dict, str] | None:
    sizes = (kw["ptr"][1:] - kw["ptr"][:-1]).tolist()
    nonempty = [k for k, n in enumerate(sizes) if n]
    if len(nonempty) < 2:
        return None
    a, b = draw(st.permutations(nonempty))[:2]
    edge = torch.tensor([[int(kw["ptr"][a])], [int(kw["ptr"][b])]], dtype=kw["edge_index"].dtype)
    extra = {}
    if kw["edge_attr"] is not None:
        extra["edge_attr"] = torch.cat([kw["edge_attr"], kw["edge_attr"][:1].clone() if kw["edge_attr"].numel()
                                        else torch.zeros(1, *kw["edge_attr"].shape[1:], dtype=kw["edge_attr"].dtype)])
    return dict(kw, edge_index=torch.cat([kw["edge_index"], edge], 1), **extra), "edge_index"


def _corrupt(kw: dict, kind: str, draw) -> tuple[dict, str] | None:
    """``kw`` with one corruption of ``kind`` and the argument an error must name (None: not applicable)."""
    N, E, G = kw["x"].shape[0], kw["edge_index"].shape[1], kw["ptr"].numel() - 1
    ei = kw["edge_index"]
    if kind == "edge out of range":
        return dict(kw, edge_index=torch.cat([ei, torch.tensor([[0], [N]], dtype=ei.dtype)], 1),
                    edge_attr=None), "edge_index"
    if kind == "negative edge" and E:
        bad = ei.clone()
        bad[draw(st.integers(0, 1)), draw(st.integers(0, E - 1))] = -1
        return dict(kw, edge_index=bad), "edge_index"
    if kind == "cross-graph edge":
        return _cross_graph_edge(kw, draw)
    if kind == "float edge_index":
        return dict(kw, edge_index=ei.float()), "edge_index"
    if kind == "edge_index shape":
        return dict(kw, edge_index=ei.reshape(1, 2, E)), "edge_index"
    if kind == "NaN x" and kw["x"].is_floating_point() and N:
        x = kw["x"].clone()
        x[draw(st.integers(0, N - 1)), 0] = draw(st.sampled_from([float("nan"), float("inf"), -float("inf")]))
        return dict(kw, x=x), "x"
    if kind == "bool x":
        return dict(kw, x=torch.zeros(N, dtype=torch.bool)), "x"
    if kind == "3-D x":
        return dict(kw, x=torch.zeros(N, 2, 2)), "x"
    if kind == "list x":
        return dict(kw, x=kw["x"].tolist()), "x"
    if kind == "edge_attr rows" and kw["edge_attr"] is not None:
        return dict(kw, edge_attr=kw["edge_attr"][1:] if E else torch.zeros(1, dtype=torch.long)), "edge_attr"
    if kind == "NaN edge_attr" and kw["edge_attr"] is not None and kw["edge_attr"].is_floating_point() and E:
        attr = kw["edge_attr"].clone()
        attr[0, 0] = float("nan")
        return dict(kw, edge_attr=attr), "edge_attr"
    if kind == "ptr end":
        return dict(kw, ptr=torch.cat([kw["ptr"][:-1], kw["ptr"][-1:] + 1])), "ptr"
    if kind == "ptr decreasing" and G >= 2 and int(kw["ptr"][1]) > 0:
        ptr = kw["ptr"].clone()
        ptr[1] = int(ptr[-1]) + 1
        return dict(kw, ptr=ptr), "ptr"
    if kind == "float ptr":
        return dict(kw, ptr=kw["ptr"].float()), "ptr"
    if kind == "list ptr":
        return dict(kw, ptr=kw["ptr"].tolist()), "ptr"
    if kind == "y rows":
        return dict(kw, y=torch.zeros(G + 1)), "y"
    if kind == "lap_pe rows":
        return dict(kw, lap_pe=torch.zeros(N + 1, 2)), "lap_pe"
    return None


KINDS = ["edge out of range", "negative edge", "cross-graph edge", "float edge_index", "edge_index shape", "NaN x",
         "bool x", "3-D x", "list x", "edge_attr rows", "NaN edge_attr", "ptr end", "ptr decreasing", "float ptr",
         "list ptr", "y rows", "lap_pe rows"]


@FUZZ
@given(graph_batches(), st.sampled_from(KINDS), st.data())
def test_invalid_batches_raise_naming_the_argument(kwargs, kind, data):
    corrupted = _corrupt(kwargs, kind, data.draw)
    assume(corrupted is not None)  # the corruption must apply to this batch (e.g. not NaN in integer features)
    bad, name = corrupted
    with pytest.raises((ValueError, TypeError)) as info:
        GraphBatch(**bad)
    assert name in str(info.value), f"{kind}: {info.value!r} does not name {name}"
