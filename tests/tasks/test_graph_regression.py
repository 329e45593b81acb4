"""The ZINC-like graph-regression task through the training engine: recipes build, a short run
learns, val and test are each evaluated in full, the report has the test-prediction plot."""
from __future__ import annotations

import csv

import pytest

from relformer.tasks import resolve_recipe, train


@pytest.mark.parametrize("name", ["gps-zinc", "gt-zinc", "graphormer-zinc"])
def test_zinc_recipes_validate_and_build(name):
    recipe = resolve_recipe(name)
    recipe.validate()
    assert recipe.task == "graph_regression" and recipe.data.variant == "12k"
    assert recipe.model.build() is not None


@pytest.mark.slow
def test_short_gps_run_learns_and_reports(tmp_path):
    overrides = [f"data.root={tmp_path / 'cache'}", "data.limit=[256, 64, 64]", "model.options.depth=2",
                 "epochs=3", "batch_size=32", "optim.lr=3e-3", f"out_dir={tmp_path / 'run'}", "checkpoint_every=0"]
    train(resolve_recipe("gps-zinc", overrides))
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "metrics.csv")) if r["kind"] == "eval"]
    assert [float(r["eval_val_graphs"]) for r in rows] == [64.0] * 3  # every graph, once
    assert [float(r["eval_test_graphs"]) for r in rows] == [64.0] * 3
    first, last = float(rows[0]["eval_val_mae"]), float(rows[-1]["eval_val_mae"])
    assert last < first, f"val MAE did not improve over 3 epochs: {first} -> {last}"
    report = (tmp_path / "run" / "report.md").read_text()
    assert "test mae" in report and "Predicted vs true on the test split" in report
    assert (tmp_path / "run" / "plots" / "test_predictions.png").is_file()
