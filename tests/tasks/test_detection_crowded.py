"""The crowded multi-scale detection task through the training engine: its recipes build, a short
run evaluates every val and test canvas with COCO mAP including APl, and the report shows test
canvases with predicted boxes."""
from __future__ import annotations

import csv
import math

import pytest

from relformer.data.fashion_detection import CROWDED, CROWDED_SIZES
from relformer.models import DETR
from relformer.tasks import resolve_recipe, train
from relformer.tasks.detection import FashionCrowdedDetectionTask

RECIPES = {"detr-fashion-crowded": 1, "group-detr-fashion-crowded": 4}  # recipe -> query groups


@pytest.mark.parametrize("name", RECIPES)
def test_crowded_recipes_validate_and_build(name):
    recipe = resolve_recipe(name)
    recipe.validate()
    assert recipe.task == "fashion_crowded_detection" and recipe.data.sizes == CROWDED_SIZES
    assert (recipe.data.canvas, recipe.data.max_objects) == (CROWDED["canvas"], CROWDED["max_objects"])
    model = recipe.model.build()
    assert isinstance(model, DETR) and model.config.num_groups == RECIPES[name]
    assert model.config.num_queries > CROWDED["max_objects"]  # room for every item of a canvas
    task = FashionCrowdedDetectionTask(recipe)  # the canvases are built only when data is asked for
    assert "test_APl" in task.metric_names and "crowded" in task.eval_description
    assert resolve_recipe("detr-fashion").task == "detection"  # the plain canvases keep their task


@pytest.mark.slow
def test_short_crowded_run_reports_every_area_range(tmp_path):
    out = tmp_path / "run"
    overrides = [f"data.root={tmp_path / 'cache'}", "data.sizes=[32, 8, 8]", "model.name=detr_micro",
                 "model.options.num_classes=10", "model.options.num_queries=24", "epochs=1", "batch_size=8",
                 "optim.lr=1e-3", f"out_dir={out}", "checkpoint_every=0", "log_every=1"]
    train(resolve_recipe("detr-fashion-crowded", overrides))
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [float(r["eval_test_images"]) for r in evals] == [8.0]
    for r in evals:
        for key in ("eval_val_AP", "eval_test_AP75", "eval_test_APs", "eval_test_APm", "eval_test_APl"):
            assert 0.0 <= float(r[key]) <= 1.0, key  # a number: the crowded test split has large boxes
    assert all(math.isfinite(float(r["train_loss"])) for r in rows if r["kind"] == "train")
    report = (out / "report.md").read_text()
    assert "predictions (score >= 0.5" in report and (out / "plots" / "test_detections.png").is_file()
