"""Todyformer, part by part against plain references written here: the patchifier against the
definition (equal-count patches in time order), the per-patch message passing against a loop over
queries, patches and nodes, the transformer over each node's tokens against dense attention per
group, the packed model against its padded layout (forward and backward); no leakage from the
queried event or later ones; a few training steps on a UCI prefix beat the untrained model."""
import math

import pytest
import torch
from torch.nn import functional as F

from relformer.data.temporal import EventStream, TemporalNeighborSampler, load_uci, sample_negatives
from relformer.models import create_model, list_models, model_config
from relformer.models.temporal import TemporalContext, Todyformer, TodyformerConfig
from relformer.models.temporal.time_encoding import TimeEncoder
from relformer.models.temporal.todyformer_layers import (GlobalBlock, LocalBlock, PatchGraph,
                                                         group_rows, patch_ids)
from relformer.tasks.temporal_metrics import link_prediction_metrics

TOL = dict(atol=1e-5, rtol=1e-5)


def _stream(seed=0, n=30, E=400, edge_dim=3):
    g = torch.Generator().manual_seed(seed)
    return EventStream(src=torch.randint(n, (E,), generator=g), dst=torch.randint(n, (E,), generator=g),
                       t=torch.randint(1000, (E,), generator=g).sort().values,
                       edge_features=torch.randn(E, edge_dim, generator=g) if edge_dim else None, num_nodes=n)


def _ctx(stream):
    return TemporalContext(stream, TemporalNeighborSampler(stream))


def _queries(stream, lo=150, hi=220):
    return stream.src[lo:hi], stream.t[lo:hi]


