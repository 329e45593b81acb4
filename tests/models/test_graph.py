"""Graph models: registry-wide checks, results independent of how graphs are grouped into rows and
of the other graphs in the batch, LapPE sign flips in training only, the dense and sparse Graph
Transformer attention and every attention backend agree, Graphormer equals a direct dense
reference on trees, input validation. PyG equivalence is in tests/interop/test_pyg.py."""
from __future__ import annotations

import networkx as nx
import pytest
import torch

from relformer.data.graph import GraphBatch
from relformer.models import (GPS, GPSConfig, Graphormer, GraphormerConfig, GraphTransformer, GTConfig, create_model,
                              list_models, model_config)
from relformer.data.graph import ptr_from_batch
from relformer.models.graph import GINE, GPSLayer, GraphLayout, GraphTransformerLayer, clear_drop_in_layouts, layout
from tests.equivalence import assert_trains_and_round_trips

SMALL = {  # registered variants shrunk in depth so every one runs in CI
    "gps_zinc": dict(depth=2), "gt_zinc": dict(depth=2), "graphormer_zinc": dict(depth=2),
    "gps_micro": {}, "gt_micro": {}, "graphormer_micro": {},
}
SIZES = [1, 7, 2, 23, 12, 4, 1, 30]  # single nodes, an edgeless pair, larger molecules-like graphs


def random_graphs(sizes=SIZES, node_types=16, edge_types=4, seed=0, tree=False) -> GraphBatch:
    """Undirected graphs (both directions stored) with categorical atoms and bonds; the graph of 2
    nodes has no edges. ``tree``: random trees (unique shortest paths)."""
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for n in sizes:
        if tree:
            pairs = [(int(torch.randint(0, b, (1,), generator=g)), b) for b in range(1, n)]
        elif n == 2:
            pairs = []
        else:  # a random spanning path plus a few chords: connected, sparse like a molecule
            order = torch.randperm(n, generator=g).tolist()
            pairs = list(zip(order, order[1:]))
            pairs += [(a, b) for a in range(n) for b in range(a + 2, n) if torch.rand(1, generator=g) < 0.6 / n]
        pairs = sorted({(min(a, b), max(a, b)) for a, b in pairs})
        bonds = torch.randint(0, edge_types, (len(pairs),), generator=g)
        ei = torch.tensor(pairs + [(b, a) for a, b in pairs], dtype=torch.long).t().reshape(2, -1)
        graphs.append(dict(x=torch.randint(0, node_types, (n,), generator=g), edge_index=ei,
                           edge_attr=torch.cat([bonds, bonds]), y=torch.randn((), generator=g)))
    return GraphBatch.from_list(graphs)


def _graph_variants() -> set[str]:
    # exact types: subclasses registered by interop (the PyG baseline) are tested there
    return {n for n in list_models() if type(model_config(n)) in (GPSConfig, GTConfig, GraphormerConfig)}


def test_registry_covers_the_graph_variants():
    assert set(SMALL) == _graph_variants(), "every registered graph variant must be covered by the registry-wide test"
    assert isinstance(create_model("gps_micro"), GPS) and isinstance(create_model("gt_micro"), GraphTransformer)
    assert isinstance(create_model("graphormer_micro"), Graphormer)


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.slow
def test_every_graph_variant_runs_trains_and_round_trips(name, tmp_path):
    config = model_config(name, **SMALL[name])
    batch = random_graphs(seed=1)

    def run(model):
        out = model(batch)
        assert out.logits.shape == (batch.num_graphs, 1) and out.last_hidden_state.shape == (batch.num_nodes, config.dim)
        assert torch.isfinite(out.logits).all() and torch.isfinite(out.last_hidden_state).all()
        return (out.logits - batch.y[:, None]).square().mean() + out.last_hidden_state.square().mean(), out.logits

    assert_trains_and_round_trips(config, run, tmp_path)


def test_config_errors_name_the_field():
    with pytest.raises(ValueError, match="GPSConfig.dim"):
        GPSConfig(dim=30, num_heads=4)
    with pytest.raises(ValueError, match="GPSConfig.norm"):
        GPSConfig(norm="group")
    with pytest.raises(ValueError, match="GTConfig.attention"):
        GTConfig(attention="flash")
    with pytest.raises(ValueError, match="edge_in_dim"):
        GTConfig(edge_in_dim=0)
    with pytest.raises(ValueError, match="GraphormerConfig.edge_hops"):
        GraphormerConfig(edge_hops=-1)
    with pytest.raises(ValueError, match="GraphormerConfig.dropout"):
        GraphormerConfig(dropout=1.0)
    with pytest.raises(ValueError, match="lap_k"):
        GPSConfig(lap_k=-2)
    with pytest.raises(ValueError, match="'depht'"):
        create_model("gps_micro", depht=3)


