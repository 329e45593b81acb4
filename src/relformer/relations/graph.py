"""Relations over graphs packed into rows of node slots: adjacency masks and Graphormer's
shortest-path and edge-feature biases.

A packed graph batch has ``N`` nodes in total, placed at ``(node_row[n], node_pos[n])`` in
``B`` rows of ``L`` slots (one or more graphs per row; combine with
:class:`~relformer.relations.Documents` to keep graphs of one row apart). Edges are PyG's
``edge_index (2, E)`` of global node ids, ``edge_index[0]`` the source ``j`` and
``edge_index[1]`` the target ``i``; messages flow source -> target, so the dense per-row
tensors are indexed ``[b, i, j]`` = ``[b, q, kv]``: the target queries its sources.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attention.relation import Relation, check_int
from .sequence import _check_heads

__all__ = ["check_edge_index", "node_layout", "scatter_pairs", "dense_adjacency", "edge_id_matrix", "shortest_path_distances",
           "dense_shortest_paths", "dense_shortest_path_edges", "GraphAdjacency", "ShortestPathBias", "EdgeBias",
           "EdgeFeatureBias", "EdgePathBias"]


def _check_int(name: str, x: Tensor, dim: int | None = None) -> None:
    if not isinstance(x, Tensor) or x.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"{name} must be an int32/int64 tensor, got "
                         f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if dim is not None and x.dim() != dim:
        raise ValueError(f"{name} must be {dim}-D, got shape {tuple(x.shape)}")


def check_edge_index(edge_index: Tensor, num_nodes: int) -> None:
    """PyG's ``edge_index (2, E)``: int32/int64, node ids in ``[0, num_nodes)``; ``ValueError`` otherwise."""
    _check_int("edge_index", edge_index)
    if edge_index.dim() != 2 or edge_index.shape[0] != 2:
        raise ValueError(f"edge_index must have shape (2, E), got {tuple(edge_index.shape)}")
    if edge_index.numel():
        lo, hi = int(edge_index.min()), int(edge_index.max())
        if lo < 0:
            raise ValueError(f"edge_index holds negative node ids (min {lo})")
        if hi >= num_nodes:
            raise ValueError(f"edge_index refers to node {hi} but there are only {num_nodes} nodes")


def _check_layout(edge_index: Tensor, node_row: Tensor, node_pos: Tensor, B: int, L: int) -> None:
    _check_int("node_row", node_row, 1)
    _check_int("node_pos", node_pos, 1)
    if node_row.shape != node_pos.shape:
        raise ValueError(f"node_row and node_pos must have the same shape (N,), got {tuple(node_row.shape)} "
                         f"and {tuple(node_pos.shape)}")
    N = node_row.shape[0]
    if N and not (0 <= node_row.min() and node_row.max() < B):
        raise ValueError(f"node_row must lie in [0, B) = [0, {B})")
    if N and not (0 <= node_pos.min() and node_pos.max() < L):
        raise ValueError(f"node_pos must lie in [0, L) = [0, {L})")
    if N and torch.unique(node_row.long() * L + node_pos.long()).numel() != N:
        raise ValueError("two nodes share a (node_row, node_pos) slot")
    check_edge_index(edge_index, N)
    if edge_index.numel() and (node_row[edge_index[0]] != node_row[edge_index[1]]).any():
        raise ValueError("edge_index joins nodes placed in different rows (node_row)")


