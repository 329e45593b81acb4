"""The Fashion-MNIST detection task through the training engine: the four recipes build (the HF
baseline included), a short DETR run learns, val and test are evaluated in full with COCO mAP, the
report has the predicted-boxes plot; Group DETR and Relation-DETR train through the same task."""
from __future__ import annotations

import csv
import math

import pytest

from relformer.interop.transformers import HFDETR
from relformer.models import DETR
from relformer.tasks import resolve_recipe, train

RECIPES = ["detr-fashion", "relation-detr-fashion", "group-detr-fashion", "hf-detr-fashion"]


@pytest.mark.parametrize("name", RECIPES)
def test_detection_recipes_validate_and_build(name):
    recipe = resolve_recipe(name)
    recipe.validate()
    model = recipe.model.build()
    assert isinstance(model, HFDETR if name.startswith("hf") else DETR)
    assert recipe.task == "detection" and recipe.data.sizes == (10000, 1000, 1000)


def _run(tmp_path, name: str, epochs: int, *extra: str) -> list[dict]:
    overrides = [f"data.root={tmp_path / 'cache'}", "data.sizes=[96, 16, 12]", "model.name=detr_micro",
                 "model.options.num_classes=10", f"epochs={epochs}", "batch_size=16", "optim.lr=1e-3",
                 "optim.clip_grad=1.0", f"out_dir={tmp_path / name}", "checkpoint_every=0", "log_every=1", *extra]
    train(resolve_recipe(name, overrides))
    return list(csv.DictReader(open(tmp_path / name / "metrics.csv")))


@pytest.mark.slow
def test_short_detr_run_learns_and_reports(tmp_path):
    rows = _run(tmp_path, "detr-fashion", 3)
    evals = [r for r in rows if r["kind"] == "eval"]
    assert [float(r["eval_val_images"]) for r in evals] == [16.0] * 3  # every canvas, once
    assert [float(r["eval_test_images"]) for r in evals] == [12.0] * 3
    for r in evals:
        for key in ("eval_val_AP", "eval_val_AP50", "eval_test_AP", "eval_test_AP75"):
            assert 0.0 <= float(r[key]) <= 1.0
    losses = [float(r["train_loss"]) for r in rows if r["kind"] == "train"]
    assert min(losses[-3:]) < losses[0], f"the set loss did not fall: {losses}"
    report = (tmp_path / "detr-fashion" / "report.md").read_text()
    assert "test AP" in report and "predictions (score >= 0.5" in report
    assert (tmp_path / "detr-fashion" / "plots" / "test_detections.png").is_file()


@pytest.mark.parametrize("name, options", [("group-detr-fashion", "model.options.num_groups=3"),
                                           ("relation-detr-fashion", "model.options.box_relation=true")])
@pytest.mark.slow
def test_group_and_relation_detr_train_through_the_task(tmp_path, name, options):
    rows = _run(tmp_path, name, 1, options)
    losses = [float(r["train_loss"]) for r in rows if r["kind"] == "train"]
    assert losses and all(math.isfinite(x) for x in losses)
    assert [float(r["eval_val_images"]) for r in rows if r["kind"] == "eval"] == [16.0]