# ---- packing ------------------------------------------------------------------------------------
def _eval_logits(model, batch, **kw):
    with torch.no_grad():
        out = model.eval()(batch, **kw)
    return out.last_hidden_state, out.logits


@pytest.mark.parametrize("name", ["gps_micro", "gt_micro", "graphormer_micro"])
def test_results_do_not_depend_on_row_grouping_or_batch_mates(name):
    overrides = dict(attention="dense") if name == "gt_micro" else {}
    model = create_model(name, **overrides)
    batch = random_graphs()
    wide, wide_logits = _eval_logits(model, batch, row_len=128)  # rows of 128 slots: all graphs in one row
    narrow, narrow_logits = _eval_logits(model, batch, row_len=31)  # rows as wide as the largest graph (+ token)
    assert GraphLayout.build(batch.ptr, batch.edge_index, 128).shape[0] == 1
    assert GraphLayout.build(batch.ptr, batch.edge_index, 31).shape[0] > 1
    torch.testing.assert_close(narrow, wide, rtol=0, atol=1e-5)
    torch.testing.assert_close(narrow_logits, wide_logits, rtol=0, atol=1e-5)
    parts = torch.split(wide, batch.sizes.tolist())
    for g in (0, 3, 5):  # each graph alone gives the same states as in the batch
        states, logits = _eval_logits(model, _graph(batch, g))
        torch.testing.assert_close(states, parts[g], rtol=0, atol=1e-5)
        torch.testing.assert_close(logits[0], wide_logits[g], rtol=0, atol=1e-5)


def _edge_mask(batch: GraphBatch, g: int) -> torch.Tensor:
    return batch.batch[batch.edge_index[0]] == g


def _edges_of(batch: GraphBatch, g: int) -> torch.Tensor:
    return batch.edge_index[:, _edge_mask(batch, g)] - batch.ptr[g]


def _graph(batch: GraphBatch, g: int) -> GraphBatch:
    """Graph ``g`` of the batch alone."""
    lo, hi = int(batch.ptr[g]), int(batch.ptr[g + 1])
    return GraphBatch(batch.x[lo:hi], _edges_of(batch, g), torch.tensor([0, hi - lo]),
                      batch.edge_attr[_edge_mask(batch, g)])


def test_layout_is_built_once_and_shared():
    batch = random_graphs()
    layout = GraphLayout.build(batch.ptr, batch.edge_index, row_len=40)
    assert layout.documents is layout.documents and layout.adjacency is layout.adjacency
    R, W = layout.shape
    assert W <= 40 and layout.rows.valid.sum() == batch.num_nodes
    node_row, node_pos = layout.slots
    assert torch.equal(layout.rows.index[node_row, node_pos], torch.arange(batch.num_nodes))
    # a small batch is not padded to row_len
    assert GraphLayout.build(torch.tensor([0, 3, 5]), torch.zeros(2, 0, dtype=torch.long)).shape == (1, 5)


# ---- the PyG-style (drop-in) path: one cached layout per batch --------------------------------------
def _drop_in_stack(kind: str, depth: int = 3, dim: int = 16):
    torch.manual_seed(0)
    if kind == "gps":
        layers = [GPSLayer(dim, 4, GINE(dim, edge_dim=3)) for _ in range(depth)]
    else:  # dense attention reads the layout's adjacency, so a stale layout would change its output
        layers = [GraphTransformerLayer(dim, 4, edge_features=False, attention="dense") for _ in range(depth)]
    layers = torch.nn.ModuleList(layers).eval()

    def run(x, edge_index, batch, edge_attr, layout=None):
        for layer in layers:
            out = layer(x, edge_index, batch, edge_attr=edge_attr, layout=layout) if kind == "gps" else \
                layer(x, edge_index, None, batch, layout=layout)[0]
            x = out
        return x
    return run


def _float_graphs(dim: int = 16):
    batch = random_graphs()
    g = torch.Generator().manual_seed(3)
    return (torch.randn(batch.num_nodes, dim, generator=g), batch.edge_index.clone(), batch.batch.clone(),
            torch.randn(batch.num_edges, 3, generator=g))


