"""The 3-D referring task: recipes build, accuracy by ReferIt3D subset against scikit-learn on a hand-made
prediction set (and through the task's eval_step / metrics), the real-data path on written ReferIt3D-layout
files, recipe errors, and ``relformer train transrefer3d-sr3d-gen`` writing a report with the top views."""
from __future__ import annotations

import csv

import pytest
import torch
from sklearn.metrics import accuracy_score

from relformer.cli import main
from relformer.data.grounding import build_benchmark
from relformer.models.grounding import GroundingOutput
from relformer.tasks import build_task, resolve_recipe
from relformer.tasks.grounding import SUBSETS, referring_metrics, referring_sums
from relformer.train.recipe import RecipeError
from tests.models.test_grounding import random_batch

RECIPES = ["transrefer3d-sr3d-gen", "transrefer3d-plain-sr3d-gen", "referit3dnet-sr3d-gen"]


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_validate_with_a_30_minute_budget(name):
    recipe = resolve_recipe(name)
    recipe.validate()
    assert recipe.task == "grounding" and recipe.max_minutes == 30.0 and recipe.data.source == "generated"
    assert recipe.model.name in ("transrefer3d", "transrefer3d_plain", "referit3dnet")


def _hand_made():
    picked = torch.tensor([0, 2, 1, 1, 4, 0, 3, 2])
    target = torch.tensor([0, 1, 1, 3, 4, 0, 3, 0])
    hard = torch.tensor([False, True, True, False, True, False, False, True])
    view = torch.tensor([True, True, False, False, False, True, False, True])
    return picked, target, hard, view


def test_subset_accuracies_match_scikit_learn():
    picked, target, hard, view = _hand_made()
    got = referring_metrics({k: float(v) for k, v in referring_sums(picked, target, hard, view).items()}, "val_")
    masks = {"accuracy": torch.ones_like(hard), "easy": ~hard, "hard": hard, "view_dep": view, "view_indep": ~view}
    for name in SUBSETS:
        m = masks[name]
        assert got[f"val_{name}"] == pytest.approx(accuracy_score(target[m].numpy(), picked[m].numpy()))
    assert got["val_utterances"] == 8


def test_eval_step_and_metrics_sum_over_batches_and_splits(tmp_path):
    """A stub model that picks object 0 of each scene: the metrics equal scikit-learn's on the same picks."""
    class PickFirst(torch.nn.Module):
        def forward(self, batch):
            n = int(batch.object_offsets[-1])
            logits = torch.zeros(n)
            logits[batch.object_offsets[:-1]] = 1.0
            return GroundingOutput(logits, torch.zeros(n, 2), torch.zeros(batch.num_scenes, 2), batch.object_offsets)

    task = build_task(resolve_recipe("transrefer3d-sr3d-gen", [f"data.root={tmp_path}"]))
    val, test = random_batch((3, 4, 2, 5), seed=1), random_batch((2, 6), seed=2)
    sums = {}
    for batch in [(val, None), (None, test)]:
        for k, v in task.eval_step(PickFirst(), batch).items():
            sums[k] = sums.get(k, 0.0) + float(v)
    metrics = task.metrics(sums)
    assert set(metrics) == set(task.metric_names)
    for split, b in (("val", val), ("test", test)):
        picked = torch.zeros_like(b.target)
        assert metrics[f"{split}_accuracy"] == pytest.approx(accuracy_score(b.target.numpy(), picked.numpy()))
        hard = b.hard
        assert metrics[f"{split}_hard"] == pytest.approx(accuracy_score(b.target[hard].numpy(), picked[hard].numpy()))
        assert metrics[f"{split}_utterances"] == b.num_scenes


def test_real_referit3d_files_load_through_the_recipe(tmp_path):
    folder = build_benchmark((3, 1, 1), root=tmp_path)
    generated = build_task(resolve_recipe("transrefer3d-sr3d-gen", [f"data.root={tmp_path}",
                                                                     "data.num_scenes=[3, 1, 1]"])).datasets()
    real = build_task(resolve_recipe("transrefer3d-sr3d-gen", [
        "data.source=referit3d", f"data.csv={folder / 'sr3d_gen.csv'}", f"data.scans_dir={folder / 'scans'}",
        f"data.splits_dir={folder / 'splits'}"])).datasets()
    for split in ("train", "val", "test"):
        assert [u.text for u in real[split].utterances] == [u.text for u in generated[split].utterances]
        a, b = real[split][0], generated[split][0]
        assert torch.equal(a["centres"], b["centres"]) and a["target"] == b["target"]
    (folder / "splits" / "val_scans.txt").unlink()
    task = build_task(resolve_recipe("transrefer3d-sr3d-gen", [
        "data.source=referit3d", f"data.csv={folder / 'sr3d_gen.csv'}", f"data.scans_dir={folder / 'scans'}",
        f"data.splits_dir={folder / 'splits'}"]))
    with pytest.raises(RecipeError, match="data.splits_dir"):
        task.datasets()


def test_recipe_and_metric_errors():
    with pytest.raises(RecipeError, match="data.csv"):
        resolve_recipe("transrefer3d-sr3d-gen", ["data.source=referit3d"])
    with pytest.raises(RecipeError, match="data.num_scenes"):
        resolve_recipe("transrefer3d-sr3d-gen", ["data.num_scenes=[0, 1, 1]"])
    with pytest.raises(ValueError, match="picked, target"):
        referring_sums(torch.zeros(3), torch.zeros(2), torch.zeros(3), torch.zeros(3))


@pytest.mark.slow
def test_cli_train_writes_a_report_with_top_views(tmp_path):
    run = tmp_path / "run"
    main(["train", "transrefer3d-sr3d-gen", "--set", "max_steps=2", "--set", "batch_size=8",
          "--set", "model.name=transrefer3d_micro", "--set", "data.num_scenes=[2, 1, 1]",
          "--set", f"data.root={tmp_path / 'data'}", "--set", f"out_dir={run}"])
    report = (run / "report.md").read_text()
    assert "Test scenes from above" in report and (run / "plots" / "test_scenes.png").is_file()
    task = build_task(resolve_recipe("transrefer3d-sr3d-gen", [f"data.root={tmp_path / 'data'}",
                                                               "data.num_scenes=[2, 1, 1]"]))
    rows = [r for r in csv.DictReader(open(run / "metrics.csv")) if r["kind"] == "eval"]
    for split in ("val", "test"):  # every utterance once
        assert float(rows[-1][f"eval_{split}_utterances"]) == len(task.datasets()[split])
        assert 0.0 <= float(rows[-1][f"eval_{split}_accuracy"]) <= 1.0
