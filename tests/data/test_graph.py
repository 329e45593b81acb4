"""GraphBatch: collation, PyG conversion and the validation every graph model relies on."""
import pytest
import torch

from relformer.data.graph import GraphBatch, check_graph, ptr_from_batch


def _graphs():
    return [dict(x=torch.randn(3, 4), edge_index=torch.tensor([[0, 1], [1, 2]]), edge_attr=torch.randn(2, 2),
                 y=torch.tensor(1.0)),
            dict(x=torch.randn(1, 4), edge_index=torch.zeros(2, 0, dtype=torch.long), edge_attr=torch.zeros(0, 2),
                 y=torch.tensor(2.0)),
            dict(x=torch.randn(2, 4), edge_index=torch.tensor([[0, 1], [1, 0]]), edge_attr=torch.randn(2, 2),
                 y=torch.tensor(3.0))]


def test_from_list_collates_like_pyg():
    graphs = _graphs()
    b = GraphBatch.from_list(graphs)
    assert b.ptr.tolist() == [0, 3, 4, 6] and b.num_graphs == 3 and b.num_nodes == 6 and b.num_edges == 4
    assert b.edge_index.tolist() == [[0, 1, 4, 5], [1, 2, 5, 4]]
    assert b.batch.tolist() == [0, 0, 0, 1, 2, 2] and b.sizes.tolist() == [3, 1, 2]
    assert b.y.tolist() == [1.0, 2.0, 3.0]
    assert torch.equal(b.x, torch.cat([g["x"] for g in graphs]))
    assert torch.equal(b.packed().unpack()[2], graphs[2]["x"])
    assert ptr_from_batch(b.batch, 6).tolist() == b.ptr.tolist()
    with pytest.raises(ValueError, match="edge_attr is given for some graphs"):
        GraphBatch.from_list([graphs[0], dict(x=torch.randn(2, 4), edge_index=torch.zeros(2, 0, dtype=torch.long))])


def test_from_pyg_reads_batch_and_encodings():
    from torch_geometric.data import Batch, Data

    data = [Data(x=g["x"], edge_index=g["edge_index"], edge_attr=g["edge_attr"], y=g["y"].view(1),
                 random_walk_pe=torch.rand(g["x"].shape[0], 3)) for g in _graphs()]
    pyg = Batch.from_data_list(data)
    b = GraphBatch.from_pyg(pyg)
    assert torch.equal(b.ptr, pyg.ptr) and torch.equal(b.edge_index, pyg.edge_index)
    assert torch.equal(b.rwse, pyg.random_walk_pe) and b.lap_pe is None and b.y.shape == (3,)
    one = GraphBatch.from_pyg(data[0])  # a Data without batch: one graph
    assert one.ptr.tolist() == [0, 3] and one.num_graphs == 1


def _check(**changes):
    base = dict(x=torch.randn(5, 3), edge_index=torch.tensor([[0, 1, 3], [1, 2, 4]]), ptr=torch.tensor([0, 3, 5]),
                edge_attr=torch.randn(3, 2))
    base.update(changes)
    return GraphBatch(**base)


@pytest.mark.parametrize("changes, message", [
    (dict(edge_index=torch.tensor([[0, 1, 3], [1, 2, 5]])), "refers to node 5 but there are only 5 nodes"),
    (dict(edge_index=torch.tensor([[0, -1, 3], [1, 2, 4]])), "negative node ids"),
    (dict(edge_index=torch.tensor([[0.0, 1, 3], [1, 2, 4]])), "edge_index must be an int32/int64 tensor"),
    (dict(edge_index=torch.tensor([0, 1, 3])), r"edge_index must have shape \(2, E\)"),
    (dict(edge_index=torch.tensor([[0, 1, 2], [1, 2, 4]])), "joins nodes of different graphs"),
    (dict(x=torch.tensor([[0.0, float("nan"), 1]] * 5)), "x holds NaN"),
    (dict(x=torch.full((5, 3), float("inf"))), "x holds NaN or inf"),
    (dict(x=torch.ones(5, 3, dtype=torch.bool)), "x must be floating point"),
    (dict(x=torch.randn(5, 3, 2)), r"x must be \(N nodes,\)"),
    (dict(x=-torch.ones(5, dtype=torch.long)), "x holds negative category ids"),
    (dict(edge_attr=torch.randn(2, 2)), "edge_attr has 2 rows but there are 3 edges"),
    (dict(edge_attr=torch.tensor([[1.0, float("nan")]] * 3)), "edge_attr holds NaN"),
    (dict(ptr=torch.tensor([0, 3, 6])), "offsets must start at 0 and end at len"),
    (dict(ptr=torch.tensor([0, 4, 3, 5])), "non-decreasing"),
    (dict(lap_pe=torch.randn(4, 2)), "lap_pe has 4 rows"),
    (dict(rwse=torch.ones(5, 2, dtype=torch.long)), "rwse must be a float"),
    (dict(y=torch.randn(3)), "y must be a tensor with one row per graph"),
])
def test_invalid_batches_raise_naming_the_problem(changes, message):
    with pytest.raises(ValueError, match=message):
        _check(**changes)


def test_batch_vector_validation():
    with pytest.raises(ValueError, match="batch must be sorted"):
        ptr_from_batch(torch.tensor([0, 1, 0]), 3)
    with pytest.raises(ValueError, match="batch has 2 entries"):
        ptr_from_batch(torch.tensor([0, 1]), 3)
    with pytest.raises(ValueError, match="negative graph ids"):
        ptr_from_batch(torch.tensor([-1, 0, 0]), 3)
    assert ptr_from_batch(None, 4).tolist() == [0, 4]
    assert ptr_from_batch(torch.tensor([0, 0, 2]), 3).tolist() == [0, 2, 2, 3]  # graph 1 is empty
    assert check_graph(torch.randn(3, 2), torch.zeros(2, 0, dtype=torch.int32), torch.tensor([0, 3])).dtype == torch.long