def test_patch_ids_follow_the_definition():
    g = torch.Generator().manual_seed(0)
    counts = torch.cat([torch.tensor([0, 1, 3, 4, 5]), torch.randint(0, 40, (50,), generator=g)])
    for M in (1, 4, 7):
        got = patch_ids(counts, M).tolist()
        ref = []
        for n in counts.tolist():
            P = min(n, M)
            ids = [j * P // n for j in range(n)]
            if n:  # P patches, each used, in time order, sizes differing by at most one
                sizes = [ids.count(p) for p in range(P)]
                assert ids == sorted(ids) and min(sizes) >= 1 and max(sizes) - min(sizes) <= 1
            ref += ids
        assert got == ref


def _reference_local(g, h, nb, edge_attr_e, conv):
    """GINE in every patch, by a loop over queries, patches and nodes (no PatchGraph index used)."""
    lookup = {}
    for i in range(g.num_tokens):
        key = (int(g.token_query[i]), int(g.token_patch[i]), "center" if g.is_center[i] else int(g.token_node[i]))
        assert key not in lookup
        lookup[key] = i
    agg = [torch.zeros(h.shape[1]) for _ in range(g.num_tokens)]
    off = nb.offsets.tolist()
    for q in range(len(off) - 1):
        n = off[q + 1] - off[q]
        P = max(1, min(n, g.num_patches))
        for j in range(n):
            e = off[q] + j
            p = j * min(n, g.num_patches) // n
            c, v = lookup[(q, p, "center")], lookup[(q, p, int(nb.nodes[e]))]
            w = conv.lin(edge_attr_e[e])
            agg[c] = agg[c] + torch.relu(h[v] + w)
            agg[v] = agg[v] + torch.relu(h[c] + w)
        assert all((q, p, "center") in lookup for p in range(P))
    assert len(lookup) == g.num_tokens  # no token beyond the query nodes' and the events' ones
    return conv.mlp(torch.stack(agg) + (1 + conv.eps) * h)


def test_patch_graph_message_passing_matches_a_loop():
    s = _stream(edge_dim=3)
    ctx = _ctx(s)
    nodes, times = _queries(s)
    nodes = torch.cat([nodes, torch.tensor([s.src[0]])])  # a query with no history
    times = torch.cat([times, s.t[:1]])
    nb = ctx.sampler.sample(nodes, times, 9)
    assert int(nb.counts[-1]) == 0 and int(nb.counts.max()) == 9
    g = PatchGraph.build(nodes, times, nb, 4)
    # groups: one node's tokens of one query, oldest patch first
    for a, b in zip(g.group_offsets[:-1].tolist(), g.group_offsets[1:].tolist()):
        assert len({int(x) for x in g.token_query[a:b]}) == 1 and len({int(x) for x in g.token_node[a:b]}) == 1
        assert len({bool(x) for x in g.is_center[a:b]}) == 1 and bool(g.token_patch[a:b].diff().gt(0).all())
    assert g.token_patch[g.readout].tolist() == [max(1, min(int(n), 4)) - 1 for n in nb.counts]
    # patches are windows in time: every event lies after the previous patch's latest event, and a
    # patch's time is its latest event's (the query time for an empty one)
    off = nb.offsets.tolist()
    for q in range(nodes.numel()):
        ts = nb.times[off[q]:off[q + 1]].tolist()
        n, P = len(ts), max(1, min(len(ts), 4))
        patch_of = [j * min(n, 4) // n for j in range(n)]
        ends = [max(t for t, p in zip(ts, patch_of) if p == m) for m in range(P)] if n else [int(times[q])]
        centers = (g.token_query == q) & g.is_center
        assert g.token_time[centers].tolist() == ends and ends == sorted(ends)
        assert all(p == 0 or t >= ends[p - 1] for t, p in zip(ts, patch_of))
    torch.manual_seed(0)
    block = LocalBlock(16, 3 + 8)
    h = torch.randn(g.num_tokens, 16, requires_grad=True)
    q_e = nb.query_ids()
    e_attr = torch.cat([s.edge_features[nb.edge_ids], TimeEncoder(8)(times[q_e] - nb.times)], 1).requires_grad_()
    got = block.conv(h, g.edge_index, e_attr[g.edge_entry])
    ref = _reference_local(g, h, nb, e_attr, block.conv)
    torch.testing.assert_close(got, ref, **TOL)
    w = torch.randn_like(got)
    grads = torch.autograd.grad((got * w).sum(), (h, e_attr, block.conv.lin.weight))
    ref_grads = torch.autograd.grad((ref * w).sum(), (h, e_attr, block.conv.lin.weight))
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, **TOL)


@pytest.mark.parametrize("padded", [False, True])
def test_global_block_attends_within_each_group(padded):
    g = torch.Generator().manual_seed(1)
    lengths = torch.randint(1, 6, (40,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    rows = group_rows(offsets, 5, padded=padded)
    flat = rows.index[rows.valid]
    assert sorted(flat.tolist()) == list(range(int(offsets[-1])))  # every token once
    assert (rows.valid.sum(1) <= 5).all() and (padded or rows.index.shape[0] < lengths.numel())
    torch.manual_seed(0)
    block = GlobalBlock(8, 2, pe_dim=4)
    T = int(offsets[-1])
    h, pe = torch.randn(T, 8, requires_grad=True), torch.randn(T, 4)
    got = block(h, pe, rows, rows.relation())
    outs = []  # reference: dense attention inside each group, one group at a time
    attn = block.attn
    for a, b in zip(offsets[:-1].tolist(), offsets[1:].tolist()):
        x = h[a:b]
        qk_in = block.norm1(x) + block.pos(pe[a:b])
        q, k, v = attn.qkv(qk_in).view(b - a, 3, 2, 4).unbind(1)  # (L, H, D)
        p = torch.softmax(torch.einsum("ihd,jhd->hij", q, k) / 2.0, -1)
        o = attn.proj(torch.einsum("hij,jhd->ihd", p, v).flatten(1))
        y = x + o
        outs.append(y + block.mlp(block.norm2(y)))
    ref = torch.cat(outs)
    torch.testing.assert_close(got, ref, **TOL)
    w = torch.randn_like(got)
    ga = torch.autograd.grad((got * w).sum(), (h, attn.qkv.weight))
    gb = torch.autograd.grad((ref * w).sum(), (h, attn.qkv.weight))
    for a, b in zip(ga, gb):
        torch.testing.assert_close(a, b, **TOL)


def _model(layout="packed", **kw):
    torch.manual_seed(0)
    return create_model("todyformer_micro", num_nodes=30, edge_feature_dim=3, layout=layout, **kw)


def test_packed_equals_padded_forward_and_backward():
    s = _stream()
    ctx = _ctx(s)
    packed, padded = _model("packed"), _model("padded")
    padded.load_state_dict(packed.state_dict())
    src, t = _queries(s)
    dst = s.dst[150:220]
    outs = []
    for m in (packed, padded):
        out = m(src, dst, t, ctx)
        (out * torch.linspace(-1, 1, out.numel())).sum().backward()
        outs.append(out)
    torch.testing.assert_close(outs[0], outs[1], **TOL)
    grads = dict(padded.named_parameters())
    for name, p in packed.named_parameters():
        if p.grad is None:
            assert grads[name].grad is None, name
            continue
        torch.testing.assert_close(p.grad, grads[name].grad, **TOL, msg=name)
    assert sum(p.grad is not None and p.grad.abs().sum() > 0 for p in packed.parameters()) >= len(
        list(packed.parameters())) - 1  # every weight is used (the unused one: the absent node projection)


def test_no_leakage_from_the_event_or_later_ones():
    s = _stream()
    model = _model().eval()
    g = torch.Generator().manual_seed(5)
    for i in (120, 200, 333):
        edited = EventStream(src=torch.cat([s.src[:i], torch.randint(30, (len(s) - i,), generator=g)]),
                             dst=torch.cat([s.dst[:i], torch.randint(30, (len(s) - i,), generator=g)]),
                             t=s.t, edge_features=torch.cat([s.edge_features[:i], torch.randn(len(s) - i, 3,
                                                                                               generator=g)]),
                             num_nodes=30)
        q = slice(i, i + 1)
        with torch.no_grad():
            a = model(s.src[q], s.dst[q], s.t[q], _ctx(s))
            b = model(s.src[q], s.dst[q], s.t[q], _ctx(edited))
        torch.testing.assert_close(a, b, atol=0, rtol=0)
        # the control: editing an earlier event of the queried source changes the output
        j = int(((s.src[:i] == s.src[i]) | (s.dst[:i] == s.src[i])).nonzero()[-1, 0])
        feats = s.edge_features.clone()
        feats[j] += 1.0
        changed = EventStream(src=s.src, dst=s.dst, t=s.t, edge_features=feats, num_nodes=30)
        with torch.no_grad():
            c = model(s.src[q], s.dst[q], s.t[q], _ctx(changed))
        assert not torch.allclose(a, c)


def _ap(model, stream, ctx, events, neg_dst):
    model.eval()
    with torch.no_grad():
        pos = model(stream.src[events], stream.dst[events], stream.t[events], ctx)
        neg = model(stream.src[events], neg_dst, stream.t[events], ctx)
    model.train()
    return link_prediction_metrics(pos, neg)["ap"]


@pytest.mark.slow
def test_a_few_training_steps_raise_ap_on_uci():
    uci = load_uci()
    s = uci[:3000]
    ctx = _ctx(s)
    torch.manual_seed(0)
    model = create_model("todyformer_micro", num_nodes=uci.num_nodes)
    val = torch.arange(2400, 3000)
    _, val_neg = sample_negatives(s, val, "random", seed=0)
    before = _ap(model, s, ctx, val, val_neg)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(16):
        b = torch.arange(200 + 130 * step, 300 + 130 * step)
        neg = torch.randint(uci.num_nodes, (b.numel(),), generator=g)
        logits = torch.cat([model(s.src[b], s.dst[b], s.t[b], ctx), model(s.src[b], neg, s.t[b], ctx)])
        loss = F.binary_cross_entropy_with_logits(logits, torch.cat([torch.ones(b.numel()), torch.zeros(b.numel())]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = _ap(model, s, ctx, val, val_neg)
    print(f"AP before {before:.3f}, after {after:.3f}")
    assert after > before + 0.05 and after > 0.6, (before, after)


def test_registered_variants_and_bad_input():
    assert {"todyformer", "todyformer_micro"} <= set(list_models())
    assert isinstance(model_config("todyformer"), TodyformerConfig)
    assert isinstance(create_model("todyformer_micro"), Todyformer)
    with pytest.raises(ValueError, match="num_patches .* must be <= num_neighbors"):
        model_config("todyformer_micro", num_patches=9)
    with pytest.raises(ValueError, match="layout must be one of"):
        model_config("todyformer_micro", layout="dense")
    with pytest.raises(ValueError, match="num_nodes must be a positive int"):
        model_config("todyformer_micro", num_nodes=0)
    with pytest.raises(ValueError, match="divisible by num_heads"):
        model_config("todyformer_micro", num_heads=3)
    s = _stream()
    model = _model()
    src, t = _queries(s)
    with pytest.raises(ValueError, match="edge features have width 3 but this Todyformer was built for "
                                         "edge_feature_dim=0"):
        create_model("todyformer_micro", num_nodes=30)(src, src, t, _ctx(s))
    with pytest.raises(ValueError, match="the stream has 30 nodes but this Todyformer was built for num_nodes=20"):
        create_model("todyformer_micro", num_nodes=20, edge_feature_dim=3)(src, src, t, _ctx(s))
    with pytest.raises(TypeError, match="ctx must be a TemporalContext"):
        model(src, src, t, s)
    with pytest.raises(ValueError, match="src, dst and t must be"):
        model(src, src[:3], t, _ctx(s))
    with pytest.raises(ValueError, match="nodes holds ids outside"):
        model(src + 100, src, t, _ctx(s))
    with pytest.raises(ValueError, match="times holds NaN"):
        model(src, src, torch.full((src.numel(),), math.nan, dtype=torch.float64), _ctx(s))
