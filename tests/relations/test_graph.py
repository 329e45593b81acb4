"""Graph relations on random packed graph batches: dense forms equal a direct construction
(networkx shortest paths; paths of edges that walk a shortest path), and every backend agrees,
gradients to edge features and embeddings included."""
import networkx as nx  # a dev dependency: never skipped silently
import pytest
import torch

from relformer.relations import Documents, EdgeBias, EdgeFeatureBias, EdgePathBias, GraphAdjacency, ShortestPathBias
from relformer.relations.graph import (dense_adjacency, dense_shortest_path_edges, dense_shortest_paths, edge_id_matrix,
                                       node_layout, scatter_pairs, shortest_path_distances)
from tests.equivalence import FWD_ATOL, GRAD_RTOL, assert_backends_agree, make_qkv, run_backend

H, B, L, EDGE_DIM = 4, 3, 12, 5


def random_batch(seed):
    """3 rows of 12 slots holding graphs of sizes 1..6: a single node, a graph without edges,
    random undirected graphs (both directions stored), some slots left empty."""
    g = torch.Generator().manual_seed(seed)
    sizes = [1, 3, 6, 4, 5, 2, 6]
    graphs, offset = [], 0
    for k, n in enumerate(sizes):
        if k == 1:
            pairs = []  # no edges
        else:
            pairs = [(a, b) for a in range(n) for b in range(a + 1, n) if torch.rand(1, generator=g) < 0.45]
        edges = [(offset + a, offset + b) for a, b in pairs] + [(offset + b, offset + a) for a, b in pairs]
        graphs.append((list(range(offset, offset + n)), edges))
        offset += n
    # place graphs into rows greedily in a shuffled order, starting at a random slot
    index = torch.full((B, L), -1, dtype=torch.long)
    segments = torch.full((B, L), -1, dtype=torch.long)
    free = [int(torch.randint(0, 2, (1,), generator=g)) for _ in range(B)]
    for k in torch.randperm(len(graphs), generator=g).tolist():
        nodes, _ = graphs[k]
        r = next(r for r in range(B) if free[r] + len(nodes) <= L)
        index[r, free[r]:free[r] + len(nodes)] = torch.tensor(nodes)
        segments[r, free[r]:free[r] + len(nodes)] = k
        free[r] += len(nodes)
    edge_list = [e for _, es in graphs for e in es]
    edge_index = torch.tensor(edge_list, dtype=torch.long).t().reshape(2, -1)
    edge_index = edge_index[:, torch.randperm(edge_index.shape[1], generator=g)]
    return graphs, index, segments, edge_index


SEEDS = [0, 1, 2]


@pytest.mark.parametrize("seed", SEEDS)
def test_dense_forms_match_direct_construction(seed):
    graphs, index, segments, edge_index = random_batch(seed)
    node_row, node_pos = node_layout(index)
    slot = {int(index[r, s]): (r, s) for r in range(B) for s in range(L) if index[r, s] >= 0}

    adj = torch.zeros(B, L, L, dtype=torch.bool)
    ids = torch.full((B, L, L), -1, dtype=torch.long)
    for e, (j, i) in enumerate(edge_index.t().tolist()):  # edge j -> i: the target i queries j
        (r, si), (_, sj) = slot[i], slot[j]
        adj[r, si, sj] = True
        ids[r, si, sj] = e
    assert torch.equal(dense_adjacency(edge_index, node_row, node_pos, B, L), adj)
    assert torch.equal(edge_id_matrix(edge_index, node_row, node_pos, B, L), ids)

    spd = torch.full((B, L, L), -1, dtype=torch.long)
    for nodes, edges in graphs:
        G = nx.Graph()
        G.add_nodes_from(nodes)
        G.add_edges_from(edges)
        for a, lengths in nx.all_pairs_shortest_path_length(G):
            for c, d in lengths.items():
                (r, sa), (_, sc) = slot[a], slot[c]
                spd[r, sa, sc] = d
    assert torch.equal(dense_shortest_paths(edge_index, node_row, node_pos, B, L), spd)

    mask = GraphAdjacency.from_edges(edge_index, node_row, node_pos, B, L).dense_mask(B, 1, L, L)[:, 0]
    assert torch.equal(mask, adj | torch.eye(L, dtype=torch.bool))


