"""Object detection from a COCO JSON and an image folder, any number of classes (DETR family).

``data.train_json`` / ``data.eval_json``: COCO files (``images`` with ``id``, ``file_name``,
``width``, ``height``; ``annotations`` with ``image_id``, ``category_id``, ``bbox [x, y, w, h]``
in pixels; ``categories``); ``data.train_images`` / ``data.eval_images``: the folders their
``file_name`` are relative to. Categories (any ids) become classes ``0..K-1`` in id order; crowd
annotations are left out. Images are read as ``data.channels`` (1 or 3), resized to a square
``data.image_size`` and kept in memory in [0, 1]; boxes are stored relative to the image, so the
resize keeps them. The model's ``num_classes`` and ``in_channels`` are filled in from the data.

Training: DETR's set-prediction loss (:class:`~relformer.tasks.detection.DetectionTask`). Every
epoch the whole eval set is predicted and scored with COCO box mAP (``AP`` picks the best
checkpoint) against its ground truth rescaled to the resized images.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..models import model_config
from ..train.recipe import ModelSection, Recipe, RecipeError
from .classification import fill_model_options
from .coco import coco_evaluate
from .detection import SPLIT_METRICS, DetectionTask, SetLossSection
from .images import read_image, resize
from .registry import register_task
from ..models.detection.set_prediction import postprocess, to_coco_results
from .splits import gather_objects, train_subset

__all__ = ["CocoDetectionTask", "CocoDetectionRecipe", "CocoSection", "CocoImages", "read_coco"]


@dataclass
class CocoSection:
    """The COCO files and image folders (see the module); ``image_size``: the square size images
    are resized to; ``channels``: 1 (grey) or 3 (RGB); ``train_subset``: the first N images only."""

    train_json: str = ""
    train_images: str = ""
    eval_json: str = ""
    eval_images: str = ""
    image_size: int = 128
    channels: int = 3
    train_subset: int | None = None


@dataclass
class CocoDetectionRecipe(Recipe):
    task: Literal["coco_detection"] = "coco_detection"
    model: ModelSection = field(default_factory=lambda: ModelSection("detr_micro"))
    data: CocoSection = field(default_factory=CocoSection)
    loss: SetLossSection = field(default_factory=SetLossSection)

    def validate(self) -> None:
        super().validate()
        d = self.data
        for key in ("train_json", "train_images", "eval_json", "eval_images"):
            if not getattr(d, key):
                raise RecipeError(f"data.{key} is required (a COCO JSON file / its image folder)")
        if d.channels not in (1, 3) or d.image_size < 8:
            raise RecipeError(f"data.channels must be 1 or 3 and data.image_size >= 8, got {d.channels}, "
                              f"{d.image_size}")


class CocoImages(Dataset):
    """Resized images ``(N, C, S, S)`` in [0, 1] and their targets (``labels (M,)``, ``boxes (M, 4)``
    cx, cy, w, h relative to the image, ``image_id`` 1..N); ``coco`` is the ground truth in the
    resized pixels with categories ``1..K`` (class index + 1), for :func:`coco_evaluate`."""

    def __init__(self, images: Tensor, targets: list[dict[str, Any]], coco: dict) -> None:
        self.images, self.targets, self.coco = images, targets, coco

    def __len__(self) -> int:
        return len(self.targets)

    def __getitems__(self, indices: Sequence[int]) -> tuple[Tensor, list[dict[str, Any]]]:
        return self.images[torch.as_tensor(list(indices), dtype=torch.long)], [self.targets[i] for i in indices]


def _load_json(path: str, key: str) -> dict:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ValueError(f"data.{key}: no such file {path}") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"data.{key}: {path} is not JSON ({e})") from None
    lists = ("images", "annotations", "categories")
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in lists):
        raise ValueError(f"data.{key}: {path} is not a COCO file (images, annotations, categories lists)")
    return data


def read_coco(json_path: str, image_dir: str, key: str, *, image_size: int, channels: int,
              category_ids: list[int] | None = None) -> tuple[CocoImages, list[int], list[str]]:
    """One split: its :class:`CocoImages`, and the category ids and names (in class order: the
    train split's, passed back in for the eval split)."""
    coco = _load_json(json_path, key)
    cats = sorted(coco["categories"], key=lambda c: c["id"])
    ids = category_ids if category_ids is not None else [c["id"] for c in cats]
    names = {c["id"]: str(c.get("name", c["id"])) for c in cats}
    class_of = {cid: k for k, cid in enumerate(ids)}
    by_image: dict[Any, list[dict]] = {}
    for a in coco["annotations"]:
        if a.get("iscrowd", 0):
            continue
        if a["category_id"] not in class_of:
            raise ValueError(f"data.{key}: annotation {a.get('id')} has category_id {a['category_id']}, "
                             f"not one of {ids}")
        by_image.setdefault(a["image_id"], []).append(a)
    images, targets, gt_images, gt_anns = [], [], [], []
    S = image_size
    for i, im in enumerate(coco["images"]):
        path = Path(image_dir) / im["file_name"]
        if not path.is_file():
            raise ValueError(f"data.{key}: image {path} (of {json_path}) does not exist")
        pixels = read_image(path, channels).float().div(255)
        H, W = pixels.shape[-2:]
        images.append(resize(pixels, S))
        anns = by_image.get(im["id"], [])
        xywh = torch.tensor([a["bbox"] for a in anns], dtype=torch.float32).reshape(-1, 4) / torch.tensor([W, H, W, H])
        boxes = torch.cat([xywh[:, :2] + xywh[:, 2:] / 2, xywh[:, 2:]], 1)  # (M, 4) cx, cy, w, h relative
        labels = torch.tensor([class_of[a["category_id"]] for a in anns], dtype=torch.long)
        targets.append({"labels": labels, "boxes": boxes, "image_id": i + 1})
        gt_images.append({"id": i + 1, "width": S, "height": S, "file_name": im["file_name"]})
        for box, label in zip((xywh * S).tolist(), labels.tolist()):
            gt_anns.append({"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": label + 1, "bbox": box,
                            "area": box[2] * box[3], "iscrowd": 0})
    if not images:
        raise ValueError(f"data.{key}: {json_path} lists no images")
    gt = {"images": gt_images, "annotations": gt_anns,
          "categories": [{"id": k + 1, "name": names.get(cid, str(cid))} for k, cid in enumerate(ids)]}
    return CocoImages(torch.stack(images), targets, gt), ids, [names.get(c, str(c)) for c in ids]


@register_task("coco_detection")
class CocoDetectionTask(DetectionTask):
    """DETR-family detection on COCO-format data, any number of classes (see the module)."""

    recipe_type = CocoDetectionRecipe
    main_metric, mode = "AP", "max"
    metric_names = (*SPLIT_METRICS, "images")

    def __init__(self, recipe: CocoDetectionRecipe) -> None:
        self.recipe, d = recipe, recipe.data
        self.train_set, ids, self.classes = read_coco(d.train_json, d.train_images, "train_json",
                                                      image_size=d.image_size, channels=d.channels)
        self.eval_set, _, _ = read_coco(d.eval_json, d.eval_images, "eval_json", image_size=d.image_size,
                                        channels=d.channels, category_ids=ids)
        self.model_section = fill_model_options(recipe.model, num_classes=len(ids), in_channels=d.channels)
        self.model_config = model_config(self.model_section.name, **self.model_section.options)
        self.criterion = self.set_criterion(len(ids))
        self._detections: dict[str, list] = {"eval": []}

    @property
    def eval_description(self) -> str:
        return (f"the {len(self.eval_set):,} images of {self.recipe.data.eval_json} ({len(self.classes)} classes), "
                "COCO box mAP (faster-coco-eval); AP picks the best checkpoint")

    def build_model(self) -> nn.Module:
        return self.model_section.build()

    def train_dataset(self) -> Dataset:
        return train_subset(self.train_set, self.recipe.data.train_subset, "images")

    def eval_dataset(self) -> Dataset:
        return self.eval_set

    def eval_step(self, model: nn.Module, batch) -> dict[str, Tensor]:
        images, targets = batch
        size = list(images.shape[-2:])
        results = postprocess(model(images), [size] * len(images))
        self._detections["eval"] += to_coco_results(results, [t["image_id"] for t in targets])
        return {"images": torch.tensor(float(len(images)))}

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        detections, self._detections["eval"] = gather_objects(self._detections["eval"]), []
        stats = coco_evaluate(self.eval_set.coco, detections)
        return {**{m: stats[m] for m in SPLIT_METRICS}, "images": sums["images"]}

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        return []
