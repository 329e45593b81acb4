"""Dense matching (optical flow) learned self-supervised from random homographies of real photos.

Each training pair is two random views of one training photo (:class:`~relformer.data.matching.
HomographyPairs`: perspective warps with photometric augmentation, as SuperPoint / LightGlue
pre-training); the warp gives the exact flow of every pixel of image 0 and whether it lands in
image 1. The model (GMFlow, :mod:`relformer.models.matching.gmflow`) is called as
``model(image0, image1, target=flow, valid=valid)`` and returns its sequence loss. Every epoch the
fixed validation pairs (the validation photos, never a test photo) are scored by end-point error
(``epe``, which picks the best checkpoint) and the share of pixels off by more than 3 px (``bad3``),
both over the valid pixels of the whole set. The report draws the flow of held-out pairs.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.matching import HomographyPairs, PhotometricConfig
from ..train.recipe import ModelSection, OptimSection, Recipe, RecipeError
from .base import TaskBase
from .matching_pictures import flow_to_rgb, image_array
from .registry import register_recipe, register_task

__all__ = ["FlowTask", "FlowRecipe", "HomographyTask", "HomographyDataSection", "homography_pairs",
           "check_homography_data"]


@dataclass
class HomographyDataSection:
    """``size``: (height, width) of both views; ``grey``: one channel; ``train_pairs``: pairs drawn per
    epoch (fresh ones every epoch, from the training photos); ``val_pairs``: the fixed validation pairs
    (validation photos, seed ``val_seed``); ``photometric``: augment each view."""

    size: tuple[int, int] = (240, 320)
    grey: bool = False
    train_pairs: int = 2000
    val_pairs: int = 48
    val_seed: int = 1
    photometric: bool = True


@dataclass
class FlowRecipe(Recipe):
    task: Literal["homography_flow"] = "homography_flow"
    model: ModelSection = field(default_factory=lambda: ModelSection("gmflow_micro"))
    data: HomographyDataSection = field(default_factory=HomographyDataSection)

    def validate(self) -> None:
        super().validate()
        check_homography_data(self.data)


def check_homography_data(d: HomographyDataSection) -> None:
    """RecipeError naming the bad ``data.*`` value of a homography-pairs section."""
    if len(d.size) != 2 or min(d.size) < 32:
        raise RecipeError(f"data.size must be (height, width), each >= 32, got {d.size}")
    for key in ("train_pairs", "val_pairs"):
        if getattr(d, key) < 1:
            raise RecipeError(f"data.{key} must be >= 1, got {getattr(d, key)}")


def homography_pairs(data: HomographyDataSection, split: str, dense: bool) -> HomographyPairs:
    """The training pairs (random each call) or the fixed validation pairs of a recipe's data section."""
    photometric = PhotometricConfig() if data.photometric else None
    if split == "train":
        return HomographyPairs("train", size=data.size, length=data.train_pairs, deterministic=False, grey=data.grey,
                               dense=dense, photometric=photometric)
    return HomographyPairs("val", size=data.size, length=data.val_pairs, seed=data.val_seed, deterministic=True,
                           grey=data.grey, dense=dense, photometric=photometric)


class HomographyTask(TaskBase):
    """What the homography-pair tasks share: training pairs drawn fresh from the training photos,
    fixed validation pairs, the channel check between the model and ``data.grey``. ``dense``: the
    pairs carry their flow and valid maps."""

    dense = True

    def __init__(self, recipe: Recipe) -> None:
        super().__init__(recipe)
        self.train_set = homography_pairs(recipe.data, "train", dense=self.dense)
        self.val_set = homography_pairs(recipe.data, "val", dense=self.dense)

    def build_model(self) -> nn.Module:
        model = self.recipe.model.build()
        channels = getattr(model.config, "in_chans", None)
        want = 1 if self.recipe.data.grey else 3
        if channels is not None and channels != want:
            raise RecipeError(f"model in_chans={channels} but data.grey={self.recipe.data.grey} gives {want} channels")
        return model

    def train_dataset(self) -> Dataset:
        return self.train_set

    def eval_dataset(self) -> Dataset:
        return self.val_set

    def batch_size_of(self, batch: dict) -> int:
        return len(batch["image0"])