def _spd_relation(seed):
    _, index, segments, edge_index = random_batch(seed)
    node_row, node_pos = node_layout(index)
    rel = ShortestPathBias(H, max_distance=3).bind(spd=dense_shortest_paths(edge_index, node_row, node_pos, B, L))
    with torch.no_grad():
        rel.table.uniform_(-1, 1)
    return Documents(segments) & rel


def _edge_relation(seed, module):
    _, index, segments, edge_index = random_batch(seed)
    node_row, node_pos = node_layout(index)
    edge_attr = torch.randn(edge_index.shape[1], EDGE_DIM, generator=torch.Generator().manual_seed(seed))
    edge_attr.requires_grad_(True)
    ids = edge_id_matrix(edge_index, node_row, node_pos, B, L)
    return Documents(segments) & module.bind_edges(ids, edge_attr), edge_attr


@pytest.mark.parametrize("seed", SEEDS)
def test_adjacency_and_shortest_path_backends_agree(seed):
    _, index, segments, edge_index = random_batch(seed)
    node_row, node_pos = node_layout(index)
    assert_backends_agree(lambda: GraphAdjacency.from_edges(edge_index, node_row, node_pos, B, L),
                          B=B, H=H, Lq=L, Lk=L)
    assert_backends_agree(lambda: _spd_relation(seed), B=B, H=H, Lq=L, Lk=L)


def test_shortest_path_table_rows():
    rel = ShortestPathBias(H, max_distance=2)
    with torch.no_grad():
        rel.table.copy_(torch.arange(4 * H, dtype=torch.float32).view(4, H))
    spd = torch.tensor([[[0, 1], [2, 7]], [[-1, 3], [1, 0]]])
    bias = rel.bind(spd=spd).dense_bias(2, H, 2, 2)
    rows = torch.tensor([[[0, 1], [2, 2]], [[3, 2], [1, 0]]])  # > max clips, -1 is the last row
    assert torch.equal(bias, rel.table.detach()[rows].permute(0, 3, 1, 2))


@pytest.mark.parametrize("seed", SEEDS)
def test_edge_feature_bias_backends_agree_with_edge_attr_grad(seed):
    """``edge_bias`` is computed once per bind and its graph is freed by backward, so every run binds
    afresh (``assert_backends_agree`` reuses one relation for all backends)."""
    module = EdgeFeatureBias(EDGE_DIM, H)
    q, k, v = make_qkv(B, H, L, L, 16)

    def run(backend):
        rel, edge_attr = _edge_relation(seed, module)
        return run_backend(rel, backend, q, k, v, leaves=(edge_attr, module.proj.weight, module.proj.bias))

    ref_out, ref_grads = run("eager")
    assert all(g.abs().sum() > 0 for g in ref_grads[3:])  # edge_attr, proj.weight, proj.bias
    for backend in ("sdpa", "flex", "chunked"):
        out, grads = run(backend)
        torch.testing.assert_close(out, ref_out, atol=FWD_ATOL, rtol=0)
        for g, rg in zip(grads or [], ref_grads):
            torch.testing.assert_close(g, rg, atol=GRAD_RTOL * rg.abs().max().item(), rtol=1e-4)


def test_edge_feature_bias_values():
    module = EdgeFeatureBias(EDGE_DIM, H)
    edge_index = torch.tensor([[0, 1, 2], [1, 0, 1]])
    node_row, node_pos = torch.tensor([0, 0, 0]), torch.tensor([0, 1, 2])
    edge_attr = torch.randn(3, EDGE_DIM)
    ids = edge_id_matrix(edge_index, node_row, node_pos, 1, 3)
    bias = module.bind_edges(ids, edge_attr).dense_bias(1, H, 3, 3)[0]
    per_edge = module.proj(edge_attr).detach()
    expect = torch.zeros(H, 3, 3)
    for e, (j, i) in enumerate(edge_index.t().tolist()):
        expect[:, i, j] = per_edge[e]
    torch.testing.assert_close(bias, expect)
    empty = module.bind_edges(torch.full((1, 3, 3), -1), torch.zeros(0, EDGE_DIM))  # a batch without edges
    assert torch.equal(empty.dense_bias(1, H, 3, 3), torch.zeros(1, H, 3, 3))


