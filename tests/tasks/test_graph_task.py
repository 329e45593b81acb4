"""The generic graph task: a list of PyG Data (regression and classification) trains a few steps
from Python, and a torch.save'd list of graph dicts from the CLI with a YAML recipe."""
import pytest
import torch
import yaml
from torch_geometric.data import Data

from relformer.cli import main
from relformer.data.graph import GraphBatch
from relformer.tasks import GraphTask, Trainer, parse_recipe
from relformer.train.logger import read_metrics

TINY = {"name": "gps_micro", "options": {"dim": 16, "depth": 1, "num_heads": 2, "lap_k": 0, "rwse_k": 2}}


def ring_graphs(n, seed, classify=False):
    """Rings of 3..8 nodes with 3 float features; the target is the ring's size (or size is even)."""
    g = torch.Generator().manual_seed(seed)
    graphs = []
    for i in range(n):
        size = 3 + i % 6
        src = torch.arange(size)
        edge_index = torch.cat([torch.stack([src, (src + 1) % size]), torch.stack([(src + 1) % size, src])], 1)
        y = torch.tensor([size % 2]) if classify else torch.tensor([float(size)])
        graphs.append(Data(x=torch.randn(size, 3, generator=g), edge_index=edge_index,
                           edge_attr=torch.randint(0, 4, (edge_index.shape[1],), generator=g), y=y))
    return graphs


def recipe_dict(out, **data):
    return {"task": "graph", "model": TINY, "device": "cpu", "epochs": 2, "batch_size": 8, "eval_batch_size": 8,
            "out_dir": str(out), "optim": {"lr": 3e-3, "warmup_epochs": 0}, "data": data}


def test_pyg_data_regression_trains_from_python(tmp_path):
    task = GraphTask(parse_recipe(recipe_dict(tmp_path / "run")), train=ring_graphs(32, 0), eval=ring_graphs(12, 1))
    trainer = Trainer(task=task)
    model = trainer.fit()
    assert model.config.node_in_dim == 3 and model.config.edge_types == 4 and model.config.num_outputs == 1
    evals = [r for r in read_metrics(trainer.run_dir / "metrics.csv") if r["kind"] == "eval"]
    assert len(evals) == 2 and all(float(r["eval_graphs"]) == 12 for r in evals)
    # the model is evaluated on the whole eval list: mae is the mean |pred - size| over its 12 graphs
    batch = GraphBatch.from_list([g.to_dict() for g in ring_graphs(12, 1)])
    model.eval()
    with torch.no_grad():
        mae = (model(batch).logits.squeeze(-1) - batch.y).abs().mean()
    assert float(evals[-1]["eval_mae"]) == pytest.approx(float(mae), rel=1e-5)


def test_classification_from_a_yaml_recipe_and_graph_files(tmp_path):
    torch.save([g.to_dict() for g in ring_graphs(32, 0, classify=True)], tmp_path / "train.pt")
    torch.save([g.to_dict() for g in ring_graphs(12, 1, classify=True)], tmp_path / "eval.pt")
    recipe = tmp_path / "rings.yaml"
    recipe.write_text(yaml.safe_dump(recipe_dict(tmp_path / "run", train=str(tmp_path / "train.pt"),
                                                 eval=str(tmp_path / "eval.pt"), target="classification")))
    main(["train", str(recipe)])
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.csv") if r["kind"] == "eval"]
    assert len(evals) == 2 and 0 <= float(evals[-1]["eval_accuracy"]) <= 1


def test_bad_graph_input_is_named(tmp_path):
    recipe = parse_recipe(recipe_dict(tmp_path / "run"))
    with pytest.raises(TypeError, match=r"graphs\[1\] must be a PyG Data"):
        GraphTask(recipe, train=[ring_graphs(1, 0)[0], "nope"], eval=ring_graphs(2, 0))
    with pytest.raises(ValueError, match="data.train"):
        GraphTask(parse_recipe(recipe_dict(tmp_path / "run", train=str(tmp_path / "missing.pt"),
                                           eval=str(tmp_path / "missing.pt"))))
