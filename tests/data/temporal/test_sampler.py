"""The temporal neighbour sampler against a brute-force per-query reference (most recent k strictly
before t; an event at the query time never leaks), on random streams and on the real UCI stream."""
import pytest
import torch

from relformer.data.packed import Packed
from relformer.data.temporal import TemporalNeighborSampler

from .streams import random_stream, uci


def _history(stream, node, time, undirected=True):
    """Brute force: (neighbour, event id, time) of every event of ``node`` strictly before ``time``,
    in event order (an event's source entry before its destination entry, as for a self-loop)."""
    out = []
    for e, (s, d, t) in enumerate(zip(stream.src.tolist(), stream.dst.tolist(), stream.t.tolist())):
        if t >= time:
            break
        if s == node:
            out.append((d, e, t))
        if undirected and d == node:
            out.append((s, e, t))
    return out


def _queries(stream, n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    e = torch.randint(len(stream), (n,), generator=g)
    nodes = torch.cat([stream.src[e], stream.dst[e], torch.randint(stream.num_nodes, (n,), generator=g)])
    times = torch.cat([stream.t[e], stream.t[e], stream.t[torch.randint(len(stream), (n,), generator=g)]])
    return nodes, times  # queries at event times: the ties at t must be excluded


def _check_recent(stream, nodes, times, k, undirected=True):
    got = TemporalNeighborSampler(stream, undirected=undirected).sample(nodes, times, k)
    counts = []
    for i, (v, t) in enumerate(zip(nodes.tolist(), times.tolist())):
        ref = _history(stream, v, t, undirected)[-k:]
        a, b = int(got.offsets[i]), int(got.offsets[i + 1])
        assert list(zip(got.nodes[a:b].tolist(), got.edge_ids[a:b].tolist(), got.times[a:b].tolist())) == ref, i
        assert all(x < t for x in got.times[a:b].tolist())  # strictly before: no future or same-step leakage
        counts.append(len(ref))
    assert got.counts.tolist() == counts


@pytest.mark.parametrize("k", [1, 5, 40])
@pytest.mark.parametrize("seed, float_times", [(0, False), (1, True), (2, False)])
def test_recent_matches_brute_force_on_random_streams(k, seed, float_times):
    s = random_stream(num_events=300, num_nodes=12, time_values=40, seed=seed, float_times=float_times)
    nodes, times = _queries(s, seed=seed)
    _check_recent(s, nodes, times, k)
    _check_recent(s, nodes, times, k, undirected=False)


def test_recent_matches_brute_force_on_uci():
    s = uci()[:6000]  # the Python-scan reference on a prefix
    nodes, times = _queries(s, n=60, seed=4)
    _check_recent(s, nodes, times, 20)
    # the whole stream against a per-query mask over all events (same order rule as _history)
    s = uci()
    nodes, times = _queries(s, n=100, seed=5)
    got = TemporalNeighborSampler(s).sample(nodes, times, 20)
    for i, (v, t) in enumerate(zip(nodes.tolist(), times.tolist())):
        e = (((s.src == v) | (s.dst == v)) & (s.t < t)).nonzero().flatten()
        own = torch.stack([s.src[e] == v, s.dst[e] == v], 1)  # (n, 2): the event's entries for v
        ref_nodes = torch.stack([s.dst[e], s.src[e]], 1)[own][-20:]
        ref_eids = torch.stack([e, e], 1)[own][-20:]
        a, b = int(got.offsets[i]), int(got.offsets[i + 1])
        assert torch.equal(got.nodes[a:b], ref_nodes) and torch.equal(got.edge_ids[a:b], ref_eids), i
        assert torch.equal(got.times[a:b], s.t[ref_eids])


def test_float_queries_on_integer_times():
    s = random_stream(seed=5)
    nodes, times = _queries(s, seed=5)
    sampler = TemporalNeighborSampler(s)
    a = sampler.sample(nodes, times.double() + 0.5, 7)  # t + 0.5: the events at t are now in the past
    b = sampler.sample(nodes, times + 1, 7)
    assert torch.equal(a.edge_ids, b.edge_ids) and torch.equal(a.offsets, b.offsets)


def test_uniform_draws_from_the_history_only_and_is_seeded():
    s = random_stream(seed=6)
    nodes, times = _queries(s, seed=6)
    sampler = TemporalNeighborSampler(s)
    got = sampler.sample(nodes, times, 16, "uniform", generator=torch.Generator().manual_seed(1))
    again = sampler.sample(nodes, times, 16, "uniform", generator=torch.Generator().manual_seed(1))
    other = sampler.sample(nodes, times, 16, "uniform", generator=torch.Generator().manual_seed(2))
    assert torch.equal(got.edge_ids, again.edge_ids) and not torch.equal(got.edge_ids, other.edge_ids)
    for i, (v, t) in enumerate(zip(nodes.tolist(), times.tolist())):
        ref = set(_history(s, v, t))
        a, b = int(got.offsets[i]), int(got.offsets[i + 1])
        entries = list(zip(got.nodes[a:b].tolist(), got.edge_ids[a:b].tolist(), got.times[a:b].tolist()))
        assert b - a == (16 if ref else 0) and set(entries) <= ref
        assert got.times[a:b].tolist() == sorted(got.times[a:b].tolist())


def test_uniform_covers_a_history_evenly():
    s = random_stream(num_events=200, num_nodes=4, seed=7)
    node, time = torch.tensor([0]), s.t[-1:]
    hist = _history(s, 0, float(time))
    n = len(set(hist))  # a self-loop's two entries are the same (neighbour, event)
    got = TemporalNeighborSampler(s).sample(node, time, 20000, "uniform", generator=torch.Generator().manual_seed(0))
    slots = torch.unique(torch.stack([got.edge_ids, got.nodes]), dim=1).shape[1]
    freq = torch.bincount(got.edge_ids, minlength=len(s)).double()
    per_slot = freq / torch.bincount(torch.tensor([e for _, e, _ in hist]), minlength=len(s)).clamp(min=1)
    assert slots == n  # every entry of the history drawn
    assert per_slot[freq > 0].std() / per_slot[freq > 0].mean() < 0.25  # ~20000 / len(hist) draws each


def test_packed_and_padded_views_agree():
    s = random_stream(seed=8)
    nodes, times = _queries(s, seed=8)
    got = TemporalNeighborSampler(s).sample(nodes, times, 6)
    ids, eids, ts, mask = got.to_padded()
    assert ids.shape == (nodes.numel(), 6) and torch.equal(mask.sum(1), got.counts)
    assert torch.equal(Packed.from_padded(eids, mask=mask).values, got.edge_ids)
    assert (ids[~mask] == -1).all() and torch.equal(ts[mask], got.times)
    assert torch.equal(got.query_ids(), Packed(got.nodes, got.offsets).segment_ids())
    with pytest.raises(ValueError, match="smaller than the largest"):
        got.to_padded(k=2)


def test_bad_queries_raise():
    sampler = TemporalNeighborSampler(random_stream())
    with pytest.raises(ValueError, match="nodes holds ids outside"):
        sampler.sample(torch.tensor([0, 99]), torch.tensor([1, 2]), 3)
    with pytest.raises(ValueError, match="times must be a tensor of the same shape"):
        sampler.sample(torch.tensor([0, 1]), torch.tensor([1]), 3)
    with pytest.raises(ValueError, match="k must be a positive int"):
        sampler.sample(torch.tensor([0]), torch.tensor([1]), 0)
    with pytest.raises(ValueError, match="strategy must be"):
        sampler.sample(torch.tensor([0]), torch.tensor([1]), 2, "latest")
    with pytest.raises(ValueError, match="times holds NaN"):
        sampler.sample(torch.tensor([0]), torch.tensor([float("nan")]), 2)
    with pytest.raises(TypeError, match="stream must be an EventStream"):
        TemporalNeighborSampler(None)