def scatter_pairs(edge_index: Tensor, node_row: Tensor, node_pos: Tensor, B: int, L: int,
                  values: Tensor | None = None, fill=0) -> Tensor:
    """Per-edge values into per-row dense ``(B, L, L)``: ``out[row, pos[i], pos[j]] = values[e]`` for
    edge ``e = (j -> i)``, ``fill`` elsewhere. ``values (E,)`` default ``True`` (adjacency).

    Raises ``ValueError`` naming ``edge_index`` for non-integer dtype, negative or out-of-range
    ids, or an edge between rows; when ``values`` are given, an ordered pair may occur only once.
    """
    _check_layout(edge_index, node_row, node_pos, B, L)
    if values is None:
        values = torch.ones(edge_index.shape[1], dtype=torch.bool, device=edge_index.device)
    elif values.shape[:1] != edge_index.shape[1:]:
        raise ValueError(f"values must have E = {edge_index.shape[1]} rows, got shape {tuple(values.shape)}")
    j, i = edge_index[0], edge_index[1]
    row, pi, pj = node_row[i].long(), node_pos[i].long(), node_pos[j].long()
    if values.dtype != torch.bool and torch.unique(row * L * L + pi * L + pj).numel() != row.numel():
        raise ValueError("edge_index has a repeated (source, target) pair; scattered values would be ambiguous")
    out = torch.full((B, L, L, *values.shape[1:]), fill, dtype=values.dtype, device=values.device)
    out[row, pi, pj] = values
    return out


def dense_adjacency(edge_index: Tensor, node_row: Tensor, node_pos: Tensor, B: int, L: int) -> Tensor:
    """Boolean ``(B, L, L)``: ``adj[b, i, j]`` iff there is an edge ``j -> i`` (both ways if undirected)."""
    return scatter_pairs(edge_index, node_row, node_pos, B, L)


def edge_id_matrix(edge_index: Tensor, node_row: Tensor, node_pos: Tensor, B: int, L: int) -> Tensor:
    """Long ``(B, L, L)``: the id ``e`` of edge ``j -> i`` at ``[b, i, j]``, ``-1`` where there is none."""
    ids = torch.arange(edge_index.shape[1], device=edge_index.device)
    return scatter_pairs(edge_index, node_row, node_pos, B, L, values=ids, fill=-1)