def _uncached(run, x, edge_index, batch, edge_attr):
    """The same stack on a layout built for exactly these tensors, bypassing the cache."""
    fresh = GraphLayout.build(ptr_from_batch(batch, x.shape[0]), edge_index.clone())
    return run(x, edge_index, batch, edge_attr, layout=fresh)


@pytest.mark.parametrize("kind", ["gps", "dense_gt"])
def test_drop_in_layout_is_shared_by_layers_and_rebuilt_after_in_place_edits(kind, monkeypatch):
    clear_drop_in_layouts()
    built = []
    real_build = GraphLayout.build.__func__
    monkeypatch.setattr(GraphLayout, "build", classmethod(lambda cls, *a, **k: built.append(1) or real_build(cls, *a, **k)))
    run = _drop_in_stack(kind)
    x, edge_index, batch, edge_attr = _float_graphs()
    with torch.no_grad():
        out = run(x, edge_index, batch, edge_attr)
        assert len(built) == 1, "every layer of the stack must reuse the first layer's layout"
        torch.testing.assert_close(out, _uncached(run, x, edge_index, batch, edge_attr), rtol=0, atol=0)
        run(x, edge_index, batch, edge_attr)
        assert len(built) == 2, "a second forward on the same tensors reuses the cached layout (+1: the uncached run)"

        # in place: graphs 1 and 2 become one graph (their edges stay inside it)
        stale = out
        batch[batch >= 2] -= 1
        out = run(x, edge_index, batch, edge_attr)
        assert len(built) == 3, "an in-place edit of batch must rebuild the layout"
        torch.testing.assert_close(out, _uncached(run, x, edge_index, batch, edge_attr), rtol=0, atol=0)
        if kind == "gps":  # global attention sees the merged graph (neighbour attention does not)
            assert not torch.allclose(out, stale), "merging two graphs must change the attention output"

        # in place: the first edges of the largest graph are rewired to other nodes of that graph
        g = int(torch.bincount(batch).argmax())
        inside = ((batch[edge_index[0]] == g) & (batch[edge_index[1]] == g)).nonzero().flatten()[:6]
        lo = int((batch == g).nonzero()[0])
        stale = out
        edge_index[1, inside] = lo + torch.arange(len(inside)) % 3
        out = run(x, edge_index, batch, edge_attr)
        assert len(built) == 5, "an in-place edit of edge_index must rebuild the layout"
        torch.testing.assert_close(out, _uncached(run, x, edge_index, batch, edge_attr), rtol=0, atol=0)
        assert not torch.allclose(out, stale)


def test_drop_in_layout_cache_names_bad_inputs_and_skips_inference_tensors():
    clear_drop_in_layouts()
    run = _drop_in_stack("gps", depth=2)
    x, edge_index, batch, edge_attr = _float_graphs()
    with torch.no_grad():
        run(x, edge_index, batch, edge_attr)  # cached now: later calls still check x and edge_attr
        bad = x.clone()
        bad[0, 0] = float("nan")
        with pytest.raises(ValueError, match="x holds NaN"):
            run(bad, edge_index, batch, edge_attr)
        with pytest.raises(ValueError, match="edge_attr has"):
            run(x, edge_index, batch, edge_attr[1:])
        run(x, edge_index, batch, edge_attr)  # the validated edge_attr is checked once per stack ...
        edge_attr[2, 1] = float("inf")  # ... until an in-place edit bumps its version
        with pytest.raises(ValueError, match="edge_attr holds NaN or inf"):
            run(x, edge_index, batch, edge_attr)
        edge_attr[2, 1] = 0.0
    with torch.inference_mode():  # no version counters: laid out on every call, same result
        ref = run(x, edge_index, batch, edge_attr)
        args = [t.clone() for t in (x, edge_index, batch, edge_attr)]
        torch.testing.assert_close(run(*args), ref, rtol=0, atol=0)
    assert all(not e.edge_index.is_inference() for e in layout._DROP_IN._entries.values())


def test_batch_without_nodes_raises_a_clear_error():
    empty = GraphBatch(torch.zeros(0, dtype=torch.long), torch.zeros(2, 0, dtype=torch.long), torch.tensor([0, 0]),
                       torch.zeros(0, dtype=torch.long))
    for name in ("gps_micro", "gt_micro", "graphormer_micro"):
        with pytest.raises(ValueError, match="graph has no nodes"):
            create_model(name)(empty)
    layer = GPSLayer(16, 4, GINE(16))
    with pytest.raises(ValueError, match=r"x has no rows \(no nodes\)"):
        layer(torch.zeros(0, 16), torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long))


