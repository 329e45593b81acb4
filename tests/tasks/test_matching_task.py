"""The homography-matching task: LoFTR learns from random views of training photos, is validated on
the validation photos only, its metrics equal the corner-error AUC and precision computed directly
from the model's matches, and a short run writes the match picture."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from relformer.data.matching import TEST_PHOTOS, TRAIN_PHOTOS, VAL_PHOTOS
from relformer.tasks import resolve_recipe, train
from relformer.tasks.matching import MatchingTask, pair_errors
from relformer.tasks.matching_metrics import corner_error, error_auc, estimate_homography, match_precision

SMALL = ["data.size=[64,96]", "data.train_pairs=4", "data.val_pairs=3", "batch_size=2", "eval_batch_size=3",
         "checkpoint_every=0", "epochs=1", "model.options.match_threshold=0.0"]


def test_pairs_come_from_the_right_photos_and_metrics_follow_the_matches():
    task = MatchingTask(resolve_recipe("loftr-homography", SMALL))
    assert set(task.train_set.photos) == set(TRAIN_PHOTOS) and set(task.val_set.photos) == set(VAL_PHOTOS)
    assert not set(task.val_set.photos) & set(TEST_PHOTOS)
    torch.manual_seed(0)
    model = task.build_model().eval()
    batch = task.collate([task.val_set[i] for i in range(3)])
    with torch.no_grad():
        metrics = task.metrics({k: float(v) for k, v in task.eval_step(model, batch).items()})
        out = model({"image0": batch["image0"], "image1": batch["image1"]})
    errors, precisions, counts = [], [], []
    for i in range(3):
        pick = (out.batch_indexes == i).numpy()
        k0, k1, H = out.keypoints0[pick].double().numpy(), out.keypoints1[pick].double().numpy(), batch["H_0to1"][i].numpy()
        assert len(k0) > 0  # threshold 0: every mutual nearest neighbour is a match
        errors.append(corner_error(estimate_homography(k0, k1), H, width=96, height=64))
        precisions.append(match_precision(k0, k1, H) * len(k0))
        counts.append(len(k0))
    auc = error_auc(errors)
    assert metrics["auc5"] == pytest.approx(auc[5.0]) and metrics["auc10"] == pytest.approx(auc[10.0])
    assert metrics["precision"] == pytest.approx(sum(precisions) / sum(counts))
    assert metrics["matches"] == pytest.approx(sum(counts) / 3) and metrics["pairs"] == 3


def test_pair_errors_of_exact_matches_are_zero_and_of_no_matches_a_failure():
    H = np.array([[1.0, 0.02, 5.0], [0.01, 1.0, -3.0], [0.0, 0.0, 1.0]])
    k0 = np.random.default_rng(0).uniform(0, 60, (30, 2))
    k1 = (np.c_[k0, np.ones(30)] @ H.T)[:, :2] / (np.c_[k0, np.ones(30)] @ H.T)[:, 2:]
    error, correct, n = pair_errors(k0, k1, H, (64, 64))
    assert error < 1e-4 and correct == n == 30  # MAGSAC++ refits on its inliers: ~1e-6 px
    error, correct, n = pair_errors(np.zeros((0, 2)), np.zeros((0, 2)), H, (64, 64))
    assert error == float("inf") and correct == n == 0


@pytest.mark.slow
def test_short_run_learns_to_lower_its_loss_and_writes_the_match_picture(tmp_path):
    out = tmp_path / "run"
    train(resolve_recipe("loftr-homography", [*SMALL, "epochs=2", "log_every=1", f"out_dir={out}"]))
    rows = list(csv.DictReader(open(out / "metrics.csv")))
    assert len([r for r in rows if r["kind"] == "eval"]) == 2
    assert all(np.isfinite(float(r["train_loss"])) for r in rows if r["kind"] == "train")
    assert (out / "plots" / "val_matches.png").is_file()
    assert "val_matches.png" in (out / "report.md").read_text()
