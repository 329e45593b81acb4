"""DyGFormer (Yu et al. 2023) against DyGLib's computation and against plain references: the
neighbour co-occurrence counts against a brute-force count, the patching against a per-sequence pad
and reshape, the whole model pair by pair against DyGLib's ``DyGFormer`` written out here (its
dictionary counts, its padding, its ``TransformerEncoder`` on ``torch.nn.MultiheadAttention`` with the
same weights), packed == a padded twin (forward and backward), and no leakage from the event itself
or any later event."""
from __future__ import annotations

from collections import Counter

import pytest
import torch
import torch.nn.functional as F

from relformer.data.packed import Packed
from relformer.data.temporal import EventStream, TemporalNeighborSampler
from relformer.models import create_model
from relformer.models.temporal import DyGFormer, DyGFormerConfig, TemporalContext
from relformer.models.temporal.dygformer import cooccurrence_counts, patch_tokens
from relformer.relations import Documents

FEATURES = dict(num_nodes=15, node_feature_dim=3, edge_feature_dim=2, num_neighbors=5, patch_size=2, time_dim=6,
                channel_dim=4, depth=2, num_heads=2, output_dim=7, dropout=0.0)


def random_context(config: DyGFormerConfig, seed: int = 0, num_events: int = 160) -> TemporalContext:
    """A random stream (no self-loops, many tied times) with the config's feature widths, and its context."""
    g = torch.Generator().manual_seed(seed)
    n = config.num_nodes
    src = torch.randint(n, (num_events,), generator=g)
    dst = (src + torch.randint(1, max(n, 2), (num_events,), generator=g)) % n  # self-loops only if n = 1
    t = torch.randint(0, num_events // 2, (num_events,), generator=g).sort().values * 7
    nf = torch.randn(n, config.node_feature_dim, generator=g) if config.node_feature_dim else None
    ef = torch.randn(num_events, config.edge_feature_dim, generator=g) if config.edge_feature_dim else None
    s = EventStream(src=src, dst=dst, t=t, edge_features=ef, node_features=nf, num_nodes=n)
    return TemporalContext(s, TemporalNeighborSampler(s))


def _model(seed=0, **options) -> DyGFormer:
    torch.manual_seed(seed)
    return create_model("dygformer_micro", **{**FEATURES, **options}).eval()


def _queries(ctx, lo=60, hi=150, step=9):
    i = torch.arange(lo, hi, step)
    s = ctx.stream
    return s.src[i], torch.roll(s.dst[i], 1), s.t[i]


def test_cooccurrence_counts_match_a_brute_force_count():
    g = torch.Generator().manual_seed(0)
    sequences = [(torch.randint(6, (int(a),), generator=g), torch.randint(6, (int(b),), generator=g))
                 for a, b in torch.randint(1, 9, (12, 2), generator=g)]
    nodes, pair, side = [], [], []
    for i, (u, v) in enumerate(sequences):
        for s, seq in enumerate((u, v)):
            nodes.append(seq), pair.append(torch.full_like(seq, i)), side.append(torch.full_like(seq, s))
    got = cooccurrence_counts(torch.cat(nodes), torch.cat(pair), torch.cat(side), num_nodes=6)
    want = []
    for u, v in sequences:
        cu, cv = Counter(u.tolist()), Counter(v.tolist())
        want += [[cu[j], cv[j]] for j in u.tolist()] + [[cu[j], cv[j]] for j in v.tolist()]
    assert torch.equal(got, torch.tensor(want, dtype=torch.float32))


def test_patching_matches_a_padded_reshape():
    g = torch.Generator().manual_seed(1)
    P, F_ = 3, 4
    lengths = [1, 3, 4, 7, 2, 9]
    values = [torch.randn(L, F_, generator=g) for L in lengths]
    patches = [-(-L // P) for L in lengths]
    first = torch.tensor([0, *torch.tensor(patches).cumsum(0).tolist()[:-1]])
    slot = torch.cat([(first[q] + torch.arange(L) // P) * P + torch.arange(L) % P for q, L in enumerate(lengths)])
    got = patch_tokens(torch.cat(values), slot, sum(patches), P)
    want = torch.cat([F.pad(v, (0, 0, 0, n * P - len(v))).reshape(n, P * F_) for v, n in zip(values, patches)])
    assert torch.equal(got, want)


def _dyglib_history(s: EventStream, node: int, t, k: int) -> list[tuple[int, int, float]]:
    """DyGLib's get_all_first_hop_neighbors + cut: (neighbour, edge, time) strictly before t, both
    directions, event order, the last k."""
    out = [(int(b if a == node else a), e, float(te)) for e, (a, b, te) in
           enumerate(zip(s.src.tolist(), s.dst.tolist(), s.t.tolist())) if node in (a, b) and te < t]
    return out[-k:] if k else []


def _dyglib_pair(model: DyGFormer, ctx: TemporalContext, u: int, v: int, t: float) -> torch.Tensor:
    """DyGLib's DyGFormer for one pair (a batch of one: its padding only fills the last patch)."""
    c, s = model.config, ctx.stream
    P, C = c.patch_size, c.channel_dim
    seqs = [[(x, -1, float(t))] + _dyglib_history(s, x, t, c.num_neighbors) for x in (u, v)]
    counts = [Counter(n for n, _, _ in seq) for seq in seqs]
    tokens = []
    for seq in seqs:
        L = -(-len(seq) // P) * P
        node = torch.zeros(L, c.node_feature_dim)
        edge = torch.zeros(L, c.edge_feature_dim)
        time = torch.zeros(L, c.time_dim)
        co = torch.zeros(L, 2)
        for j, (n, e, tj) in enumerate(seq):
            node[j] = s.node_features[n]
            if e >= 0:
                edge[j] = s.edge_features[e]
            time[j] = torch.cos(torch.tensor(t - tj, dtype=torch.float64) * model.time_encoder.w).float()
            co[j] = torch.tensor([counts[0][n], counts[1][n]], dtype=torch.float32)
        f = model.cooccurrence
        co_x = (f.fc2(torch.relu(f.fc1(co.unsqueeze(-1))))).sum(-2)
        proj = model.projection
        tokens.append(torch.cat([proj["node"](node.reshape(-1, P * c.node_feature_dim)),
                                 proj["edge"](edge.reshape(-1, P * c.edge_feature_dim)),
                                 proj["time"](time.reshape(-1, P * c.time_dim)),
                                 proj["cooccurrence"](co_x.reshape(-1, P * C))], -1))
    x = torch.cat(tokens)[None]  # (1, T, 4C)
    for block in model.encoder.layers:  # DyGLib's TransformerEncoder on torch's MultiheadAttention
        mha = torch.nn.MultiheadAttention(4 * C, c.num_heads, batch_first=True)
        mha.in_proj_weight.data, mha.in_proj_bias.data = block.attn.qkv.weight.data, block.attn.qkv.bias.data
        mha.out_proj.weight.data, mha.out_proj.bias.data = block.attn.proj.weight.data, block.attn.proj.bias.data
        h = block.norm1(x)
        x = x + mha(h, h, h, need_weights=False)[0]
        x = x + block.mlp.fc2(F.gelu(block.mlp.fc1(block.norm2(x))))
    n_src = tokens[0].shape[0]
    h_src, h_dst = model.output(x[0, :n_src].mean(0)), model.output(x[0, n_src:].mean(0))
    return model.head(h_src[None], h_dst[None])[0]


@pytest.mark.slow
def test_equals_dyglibs_computation_pair_by_pair():
    model = _model()
    ctx = random_context(model.config, seed=2)
    src, dst, t = _queries(ctx, lo=0, hi=160, step=7)  # from empty to full histories
    got = model(src, dst, t, ctx)
    want = torch.stack([_dyglib_pair(model, ctx, int(a), int(b), float(c)) for a, b, c in zip(src, dst, t)])
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def _padded_twin(model: DyGFormer, src, dst, t, ctx):
    """Every pair padded to the longest (B, L, 4C), pads masked in attention and in the means."""
    seq = model.sequences(src, dst, t, ctx)
    B = src.numel()
    x, mask = Packed(model.tokens(seq, ctx), seq.item_offsets).to_padded()
    relation = Documents(torch.where(mask, 0, -1))
    for block in model.encoder.layers:
        x = block(x, relation)
    x = model.encoder.norm(x)
    pos = torch.arange(x.shape[1])
    n_src, n_dst = seq.patches[:B, None], seq.patches[B:, None]
    sides = [pos < n_src, (pos >= n_src) & (pos < n_src + n_dst)]
    h_src, h_dst = ((x * m[..., None]).sum(1) / m.sum(1, keepdim=True) for m in sides)
    return model.head(model.output(h_src), model.output(h_dst)), mask.numel(), int(mask.sum())


@pytest.mark.parametrize("patch_size", [1, 2])
def test_packed_equals_the_padded_twin_forward_and_backward(patch_size):
    packed, padded = _model(seed=3, patch_size=patch_size), _model(seed=3, patch_size=patch_size)
    ctx = random_context(packed.config, seed=4)
    src, dst, t = _queries(ctx, lo=0, hi=160, step=5)
    a = packed(src, dst, t, ctx)
    b, slots, real = _padded_twin(padded, src, dst, t, ctx)
    assert slots > real  # the batch has histories of different lengths: padding has work to skip
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    weights = torch.randn(a.shape, generator=torch.Generator().manual_seed(5))
    (a * weights).sum().backward()
    (b * weights).sum().backward()
    for (name, p), q in zip(packed.named_parameters(), padded.parameters()):
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)


def test_no_leakage_from_the_event_itself_or_later_events():
    model = _model(seed=6)
    ctx = random_context(model.config, seed=7)
    s = ctx.stream
    i = 100
    t_i = s.t[i]
    src = torch.cat([s.src[i:i + 1], torch.arange(5)])
    dst = torch.cat([s.dst[i:i + 1], torch.arange(5, 10)])
    t = t_i.repeat(src.numel())
    before = model(src, dst, t, ctx)
    g = torch.Generator().manual_seed(8)
    later = s.t >= t_i  # the event itself, its ties and everything after
    new_src, new_dst, new_ef = s.src.clone(), s.dst.clone(), s.edge_features.clone()
    new_src[later] = torch.randint(5, (int(later.sum()),), generator=g)
    new_dst[later] = new_src[later] + 5
    new_ef[later] = torch.randn(int(later.sum()), 2, generator=g)
    edited = EventStream(new_src, new_dst, s.t, new_ef, s.node_features, s.num_nodes)
    after = model(src, dst, t, TemporalContext(edited, TemporalNeighborSampler(edited)))
    assert torch.equal(before, after)
    without = s.select(~later)  # the event and all later ones removed
    assert torch.equal(before, model(src, dst, t, TemporalContext(without, TemporalNeighborSampler(without))))
    earlier = s.t < t_i  # the control: editing the past does change the output
    new_ef = s.edge_features.clone()
    new_ef[earlier] += 1.0
    past = EventStream(s.src, s.dst, s.t, new_ef, s.node_features, s.num_nodes)
    assert not torch.allclose(before, model(src, dst, t, TemporalContext(past, TemporalNeighborSampler(past))))


def test_bad_input_raises_clear_errors():
    model = _model()
    ctx = random_context(model.config)
    src, dst, t = _queries(ctx)
    with pytest.raises(ValueError, match="src holds ids outside"):
        model(src + 100, dst, t, ctx)
    with pytest.raises(ValueError, match="empty"):
        model(src[:0], dst[:0], t[:0], ctx)
    with pytest.raises(TypeError, match="ctx must be a TemporalContext"):
        model(src, dst, t, ctx.stream)
    other = random_context(DyGFormerConfig(**{**FEATURES, "edge_feature_dim": 0}))
    with pytest.raises(ValueError, match="edge_features of width 0, DyGFormerConfig.edge_feature_dim = 2"):
        model(src, dst, t, other)
    with pytest.raises(ValueError, match="num_heads"):
        DyGFormerConfig(channel_dim=5, num_heads=3)
    with pytest.raises(ValueError, match="patch_size"):
        DyGFormerConfig(patch_size=0)