# ---- positional encodings ------------------------------------------------------------------------
def test_lap_pe_sign_flip_only_in_training():
    model = create_model("gps_micro", rwse_k=0, norm="layer")  # no batch statistics: train == eval but for flips
    batch = random_graphs()
    model.eval()
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(batch).logits
        torch.manual_seed(1)
        b = model(batch).logits
        assert torch.equal(a, b), "evaluation must not flip eigenvector signs"
        model.train()
        torch.manual_seed(0)
        c = model(batch).logits
        torch.manual_seed(1)
        d = model(batch).logits
    assert not torch.allclose(c, d), "training flips eigenvector signs at random"
    assert not torch.allclose(a, c)
    # precomputed encodings are used as given (in eval), and equal the on-the-fly ones
    from relformer.nn import laplacian_eigenvectors

    pe = laplacian_eigenvectors(batch.edge_index, batch.num_nodes, 6, batch.batch)
    given = GraphBatch(batch.x, batch.edge_index, batch.ptr, batch.edge_attr, lap_pe=pe)
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(given).logits, a, rtol=0, atol=1e-6)
        with pytest.raises(ValueError, match="lap_pe has 2 columns, the model needs 4"):
            model(GraphBatch(batch.x, batch.edge_index, batch.ptr, batch.edge_attr, lap_pe=pe[:, :2]))


# ---- backends and attention forms -------------------------------------------------------------------
def _run(name: str, batch: GraphBatch, **overrides):
    torch.manual_seed(0)
    model = create_model(name, **overrides)
    out = model(batch)
    loss = (out.logits.square().sum() + (out.last_hidden_state * torch.linspace(-1, 1, out.last_hidden_state.shape[1])).sum())
    loss.backward()
    return out.last_hidden_state.detach(), {n: p.grad for n, p in model.named_parameters()}


def _assert_same(got, ref, what):
    (out, grads), (ref_out, ref_grads) = got, ref
    torch.testing.assert_close(out, ref_out, rtol=0, atol=1e-5, msg=lambda m: f"{what}: {m}")
    for name, g in ref_grads.items():
        assert g is not None and grads[name] is not None, f"{what}: {name} has no gradient"
        tol = max(1e-5, 1e-5 * g.abs().max().item())
        torch.testing.assert_close(grads[name], g, rtol=1e-4, atol=tol, msg=lambda m: f"{what} grad {name}: {m}")


@pytest.mark.parametrize("edge_features", [True, False])
@pytest.mark.slow
def test_graph_transformer_sparse_and_dense_attention_agree(edge_features):
    batch = random_graphs(seed=2)
    ref = _run("gt_micro", batch, edge_features=edge_features)  # sparse edge softmax
    for backend in ("eager", "sdpa", "chunked"):
        got = _run("gt_micro", batch, edge_features=edge_features, attention="dense", backend=backend)
        _assert_same(got, ref, f"dense/{backend}")


@pytest.mark.parametrize("name, backends", [("graphormer_micro", ("sdpa", "chunked")), ("gps_micro", ("sdpa",))])
def test_attention_backends_agree(name, backends):
    batch = random_graphs(seed=3)
    ref = _run(name, batch, backend="eager")
    for backend in backends:
        _assert_same(_run(name, batch, backend=backend), ref, backend)


# ---- Graphormer against a direct dense reference ------------------------------------------------------
def _graphormer_reference(model: Graphormer, batch: GraphBatch, g: int) -> torch.Tensor:
    """Graph ``g`` alone, as Graphormer's equations say, dense: ``(1 + n, C)`` token states."""
    c = model.config
    lo, hi = int(batch.ptr[g]), int(batch.ptr[g + 1])
    n, H = hi - lo, c.num_heads
    ei = _edges_of(batch, g)
    ea = batch.edge_attr[_edge_mask(batch, g)]
    h = model.node_encoder(batch.x[lo:hi])
    h = h + model.in_degree(torch.bincount(ei[1], minlength=n)) + model.out_degree(torch.bincount(ei[0], minlength=n))
    x = torch.cat([model.graph_token, h])  # (1 + n, C): the graph token first
    table, emb = model.spatial.table, model.edge_encoder(ea)  # (max + 3, H), (E, H)
    edge_id = {(int(a), int(b)): e for e, (a, b) in enumerate(ei.t().tolist())}
    G = nx.Graph()
    G.add_nodes_from(range(n))
    G.add_edges_from(edge_id)
    bias = table[c.max_distance + 1].view(H, 1, 1).repeat(1, 1 + n, 1 + n)  # pairs with the graph token
    for a in range(n):
        for b in range(n):
            if not nx.has_path(G, a, b):
                bias[:, 1 + a, 1 + b] = table[c.max_distance + 2]
                continue
            path = nx.shortest_path(G, a, b)
            d = len(path) - 1
            value = table[min(d, c.max_distance)]
            hops = path[:c.edge_hops + 1]
            steps = [edge_id.get((u, v), edge_id.get((v, u))) for u, v in zip(hops, hops[1:])]
            if steps:
                value = value + sum(emb[e] @ model.edge_path.hop_weight[k] for k, e in enumerate(steps)) / len(steps)
            bias[:, 1 + a, 1 + b] = value
    for block in model.encoder.layers:
        y = block.norm1(x)
        q, k, v = block.attn.qkv(y).view(1 + n, 3, H, -1).permute(1, 2, 0, 3)  # (H, 1 + n, D) each
        probs = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5 + bias, dim=-1)
        x = x + block.attn.proj((probs @ v).transpose(0, 1).reshape(1 + n, -1))
        x = x + block.mlp(block.norm2(x))
    return model.encoder.norm(x)


