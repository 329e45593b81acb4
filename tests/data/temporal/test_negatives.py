"""Each negative-sampling strategy against its definition (Poursafaei et al. 2022), written with
Python sets over the events, on random streams and on the real UCI splits."""
import pytest
import torch

from relformer.data.temporal import (SPLIT_SEEDS, chronological_split, mrr_negatives, sample_negatives,
                                     split_negatives)

from .streams import random_stream, uci


def _edges(stream, keep):
    return {(s, d) for s, d, t in zip(stream.src.tolist(), stream.dst.tolist(), stream.t.tolist()) if keep(t)}


def _at(stream, time):
    return _edges(stream, lambda t: t == time)


def _check(stream, index, strategy, neg, pool_of, min_from_pool):
    """Every negative is either from its positive's pool (and not an edge of its own time step) or a
    random one (the positive's source, a destination of the stream); at least ``min_from_pool`` are
    from the pool; a positive whose pool has an edge off its time step gets one unless chosen random."""
    dests = set(stream.dst.tolist())
    from_pool = 0
    for i, e in enumerate(index.tolist()):
        s, t = int(stream.src[e]), float(stream.t[e])
        edge = (int(neg[0][i]), int(neg[1][i]))
        pool = pool_of(t) - _at(stream, t)
        if edge in pool:
            from_pool += 1
        else:
            assert edge[0] == s and edge[1] in dests, (i, edge, strategy)
    assert from_pool >= min_from_pool, (from_pool, min_from_pool)
    return from_pool


def test_random_negatives_keep_the_source_and_are_seeded():
    s = random_stream()
    idx = torch.arange(300, 400)
    a = sample_negatives(s, idx, "random", seed=0)
    assert torch.equal(a[0], s.src[idx]) and set(a[1].tolist()) <= set(s.dst.tolist())
    assert torch.equal(a[1], sample_negatives(s, idx, "random", seed=0)[1])
    assert not torch.equal(a[1], sample_negatives(s, idx, "random", seed=1)[1])
    assert len(set(a[1].tolist())) > 10  # spread over the destinations


@pytest.mark.parametrize("history", ["split", "event"])
def test_historical_negatives_match_the_definition(history):
    s = random_stream(num_events=500, num_nodes=15, time_values=80, seed=2)
    idx = torch.arange(350, 500)
    start = float(s.t[350])
    neg = sample_negatives(s, idx, "historical", seed=3, history=history, pool_fraction=1.0)
    bound = (lambda t: start) if history == "split" else (lambda t: t)
    # pool_fraction=1: every positive with a usable pool draws from it
    usable = sum(bool(_edges(s, lambda x, b=bound(float(s.t[e])): x < b) - _at(s, float(s.t[e]))) for e in idx.tolist())
    _check(s, idx, "historical", neg, lambda t: _edges(s, lambda x: x < bound(t)), usable)
    half = sample_negatives(s, idx, "historical", seed=3, history=history)
    _check(s, idx, "historical", half, lambda t: _edges(s, lambda x: x < bound(t)), 0.5 * usable - 10)
    # DyGLib's half from the pool, half random: the other half is exactly the random strategy's draw
    rnd = sample_negatives(s, idx, "random", seed=3)
    changed = int(((half[0] != rnd[0]) | (half[1] != rnd[1])).sum())
    assert 0.5 * usable - 10 <= changed <= len(idx) // 2
    none = sample_negatives(s, idx, "historical", seed=3, history=history, pool_fraction=0.0)
    assert torch.equal(none[0], rnd[0]) and torch.equal(none[1], rnd[1])


def test_inductive_negatives_are_never_training_edges():
    s = random_stream(num_events=500, num_nodes=15, time_values=80, seed=4)
    train_end = float(s.t[300])
    idx = torch.arange(400, 500)
    train_edges = _edges(s, lambda x: x <= train_end)
    neg = sample_negatives(s, idx, "inductive", seed=5, train_end=train_end, pool_fraction=1.0)
    pool_of = lambda t: _edges(s, lambda x: train_end < x < t) - train_edges  # noqa: E731
    usable = sum(bool(pool_of(float(s.t[e])) - _at(s, float(s.t[e]))) for e in idx.tolist())
    assert usable > 50
    _check(s, idx, "inductive", neg, pool_of, usable)
    with pytest.raises(ValueError, match="train_end"):
        sample_negatives(s, idx, "inductive", seed=0)


def test_uci_split_negatives_are_deterministic_and_follow_the_definitions():
    stream = uci()
    sp = chronological_split(stream)
    test = sp.events("test")
    idx = sp.test.nonzero().flatten()
    train_end = float(stream.t[sp.train].max())
    a = split_negatives(sp, "test", "historical")
    assert all(torch.equal(x, y) for x, y in zip(a, sample_negatives(stream, sp.test, "historical", seed=SPLIT_SEEDS["test"],
                                                                       train_end=train_end)))
    start = float(test.t[0])
    before = _edges(stream, lambda x: x < start)
    pairs = set(zip(*(x.tolist() for x in a)))
    assert len(pairs & before) > 0.4 * len(idx) / 2  # about half of the negatives are historical edges
    at = {}
    for s_, d_, t_ in zip(test.src.tolist(), test.dst.tolist(), test.t.tolist()):
        at.setdefault(t_, set()).add((s_, d_))
    ok = [((s_, d_) in before and (s_, d_) not in at[t_]) or s_ == p_
          for s_, d_, t_, p_ in zip(a[0].tolist(), a[1].tolist(), test.t.tolist(), test.src.tolist())]
    assert all(ok)
    ind = split_negatives(sp, "test", "inductive")
    train_edges = _edges(stream, lambda x: x <= train_end)
    n_ind = sum((e not in train_edges) and e in before for e in zip(*(x.tolist() for x in ind)))
    assert n_ind > 0.4 * len(idx) / 2
    rnd = split_negatives(sp, "test", "random")
    assert torch.equal(rnd[0], test.src) and not torch.equal(rnd[1], split_negatives(sp, "val", "random")[1][: len(test)])


def test_mrr_negatives_are_distinct_and_never_the_true_destination():
    stream = uci()
    idx = torch.arange(50000, 52000)
    neg = mrr_negatives(stream, idx, 100, seed=0, chunk_elements=1 << 16)  # several chunks
    assert neg.shape == (2000, 100)
    assert not (neg == stream.dst[idx, None]).any()
    assert all(len(set(row)) == 100 for row in neg.tolist())
    assert set(neg.flatten().tolist()) <= set(stream.dst.tolist())
    assert torch.equal(neg, mrr_negatives(stream, idx, 100, seed=0))  # seeded
    with pytest.raises(ValueError, match="num_negatives"):
        mrr_negatives(random_stream(num_nodes=5), torch.arange(3), 100, seed=0)


def test_bad_arguments_raise():
    s = random_stream()
    with pytest.raises(ValueError, match="strategy must be"):
        sample_negatives(s, torch.arange(3), "hard", seed=0)
    with pytest.raises(ValueError, match="events mask has"):
        sample_negatives(s, torch.ones(3, dtype=torch.bool), seed=0)
    with pytest.raises(ValueError, match="events holds indices outside"):
        sample_negatives(s, torch.tensor([1000]), seed=0)
    with pytest.raises(ValueError, match="pool_fraction"):
        sample_negatives(s, torch.arange(3), "historical", seed=0, pool_fraction=2)
    with pytest.raises(ValueError, match="history must be"):
        sample_negatives(s, torch.arange(3), "historical", seed=0, history="all")
