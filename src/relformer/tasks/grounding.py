"""3-D referring ("fine-grained visual grounding", ReferIt3D's task): pick the object an utterance names
among the objects of its scene, distractors of the same class included.

Data: the generated Sr3D-style benchmark (:func:`relformer.data.grounding.build_benchmark`, the default;
scenes generated, not ScanNet) or real Nr3D / Sr3D + ScanNet files (``data.source=referit3d`` with
``data.csv``, ``data.scans_dir`` and ``data.splits_dir`` holding ``train_scans.txt``, ``val_scans.txt``,
``test_scans.txt``; read by :func:`relformer.data.grounding.load_referit3d`). Loss: ReferIt3D's (the
referring cross-entropy over each scene's objects + 0.5 object classification + 0.5 target class from the
utterance, :func:`relformer.models.grounding.grounding_loss`). Every epoch the val AND test splits are
evaluated: ``val_accuracy`` picks the best checkpoint. Metrics (ReferIt3D's subsets as the data layer
marks them): ``accuracy`` overall, ``easy`` / ``hard`` (more than two objects of the target's class in the
scene), ``view_dep`` / ``view_indep`` (the utterance has a view-dependent word).
"""
from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data.grounding import GroundingBatch, ReferringDataset, collate
from ..models.grounding import grounding_loss
from ..train.recipe import ModelSection, OptimSection, Recipe, RecipeError
from .base import TaskBase
from .classification import fill_model_options
from .registry import register_recipe, register_task
from .splits import EvalSplits

__all__ = ["GroundingTask", "GroundingRecipe", "GroundingDataSection", "referring_sums", "referring_metrics",
           "SUBSETS"]

#: metric name -> which utterances it counts
SUBSETS = ("accuracy", "easy", "hard", "view_dep", "view_indep")


@dataclass
class GroundingDataSection:
    """``source``: ``"generated"`` (``num_scenes`` train/val/test scenes of benchmark ``seed`` under ``root``,
    None: the cache root) or ``"referit3d"`` (``csv``, ``scans_dir``, ``splits_dir``;
    ``mentions_target_class_only``: keep only utterances naming the target's class, ReferIt3D's Nr3D default)."""

    source: Literal["generated", "referit3d"] = "generated"
    num_scenes: tuple[int, int, int] = (300, 50, 50)
    seed: int = 0
    root: str | None = None
    csv: str | None = None
    scans_dir: str | None = None
    splits_dir: str | None = None
    mentions_target_class_only: bool = False


@dataclass
class GroundingRecipe(Recipe):
    task: Literal["grounding"] = "grounding"
    model: ModelSection = field(default_factory=lambda: ModelSection("transrefer3d"))
    data: GroundingDataSection = field(default_factory=GroundingDataSection)

    def validate(self) -> None:
        super().validate()
        d = self.data
        if d.source == "referit3d":
            for key in ("csv", "scans_dir", "splits_dir"):
                if not getattr(d, key):
                    raise RecipeError(f"data.{key} is needed with data.source=referit3d")
        elif any(n < 1 for n in d.num_scenes):
            raise RecipeError(f"data.num_scenes must be three counts >= 1, got {d.num_scenes}")


class _Batched(Dataset):
    """A :class:`ReferringDataset` whose ``__getitems__`` packs a :class:`GroundingBatch`, its class
    indices mapped into ``class_names`` (the classes of every split)."""

    def __init__(self, data: ReferringDataset, class_names: Sequence[str]) -> None:
        self.data = data
        index = {c: k for k, c in enumerate(class_names)}
        self.classes = torch.tensor([index[c] for c in data.class_names], dtype=torch.long)

    def __len__(self) -> int:
        return len(self.data)

    def __getitems__(self, indices: Sequence[int]) -> GroundingBatch:
        items = [self.data[i] for i in indices]
        return collate([{**it, "classes": self.classes[it["classes"]]} for it in items])


def referring_sums(picked: Tensor, target: Tensor, hard: Tensor, view_dependent: Tensor) -> dict[str, Tensor]:
    """Per-subset ``correct`` and ``count`` sums of picked vs target indices ``(B,)`` (bool subsets ``(B,)``)."""
    if not (picked.shape == target.shape == hard.shape == view_dependent.shape and picked.dim() == 1):
        raise ValueError(f"picked, target, hard, view_dependent must be (B,) each, got {tuple(picked.shape)}, "
                         f"{tuple(target.shape)}, {tuple(hard.shape)}, {tuple(view_dependent.shape)}")
    correct = (picked == target).float()
    hard, view = hard.bool(), view_dependent.bool()
    masks = {"accuracy": torch.ones_like(hard), "easy": ~hard, "hard": hard, "view_dep": view, "view_indep": ~view}
    out = {}
    for name, mask in masks.items():
        out[f"{name}:correct"] = (correct * mask).sum()
        out[f"{name}:count"] = mask.float().sum()
    return out


