"""Object detection from a COCO JSON and an image folder, any number of classes (DETR family).

``data.train_json`` / ``data.eval_json``: COCO files (``images`` with ``id``, ``file_name``,
``width``, ``height``; ``annotations`` with ``image_id``, ``category_id``, ``bbox [x, y, w, h]``
in pixels; ``categories``); ``data.train_images`` / ``data.eval_images``: the folders their
``file_name`` are relative to. Categories (any ids) become classes ``0..K-1`` in id order; crowd
annotations are left out. Images are read as ``data.channels`` (1 or 3), resized to a square
``data.image_size`` and kept in memory in [0, 1]; boxes are stored relative to the image, so the
resize keeps them. The model's ``num_classes`` and ``in_channels`` are filled in from the data.

Training: DETR's set-prediction loss (:class:`~relformer.models.detection.set_prediction.SetCriterion`:
Hungarian matching, cross-entropy with a down-weighted no-object class, L1 and GIoU box terms, the
same on every decoder layer's output; Group DETR models match each query group on its own). A model
that computes its own loss from the targets (RT-DETR: ``model(images, labels=targets).loss``, its
denoising queries need them; the loss fields are its config's, the recipe's ``loss`` section is not
read) trains through that path. Every epoch the whole eval set is predicted and scored with COCO box
mAP (``AP`` picks the best checkpoint) against its ground truth rescaled to the resized images:
softmax models (a no-object column) keep every query's best class, sigmoid models (K logits: RT-DETR)
the top 100 (query, class) pairs over queries x classes, as HF ``RTDetrImageProcessor``.
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
from ..models.detection.boxes import box_cxcywh_to_xyxy
from ..models.detection.rtdetr import RTDETRConfig
from ..models.detection.set_prediction import SetCriterion, postprocess, set_criterion, to_coco_results
from ..train.recipe import ModelSection, Recipe, RecipeError
from .base import TaskBase
from .classification import fill_model_options
from .coco import coco_evaluate, draw_detections
from .images import read_image, resize
from .registry import register_task
from .splits import EvalSplits, gather_objects, train_subset

__all__ = ["CocoDetectionTask", "CocoDetectionRecipe", "CocoSection", "CocoImages", "SetLossSection", "read_coco",
           "SPLIT_METRICS"]

SPLIT_METRICS = ("AP", "AP50", "AP75", "APs", "APm")


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
    resized pixels with categories ``1..K`` (class index + 1), for :func:`coco_evaluate`; ``classes``
    the class names."""

    def __init__(self, images: Tensor, targets: list[dict[str, Any]], coco: dict, classes: Sequence[str]) -> None:
        self.images, self.targets, self.coco, self.classes = images, targets, coco, list(classes)

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
    classes = [names.get(c, str(c)) for c in ids]
    return CocoImages(torch.stack(images), targets, gt, classes), ids, classes