def shortest_path_distances(edge_index: Tensor, num_nodes: int) -> Tensor:
    """Unweighted, undirected hop distances ``(num_nodes, num_nodes)`` long, ``-1`` if unreachable
    (``scipy.sparse.csgraph.shortest_path``, breadth-first per source)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    check_edge_index(edge_index, num_nodes)
    ei = edge_index.cpu().numpy()
    graph = coo_matrix((np.ones(ei.shape[1]), (ei[0], ei[1])), shape=(num_nodes, num_nodes)).tocsr()
    dist = shortest_path(graph, method="D", directed=False, unweighted=True)
    dist = torch.from_numpy(np.where(np.isinf(dist), -1, dist)).long()
    return dist.to(edge_index.device)


def _row_shortest_paths(edge_index: Tensor, node_row: Tensor, node_pos: Tensor, B: int, L: int,
                        predecessors: bool = False) -> tuple[Tensor, Tensor | None]:
    """Per row, scipy's unweighted undirected shortest paths between the row's slots (one BFS per
    slot, on CPU): ``spd (B, L, L)`` long, ``-1`` when unreachable or at an empty slot, and with
    ``predecessors`` also ``pred (B, L, L)`` long: ``pred[b, a, c]`` is the slot before ``c`` on a
    shortest path from ``a`` to ``c`` (``-1`` at ``c == a`` or when unreachable)."""
    import numpy as np
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import shortest_path

    _check_layout(edge_index, node_row, node_pos, B, L)
    row, pos, ei = node_row.long().cpu(), node_pos.long().cpu(), edge_index.long().cpu()
    occupied = torch.zeros(B, L, dtype=torch.bool)
    occupied[row, pos] = True
    edge_row = row[ei[0]]
    order = edge_row.argsort(stable=True)
    sources, targets = pos[ei[0, order]].numpy(), pos[ei[1, order]].numpy()
    ends = np.concatenate([[0], np.cumsum(torch.bincount(edge_row, minlength=B).numpy())])
    spd = np.full((B, L, L), -1, dtype=np.int64)
    pred = np.full((B, L, L), -1, dtype=np.int64) if predecessors else None
    for b in occupied.any(1).nonzero().flatten().tolist():
        lo, hi = ends[b], ends[b + 1]
        graph = coo_matrix((np.ones(hi - lo), (sources[lo:hi], targets[lo:hi])), shape=(L, L)).tocsr()
        out = shortest_path(graph, method="D", directed=False, unweighted=True, return_predecessors=predecessors)
        dist = out[0] if predecessors else out
        spd[b] = np.where(np.isinf(dist), -1, dist)
        if predecessors:
            pred[b] = np.maximum(out[1], -1)  # scipy marks "none" with -9999
    live = occupied[:, :, None] & occupied[:, None, :]
    spd = torch.from_numpy(spd).masked_fill_(~live, -1).to(edge_index.device)
    return spd, (torch.from_numpy(pred).masked_fill_(~live, -1).to(edge_index.device) if predecessors else None)


def dense_shortest_paths(edge_index: Tensor, node_row: Tensor, node_pos: Tensor, B: int, L: int) -> Tensor:
    """Per-row ``spd (B, L, L)`` long for :class:`ShortestPathBias`: hop distance between the nodes in
    slots ``i`` and ``j`` of a row, ``-1`` when unreachable (other graph of the row, empty slot)."""
    return _row_shortest_paths(edge_index, node_row, node_pos, B, L)[0]


def dense_shortest_path_edges(edge_index: Tensor, node_row: Tensor, node_pos: Tensor, B: int, L: int,
                              max_hops: int) -> tuple[Tensor, Tensor]:
    """Shortest paths as edge ids, for :class:`EdgePathBias`: ``(spd (B, L, L), paths (B, L, L, K))``.

    ``spd`` as :func:`dense_shortest_paths`; ``paths[b, i, j, n]`` is the id of the ``n``-th edge of
    one shortest path from slot ``i`` (the query) to slot ``j``, for ``n < min(spd, K)`` with
    ``K = max_hops``, and ``-1`` after (Graphormer's ``multi_hop_max_dist``). Paths are undirected:
    the step ``a -> c`` reads the edge ``a -> c``, or ``c -> a`` when only that one is stored; with
    repeated edges one of them is taken. Distances come from scipy on CPU, one BFS per slot; the
    ``K`` steps along the predecessor table are batched tensor ops.
    """
    if not (isinstance(max_hops, int) and max_hops >= 1):
        raise ValueError(f"max_hops must be an int >= 1, got {max_hops!r}")
    spd, pred = _row_shortest_paths(edge_index, node_row, node_pos, B, L, predecessors=True)
    dev = spd.device
    j, i = edge_index[0].long(), edge_index[1].long()
    row = node_row[i].long()
    step = torch.full((B, L, L), -1, dtype=torch.long, device=dev)  # step[b, a, c]: an edge joining a and c
    ids = torch.arange(edge_index.shape[1], device=dev)
    step[row, node_pos[i].long(), node_pos[j].long()] = ids     # c -> a, used when a -> c is absent
    step[row, node_pos[j].long(), node_pos[i].long()] = ids     # a -> c
    b = torch.arange(B, device=dev).view(B, 1, 1)
    target = torch.arange(L, device=dev).view(1, 1, L)
    cur = torch.arange(L, device=dev).view(1, L, 1).expand(B, L, L)  # walk from the query i towards j
    paths = torch.full((B, L, L, max_hops), -1, dtype=torch.long, device=dev)
    for n in range(max_hops):
        # pred[b, j, cur] is the slot after cur on a shortest path from i to j (read from j's side)
        nxt = pred[b, target, cur]
        live = nxt >= 0
        paths[..., n] = torch.where(live, step[b, cur, nxt.clamp_min(0)], -1)
        cur = torch.where(live, nxt, cur)
    return spd, paths


def node_layout(index: Tensor) -> tuple[Tensor, Tensor]:
    """``(node_row, node_pos)`` for nodes placed by a slot table ``index (B, L)`` (node id per slot,
    ``-1`` for an empty slot; :attr:`relformer.data.Rows.index`)."""
    _check_int("index", index, 2)
    row, pos = (index >= 0).nonzero(as_tuple=True)
    node = index[row, pos]
    if not torch.equal(node.long().sort().values, torch.arange(node.numel(), device=node.device)):
        raise ValueError("index must hold every node id 0..N-1 exactly once (and -1 in empty slots)")
    node_row, node_pos = torch.empty_like(node), torch.empty_like(node)
    node_row[node], node_pos[node] = row, pos
    return node_row, node_pos


def _check_pairs(name: str, x: Tensor, B: int, Lq: int, Lk: int) -> None:
    if not isinstance(x, Tensor):
        raise ValueError(f"{name} is not set: bind it first")
    if x.shape != (B, Lq, Lk):
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected (B, Lq, Lk) = {(B, Lq, Lk)}")


class GraphAdjacency(Relation):
    """Sparse graph attention (Dwivedi & Bresson 2021, "A Generalization of Transformer Networks to
    Graphs"): node ``i`` attends node ``j`` iff ``adjacency[b, i, j]`` (edge ``j -> i``) or, with
    ``self_loops``, ``i == j``. ``adjacency (B, L, L)`` bool, e.g. from :meth:`from_edges`.
    """

    has_mask = True

    def __init__(self, adjacency: Tensor, self_loops: bool = True) -> None:
        super().__init__()
        if not isinstance(adjacency, Tensor) or adjacency.dtype != torch.bool or adjacency.dim() != 3:
            raise ValueError("adjacency must be a bool (B, L, L) tensor")
        self.adjacency, self.self_loops = adjacency, bool(self_loops)

    @classmethod
    def from_edges(cls, edge_index: Tensor, node_row: Tensor, node_pos: Tensor, B: int, L: int,
                   self_loops: bool = True) -> "GraphAdjacency":
        return cls(dense_adjacency(edge_index, node_row, node_pos, B, L), self_loops)

    def mask_mod(self, b, h, q_idx, kv_idx):
        adj = self.adjacency[b, q_idx, kv_idx]
        return adj | (q_idx == kv_idx) if self.self_loops else adj

    def check(self, B, H, Lq, Lk):
        _check_pairs("adjacency", self.adjacency, B, Lq, Lk)

    def extra_repr(self) -> str:
        return f"self_loops={self.self_loops}"


class ShortestPathBias(Relation):
    """Graphormer's spatial encoding (Ying et al. 2021, "Do Transformers Really Perform Bad for Graph
    Representation?", Eq. 6): ``bias[b, h, i, j] = table[min(spd[b, i, j], max_distance), h]``, and
    ``table[max_distance + 1, h]`` where ``spd < 0`` (unreachable).

    ``table (max_distance + 2, H)`` learnable; per-batch ``spd (B, L, L)`` long via ``.bind(spd=...)``
    (see :func:`dense_shortest_paths`).
    """

    has_bias = True

    def __init__(self, num_heads: int, max_distance: int, spd: Tensor | None = None) -> None:
        super().__init__()
        num_heads = check_int("num_heads", num_heads)
        self.max_distance = check_int("max_distance", max_distance, minimum=0)
        self.table = nn.Parameter(torch.randn(self.max_distance + 2, num_heads) * 0.02)
        self.spd = spd

    def bias_mod(self, b, h, q_idx, kv_idx):
        d = self.spd[b, q_idx, kv_idx]
        return self.table[torch.where(d < 0, self.max_distance + 1, d.clamp(max=self.max_distance)), h]

    def check(self, B, H, Lq, Lk):
        _check_heads(self.table.shape[1], H)
        _check_pairs("spd", self.spd, B, Lq, Lk)
        _check_int("spd", self.spd, 3)

    def extra_repr(self) -> str:
        return f"num_heads={self.table.shape[1]}, max_distance={self.max_distance}"


def _padded_table(values: Tensor) -> Tensor:
    """``values (E, ...)`` with zero rows appended up to a power of two ``> E``: the last row reads as
    "no edge", ``E = 0`` works, and Flex (which compiles per captured shape) sees few shapes."""
    rows = 1 << values.shape[0].bit_length()
    return torch.cat([values, values.new_zeros(rows - values.shape[0], *values.shape[1:])])


class EdgeBias(Relation):
    """A per-edge, per-head additive bias on direct edges: ``bias[b, h, i, j] = values[e, h]`` for the
    edge ``e = (j -> i)``, 0 where there is none.

    Per batch, :meth:`bind_values` takes ``edge_ids (B, L, L)`` long (``-1`` where no edge, see
    :func:`edge_id_matrix`) and ``values (E, H)`` (e.g. computed from the edges' features, or from
    the queries and keys themselves as in :class:`~relformer.models.graph.GraphTransformerLayer`).
    The bound copy reads ``edge_bias``, the values padded with zero rows (:func:`_padded_table`):
    every backend hands the gradient to ``edge_bias`` and ordinary autograd carries it on to
    whatever computed the values. Bind once per forward (the graph is freed by the backward pass).
    """

    has_bias = True
    _bind_name = "bind_values"  # named in the "not bound" error

    def __init__(self, num_heads: int) -> None:
        super().__init__()
        self.num_heads = check_int("num_heads", num_heads)
        self.edge_ids: Tensor | None = None
        self.edge_bias: Tensor | None = None

    def bind_values(self, edge_ids: Tensor, values: Tensor) -> "EdgeBias":
        _check_int("edge_ids", edge_ids, 3)
        if values.dim() != 2 or values.shape[1] != self.num_heads:
            raise ValueError(f"values must have shape (E, {self.num_heads}), got {tuple(values.shape)}")
        if edge_ids.numel() and edge_ids.max() >= values.shape[0]:
            raise ValueError(f"edge_ids refers to edge {edge_ids.max().item()} but there are values for "
                             f"{values.shape[0]} edges")
        return self.bind(edge_ids=edge_ids, edge_bias=_padded_table(values))  # (rows, H); last = no edge

    def bias_mod(self, b, h, q_idx, kv_idx):
        e = self.edge_ids[b, q_idx, kv_idx]
        return self.edge_bias[torch.where(e >= 0, e, self.edge_bias.shape[0] - 1), h]

    def check(self, B, H, Lq, Lk):
        _check_heads(self.num_heads, H)
        if self.edge_bias is None:
            raise ValueError(f"edge_ids is not set: use {type(self).__name__}.{self._bind_name}(edge_ids, ...)")
        _check_pairs("edge_ids", self.edge_ids, B, Lq, Lk)

    def extra_repr(self) -> str:
        return f"num_heads={self.num_heads}"


class EdgeFeatureBias(EdgeBias):
    """Graphormer-style edge bias for direct edges (Ying et al. 2021, Eq. 7 with paths of one edge):
    ``bias[b, h, i, j] = (W x_e + c)[h]`` for the edge ``e = (j -> i)``, 0 where there is none.

    ``proj = nn.Linear(edge_dim, num_heads)``. Per batch, :meth:`bind_edges` takes
    ``edge_ids (B, L, L)`` long (``-1`` where no edge, see :func:`edge_id_matrix`) and
    ``edge_attr (E, edge_dim)``, and computes ``edge_bias = proj(edge_attr)`` once (as
    :class:`EdgeBias`: padded with zero rows to a power of two ``> E``). The bound copy reads only
    ``edge_bias`` (a non-leaf tensor): every backend hands the gradient to ``edge_bias`` and ordinary
    autograd carries it on to ``proj`` and ``edge_attr``. Bind once per forward.
    """

    _bind_name = "bind_edges"

    def __init__(self, edge_dim: int, num_heads: int) -> None:
        super().__init__(num_heads)
        self.proj = nn.Linear(check_int("edge_dim", edge_dim), self.num_heads)

    def bind_edges(self, edge_ids: Tensor, edge_attr: Tensor) -> "EdgeFeatureBias":
        _check_int("edge_ids", edge_ids, 3)
        if edge_attr.dim() != 2 or edge_attr.shape[1] != self.proj.in_features:
            raise ValueError(f"edge_attr must have shape (E, {self.proj.in_features}), got {tuple(edge_attr.shape)}")
        return self.bind_values(edge_ids, self.proj(edge_attr))

    def extra_repr(self) -> str:
        return f"edge_dim={self.proj.in_features}, num_heads={self.proj.out_features}"


class EdgePathBias(Relation):
    """Graphormer's edge encoding (Ying et al. 2021, "Do Transformers Really Perform Bad for Graph
    Representation?", Eq. 7): along one shortest path ``(e_1, ..., e_N)`` from ``i`` to ``j``,

        ``bias[b, h, i, j] = 1/N' * sum_{n <= N'} (x_{e_n} W_n)[h]``,  ``N' = min(N, max_hops)``,

    with ``x_e (E, H)`` a per-edge, per-head embedding (the model's ``edge_encoder``) and a learnable
    ``W_n (H, H)`` per hop (``hop_weight (max_hops, H, H)``, Graphormer's ``edge_dis_encoder``).
    Pairs without a path (``i == j``, unreachable, empty slots) get 0.

    Per batch, :meth:`bind_paths` takes ``paths (B, L, L, K)`` long, ``K <= max_hops`` (see
    :func:`dense_shortest_path_edges`), and ``edge_emb (E, H)``; it computes the per-hop tables
    ``x W_n`` once. Like :class:`EdgeBias`, bind once per forward.
    """

    has_bias = True

    def __init__(self, num_heads: int, max_hops: int) -> None:
        super().__init__()
        num_heads, max_hops = check_int("num_heads", num_heads), check_int("max_hops", max_hops)
        self.hop_weight = nn.Parameter(torch.randn(max_hops, num_heads, num_heads) * 0.02)
        self.paths: Tensor | None = None
        self.path_table: Tensor | None = None
        self.path_len: Tensor | None = None

    @property
    def tile_cost(self) -> float:
        return float(self.hop_weight.shape[0])  # one table lookup per hop

    def bind_paths(self, paths: Tensor, edge_emb: Tensor) -> "EdgePathBias":
        _check_int("paths", paths, 4)
        K, H = self.hop_weight.shape[:2]
        if paths.shape[-1] > K:
            raise ValueError(f"paths has {paths.shape[-1]} hops, more than max_hops={K}")
        if edge_emb.dim() != 2 or edge_emb.shape[1] != H:
            raise ValueError(f"edge_emb must have shape (E, {H}), got {tuple(edge_emb.shape)}")
        if paths.numel() and paths.max() >= edge_emb.shape[0]:
            raise ValueError(f"paths refers to edge {paths.max().item()} but edge_emb has {edge_emb.shape[0]} rows")
        table = torch.einsum("eh,nhg->neg", edge_emb, self.hop_weight[:paths.shape[-1]])  # (K', E, H)
        table = _padded_table(table.transpose(0, 1)).transpose(0, 1)  # (K', rows, H); last row = no edge
        length = (paths >= 0).sum(-1).clamp_min(1).to(table.dtype)  # (B, L, L)
        return self.bind(paths=paths, path_table=table, path_len=length)

    def bias_mod(self, b, h, q_idx, kv_idx):
        none = self.path_table.shape[1] - 1
        total = 0
        for n in range(self.path_table.shape[0]):
            e = self.paths[b, q_idx, kv_idx, n]
            total = total + self.path_table[n, torch.where(e >= 0, e, none), h]
        return total / self.path_len[b, q_idx, kv_idx]

    def check(self, B, H, Lq, Lk):
        _check_heads(self.hop_weight.shape[1], H)
        if self.paths is None:
            raise ValueError("paths is not set: use EdgePathBias.bind_paths(paths, edge_emb)")
        if self.paths.shape[:3] != (B, Lq, Lk):
            raise ValueError(f"paths has shape {tuple(self.paths.shape)}, expected (B, Lq, Lk, K) with "
                             f"(B, Lq, Lk) = {(B, Lq, Lk)}")

    def extra_repr(self) -> str:
        K, H = self.hop_weight.shape[:2]
        return f"num_heads={H}, max_hops={K}"
