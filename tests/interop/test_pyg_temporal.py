"""PyG's TGN behind the temporal contract (``pyg_tgn``) against TGN's computation written out here with
the wrapper's own weights: the memory after ``observe`` (TGN Eq. 1-3 with identity messages and the
last message per node, in evaluation and in training mode, where PyG applies stored messages lazily),
and the embedding (the example's ``TransformerConv`` attention from the sampled neighbours' memory,
edge inputs ``[phi(t - t_j) | e_j]``), forward and backward; reset and bad input."""
import copy
import math

import pytest
import torch
from torch_geometric.nn import TransformerConv
from torch_geometric.nn.models import TGNMemory

from relformer.data.temporal import EventStream, TemporalNeighborSampler
from relformer.interop.pyg_temporal import PyGTGN, PyGTGNConfig
from relformer.models import create_model, list_models
from relformer.models.temporal import TemporalContext

TOL = dict(atol=1e-5, rtol=1e-5)
N, F_E = 12, 3


def _stream(seed=0, E=240):
    g = torch.Generator().manual_seed(seed)
    t = torch.randperm(5000, generator=g)[:E].sort().values  # distinct times: "the last message" is unique
    return EventStream(src=torch.randint(N, (E,), generator=g), dst=torch.randint(N, (E,), generator=g), t=t,
                       edge_features=torch.randn(E, F_E, generator=g), num_nodes=N)


def _model(**kw) -> PyGTGN:
    torch.manual_seed(0)
    return create_model("pyg_tgn", num_nodes=N, edge_feature_dim=F_E, memory_dim=8, time_dim=6, embedding_dim=8,
                        num_neighbors=5, **kw)


def _hand_memory(mem: TGNMemory, s: EventStream, batches, state, last):
    """TGN's memory update by a loop over nodes: each node's last message of a batch
    ``[s_i | s_other | e | phi(t - t_i^-)]`` through the GRU, from the state before the batch.
    Returns the state, the last update times and which nodes had a message."""
    seen = torch.zeros(N, dtype=torch.bool)
    for b in batches:
        new_state, new_last = state.clone(), last.clone()
        for i in range(N):
            events = [e for e in b.tolist() if int(s.src[e]) == i or int(s.dst[e]) == i]
            if not events:
                continue
            e = max(events, key=lambda e: int(s.t[e]))
            other = int(s.dst[e]) if int(s.src[e]) == i else int(s.src[e])
            enc = mem.time_enc((s.t[e] - last[i]).float().view(1))[0]
            msg = torch.cat([state[i], state[other], s.edge_features[e], enc])
            new_state[i] = mem.gru(msg[None], state[i][None])[0]
            new_last[i] = s.t[e]
            seen[i] = True
        state, last = new_state, new_last
    return state, last, seen


def test_memory_after_observe_equals_tgn_by_hand():
    s = _stream()
    ctx = TemporalContext(s, TemporalNeighborSampler(s))
    model = _model().eval()  # evaluation mode: each batch's messages are applied at once
    # (entering evaluation mode flushed PyG's memory: one GRU step on a zero message, kept as PyG does)
    state0, last0 = model.memory.memory.clone(), model.memory.last_update.clone()
    batches = [torch.arange(a, a + 40) for a in range(0, 160, 40)]
    for b in batches:
        model.observe(s.src[b], s.dst[b], s.t[b], b, ctx)
    with torch.no_grad():
        ref, ref_last, seen = _hand_memory(model.memory, s, batches, state0, last0)
    assert seen.sum() >= N - 2
    torch.testing.assert_close(model.memory.memory, ref, **TOL)
    assert model.memory.last_update.tolist() == ref_last.tolist()
    model.reset_state()
    assert not model.memory.memory.any() and not model.memory.last_update.any()


def test_memory_in_training_mode_follows_the_example_loop():
    """Training mode (PyG applies stored messages lazily, at the next read): the wrapper's memory
    equals a copy driven the way PyG's example drives it (``update_state`` with the batch's raw
    messages, then ``detach``)."""
    s = _stream()
    ctx = TemporalContext(s, TemporalNeighborSampler(s))
    model = _model()
    ref = copy.deepcopy(model.memory)
    for a in range(0, 160, 40):
        b = torch.arange(a, a + 40)
        model.observe(s.src[b], s.dst[b], s.t[b], b, ctx)
        ref.update_state(s.src[b], s.dst[b], s.t[b], s.edge_features[b])
        ref.detach()
        with torch.no_grad():
            got, got_last = model.memory(torch.arange(N))
            want, want_last = ref(torch.arange(N))
        torch.testing.assert_close(got, want, atol=0, rtol=0)
        assert torch.equal(got_last, want_last)


