"""Object detection on the Fashion-MNIST detection canvases (:mod:`relformer.data.fashion_detection`),
and the DETR-family recipes.

Training: the set-prediction loss of DETR (:class:`~relformer.models.detection.set_prediction.SetCriterion`:
Hungarian matching, cross-entropy with a down-weighted no-object class, L1 and GIoU box terms, the
same on every decoder layer's output). Group DETR models match each query group on its own. Every
epoch the engine evaluates the val AND test splits together: each image's predictions become COCO
results (all queries, DETR's protocol) and COCO box mAP is computed by ``faster-coco-eval`` against
the split's COCO JSON; ``val_AP`` picks the best checkpoint, the test metrics are reported beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.fashion_detection import build_fashion_detection
from ..interop import transformers as _hf_baselines  # noqa: F401  (registers the hf_detr_* model variants)
from ..models import model_config
from ..train.recipe import ModelSection, OptimSection, Recipe, RecipeError
from .base import TaskBase
from .registry import register_recipe, register_task
from ..models.detection.boxes import box_cxcywh_to_xyxy
from .coco import coco_evaluate, draw_detections
from ..models.detection.set_prediction import SetCriterion, postprocess, set_criterion, to_coco_results
from .splits import ValTest, gather_objects, train_subset

__all__ = ["DetectionTask", "DetectionRecipe", "FashionDetectionSection", "SetLossSection"]

SPLIT_METRICS = ("AP", "AP50", "AP75", "APs", "APm")


@dataclass
class FashionDetectionSection:
    """The canvases of :func:`~relformer.data.fashion_detection.build_fashion_detection`: ``root`` (cache
    root, None: the default), ``source`` (Fashion-MNIST folder, None: Debian's package), ``canvas``,
    ``sizes`` (train, val, test), ``max_objects``; ``train_subset``: the first N canvases only."""

    root: str | None = None
    source: str | None = None
    canvas: int = 128
    sizes: tuple[int, int, int] = (10000, 1000, 1000)
    max_objects: int = 8
    train_subset: int | None = None


@dataclass
class SetLossSection:
    """Matching costs and loss weights (DETR's: class 1, L1 5, GIoU 2; no-object weight 0.1)."""

    cost_class: float = 1.0
    cost_bbox: float = 5.0
    cost_giou: float = 2.0
    weight_class: float = 1.0
    weight_bbox: float = 5.0
    weight_giou: float = 2.0
    eos_coef: float = 0.1


@dataclass
class DetectionRecipe(Recipe):
    task: Literal["detection"] = "detection"
    data: FashionDetectionSection = field(default_factory=FashionDetectionSection)
    loss: SetLossSection = field(default_factory=SetLossSection)

    def validate(self) -> None:
        super().validate()
        if self.data.train_subset is not None and self.data.train_subset < 1:
            raise RecipeError(f"data.train_subset must be >= 1 or null (all), got {self.data.train_subset}")
        for key, value in vars(self.loss).items():
            if not (value >= 0 and math.isfinite(value)):
                raise RecipeError(f"loss.{key} must be >= 0 and finite, got {value!r}")


@register_task("detection")
class DetectionTask(TaskBase):
    """DETR-family detection on Fashion-MNIST canvases; see :class:`relformer.tasks.Task`."""

    recipe_type = DetectionRecipe
    main_metric, mode = "val_AP", "max"
    log_names = ("loss_ce", "loss_bbox", "loss_giou")
    metric_names = tuple(f"{split}_{m}" for split in ("val", "test") for m in (*SPLIT_METRICS, "images"))

    def __init__(self, recipe: DetectionRecipe) -> None:
        self.recipe = recipe
        self.model_config = model_config(recipe.model.name, **recipe.model.options)
        c = self.model_config
        if getattr(c, "in_channels", 1) != 1 or getattr(c, "num_classes", 10) != 10:
            raise RecipeError("model: Fashion-MNIST canvases (grey, 10 classes) need in_channels=1 and num_classes=10, "
                              f"got {getattr(c, 'in_channels', None)} and {getattr(c, 'num_classes', None)}; "
                              "other data: the coco_detection task")
        self.criterion = self.set_criterion(10)
        self._splits: dict | None = None
        self._detections: dict[str, list] = {"val": [], "test": []}

    def set_criterion(self, num_classes: int) -> SetCriterion:
        """DETR's set loss for ``num_classes`` classes with the recipe's costs and weights."""
        return set_criterion(num_classes, num_groups=getattr(self.model_config, "num_groups", 1), **vars(self.recipe.loss))

    @property
    def eval_description(self) -> str:
        d = self.recipe.data
        return (f"the val and test splits of the Fashion-MNIST detection canvases ({d.sizes[1]:,} and "
                f"{d.sizes[2]:,} images of {d.canvas}x{d.canvas}, all of them), COCO box mAP (faster-coco-eval): "
                "val_AP picks the best checkpoint, the test metrics are reported beside it")

    def build_model(self) -> nn.Module:
        return self.recipe.model.build()

    def splits(self) -> dict:
        if self._splits is None:
            d = self.recipe.data
            self._splits = build_fashion_detection(d.root, canvas=d.canvas, sizes=tuple(d.sizes),
                                                   max_objects=d.max_objects, source=d.source)
        return self._splits

    def train_dataset(self) -> Dataset:
        return train_subset(self.splits()["train"], self.recipe.data.train_subset, "canvases")

    def eval_dataset(self) -> Dataset:
        return ValTest(self.splits()["val"], self.splits()["test"])

    def collate(self, batch):
        return batch  # __getitems__ already stacks the images

    def augment(self, batch, generator: torch.Generator):
        return batch

    def batch_size_of(self, batch) -> int:
        if isinstance(batch[0], Tensor):
            return batch[0].shape[0]
        return sum(part[0].shape[0] for part in batch if part is not None)

    def loss(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, targets = batch
        losses = self.criterion(model(images), targets)
        return losses["loss"], {name: losses[name].detach() for name in self.log_names}

    def eval_step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        out = {}
        for split, part in zip(("val", "test"), batch):
            n = 0
            if part is not None:
                images, targets = part
                H, W = images.shape[-2:]
                results = postprocess(model(images), [[H, W]] * len(images))
                self._detections[split] += to_coco_results(results, [t["image_id"] for t in targets])
                n = len(images)
            out[f"{split}_images"] = torch.tensor(float(n))
        return out

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """COCO box mAP of the detections collected by :meth:`eval_step` (from every rank)."""
        out = {}
        for split in ("val", "test"):
            detections, self._detections[split] = gather_objects(self._detections[split]), []
            stats = coco_evaluate(self.splits()[split].coco_json, detections)
            out.update({f"{split}_{m}": stats[m] for m in SPLIT_METRICS})
            out[f"{split}_images"] = sums[f"{split}_images"]
        return out

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        """Predicted boxes (score >= 0.5) and the ground truth on the first 8 test canvases."""
        from matplotlib.figure import Figure  # optional, heavy: only when a report is written

        test = self.splits()["test"]
        images, targets = test.__getitems__(list(range(min(8, len(test)))))
        device = next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            results = postprocess(model(images.to(device)), [list(images.shape[-2:])] * len(images))
        fig = Figure(figsize=(12, 6.4))
        for k, (image, target, result) in enumerate(zip(images, targets, results)):
            ax = fig.add_subplot(2, 4, k + 1)
            keep = result["scores"] >= 0.5
            truth = box_cxcywh_to_xyxy(target["boxes"]) * test.canvas
            draw_detections(ax, image[0], truth, target["labels"].tolist(), color="white", linewidth=0.6)
            draw_detections(ax, image[0], result["boxes"][keep].cpu(), result["labels"][keep].tolist(),
                            result["scores"][keep].cpu())
            ax.set_title(f"test image {target['image_id']}: {int(keep.sum())} found, {len(target['labels'])} true",
                         fontsize=7)
        fig.tight_layout()
        path = run_dir / "plots" / "test_detections.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        return [("Test canvases: predictions (score >= 0.5, green) and ground truth (white)", path)]


# ---------------------------------------------------------------------------------------------
# Recipes: one schedule for all four, so their AP-vs-epoch curves compare; 8 epochs fit a 30-minute
# budget of one core. From scratch the backbone needs trainable BatchNorms (DETR freezes them because
# its backbone is pretrained; frozen at their initial values they are identities), a higher learning
# rate and looser clipping than DETR's. Throughputs and the runs behind these choices:
# bench/results/detection.md.
# ---------------------------------------------------------------------------------------------
def _detection(name: str, model: str, **options) -> DetectionRecipe:
    return DetectionRecipe(
        name=name, model=ModelSection(model, options),
        optim=OptimSection(lr=5e-4, min_lr=5e-6, weight_decay=1e-4, warmup_epochs=1.0, clip_grad=1.0),
        epochs=8, batch_size=32, eval_batch_size=100, checkpoint_every=200, log_every=25)


@register_recipe("detr-fashion")
def detr_fashion() -> DetectionRecipe:
    """DETR (ResNet-10-like backbone, 3 + 3 layers of 128, 25 queries) on Fashion-MNIST detection canvases."""
    return _detection("detr-fashion", "detr_fashion")


@register_recipe("relation-detr-fashion")
def relation_detr_fashion() -> DetectionRecipe:
    """detr-fashion + Relation-DETR's box-relation bias in the decoder self-attention."""
    return _detection("relation-detr-fashion", "relation_detr_fashion")


@register_recipe("group-detr-fashion")
def group_detr_fashion() -> DetectionRecipe:
    """detr-fashion + Group DETR (4 query groups in training, one-to-one matching per group)."""
    return _detection("group-detr-fashion", "group_detr_fashion")


@register_recipe("hf-detr-fashion")
def hf_detr_fashion() -> DetectionRecipe:
    """The baseline: HF DetrForObjectDetection with detr-fashion's config, initial weights and schedule
    (model variant ``hf_detr_fashion``, registered by :mod:`relformer.interop.transformers`)."""
    return _detection("hf-detr-fashion", "hf_detr_fashion")