@register_task("coco_detection")
class CocoDetectionTask(TaskBase):
    """DETR-family detection on COCO-format data, any number of classes (see the module).

    Subclasses bring other data through :meth:`build_splits` (the training set and the named eval
    splits; each yields ``(images (B, C, H, W), targets)`` batches and has ``coco``, its ground truth
    in the batch's pixels) and :meth:`model_section`: the Fashion-MNIST canvases are one
    (:mod:`relformer.tasks.detection`). With several eval splits every metric is prefixed by its split
    (``val_AP``, ``test_AP``) and the first split's AP picks the best checkpoint."""

    recipe_type = CocoDetectionRecipe
    eval_splits: tuple[str, ...] = ("eval",)
    split_metrics: tuple[str, ...] = SPLIT_METRICS  # of COCO_METRICS, reported per eval split
    log_names = ("loss_ce", "loss_bbox", "loss_giou")

    def __init__(self, recipe: CocoDetectionRecipe) -> None:
        super().__init__(recipe)
        prefixes = [("" if len(self.eval_splits) == 1 else f"{split}_") for split in self.eval_splits]
        self.main_metric, self.mode = f"{prefixes[0]}AP", "max"
        self.metric_names = tuple(p + m for p in prefixes for m in (*self.split_metrics, "images"))
        self._splits: tuple[Dataset, EvalSplits] | None = None
        self._detections: dict[str, list] = {split: [] for split in self.eval_splits}
        self.classes = self.class_names()
        self.model_config = model_config(self.model_section().name, **self.model_section().options)
        self.own_loss = isinstance(self.model_config, RTDETRConfig)   # model(images, labels=...) -> .loss
        if self.own_loss:
            c = self.model_config
            self.log_names = (f"loss_{'giou_aware' if c.rank_loss else 'vfl'}", "loss_bbox", "loss_giou")
        self.criterion = self.set_criterion(len(self.classes))

    # -- data and model ---------------------------------------------------------------------------
    def build_splits(self) -> tuple[Dataset, dict[str, Dataset]]:
        """The training set and the eval splits named by ``eval_splits`` (here: the COCO files)."""
        d = self.recipe.data
        train, ids, _ = read_coco(d.train_json, d.train_images, "train_json", image_size=d.image_size,
                                  channels=d.channels)
        eval, _, _ = read_coco(d.eval_json, d.eval_images, "eval_json", image_size=d.image_size, channels=d.channels,
                               category_ids=ids)
        return train_subset(train, d.train_subset, "images"), {"eval": eval}

    def splits(self) -> tuple[Dataset, EvalSplits]:
        if self._splits is None:
            train, evals = self.build_splits()
            self._splits = train, EvalSplits({name: evals[name] for name in self.eval_splits})
        return self._splits

    def class_names(self) -> list[str]:
        """The class names, in class-index order (here: the eval split's, which uses the train split's ids)."""
        return list(self.splits()[1].splits[self.eval_splits[0]].classes)

    def model_section(self) -> ModelSection:
        """The recipe's model with ``num_classes`` and ``in_channels`` filled in from the data."""
        return fill_model_options(self.recipe.model, num_classes=len(self.classes), in_channels=self.recipe.data.channels)

    def set_criterion(self, num_classes: int) -> SetCriterion:
        """DETR's set loss for ``num_classes`` classes with the recipe's costs and weights."""
        return set_criterion(num_classes, num_groups=getattr(self.model_config, "num_groups", 1), **vars(self.recipe.loss))

    @property
    def eval_set(self) -> Dataset:
        return self.splits()[1].splits[self.eval_splits[-1]]

    @property
    def eval_description(self) -> str:
        return (f"the {len(self.eval_set):,} images of {self.recipe.data.eval_json} ({len(self.classes)} classes), "
                "COCO box mAP (faster-coco-eval); AP picks the best checkpoint")

    def build_model(self) -> nn.Module:
        return self.model_section().build()

    def train_dataset(self) -> Dataset:
        return self.splits()[0]

    def eval_dataset(self) -> Dataset:
        return self.splits()[1]

    def collate(self, batch):
        return batch  # __getitems__ already stacks the images

    def batch_size_of(self, batch) -> int:
        if isinstance(batch[0], Tensor):
            return batch[0].shape[0]
        return sum(part[0].shape[0] for part in batch if part is not None)

    # -- steps ------------------------------------------------------------------------------------
    def loss(self, model: nn.Module, batch) -> tuple[Tensor, dict[str, Tensor]]:
        images, targets = batch
        if self.own_loss:
            out = model(images, labels=targets)
            losses = {**out.loss_dict, "loss": out.loss}
        else:
            losses = self.criterion(model(images), targets)
        return losses["loss"], {name: losses[name].detach() for name in self.log_names}

    def predict(self, model: nn.Module, images: Tensor) -> list[dict[str, Tensor]]:
        """``images (B, C, H, W)`` -> :func:`postprocess` results in the images' pixels; sigmoid class
        logits (as many as classes, no no-object column) take the focal path (top 100 over Q x K)."""
        out = model(images)
        focal = out.logits.shape[-1] == len(self.classes)
        return postprocess(out, [list(images.shape[-2:])] * len(images), focal=focal)

    def eval_step(self, model: nn.Module, batch: tuple) -> dict[str, Tensor]:
        """Each split's images -> COCO results (all queries, DETR's protocol), kept for :meth:`metrics`."""
        out = {}
        for split, part in zip(self.eval_splits, batch):
            n = 0
            if part is not None:
                images, targets = part
                results = self.predict(model, images)
                self._detections[split] += to_coco_results(results, [t["image_id"] for t in targets])
                n = len(images)
            out[f"{split}_images"] = torch.tensor(float(n))
        return out

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        """COCO box mAP of the detections collected by :meth:`eval_step` (from every rank)."""
        out = {}
        for split in self.eval_splits:
            detections, self._detections[split] = gather_objects(self._detections[split]), []
            prefix = self.splits()[1].prefix(split)
            stats = coco_evaluate(self.splits()[1].splits[split].coco, detections)
            out.update({prefix + m: stats[m] for m in self.split_metrics})
            out[prefix + "images"] = sums[f"{split}_images"]
        return out

    def report_figures(self, model: nn.Module, run_dir: Path) -> list[tuple[str, Path]]:
        """Predicted boxes (score >= 0.5) and the ground truth on the first 8 images of the last eval split."""
        from matplotlib.figure import Figure  # optional, heavy: only when a report is written

        split = self.eval_splits[-1]
        data = self.splits()[1].splits[split]
        images, targets = data.__getitems__(list(range(min(8, len(data)))))
        device = next(model.parameters()).device
        model.eval()
        with torch.no_grad():
            results = self.predict(model, images.to(device))
        H, W = images.shape[-2:]
        fig = Figure(figsize=(12, 6.4))
        for k, (image, target, result) in enumerate(zip(images, targets, results)):
            ax = fig.add_subplot(2, 4, k + 1)
            keep = result["scores"] >= 0.5
            truth = box_cxcywh_to_xyxy(target["boxes"]) * torch.tensor([W, H, W, H])
            draw_detections(ax, image, truth, target["labels"].tolist(), color="white", linewidth=0.6,
                            classes=self.classes)
            draw_detections(ax, image, result["boxes"][keep].cpu(), result["labels"][keep].tolist(),
                            result["scores"][keep].cpu(), classes=self.classes)
            ax.set_title(f"{split} image {target['image_id']}: {int(keep.sum())} found, {len(target['labels'])} true",
                         fontsize=7)
        fig.tight_layout()
        path = run_dir / "plots" / f"{split}_detections.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        return [(f"{split.capitalize()} images: predictions (score >= 0.5, green) and ground truth (white)", path)]