def _hand_embedding(model: PyGTGN, nodes, times, ctx, memory):
    """The example's TransformerConv, per query: heads ``H``, ``a_j = softmax_j(q_i . (k_j + e_j) / sqrt(C))``,
    ``out_i = sum_j a_j (v_j + e_j) + W_skip x_i``, with ``e_j = W_e [phi(t - t_j) | msg_j]``."""
    conv: TransformerConv = model.conv
    H, C = conv.heads, conv.out_channels
    nb = ctx.sampler.sample(nodes, times, model.config.num_neighbors)
    out = []
    for q in range(nodes.numel()):
        a, b = int(nb.offsets[q]), int(nb.offsets[q + 1])
        x_i = memory[nodes[q]]
        skip = conv.lin_skip(x_i)
        if a == b:
            out.append(skip)
            continue
        x_j = memory[nb.nodes[a:b]]
        rel = (times[q] - nb.times[a:b]).float()
        e = conv.lin_edge(torch.cat([model.memory.time_enc(rel), ctx.stream.edge_features[nb.edge_ids[a:b]]], 1))
        e = e.view(-1, H, C)
        qi = conv.lin_query(x_i).view(H, C)
        kj, vj = conv.lin_key(x_j).view(-1, H, C) + e, conv.lin_value(x_j).view(-1, H, C) + e
        alpha = torch.softmax((kj * qi).sum(-1) / math.sqrt(C), 0)  # (n, H)
        out.append((alpha[..., None] * vj).sum(0).flatten() + skip)
    return torch.stack(out)


def test_embeddings_equal_the_example_by_hand_forward_and_backward():
    s = _stream()
    ctx = TemporalContext(s, TemporalNeighborSampler(s))
    model = _model()
    for a in range(0, 120, 40):
        b = torch.arange(a, a + 40)
        model.observe(s.src[b], s.dst[b], s.t[b], b, ctx)
    model.eval()  # dropout off; the memory is the stored state
    nodes = torch.cat([s.src[120:150], torch.tensor([s.src[0]])])
    times = torch.cat([s.t[120:150], s.t[:1]])  # the last query has no history: the root weight only
    got = model.embed(nodes, times, ctx)
    ref = _hand_embedding(model, nodes, times, ctx, model.memory.memory)
    torch.testing.assert_close(got, ref, **TOL)
    assert model.memory.memory.abs().sum() > 0
    params = [model.conv.lin_key.weight, model.conv.lin_edge.weight, model.conv.lin_skip.weight,
              model.memory.time_enc.lin.weight]
    w = torch.randn_like(got)
    ga = torch.autograd.grad((got * w).sum(), params)
    gb = torch.autograd.grad((ref * w).sum(), params)
    for x, y in zip(ga, gb):
        torch.testing.assert_close(x, y, **TOL)


def test_training_mode_trains_the_memory_through_the_next_batch():
    s = _stream()
    ctx = TemporalContext(s, TemporalNeighborSampler(s))
    model = _model()
    for a in (0, 40):
        b = torch.arange(a, a + 40)
        logits = model(s.src[b], s.dst[b], s.t[b], ctx)
        model.observe(s.src[b], s.dst[b], s.t[b], b, ctx)
        logits.sum().backward()  # after observe, as the example's loop: no error from the updated memory
    assert model.memory.gru.weight_ih.grad is not None and model.memory.gru.weight_ih.grad.abs().sum() > 0


def test_registered_and_bad_input():
    assert "pyg_tgn" in list_models() and isinstance(create_model("pyg_tgn"), PyGTGN)
    with pytest.raises(ValueError, match="embedding_dim .* divisible by num_heads"):
        PyGTGNConfig(embedding_dim=9)
    with pytest.raises(ValueError, match="num_neighbors must be a positive int"):
        PyGTGNConfig(num_neighbors=0)
    s = _stream()
    ctx = TemporalContext(s, TemporalNeighborSampler(s))
    model = _model()
    b = torch.arange(10)
    with pytest.raises(ValueError, match="edge features have width 3 but this PyGTGN was built for edge_feature_dim=0"):
        create_model("pyg_tgn", num_nodes=N)(s.src[b], s.dst[b], s.t[b], ctx)
    with pytest.raises(ValueError, match="the stream has 12 nodes but this PyGTGN was built for num_nodes=5"):
        create_model("pyg_tgn", num_nodes=5, edge_feature_dim=F_E)(s.src[b], s.dst[b], s.t[b], ctx)
    with pytest.raises(ValueError, match="src, dst, t and edge_ids must be"):
        model.observe(s.src[b], s.dst[b], s.t[b], b[:3], ctx)
    with pytest.raises(ValueError, match="dst holds ids outside"):
        model.observe(s.src[b], s.dst[b] + N, s.t[b], b, ctx)
    with pytest.raises(ValueError, match="nodes holds ids outside"):
        model(s.src[b] + N, s.dst[b], s.t[b], ctx)
    with pytest.raises(TypeError, match="ctx must be a TemporalContext"):
        model(s.src[b], s.dst[b], s.t[b], s)