def test_graphormer_equals_a_dense_reference_on_trees():
    model = create_model("graphormer_micro", max_distance=3, edge_hops=2).eval()  # distances > 3 clip, paths cut
    with torch.no_grad():
        model.spatial.table.normal_()
        model.edge_path.hop_weight.normal_()
    batch = random_graphs([9, 1, 6, 2], seed=4, tree=True)
    batch = GraphBatch(batch.x, batch.edge_index, batch.ptr, batch.edge_attr)
    with torch.no_grad():
        out = model(batch)
        for g in range(batch.num_graphs):
            ref = _graphormer_reference(model, batch, g)
            torch.testing.assert_close(out.pooler_output[g], ref[0], rtol=0, atol=1e-5)
            torch.testing.assert_close(torch.split(out.last_hidden_state, batch.sizes.tolist())[g], ref[1:],
                                       rtol=0, atol=1e-5)


# ---- validation -----------------------------------------------------------------------------------------
def test_bad_inputs_fail_clearly():
    model = create_model("gps_micro")
    batch = random_graphs()
    x, edge_attr = batch.x.clone(), batch.edge_attr.clone()
    x[3], edge_attr[5] = 16, 7
    with pytest.raises(ValueError, match="x holds category 16, outside the model's node_types=16"):
        model(GraphBatch(x, batch.edge_index, batch.ptr, batch.edge_attr))
    with pytest.raises(ValueError, match="edge_attr holds category 7, outside the model's edge_types=4"):
        model(GraphBatch(batch.x, batch.edge_index, batch.ptr, edge_attr))
    with pytest.raises(ValueError, match="needs edge_attr"):
        model(GraphBatch(batch.x, batch.edge_index, batch.ptr))
    with pytest.raises(ValueError, match="integer categories"):
        model(GraphBatch(batch.x.float(), batch.edge_index, batch.ptr, batch.edge_attr))
    with pytest.raises(TypeError, match="GraphBatch"):
        model(batch.x)
    float_model = create_model("gps_micro", node_types=0, node_in_dim=3)
    with pytest.raises(ValueError, match="x must have 3 column"):
        float_model(GraphBatch(torch.randn(batch.num_nodes, 2), batch.edge_index, batch.ptr, batch.edge_attr))
    assert float_model(GraphBatch(torch.randn(batch.num_nodes, 3), batch.edge_index, batch.ptr,
                                  batch.edge_attr)).logits.shape == (batch.num_graphs, 1)


def test_layers_take_norm_types_and_configs_name_them_once():
    from functools import partial

    from relformer.nn import TokenBatchNorm

    layer = GPSLayer(16, 4, norm_layer=partial(torch.nn.LayerNorm, eps=1e-3))
    assert all(isinstance(n, torch.nn.LayerNorm) and n.eps == 1e-3 for n in (layer.norm1, layer.norm2, layer.norm3))
    assert isinstance(GraphTransformerLayer(16, 4, norm_layer=torch.nn.Identity).norm1_h, torch.nn.Identity)
    assert type(GPSLayer(16, 4).norm1) is TokenBatchNorm  # PyG GPSConv's default
    for kind, cls in (("batch", TokenBatchNorm), ("layer", torch.nn.LayerNorm), ("none", torch.nn.Identity)):
        assert type(create_model("gps_micro", norm=kind).layers[0].norm3) is cls
        assert type(create_model("gt_micro", norm=kind).layers[1].norm2_h) is cls
