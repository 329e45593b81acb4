"""EventStream validation, views, and DyGLib's chronological splits against their definition."""
import numpy as np
import pytest
import torch

from relformer.data.temporal import EventStream, chronological_split

from .streams import random_stream, uci


def _stream(**kw):
    base = dict(src=torch.tensor([0, 1, 2, 3]), dst=torch.tensor([1, 2, 3, 0]),
                t=torch.tensor([0.0, 1.0, 1.0, 2.0], dtype=torch.float64))
    base.update(kw)
    return EventStream(**base)


@pytest.mark.parametrize("kw, message", [
    (dict(t=torch.tensor([0.0, 2.0, 1.0, 3.0], dtype=torch.float64)), r"t must be sorted.*t\[2\]"),
    (dict(t=torch.tensor([0.0, float("nan"), 1.0, 3.0], dtype=torch.float64)), r"t holds NaN or inf at event 1"),
    (dict(t=torch.tensor([0, 1, 2, 3], dtype=torch.int32)), r"t must be a 1-D float64 or int64"),
    (dict(src=torch.tensor([0, 1, 7, 3]), num_nodes=4), r"src\[2\] = 7 is out of range \[0, 4\)"),
    (dict(dst=torch.tensor([1, -2, 3, 0])), r"dst holds a negative node id at event 1"),
    (dict(dst=torch.tensor([1, 2, 3])), r"dst has 3 events but t has 4"),
    (dict(src=torch.tensor([0.0, 1.0, 2.0, 3.0])), r"src must be a 1-D int32/int64"),
    (dict(edge_features=torch.tensor([[0.0], [1.0], [float("nan")], [2.0]])), r"edge_features holds NaN.*row 2"),
    (dict(edge_features=torch.zeros(3, 2)), r"edge_features has 3 rows but there are 4 events"),
    (dict(node_features=torch.tensor([[0.0], [float("inf")], [1.0], [2.0]])), r"node_features holds NaN.*row 1"),
    (dict(bipartite=True, num_src_nodes=2), r"dst\[2\] = 3|src\[2\] = 2 is out of range \[0, 2\)"),
    (dict(bipartite=True), r"num_src_nodes must be an int"),
    (dict(num_src_nodes=2), r"num_src_nodes is only for bipartite"),
    (dict(num_nodes=-1), r"num_nodes must be a non-negative int"),
])
def test_bad_streams_raise_naming_the_argument(kw, message):
    with pytest.raises(ValueError, match=message):
        _stream(**kw)


def test_views_keep_the_layout():
    s = _stream(edge_features=torch.arange(8.0).view(4, 2), node_features=torch.ones(5, 3))
    assert s.num_nodes == 5 and len(s) == 4
    part = s[1:3]
    assert part.num_nodes == 5 and part.src.tolist() == [1, 2] and part.edge_features.tolist() == [[2, 3], [4, 5]]
    assert part.node_features is s.node_features
    sel = s.select(torch.tensor([True, False, False, True]))
    assert sel.t.tolist() == [0.0, 2.0] and sel.dst.tolist() == [1, 0]
    assert s.select(torch.tensor([0, 3])).src.tolist() == [0, 3]
    with pytest.raises(ValueError, match="strictly increasing"):
        s.select(torch.tensor([3, 0]))
    with pytest.raises(TypeError, match="contiguous event range"):
        s[::2]
    moved = s.to("cpu")
    assert torch.equal(moved.t, s.t) and moved.num_nodes == 5


def test_bipartite_sides():
    s = EventStream(src=torch.tensor([0, 1]), dst=torch.tensor([2, 4]), t=torch.tensor([0, 5]), bipartite=True,
                    num_src_nodes=2, num_nodes=5)
    assert s.src_range == (0, 2) and s.dst_range == (2, 5)


def _dyglib_reference(stream, held_out):
    """DyGLib's masks written with Python sets, given its held-out node set."""
    src, dst, t = stream.src.tolist(), stream.dst.tolist(), stream.t.double().numpy()
    val_time, test_time = np.quantile(t, [0.70, 0.85])
    held = set(held_out)
    train = [(ti <= val_time) and s not in held and d not in held for s, d, ti in zip(src, dst, t)]
    train_nodes = {s for s, m in zip(src, train) if m} | {d for d, m in zip(dst, train) if m}
    new = [s not in train_nodes or d not in train_nodes for s, d in zip(src, dst)]
    val = [val_time < ti <= test_time for ti in t]
    test = [ti > test_time for ti in t]
    return dict(val_time=val_time, test_time=test_time, train=train, val=val, test=test,
                new_node_val=[a and b for a, b in zip(val, new)], new_node_test=[a and b for a, b in zip(test, new)])


@pytest.mark.parametrize("stream", [random_stream(), random_stream(float_times=True, seed=3), uci()],
                         ids=["random-ties", "random-float", "uci"])
def test_split_matches_dyglib_definition(stream):
    sp = chronological_split(stream)
    ref = _dyglib_reference(stream, sp.held_out.tolist())
    assert sp.val_time == pytest.approx(ref["val_time"], abs=1e-9) and sp.test_time == pytest.approx(ref["test_time"], abs=1e-9)
    for name in ("train", "val", "test", "new_node_val", "new_node_test"):
        assert getattr(sp, name).tolist() == ref[name], name
    # chronology: train <= val_time < val <= test_time < test
    t = stream.t.double()
    assert t[sp.train].max() <= sp.val_time < t[sp.val].min() and t[sp.val].max() <= sp.test_time < t[sp.test].min()
    # the held-out nodes: round_down(10% of the nodes), all seen after val_time, none in training
    nodes = torch.unique(torch.cat([stream.src, stream.dst]))
    assert sp.held_out.numel() == int(0.1 * nodes.numel())
    late = set(torch.cat([stream.src[t > sp.val_time], stream.dst[t > sp.val_time]]).tolist())
    assert set(sp.held_out.tolist()) <= late
    train = sp.events("train")
    assert not set(sp.held_out.tolist()) & set(torch.cat([train.src, train.dst]).tolist())
    # every event touching a held-out node after val_time is a new-node event
    held = torch.isin(stream.src, sp.held_out) | torch.isin(stream.dst, sp.held_out)
    assert not (held & sp.test & ~sp.new_node_test).any() and (held & sp.test).any()


def test_split_is_seeded_and_transductive_without_held_out_nodes():
    s = uci()
    assert torch.equal(chronological_split(s, seed=5).held_out, chronological_split(s, seed=5).held_out)
    assert not torch.equal(chronological_split(s, seed=5).held_out, chronological_split(s, seed=6).held_out)
    sp = chronological_split(s, new_node_ratio=0.0)
    assert sp.held_out.numel() == 0 and torch.equal(sp.train, s.t.double() <= sp.val_time)
    with pytest.raises(ValueError, match="val_ratio"):
        chronological_split(s, val_ratio=0)
    with pytest.raises(ValueError, match="new_node_ratio"):
        chronological_split(s, new_node_ratio=1.5)
    with pytest.raises(ValueError, match="name must be"):
        sp.events("valid")