def referring_metrics(sums: dict[str, float], prefix: str = "") -> dict[str, float]:
    """Accuracies from :func:`referring_sums` (summed): ``correct / count`` per subset (NaN for an empty
    subset), and ``utterances``."""
    out = {}
    for name in SUBSETS:
        n = float(sums[f"{name}:count"])
        out[prefix + name] = float(sums[f"{name}:correct"]) / n if n > 0 else float("nan")
    out[prefix + "utterances"] = float(sums["accuracy:count"])
    return out


@register_task("grounding")
class GroundingTask(TaskBase):
    """3-D referring on the generated benchmark or real ReferIt3D files (see the module)."""

    recipe_type = GroundingRecipe
    main_metric, mode = "val_accuracy", "max"
    log_names = ("referring", "object_class", "text_class", "accuracy")
    eval_splits = ("val", "test")
    metric_names = tuple(f"{s}_{m}" for s in ("val", "test") for m in (*SUBSETS, "utterances"))

    def __init__(self, recipe: GroundingRecipe) -> None:
        super().__init__(recipe)
        self._data: dict[str, ReferringDataset] | None = None

    def datasets(self) -> dict[str, ReferringDataset]:
        if self._data is None:
            d = self.recipe.data
            if d.source == "generated":
                build = {"num_scenes": tuple(d.num_scenes), "seed": d.seed, "root": d.root}
                self._data = {s: ReferringDataset.generated(s, **build) for s in ("train", "val", "test")}
            else:
                self._data = self._referit3d(d)
        return self._data

    @staticmethod
    def _referit3d(d: GroundingDataSection) -> dict[str, ReferringDataset]:
        for key in ("csv", "scans_dir", "splits_dir"):
            if not Path(getattr(d, key)).exists():
                raise RecipeError(f"data.{key}: no such file or folder {getattr(d, key)}")
        out = {}
        for split in ("train", "val", "test"):
            path = Path(d.splits_dir) / f"{split}_scans.txt"
            if not path.is_file():
                raise RecipeError(f"data.splits_dir: {path} is missing (one scan id per line)")
            out[split] = ReferringDataset(d.csv, d.scans_dir, path.read_text().split(),
                                          mentions_target_class_only=d.mentions_target_class_only)
        return out

    @property
    def class_names(self) -> tuple[str, ...]:
        """The object classes of every split (sorted for real data; the generator's order otherwise)."""
        data = self.datasets()
        names = data["train"].class_names
        extra = sorted({c for part in data.values() for c in part.class_names} - set(names))
        return tuple(names) + tuple(extra)

    @property
    def eval_description(self) -> str:
        data = self.datasets()
        return (f"the val and test splits ({len(data['val']):,} and {len(data['test']):,} utterances, all of them; "
                f"{self.recipe.data.source} data): val_accuracy picks the best checkpoint")

    def build_model(self) -> nn.Module:
        return fill_model_options(self.recipe.model, num_classes=len(self.class_names)).build()

    def train_dataset(self) -> Dataset:
        return _Batched(self.datasets()["train"], self.class_names)

    def eval_dataset(self) -> Dataset:
        return EvalSplits({s: _Batched(self.datasets()[s], self.class_names) for s in self.eval_splits})

    def batch_size_of(self, batch) -> int:
        if isinstance(batch, tuple):
            return sum(part.num_scenes for part in batch if part is not None)
        return batch.num_scenes

    def loss(self, model: nn.Module, batch: GroundingBatch) -> tuple[Tensor, dict[str, Tensor]]:
        out = model(batch)
        total, terms = grounding_loss(out, batch)
        logs = {k: v.detach() for k, v in terms.items()}
        logs["accuracy"] = (out.predictions() == batch.target).float().mean()
        return total, logs

    def eval_step(self, model: nn.Module, batch: tuple) -> dict[str, Tensor]:
        sums = {}
        for split, part in zip(self.eval_splits, batch):
            if part is None:
                zero = torch.zeros(())
                sums.update({f"{split}:{m}:{k}": zero for m in SUBSETS for k in ("correct", "count")})
                continue
            picked = model(part).predictions()
            sums.update({f"{split}:{k}": v for k, v in
                         referring_sums(picked, part.target, part.hard, part.view_dependent).items()})
        return sums

    def metrics(self, sums: dict[str, float]) -> dict[str, float]:
        out = {}
        for split in self.eval_splits:
            local = {k[len(split) + 1:]: v for k, v in sums.items() if k.startswith(f"{split}:")}
            out.update(referring_metrics(local, f"{split}_"))
        return out

    def report_figures(self, model: nn.Module, run_dir: Path, count: int = 4) -> list[tuple[str, Path]]:
        """A few test utterances drawn from above: every object's box, the target, its distractors and
        the model's pick, the utterance as the title."""
        from matplotlib.figure import Figure
        from matplotlib.patches import Rectangle

        data = _Batched(self.datasets()["test"], self.class_names)
        step = max(len(data) // count, 1)
        batch = data.__getitems__(list(range(0, len(data), step))[:count])
        indices = range(batch.num_scenes)
        model.eval()
        with torch.no_grad():
            picked = model(batch.to(next(model.parameters()).device)).predictions().cpu()
        fig = Figure(figsize=(5 * len(indices), 5.4))
        for k in range(len(indices)):
            ax = fig.add_subplot(1, len(indices), k + 1)
            lo, hi = int(batch.object_offsets[k]), int(batch.object_offsets[k + 1])
            for o in range(lo, hi):
                c, s = batch.centres[o].tolist(), batch.sizes[o].tolist()
                local = o - lo
                role = ("target" if local == int(batch.target[k]) else "distractor" if batch.distractor_mask[o]
                        else "anchor" if batch.anchor_mask[o] else "other")
                colour = {"target": "tab:green", "distractor": "tab:orange", "anchor": "tab:blue",
                          "other": "0.75"}[role]
                ax.add_patch(Rectangle((c[0] - s[0] / 2, c[1] - s[1] / 2), s[0], s[1], fill=role != "other",
                                       alpha=0.45 if role != "other" else 1.0, color=colour, lw=1))
                if local == int(picked[k]):
                    ax.add_patch(Rectangle((c[0] - s[0] / 2, c[1] - s[1] / 2), s[0], s[1], fill=False,
                                           color="tab:red", lw=2.5, ls="--"))
            ok = "correct" if int(picked[k]) == int(batch.target[k]) else "wrong"
            ax.set_title("\n".join(textwrap.wrap(batch.texts[k], 40)) + f"\n(pick: {ok})", fontsize=9)
            ax.set_aspect("equal")
            ax.autoscale_view()
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle("green: target, orange: distractors, blue: anchors, red dashed: the model's pick", fontsize=9)
        path = run_dir / "plots" / "test_scenes.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.tight_layout(rect=(0, 0, 1, 0.94))
        fig.savefig(path, dpi=100)
        return [("Test scenes from above", path)]


# ---------------------------------------------------------------------------------------------
# Recipes: a 30-minute wall-clock budget each (max_minutes) on the generated benchmark
# ---------------------------------------------------------------------------------------------
def _recipe(name: str, model: str) -> GroundingRecipe:
    return GroundingRecipe(name=name, model=ModelSection(model, {}),
                           optim=OptimSection(lr=5e-4, min_lr=1e-5, weight_decay=0.01, warmup_epochs=1.0, clip_grad=5.0),
                           epochs=100, max_minutes=30.0, batch_size=32, eval_batch_size=64, log_every=20)


@register_recipe("transrefer3d-sr3d-gen")
def transrefer3d_sr3d_gen() -> GroundingRecipe:
    """TransRefer3D (He et al. 2021) on the generated Sr3D-style benchmark, 30 minutes of CPU."""
    return _recipe("transrefer3d-sr3d-gen", "transrefer3d")


@register_recipe("transrefer3d-plain-sr3d-gen")
def transrefer3d_plain_sr3d_gen() -> GroundingRecipe:
    """The ablation: TransRefer3D with Relation-aware Attention replaced by plain attention, same budget."""
    return _recipe("transrefer3d-plain-sr3d-gen", "transrefer3d_plain")


@register_recipe("referit3dnet-sr3d-gen")
def referit3dnet_sr3d_gen() -> GroundingRecipe:
    """A ReferIt3DNet-style baseline (no pair relations) on the generated benchmark, same budget."""
    return _recipe("referit3dnet-sr3d-gen", "referit3dnet")
