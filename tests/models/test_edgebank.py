"""EdgeBank (Poursafaei et al. 2022) against its definition (a set of seen edges, with their last
times), and its known behaviour on the real UCI stream: clearly better than chance under random
negatives, worse under historical ones (every historical negative is in its memory)."""
import pytest
import torch

from relformer.data.temporal import EventStream, chronological_split, load_uci, split_negatives
from relformer.models.temporal import EdgeBank
from relformer.tasks.temporal_metrics import link_prediction_metrics


def _random_stream(seed):
    g = torch.Generator().manual_seed(seed)
    return EventStream(src=torch.randint(20, (300,), generator=g), dst=torch.randint(20, (300,), generator=g),
                       t=torch.randint(100, (300,), generator=g).sort().values, num_nodes=20)


@pytest.mark.parametrize("mode, window", [("unlimited", None), ("time_window", 15)])
def test_predict_matches_the_definition(mode, window):
    s = _random_stream(0)
    bank = EdgeBank(20, mode, window).update(s[:120]).update(s[120:200])
    last = {}
    for a, b, t in zip(s.src[:200].tolist(), s.dst[:200].tolist(), s.t[:200].tolist()):
        last[(a, b)] = max(last.get((a, b), -1), t)
    g = torch.Generator().manual_seed(1)
    src, dst = torch.randint(20, (500,), generator=g), torch.randint(20, (500,), generator=g)
    t = torch.randint(60, 140, (500,), generator=g)
    got = bank.predict(src, dst, t)
    ref = [float((a, b) in last and (mode == "unlimited" or last[(a, b)] >= ti - window))
           for a, b, ti in zip(src.tolist(), dst.tolist(), t.tolist())]
    assert got.tolist() == ref and 0 < sum(ref) < 500
    assert len(bank) == len(last)


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="mode must be"):
        EdgeBank(5, "forever")
    with pytest.raises(ValueError, match="window must be a positive number"):
        EdgeBank(5, "time_window")
    with pytest.raises(ValueError, match="window is only for"):
        EdgeBank(5, window=3.0)
    bank = EdgeBank(20).update(_random_stream(0))
    with pytest.raises(ValueError, match="dst holds ids outside"):
        bank.predict(torch.tensor([0]), torch.tensor([20]))
    with pytest.raises(ValueError, match="t must be a tensor"):
        EdgeBank(20, "time_window", 5.0).predict(torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(TypeError, match="events must be an EventStream"):
        bank.update((torch.tensor([0]), torch.tensor([1])))
    assert EdgeBank(5).predict(torch.tensor([0, 1]), torch.tensor([2, 3])).tolist() == [0.0, 0.0]  # empty memory


def _stream_eval(bank, test, neg, batch=200):
    """DyGLib's protocol: score a batch, then remember its positive edges."""
    pos_s, neg_s = [], []
    for a in range(0, len(test), batch):
        part = test[a:a + batch]
        pos_s.append(bank.predict(part.src, part.dst, part.t))
        neg_s.append(bank.predict(neg[0][a:a + batch], neg[1][a:a + batch], part.t))
        bank.update(part)
    return link_prediction_metrics(torch.cat(pos_s), torch.cat(neg_s))


def test_uci_random_vs_historical_negatives():
    stream = load_uci()
    sp = chronological_split(stream)
    test = sp.events("test")
    seen = stream.select(sp.train | sp.val)
    window = float(test.t[-1] - test.t[0])  # the paper's time window: the test span
    ap = {}
    for mode, w in (("unlimited", None), ("time_window", window)):
        for strategy in ("random", "historical", "inductive"):
            bank = EdgeBank(stream.num_nodes, mode, w).update(seen)
            ap[mode, strategy] = _stream_eval(bank, test, split_negatives(sp, "test", strategy))["ap"]
    for mode in ("unlimited", "time_window"):
        assert ap[mode, "random"] > 0.65, ap
        assert ap[mode, "historical"] < ap[mode, "random"] - 0.1, ap
        assert ap[mode, "inductive"] < ap[mode, "random"], ap
