"""Sparse matching (LoFTR) learned self-supervised from random homographies of real photos.

Each training pair is two random views of one training photo (:class:`~relformer.data.matching.
HomographyPairs`, grey); the known homography gives every coarse cell of image 0 its cell in
image 1 and the exact point it lands on (:func:`~relformer.models.matching.homography_targets`),
which is LoFTR's supervision (coarse focal loss + fine L2, Sun et al. 2021, sec. 3.5). Every epoch
the fixed validation pairs (the validation photos, never a test photo) are matched; from each
pair's matches a homography is estimated (USAC MAGSAC) and scored by the mean corner error — the
HPatches protocol of LoFTR and LightGlue: ``auc3`` / ``auc5`` / ``auc10`` (``auc5`` picks the
best checkpoint) — and the matches by their precision at 3 px under the true homography.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor, nn

from ..models.matching import homography_targets
from ..train.recipe import ModelSection, OptimSection, Recipe
from .flow import HomographyDataSection, HomographyTask, check_homography_data
from .matching_metrics import AUC_THRESHOLDS, corner_error, error_auc, estimate_homography, reprojection_error
from .matching_pictures import draw_matches
from .registry import register_recipe, register_task
from .splits import gather_objects

__all__ = ["MatchingTask", "MatchingRecipe", "pair_errors"]


@dataclass
class MatchingRecipe(Recipe):
    task: Literal["homography_matching"] = "homography_matching"
    model: ModelSection = field(default_factory=lambda: ModelSection("loftr_micro"))
    data: HomographyDataSection = field(default_factory=lambda: HomographyDataSection(grey=True))

    def validate(self) -> None:
        super().validate()
        check_homography_data(self.data)


def pair_errors(kpts0: np.ndarray, kpts1: np.ndarray, H_gt: np.ndarray, size: tuple[int, int],
                threshold: float = 3.0) -> tuple[float, int, int]:
    """One pair's ``(corner error of the estimated homography, correct matches, matches)``: correct
    = symmetric reprojection error under ``H_gt`` below ``threshold`` px."""
    H = estimate_homography(kpts0, kpts1) if len(kpts0) >= 4 else None
    error = corner_error(H, H_gt, width=size[1], height=size[0])
    correct = int((reprojection_error(kpts0, kpts1, H_gt) < threshold).sum()) if len(kpts0) else 0
    return error, correct, len(kpts0)


@register_task("homography_matching")
class MatchingTask(HomographyTask):
    """Sparse matching from random homographies (see the module); a LoFTR-like model: called as
    ``model({"image0", "image1"})`` -> ``keypoints0``, ``keypoints1``, ``batch_indexes``, with
    ``model.loss(data, targets)``."""

    recipe_type = MatchingRecipe
    main_metric, mode = "auc5", "max"
    log_names = ("coarse", "fine")
    metric_names = ("auc3", "auc5", "auc10", "precision", "matches", "pairs")

    dense = False

    def __init__(self, recipe: MatchingRecipe) -> None:
        super().__init__(recipe)
        self._errors: list[float] = []

    @property
    def eval_description(self) -> str:
        d = self.recipe.data
        return (f"{d.val_pairs} fixed pairs of the validation photos ({d.size[0]}x{d.size[1]}, seed {d.val_seed}): "
                "AUC of the corner error of the homography estimated from the matches (auc5 picks the best "
                "checkpoint) and match precision at 3 px")

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        size = tuple(batch["image0"].shape[-2:])
        targets = homography_targets(batch["H_0to1"].to(batch["image0"].device), size, size)
        losses = model.loss({"image0": batch["image0"], "image1": batch["image1"]}, targets)
        return losses["loss"], {"coarse": losses["coarse"].detach(), "fine": losses["fine"].detach()}

    def eval_step(self, model: nn.Module, batch: dict) -> dict[str, Tensor]:
        out = model({"image0": batch["image0"], "image1": batch["image1"]})
        size = tuple(batch["image0"].shape[-2:])
        b = out.batch_indexes.cpu()
        k0, k1 = out.keypoints0.detach().cpu().double().numpy(), out.keypoints1.detach().cpu().double().numpy()
        correct = matches = 0
        for i in range(len(batch["image0"])):
            pick = (b == i).numpy()
            error, c, m = pair_errors(k0[pick], k1[pick], batch["H_0to1"][i].numpy(), size)
            self._errors.append(error)
            correct, matches = correct + c, matches + m
        return {"correct": torch.tensor(float(correct)), "matches": torch.tensor(float(matches)),
                "pairs": torch.tensor(float(len(batch["image0"])))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        errors, self._errors = gather_objects(self._errors), []
        auc = error_auc(errors, AUC_THRESHOLDS)
        return {**{f"auc{int(t)}": auc[t] for t in AUC_THRESHOLDS},
                "precision": sums["correct"] / max(sums["matches"], 1.0),
                "matches": sums["matches"] / max(sums["pairs"], 1.0), "pairs": sums["pairs"]}

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        """The matches of the first 4 validation pairs, green within 3 px of the truth, red otherwise."""
        from matplotlib.figure import Figure  # optional, heavy: only when a report is written

        items = [self.val_set[i] for i in range(min(4, len(self.val_set)))]
        device = next(model.parameters()).device
        model.eval()
        fig = Figure(figsize=(10, 2.6 * len(items)))
        for row, item in enumerate(items):
            with torch.no_grad():
                out = model({"image0": item["image0"][None].to(device), "image1": item["image1"][None].to(device)})
            k0, k1 = out.keypoints0.cpu().double().numpy(), out.keypoints1.cpu().double().numpy()
            correct = reprojection_error(k0, k1, item["H_0to1"].numpy()) < 3 if len(k0) else np.zeros(0, bool)
            draw_matches(fig.add_subplot(len(items), 1, row + 1), item["image0"], item["image1"], k0, k1, correct,
                         title=f"{item['photo']}: {int(correct.sum())} of {len(k0)} matches within 3 px")
        fig.tight_layout()
        path = run_dir / "plots" / "val_matches.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        return [("Validation pairs (validation photos): matches within 3 px of the truth (green) and not (red)", path)]


@register_recipe("loftr-homography")
def loftr_homography() -> MatchingRecipe:
    """LoFTR-micro trained self-supervised on random homographies of the training photos (grey 128x160
    views, photometric augmentation), validated on the validation photos; at most 30 minutes
    (``max_minutes``; the 5 epochs take about 25-33 minutes on one core, by CPU)."""
    return MatchingRecipe(
        name="loftr-homography", model=ModelSection("loftr_micro"),
        optim=OptimSection(lr=1e-3, min_lr=1e-5, weight_decay=1e-4, warmup_epochs=0.5, clip_grad=1.0),
        data=HomographyDataSection(size=(128, 160), grey=True, train_pairs=1000), epochs=5, batch_size=4,
        eval_batch_size=8, checkpoint_every=100, log_every=25, max_minutes=30)
