"""PyG equivalence: ``from_pyg(GPSConv)`` is a relformer GPSLayer called exactly like PyG's layer
with the same outputs, running statistics and gradients, on random batches of 1..60-node graphs
(single nodes and edgeless graphs included); invalid graphs raise clear errors."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from torch_geometric.data import Batch, Data  # a test dependency: never skipped silently
from torch_geometric.nn import GINEConv, GPSConv

from relformer.data.graph import GraphBatch
from relformer.interop.pyg import PyGGPS, PyGGPSConfig, from_pyg, to_pyg
from relformer.models import GPSConfig, GPSLayer, create_model, model_config

C, EDGE_DIM, ATOL = 32, 7, 1e-5


def random_batch(seed: int, sizes=None) -> Batch:
    """Random graphs of 1..60 nodes with float node and edge features; a single-node graph and an
    edgeless graph are always present; edges random (directed, repeats allowed, as PyG permits)."""
    g = torch.Generator().manual_seed(seed)
    if sizes is None:
        sizes = [1, 60, 5] + torch.randint(1, 61, (5,), generator=g).tolist()
    graphs = []
    for k, n in enumerate(sizes):
        m = 0 if k == 2 or n == 1 else int(torch.randint(0, 3 * n, (1,), generator=g))
        graphs.append(Data(x=torch.randn(n, C, generator=g), edge_index=torch.randint(0, n, (2, m), generator=g),
                           edge_attr=torch.randn(m, EDGE_DIM, generator=g)))
    return Batch.from_data_list(graphs)


def pyg_layer(heads=4, norm="batch_norm", local=True, edge_dim=EDGE_DIM, train_eps=True, attn_dropout=0.0, seed=0):
    torch.manual_seed(seed)
    conv = None
    if local:
        mlp = nn.Sequential(nn.Linear(C, C), nn.ReLU(), nn.Linear(C, C))
        conv = GINEConv(mlp, edge_dim=edge_dim, train_eps=train_eps, eps=0.1)
    layer = GPSConv(C, conv, heads=heads, dropout=0.0, norm=norm, attn_kwargs={"dropout": attn_dropout})
    with torch.no_grad():  # non-trivial norm parameters and running statistics
        for name, t in layer.named_parameters():
            if "norm" in name:
                t.normal_()
        for name, t in layer.named_buffers():
            if "running" in name:
                t.uniform_(0.5, 1.5)
    return layer


def _compare(pyg: nn.Module, ours: nn.Module, batch: Batch, train: bool, edge_attr: bool = True):
    pyg.train(train), ours.train(train)
    x1, x2 = batch.x.clone().requires_grad_(True), batch.x.clone().requires_grad_(True)
    e1, e2 = batch.edge_attr.clone().requires_grad_(True), batch.edge_attr.clone().requires_grad_(True)
    kw1, kw2 = (dict(edge_attr=e1), dict(edge_attr=e2)) if edge_attr else ({}, {})
    ref = pyg(x1, batch.edge_index, batch.batch, **kw1)
    out = ours(x2, batch.edge_index, batch.batch, **kw2)
    diff = (out - ref).abs().max().item()
    assert diff <= ATOL, f"outputs differ by {diff}"
    cot = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1))
    (ref * cot).sum().backward()
    (out * cot).sum().backward()
    grad_diff = (x2.grad - x1.grad).abs().max().item()
    assert grad_diff <= ATOL, f"input gradients differ by {grad_diff}"
    if edge_attr:
        torch.testing.assert_close(e2.grad, e1.grad, rtol=0, atol=ATOL)
    return diff, grad_diff


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("train", [True, False])
def test_gps_conv_equivalence(seed, train):
    pyg, batch = pyg_layer(seed=seed), random_batch(seed)
    ours = from_pyg(pyg)
    assert isinstance(ours, GPSLayer)
    _compare(pyg, ours, batch, train)
    # the same running statistics after a training step; parameter gradients match too
    torch.testing.assert_close(ours.norm1.running_mean, pyg.norm1.module.running_mean, rtol=0, atol=ATOL)
    torch.testing.assert_close(ours.norm3.running_var, pyg.norm3.module.running_var, rtol=0, atol=ATOL)
    grads = {n: p.grad for n, p in pyg.named_parameters()}
    torch.testing.assert_close(ours.attn.qkv.weight.grad, grads["attn.in_proj_weight"], rtol=0, atol=ATOL)
    torch.testing.assert_close(ours.local.lin.weight.grad, grads["conv.lin.weight"], rtol=0, atol=ATOL)
    torch.testing.assert_close(ours.local.eps.grad, grads["conv.eps"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("options", [
    dict(heads=1), dict(norm=None), dict(norm="layer_norm_node"), dict(local=False), dict(edge_dim=None),
    dict(train_eps=False, attn_dropout=0.3),
])
def test_gps_conv_options(options):
    options = dict(options)
    if options.get("norm") == "layer_norm_node":
        options["norm"] = "layer_norm"
        pyg = pyg_layer(**options)
        from torch_geometric.nn.norm import LayerNorm

        for k in (1, 2, 3):  # PyG's GPSConv builds graph-mode LayerNorms; node mode is per-node LayerNorm
            old = getattr(pyg, f"norm{k}")
            new = LayerNorm(C, mode="node")
            new.load_state_dict(old.state_dict())
            setattr(pyg, f"norm{k}", new)
        pyg.norm_with_batch = True
    else:
        pyg = pyg_layer(**options)
    batch = random_batch(5)
    if options.get("edge_dim", EDGE_DIM) is None:  # GINE adds edge features of width C as they are
        batch.edge_attr = torch.randn(batch.edge_index.shape[1], C)
    ours = from_pyg(pyg)
    train = options.get("attn_dropout", 0.0) == 0.0  # attention dropout is random: compare in eval only
    _compare(pyg, ours, batch, train, edge_attr=options.get("local", True))
    _compare(pyg, ours, batch, False, edge_attr=options.get("local", True))


def test_gps_conv_equivalence_on_one_graph_without_batch():
    pyg, data = pyg_layer(), random_batch(3, sizes=[17])
    ours = from_pyg(pyg)
    pyg.eval(), ours.eval()
    with torch.no_grad():
        ref = pyg(data.x, data.edge_index, edge_attr=data.edge_attr)
        out = ours(data.x, data.edge_index, edge_attr=data.edge_attr)
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)


def test_gine_conv_equivalence():
    torch.manual_seed(0)
    conv = GINEConv(nn.Sequential(nn.Linear(C, 2 * C), nn.ReLU(), nn.Linear(2 * C, C)), edge_dim=EDGE_DIM, eps=0.3)
    batch = random_batch(4)
    with torch.no_grad():
        torch.testing.assert_close(from_pyg(conv)(batch.x, batch.edge_index, batch.edge_attr),
                                   conv(batch.x, batch.edge_index, batch.edge_attr), rtol=0, atol=ATOL)


@pytest.mark.parametrize("train", [False, True])
def test_to_pyg_round_trip(train):
    """relformer GPSLayer -> PyG GPSConv: the PyG layer computes what the relformer layer does."""
    pyg = pyg_layer(seed=3)
    ours = from_pyg(pyg)
    back = to_pyg(ours)
    assert isinstance(back, GPSConv)
    _compare(back, ours, random_batch(5), train)


def _zinc_like_batch(seed: int) -> GraphBatch:
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for n in [1, 9, 23, 40, 2, 17]:
        m = 0 if n == 1 else 2 * n
        graphs.append(dict(x=torch.randint(0, 16, (n,), generator=g), edge_index=torch.randint(0, n, (2, m), generator=g),
                           edge_attr=torch.randint(0, 4, (m,), generator=g)))
    return GraphBatch.from_list(graphs)


@pytest.mark.parametrize("train", [False, True])
def test_pyg_implementation_of_gps_matches(train):
    """pyg_gps_micro (PyGGPS, registered by relformer.interop.pyg) -- the ZINC baseline -- starts from the same weights as the
    relformer GPS for a seed, and gives the same predictions and parameter gradients (the largest
    gradients here are ~30: compared within 1e-5 relative + 1e-5 absolute)."""
    torch.manual_seed(0)
    ours = create_model("gps_micro").train(train)
    torch.manual_seed(0)
    pyg = create_model("pyg_gps_micro").train(train)
    assert all(isinstance(layer, GPSConv) for layer in pyg.layers)
    batch = _zinc_like_batch(7)
    torch.manual_seed(1)  # the same LapPE sign flips in training
    out = ours(batch).logits
    torch.manual_seed(1)
    ref = pyg(batch).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=ATOL)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    (out * cot).sum().backward()
    (ref * cot).sum().backward()
    for name in ("node_encoder.embed.weight", "head.fc1.weight", "lap.weight", "rwse.weight"):
        torch.testing.assert_close(dict(ours.named_parameters())[name].grad, dict(pyg.named_parameters())[name].grad,
                                   rtol=1e-5, atol=ATOL)
    torch.testing.assert_close(ours.layers[0].attn.qkv.weight.grad, pyg.layers[0].attn.in_proj_weight.grad,
                               rtol=1e-5, atol=ATOL)


def test_pyg_baselines_are_registered_with_the_configs_of_their_models():
    """pyg_gps_zinc / pyg_gps_micro: the GPS configs of gps_zinc / gps_micro, field for field, built as PyGGPS."""
    for name in ("gps_zinc", "gps_micro"):
        ours, theirs = model_config(name), model_config(f"pyg_{name}")
        assert type(ours) is GPSConfig and type(theirs) is PyGGPSConfig
        assert {f: getattr(theirs, f) for f in ours.__dataclass_fields__} == vars(ours)
    assert isinstance(create_model("pyg_gps_micro"), PyGGPS)
    with pytest.raises(ValueError, match="PyGGPSConfig.norm must be 'batch'"):
        model_config("pyg_gps_micro", norm="layer")


def test_models_take_pyg_batches():
    g = torch.Generator().manual_seed(0)
    graphs = [Data(x=torch.randint(0, 16, (n,), generator=g), edge_index=torch.tensor([[0, 1], [1, 0]]) if n > 1
                   else torch.zeros(2, 0, dtype=torch.long),
                   edge_attr=torch.randint(0, 4, (2 if n > 1 else 0,), generator=g)) for n in (3, 1, 5)]
    batch = Batch.from_data_list(graphs)
    model = create_model("gps_micro").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(batch).logits, model(GraphBatch.from_pyg(batch)).logits, rtol=0, atol=0)


@pytest.mark.parametrize("change, message", [
    (lambda b: b.edge_index.clone().index_fill_(1, torch.tensor([3]), b.num_nodes), "refers to node"),
    (lambda b: b.edge_index.clone().index_fill_(1, torch.tensor([3]), -1), "negative node ids"),
    (lambda b: b.edge_index.float(), "edge_index must be an int32/int64 tensor"),
])
def test_invalid_edges_raise(change, message):
    batch = random_batch(0)
    ours = from_pyg(pyg_layer())
    with pytest.raises(ValueError, match=message):
        ours(batch.x, change(batch), batch.batch, edge_attr=batch.edge_attr)


def test_invalid_features_and_batches_raise():
    batch = random_batch(0)
    ours = from_pyg(pyg_layer())
    x = batch.x.clone()
    x[4, 2] = float("nan")
    with pytest.raises(ValueError, match="x holds NaN"):
        ours(x, batch.edge_index, batch.batch, edge_attr=batch.edge_attr)
    with pytest.raises(ValueError, match=r"edge_attr has \d+ rows but there are \d+ edges"):
        ours(batch.x, batch.edge_index, batch.batch, edge_attr=batch.edge_attr[1:])
    with pytest.raises(ValueError, match="batch must be sorted"):
        ours(batch.x, batch.edge_index, batch.batch.flip(0), edge_attr=batch.edge_attr)
    crossing = batch.edge_index.clone()
    crossing[0, 0], crossing[1, 0] = 0, batch.num_nodes - 1
    with pytest.raises(ValueError, match="joins nodes of different graphs"):
        ours(batch.x, crossing, batch.batch, edge_attr=batch.edge_attr)
    with pytest.raises(ValueError, match="x must be a float"):
        ours(batch.x.long(), batch.edge_index, batch.batch, edge_attr=batch.edge_attr)


def test_unsupported_layers_are_named():
    with pytest.raises(NotImplementedError, match="performer"):
        from_pyg(GPSConv(C, None, heads=2, attn_type="performer"))
    with pytest.raises(NotImplementedError, match="mode='graph'"):
        from_pyg(GPSConv(C, None, heads=2, norm="layer_norm"))
    with pytest.raises(NotImplementedError, match="Linear"):
        from_pyg(nn.Linear(3, 3))
