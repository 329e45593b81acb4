"""The homography-flow task: GMFlow learns from random views of training photos, is validated on
the validation photos only, its metrics equal a direct end-point-error computation, and a short
run from a recipe writes the flow picture."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from relformer.data.matching import TEST_PHOTOS, TRAIN_PHOTOS, VAL_PHOTOS
from relformer.tasks import resolve_recipe, train
from relformer.tasks.flow import FlowTask
from relformer.tasks.matching_pictures import flow_to_rgb

SMALL = ["data.size=[64,96]", "data.train_pairs=4", "data.val_pairs=3", "batch_size=2", "eval_batch_size=2",
         "checkpoint_every=0", "epochs=1"]


def test_pairs_come_from_the_right_photos_and_metrics_are_the_mean_pixel_error():
    task = FlowTask(resolve_recipe("gmflow-homography", SMALL))
    assert set(task.train_set.photos) == set(TRAIN_PHOTOS) and set(task.val_set.photos) == set(VAL_PHOTOS)
    assert not set(task.val_set.photos) & set(TEST_PHOTOS)
    torch.manual_seed(0)
    model = task.build_model().eval()
    batch = task.collate([task.val_set[i] for i in range(3)])
    with torch.no_grad():
        sums = task.eval_step(model, batch)
        flow = model(batch["image0"], batch["image1"]).flow
    err = (flow - batch["flow_0to1"]).norm(dim=1)[batch["valid_0to1"]]
    metrics = task.metrics({k: float(v) for k, v in sums.items()})
    assert metrics["pixels"] == batch["valid_0to1"].sum()
    assert metrics["epe"] == pytest.approx(float(err.mean()), rel=1e-5)
    assert metrics["bad3"] == pytest.approx(float((err > 3).float().mean()), rel=1e-5)


def test_flow_colours_encode_direction_and_length():
    flow = torch.zeros(2, 2, 2)
    flow[0, 0, 0], flow[1, 0, 1], flow[0, 1, 0] = 4.0, 4.0, 2.0  # right, down, right at half length
    rgb = flow_to_rgb(flow)
    assert rgb.shape == (2, 2, 3) and np.allclose(rgb[1, 1], 1.0)  # no motion: white
    assert not np.allclose(rgb[0, 0], rgb[0, 1])  # another direction, another hue
    saturation = lambda c: c.max() - c.min()  # noqa: E731
    assert saturation(rgb[1, 0]) == pytest.approx(saturation(rgb[0, 0]) / 2, rel=1e-6)


@pytest.mark.slow
def test_short_run_from_the_cli_recipe_writes_metrics_and_the_flow_picture(tmp_path):
    out = tmp_path / "run"
    train(resolve_recipe("gmflow-homography", [*SMALL, "epochs=2", f"out_dir={out}"]))
    rows = [r for r in csv.DictReader(open(out / "metrics.csv")) if r["kind"] == "eval"]
    assert len(rows) == 2 and all(float(r["eval_pixels"]) > 0 for r in rows)
    assert (out / "plots" / "val_flow.png").is_file()
    assert "val_flow.png" in (out / "report.md").read_text()