def test_validation():
    node_row, node_pos = torch.zeros(3, dtype=torch.long), torch.arange(3)
    for bad in (torch.tensor([[0, 1.0], [1, 2]]), torch.tensor([[0, -1], [1, 2]]), torch.tensor([[0, 3], [1, 2]]),
                torch.tensor([0, 1, 2])):
        with pytest.raises(ValueError, match="edge_index"):
            scatter_pairs(bad, node_row, node_pos, 1, 3)
        with pytest.raises(ValueError, match="edge_index"):
            shortest_path_distances(bad, 3)
    with pytest.raises(ValueError, match="edge_index"):  # an edge between rows
        dense_adjacency(torch.tensor([[0], [1]]), torch.tensor([0, 1]), torch.tensor([0, 0]), 2, 1)
    with pytest.raises(ValueError, match="node_pos"):
        dense_adjacency(torch.tensor([[0], [1]]), node_row, torch.tensor([0, 1, 3]), 1, 3)
    spd = ShortestPathBias(H, 3)
    with pytest.raises(ValueError, match="spd"):
        spd.check(1, H, 3, 3)  # not bound
    with pytest.raises(ValueError, match="spd"):
        spd.bind(spd=torch.zeros(1, 3, 3)).check(1, H, 3, 3)  # float
    with pytest.raises(ValueError, match="spd"):
        spd.bind(spd=torch.zeros(1, 3, 4, dtype=torch.long)).check(1, H, 3, 3)
    with pytest.raises(ValueError, match="heads"):
        spd.bind(spd=torch.zeros(1, 3, 3, dtype=torch.long)).check(1, H + 1, 3, 3)
    with pytest.raises(ValueError, match="edge_ids"):
        EdgeFeatureBias(EDGE_DIM, H).bind_edges(torch.zeros(1, 3, 3), torch.zeros(2, EDGE_DIM))
    with pytest.raises(ValueError, match="edge_attr"):
        EdgeFeatureBias(EDGE_DIM, H).bind_edges(torch.zeros(1, 3, 3, dtype=torch.long), torch.zeros(2, EDGE_DIM + 1))
    with pytest.raises(ValueError, match="adjacency"):
        GraphAdjacency(torch.ones(1, 3, 3, dtype=torch.bool)).check(1, H, 3, 4)


# ---- shortest paths as edges (Graphormer's edge encoding) --------------------------------------
@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("max_hops", [1, 3, 8])
def test_shortest_path_edges_walk_a_shortest_path(seed, max_hops):
    graphs, index, segments, edge_index = random_batch(seed)
    node_row, node_pos = node_layout(index)
    spd, paths = dense_shortest_path_edges(edge_index, node_row, node_pos, B, L, max_hops)
    assert torch.equal(spd, dense_shortest_paths(edge_index, node_row, node_pos, B, L))
    assert paths.shape == (B, L, L, max_hops)
    node_at = {(r, s): int(index[r, s]) for r in range(B) for s in range(L) if index[r, s] >= 0}
    ends = edge_index.t().tolist()
    G = nx.Graph()
    G.add_nodes_from(range(int(index.max()) + 1))
    G.add_edges_from(map(tuple, ends))
    dist = dict(nx.all_pairs_shortest_path_length(G))
    for r in range(B):
        for si in range(L):
            for sj in range(L):
                row = paths[r, si, sj].tolist()
                d = int(spd[r, si, sj])
                hops = min(max(d, 0), max_hops)
                assert all(e >= 0 for e in row[:hops]) and all(e == -1 for e in row[hops:])
                if hops == 0:
                    continue
                i, j = node_at[(r, si)], node_at[(r, sj)]
                at = i
                for n, e in enumerate(row[:hops]):  # each edge leaves the current node, one step closer to j
                    a, c = ends[e]
                    assert at in (a, c), "the path's edges must form a walk from the query node"
                    at = c if at == a else a
                    assert dist[i][at] == n + 1 and dist[at][j] == d - n - 1


