"""The built-in datasets are instances of the generic tasks (issue: "the existing built-in datasets
become instances of these"): the ZINC task is a GraphTask, the detection canvases a
CocoDetectionTask; both evaluate named splits through EvalSplits with split-prefixed metrics."""
from __future__ import annotations

import pytest
import torch

from relformer.tasks import CocoDetectionTask, DetectionTask, GraphRegressionTask, GraphTask, resolve_recipe
from relformer.tasks.splits import EvalSplits


class Rows(torch.utils.data.Dataset):
    def __init__(self, values):
        self.values = list(values)

    def __len__(self):
        return len(self.values)

    def __getitems__(self, indices):
        return [self.values[i] for i in indices]


def test_eval_splits_route_indices_to_their_split():
    splits = EvalSplits({"val": Rows("abc"), "test": Rows("xy")})
    assert len(splits) == 5 and splits.names == ("val", "test")
    assert splits.__getitems__([0, 2, 3]) == (["a", "c"], ["x"])
    assert splits.__getitems__([4]) == (None, ["y"])
    assert splits.__getitems__([1]) == (["b"], None)
    assert splits.prefix("val") == "val_" and EvalSplits({"eval": Rows("a")}).prefix("eval") == ""
    with pytest.raises(ValueError, match="at least one split"):
        EvalSplits({})


def test_zinc_task_is_a_graph_task_with_val_and_test(tmp_path):
    recipe = resolve_recipe("gps-zinc", [f"data.root={tmp_path}", "data.limit=[16, 8, 4]", "model.options.depth=1"])
    task = GraphRegressionTask(recipe)
    assert isinstance(task, GraphTask) and not task.classify
    assert task.main_metric == "val_mae" and task.mode == "min"
    assert {"val_mae", "val_mse", "test_mae", "test_mse", "val_graphs", "test_graphs"} <= set(task.metric_names)
    data = task.eval_dataset()
    val, test = data.__getitems__(list(range(len(data))))
    assert (val.num_graphs, test.num_graphs) == (8, 4)
    model = task.build_model().eval()
    with torch.no_grad():
        metrics = task.metrics({k: float(v) for k, v in task.eval_step(model, (val, test)).items()})
        expected = (model(test).logits.float().squeeze(-1) - test.y.float()).abs().mean()
    assert metrics["test_graphs"] == 4 and metrics["val_graphs"] == 8
    assert metrics["test_mae"] == pytest.approx(float(expected), rel=1e-5)


def test_detection_canvases_task_is_a_coco_detection_task():
    task = DetectionTask(resolve_recipe("detr-fashion"))  # the canvases are built only when data is asked for
    assert isinstance(task, CocoDetectionTask)
    assert task.main_metric == "val_AP" and task.eval_splits == ("val", "test")
    assert {"val_AP", "val_AP75", "test_AP", "test_images"} <= set(task.metric_names)
    assert len(task.classes) == 10 and task.criterion.num_classes == 10
    with pytest.raises(ValueError, match="in_channels=1 and num_classes=10"):
        DetectionTask(resolve_recipe("detr-fashion", ["model.options.num_classes=3"]))