@register_task("homography_flow")
class FlowTask(HomographyTask):
    """Optical flow from random homographies (see the module); any model called as
    ``model(image0, image1, target=, valid=)`` with ``.loss`` and ``.flow`` outputs."""

    recipe_type = FlowRecipe
    main_metric, mode = "epe", "min"
    log_names = ("epe",)
    metric_names = ("epe", "bad3", "pixels")

    @property
    def eval_description(self) -> str:
        d = self.recipe.data
        return (f"{d.val_pairs} fixed pairs of the validation photos ({d.size[0]}x{d.size[1]}, seed {d.val_seed}): "
                "end-point error over the pixels whose flow lands in image 1 (epe picks the best checkpoint)")

    def loss(self, model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(batch["image0"], batch["image1"], target=batch["flow_0to1"], valid=batch["valid_0to1"])
        valid = batch["valid_0to1"]
        epe = ((out.flow.detach() - batch["flow_0to1"]).norm(dim=1)[valid]).mean()
        return out.loss, {"epe": epe}

    def eval_step(self, model: nn.Module, batch: dict) -> dict[str, Tensor]:
        flow = model(batch["image0"], batch["image1"]).flow
        err = (flow.float() - batch["flow_0to1"]).norm(dim=1)[batch["valid_0to1"]]  # (valid pixels,)
        return {"err": err.sum(), "bad": (err > 3).sum().float(), "pixels": torch.tensor(float(err.numel()))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        n = max(sums["pixels"], 1.0)
        return {"epe": sums["err"] / n, "bad3": sums["bad"] / n, "pixels": sums["pixels"]}

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        """Image 0, image 1, the true and the predicted flow of the first 4 validation pairs."""
        from matplotlib.figure import Figure  # optional, heavy: only when a report is written

        items = [self.val_set[i] for i in range(min(4, len(self.val_set)))]
        device = next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            flows = model(torch.stack([i["image0"] for i in items]).to(device),
                          torch.stack([i["image1"] for i in items]).to(device)).flow.cpu()
        fig = Figure(figsize=(12, 2.4 * len(items)))
        for row, (item, flow) in enumerate(zip(items, flows)):
            truth = item["flow_0to1"].clone()
            truth[:, ~item["valid_0to1"]] = 0
            scale = float(truth.norm(dim=0).max()) or 1.0
            valid = item["valid_0to1"]
            epe = float((flow - item["flow_0to1"]).norm(dim=0)[valid].mean())
            panels = [(item["image0"], "image 0"), (item["image1"], "image 1"),
                      (flow_to_rgb(truth, scale), "true flow"), (flow_to_rgb(flow, scale), f"predicted, EPE {epe:.1f} px")]
            for col, (image, title) in enumerate(panels):
                ax = fig.add_subplot(len(items), 4, 4 * row + col + 1)
                ax.imshow(image_array(image) if isinstance(image, Tensor) else image)
                ax.set_title(title, fontsize=8)
                ax.set_xticks([])
                ax.set_yticks([])
        fig.tight_layout()
        path = run_dir / "plots" / "val_flow.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=90)
        return [("Validation pairs (validation photos): true and predicted flow (hue: direction, "
                 "saturation: length)", path)]


@register_recipe("gmflow-homography")
def gmflow_homography() -> FlowRecipe:
    """GMFlow-micro trained self-supervised on random homographies of the training photos (flow at 1/8
    then 1/4, 128x160 views, photometric augmentation), validated on the validation photos; at most 30
    minutes (``max_minutes``; the 5 epochs take about 25 minutes on one core)."""
    return FlowRecipe(
        name="gmflow-homography", model=ModelSection("gmflow_micro"),
        optim=OptimSection(lr=4e-4, min_lr=1e-5, weight_decay=1e-4, warmup_epochs=0.5, clip_grad=1.0),
        data=HomographyDataSection(size=(128, 160), train_pairs=1000), epochs=5, batch_size=4, eval_batch_size=8,
        checkpoint_every=100, log_every=25, max_minutes=30)