def test_shortest_path_edges_prefer_the_edge_in_walking_direction():
    edge_index = torch.tensor([[0, 1, 1], [1, 0, 2]])  # 0 <-> 1 both ways, only 1 -> 2
    node_row, node_pos = torch.zeros(3, dtype=torch.long), torch.arange(3)
    _, paths = dense_shortest_path_edges(edge_index, node_row, node_pos, 1, 3, 2)
    assert paths[0, 0, 2].tolist() == [0, 2]  # 0 -> 1 (edge 0), 1 -> 2 (edge 2)
    assert paths[0, 2, 0].tolist() == [2, 1]  # 2 -> 1 read from the stored 1 -> 2, then 1 -> 0 (edge 1)
    with pytest.raises(ValueError, match="max_hops"):
        dense_shortest_path_edges(edge_index, node_row, node_pos, 1, 3, 0)


def _path_relation(seed, module, max_hops=3):
    _, index, segments, edge_index = random_batch(seed)
    node_row, node_pos = node_layout(index)
    _, paths = dense_shortest_path_edges(edge_index, node_row, node_pos, B, L, max_hops)
    edge_emb = torch.randn(edge_index.shape[1], H, generator=torch.Generator().manual_seed(seed)).requires_grad_(True)
    return Documents(segments) & module.bind_paths(paths, edge_emb), paths, edge_emb


def test_edge_path_bias_values():
    module = EdgePathBias(H, max_hops=3)
    with torch.no_grad():
        module.hop_weight.normal_()
    rel, paths, edge_emb = _path_relation(0, module)
    bias = rel.parts[1].dense_bias(B, H, L, L)
    expect = torch.zeros(B, H, L, L)
    for b, i, j in torch.nonzero(paths[..., 0] >= 0).tolist():
        ids = [e for e in paths[b, i, j].tolist() if e >= 0]
        expect[b, :, i, j] = sum(edge_emb[e] @ module.hop_weight[n] for n, e in enumerate(ids)) / len(ids)
    torch.testing.assert_close(bias, expect.detach())
    assert (paths[..., 0] >= 0).sum() > 20


@pytest.mark.parametrize("seed", SEEDS)
def test_edge_path_bias_backends_agree_with_embedding_grad(seed):
    module = EdgePathBias(H, max_hops=3)
    with torch.no_grad():
        module.hop_weight.normal_()
    q, k, v = make_qkv(B, H, L, L, 16)

    def run(backend):
        rel, _, edge_emb = _path_relation(seed, module)
        return run_backend(rel, backend, q, k, v, leaves=(edge_emb,))

    ref_out, ref_grads = run("eager")
    assert all(g.abs().sum() > 0 for g in ref_grads[3:])  # hop_weight, edge_emb
    for backend in ("sdpa", "flex", "chunked"):
        out, grads = run(backend)
        torch.testing.assert_close(out, ref_out, atol=FWD_ATOL, rtol=0)
        for g, rg in zip(grads or [], ref_grads):
            torch.testing.assert_close(g, rg, atol=max(1e-6, GRAD_RTOL * rg.abs().max().item()), rtol=1e-4)


def test_edge_bias_and_path_bias_validation():
    bias = EdgeBias(H)
    with pytest.raises(ValueError, match="bind_values"):
        bias.check(1, H, 3, 3)
    with pytest.raises(ValueError, match="values"):
        bias.bind_values(torch.full((1, 3, 3), -1), torch.zeros(2, H + 1))
    with pytest.raises(ValueError, match="edge_ids refers to edge 2"):
        bias.bind_values(torch.full((1, 3, 3), 2), torch.zeros(2, H))
    path = EdgePathBias(H, max_hops=2)
    with pytest.raises(ValueError, match="paths is not set"):
        path.check(1, H, 3, 3)
    with pytest.raises(ValueError, match="more than max_hops"):
        path.bind_paths(torch.full((1, 3, 3, 3), -1), torch.zeros(2, H))
    with pytest.raises(ValueError, match="edge_emb"):
        path.bind_paths(torch.full((1, 3, 3, 2), -1), torch.zeros(2, H + 1))
    with pytest.raises(ValueError, match="paths"):
        path.bind_paths(torch.full((1, 3, 3, 2), -1), torch.zeros(2, H)).check(1, H, 3, 4)
    with pytest.raises(ValueError, match="max_hops"):
        EdgePathBias(H, max_hops=0)
