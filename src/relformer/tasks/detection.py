"""Object detection on the Fashion-MNIST detection canvases (:mod:`relformer.data.fashion_detection`),
and the DETR-family recipes.

The task is the generic COCO detection task (:class:`~relformer.tasks.coco_detection.CocoDetectionTask`:
DETR's set-prediction loss, COCO box mAP by ``faster-coco-eval``) on the built-in canvases. Every
epoch the engine evaluates the val AND test splits together; ``val_AP`` picks the best checkpoint,
the test metrics are reported beside it.

The crowded multi-scale canvases (:func:`~relformer.data.fashion_detection.build_fashion_crowded_detection`:
256 x 256, 4-20 items of 12-128 px) are the task ``fashion_crowded_detection``
(:class:`FashionCrowdedDetectionTask`), which also reports ``APl`` (its canvases have large boxes).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.fashion_detection import CROWDED, CROWDED_SIZES, build_fashion_crowded_detection, build_fashion_detection
from ..data.fashion_mnist import FASHION_MNIST_CLASSES
from ..interop import transformers as _hf_baselines  # noqa: F401  (registers the hf_detr_* model variants)
from ..models import from_pretrained, model_config
from ..models.detection.set_prediction import postprocess
from ..models.hub import checkpoint_folder
from ..train.checkpoint import read_state
from ..train.recipe import ModelSection, OptimSection, Recipe, RecipeError
from ..utils import atomic_write_with
from .coco import draw_detections
from .coco_detection import SPLIT_METRICS, CocoDetectionTask, SetLossSection
from .images import resize
from .registry import get_task, parse_recipe, register_recipe, register_task
from .splits import train_subset

__all__ = ["DetectionTask", "DetectionRecipe", "FashionDetectionSection", "FashionCrowdedDetectionTask",
           "CrowdedDetectionRecipe", "FashionCrowdedSection", "SetLossSection", "SPLIT_METRICS", "TrainedDetector",
           "save_detection_figure"]


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
class DetectionTask(CocoDetectionTask):
    """DETR-family detection on the Fashion-MNIST canvases: the generic
    :class:`~relformer.tasks.coco_detection.CocoDetectionTask` on the built-in dataset, evaluated on
    its val and test splits (``val_AP`` picks the checkpoint)."""

    recipe_type = DetectionRecipe
    eval_splits = ("val", "test")

    def class_names(self) -> list[str]:
        return list(FASHION_MNIST_CLASSES)  # known without building the canvases

    def model_section(self) -> ModelSection:
        c = model_config(self.recipe.model.name, **self.recipe.model.options)
        if getattr(c, "in_channels", 1) != 1 or getattr(c, "num_classes", 10) != 10:
            raise RecipeError("model: Fashion-MNIST canvases (grey, 10 classes) need in_channels=1 and num_classes=10, "
                              f"got {getattr(c, 'in_channels', None)} and {getattr(c, 'num_classes', None)}; "
                              "other data: the coco_detection task")
        return self.recipe.model

    @property
    def eval_description(self) -> str:
        d = self.recipe.data
        return (f"the val and test splits of the Fashion-MNIST detection canvases ({d.sizes[1]:,} and "
                f"{d.sizes[2]:,} images of {d.canvas}x{d.canvas}, all of them), COCO box mAP (faster-coco-eval): "
                "val_AP picks the best checkpoint, the test metrics are reported beside it")

    def build_splits(self) -> tuple[Dataset, dict[str, Dataset]]:
        d = self.recipe.data
        data = build_fashion_detection(d.root, canvas=d.canvas, sizes=tuple(d.sizes), max_objects=d.max_objects,
                                       source=d.source)
        return train_subset(data["train"], d.train_subset, "canvases"), {"val": data["val"], "test": data["test"]}


@dataclass
class FashionCrowdedSection(FashionDetectionSection):
    """The crowded canvases of :func:`~relformer.data.fashion_detection.build_fashion_crowded_detection`
    (the other generator arguments: :data:`~relformer.data.fashion_detection.CROWDED`)."""

    canvas: int = CROWDED["canvas"]
    sizes: tuple[int, int, int] = CROWDED_SIZES
    max_objects: int = CROWDED["max_objects"]


@dataclass
class CrowdedDetectionRecipe(DetectionRecipe):
    task: Literal["fashion_crowded_detection"] = "fashion_crowded_detection"
    data: FashionCrowdedSection = field(default_factory=FashionCrowdedSection)


@register_task("fashion_crowded_detection")
class FashionCrowdedDetectionTask(DetectionTask):
    """:class:`DetectionTask` on the crowded multi-scale canvases; ``APl`` is reported too."""

    recipe_type = CrowdedDetectionRecipe
    split_metrics = (*SPLIT_METRICS, "APl")

    @property
    def eval_description(self) -> str:
        return super().eval_description.replace("Fashion-MNIST detection", "crowded multi-scale Fashion-MNIST", 1)

    def build_splits(self) -> tuple[Dataset, dict[str, Dataset]]:
        d = self.recipe.data
        data = build_fashion_crowded_detection(d.root, sizes=tuple(d.sizes), source=d.source, canvas=d.canvas,
                                               max_objects=d.max_objects)
        return train_subset(data["train"], d.train_subset, "canvases"), {"val": data["val"], "test": data["test"]}


# ---------------------------------------------------------------------------------------------
# Recipes: one schedule for all four, so their AP-vs-epoch curves compare; 8 epochs fit a 30-minute
# budget of one core (Group DETR on the crowded canvases only just). From scratch the backbone needs
# trainable BatchNorms (DETR freezes them because its backbone is pretrained; frozen at their initial
# values they are identities), a higher learning rate and looser clipping than DETR's. Throughputs and
# the runs behind these choices: bench/results/detection.md.
# ---------------------------------------------------------------------------------------------
def _detection(name: str, model: str, recipe_type: type = DetectionRecipe, **options) -> DetectionRecipe:
    return recipe_type(
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


# The crowded canvases: the same schedule; 50 queries for up to 20 items (the recipes above have 25 for
# up to 8); 256 x 256 at stride 16 gives 16 x 16 = 256 image tokens.
@register_recipe("detr-fashion-crowded")
def detr_fashion_crowded() -> DetectionRecipe:
    """detr-fashion (50 queries) on the crowded multi-scale canvases (256 x 256, 4-20 items of 12-128 px)."""
    return _detection("detr-fashion-crowded", "detr_fashion", CrowdedDetectionRecipe, num_queries=50)


@register_recipe("group-detr-fashion-crowded")
def group_detr_fashion_crowded() -> DetectionRecipe:
    """group-detr-fashion (50 queries per group) on the crowded multi-scale canvases."""
    return _detection("group-detr-fashion-crowded", "group_detr_fashion", CrowdedDetectionRecipe, num_queries=50)


# RT-DETR (model variant rtdetr_fashion) and Rank-DETR on it: RT-DETR's optimiser (AdamW, lr 1e-4 in
# the paper with a pretrained backbone; from scratch the DETR recipes' 5e-4 and looser clipping than
# its 0.1), a 30-minute budget (max_minutes). RT-DETR's step costs several DETR steps; 2 epochs of
# either set fit the budget of one core with room to spare on the study's CPU, while a machine under
# the same CPU name has run 2.4-3.3x slower and cut them short (the study counts only whole
# schedules). The crowded canvases: 100 queries for up to 20 items, half the batch (256 x 256: 4x
# the pixels).
RANK_DETR = {"rtdetr": {}, "rank-rtdetr": dict(rank_architecture=True, rank_loss=True, high_order_cost=True),
             "rank-rtdetr-arch": dict(rank_architecture=True),
             "rank-rtdetr-loss": dict(rank_loss=True, high_order_cost=True)}


def _rtdetr(name: str, crowded: bool, **options) -> DetectionRecipe:
    recipe_type = CrowdedDetectionRecipe if crowded else DetectionRecipe
    queries = 100 if crowded else 50
    return recipe_type(
        name=name, model=ModelSection("rtdetr_fashion", dict(num_queries=queries, **options)),
        optim=OptimSection(lr=5e-4, min_lr=5e-6, weight_decay=1e-4, warmup_epochs=0.2, clip_grad=1.0),
        epochs=2, batch_size=16 if crowded else 32, eval_batch_size=50, checkpoint_every=100,
        log_every=10, max_minutes=30)


def _register_rtdetr_recipes() -> None:
    for stem, flags in RANK_DETR.items():
        for crowded in (False, True):
            name = f"{stem}-fashion" + ("-crowded" if crowded else "")
            parts = ", ".join(k for k, v in flags.items() if v) or "no Rank-DETR part"
            canvases = "the crowded multi-scale canvases" if crowded else "the Fashion-MNIST canvases"
            fn = lambda name=name, crowded=crowded, flags=flags: _rtdetr(name, crowded, **flags)
            fn.__name__ = name.replace("-", "_")
            fn.__doc__ = f"RT-DETR (rtdetr_fashion) on {canvases}; {parts}; 30-minute budget."
            register_recipe(name)(fn)


_register_rtdetr_recipes()


# ---------------------------------------------------------------------------------------------
# A trained detection run as a detector (``relformer detect``)
# ---------------------------------------------------------------------------------------------
def _coco_class_names(train_json: str) -> list[str] | None:
    """The category names of a COCO file in id order (the coco_detection task's class order), None if unreadable."""
    try:
        cats = json.loads(Path(train_json).read_text(encoding="utf-8"))["categories"]
        return [str(c.get("name", c["id"])) for c in sorted(cats, key=lambda c: c["id"])]
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class TrainedDetector:
    """A trained detection model with what it was trained on: ``classes`` (names, in class-index
    order), ``channels`` (1 grey, 3 RGB) and ``image_size`` (the square canvas side); ``checkpoint``:
    the folder its weights came from. Build with :meth:`load`; call with one image."""

    model: nn.Module
    classes: list[str]
    channels: int
    image_size: int
    checkpoint: Path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TrainedDetector":
        """From a detection run folder (its ``checkpoints/best``, else the newest checkpoint) or one of its
        checkpoint folders; ValueError when ``path`` holds no checkpoint or a run of another task."""
        folder = checkpoint_folder(path)
        if not (folder / "trainer_state.json").is_file():
            raise ValueError(f"{folder} has no trainer_state.json: give a `relformer train` run folder or one of "
                             "its checkpoint folders (the recipe says what the model was trained on)")
        recipe = parse_recipe(read_state(folder)["recipe"])
        task_type = get_task(recipe.task)
        if not issubclass(task_type, CocoDetectionTask):
            raise ValueError(f"{path} is a run of the {recipe.task!r} task, not of a detection task "
                             "(detection, fashion_crowded_detection, coco_detection)")
        d, model = recipe.data, from_pretrained(folder)
        config = getattr(model, "config", None)
        channels = int(getattr(d, "channels", None) or getattr(config, "in_channels", 3))
        size = int(getattr(d, "canvas", None) or d.image_size)
        if issubclass(task_type, DetectionTask):
            classes = list(FASHION_MNIST_CLASSES)  # DetectionTask.class_names
        else:
            classes = _coco_class_names(d.train_json) or [f"class {k}" for k in range(config.num_classes)]
        return cls(model, classes, channels, size, folder)

    @torch.no_grad()
    def __call__(self, image: Tensor, threshold: float = 0.5) -> dict[str, Tensor]:
        """``image (C, H, W)`` uint8 with ``C == channels`` -> ``{"boxes" (n, 4) xyxy in the image's pixels,
        "labels" (n,), "scores" (n,)}``, score >= ``threshold``, by descending score. The image is
        resized (antialiased bilinear, not keeping the aspect ratio) to the training canvas."""
        if image.dim() != 3 or image.shape[0] != self.channels:
            raise ValueError(f"image must be ({self.channels}, H, W), got {tuple(image.shape)}")
        if not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        H, W = image.shape[-2:]
        device = next(self.model.parameters()).device
        x = resize(image.float().div(255), self.image_size)[None].to(device)                # (1, C, S, S)
        out = self.model.eval()(x)
        logits = getattr(out, "logits", None)
        if logits is None or getattr(out, "pred_boxes", None) is None:
            raise ValueError(f"{self.checkpoint}: the model returns {type(out).__name__}, not a detection output "
                             "(logits and pred_boxes)")
        K = len(self.classes)
        if logits.shape[-1] not in (K, K + 1):
            raise ValueError(f"{self.checkpoint}: the model has {logits.shape[-1]} logits per query for {K} classes")
        # softmax over K classes + no-object (DETR); K logits: sigmoid scores (focal-loss DETRs)
        result = postprocess(out, [[H, W]], focal=logits.shape[-1] == K)[0]
        keep = result["scores"] >= threshold
        order = result["scores"][keep].argsort(descending=True)
        return {k: v[keep][order].cpu() for k, v in result.items()}


def save_detection_figure(path: str | os.PathLike, image: Tensor, result: dict[str, Tensor], classes: list[str],
                          title: str | None = None) -> Path:
    """``image (C, H, W)`` uint8 with ``result``'s boxes, class names and scores
    (:func:`~relformer.tasks.coco.draw_detections`), written atomically to ``path`` (PNG)."""
    from matplotlib.figure import Figure  # optional, heavy: only when a picture is written

    H, W = image.shape[-2:]
    scale = max(4.0 / max(H, W) * 100, 1.0)  # small images (a 128-px canvas) are drawn larger
    fig = Figure(figsize=(W * scale / 100 + 0.2, H * scale / 100 + (0.4 if title else 0.2)))
    ax = fig.add_subplot()
    draw_detections(ax, image, result["boxes"], result["labels"], result["scores"], classes=classes,
                    fontsize=7.0)
    if title:
        ax.set_title(title, fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_with(path, lambda f: fig.savefig(f, format="png", dpi=100))
    return path
