"""Tasks: what a model learns, from which data, judged by which metrics; and the registries.

A task implements :class:`relformer.train.task.Task` (the engine's contract) — most easily by
subclassing :class:`TaskBase`, which has the defaults — is registered with
``@register_task("name")`` and built as ``Task(recipe)``; recipes are registered by name with
``@register_recipe``. The engine receives the built task object and never imports this package::

    from relformer.tasks import resolve_recipe, train
    train(resolve_recipe("vit-fashion-mnist", ["epochs=1"]))

Generic tasks for your own data: :class:`ClassificationTask` (an image folder tree or tensors),
:class:`GraphTask` (a list of PyG ``Data`` or graph dicts), :class:`CocoDetectionTask` (a COCO
JSON + images), :class:`TextPairTask` (sentence-encoder fine-tuning on text pairs). The built-in
datasets are instances of them: Fashion-MNIST (``ClassificationTask``, ``data.source``), the ZINC-like
molecules (:class:`GraphRegressionTask`, a ``GraphTask``) and the detection canvases
(:class:`DetectionTask`, a ``CocoDetectionTask``). From Python without a recipe: :class:`Trainer`.
"""
from __future__ import annotations

from ..train.task import Task
from .registry import (ENTRY_POINT_GROUP, UNAVAILABLE, build_task, get_task, import_tasks, list_recipes, load_plugins, load_recipe,
                       parse_recipe, recipe_summary, register_recipe, register_task, resolve_recipe, train)
from .base import TaskBase
from .classification import ClassificationTask  # registers the task and its recipes
from .graph_regression import GraphRegressionTask
from .detection import DetectionTask
from .graph import GraphTask
from .text_pairs import TextPairTask
from .coco_detection import CocoDetectionTask
from .grounding import GroundingTask
from .temporal import TemporalLinkTask  # temporal link prediction (DyGLib's protocol)
from . import temporal_recipes  # noqa: F401  (its recipes)
from .trainer import ObjectTask, Trainer
from .registry import import_optional

# the matching family's tasks need the 'matching' extra (OpenCV, scikit-image, scikit-learn, kornia)
flow = import_optional("flow", "matching")
matching = import_optional("matching", "matching")

__all__ = ["Task", "TaskBase", "Trainer", "ObjectTask", "ClassificationTask", "GraphRegressionTask", "DetectionTask",
           "GraphTask", "TextPairTask", "CocoDetectionTask", "GroundingTask", "TemporalLinkTask",
           "register_task", "register_recipe", "get_task", "build_task", "list_recipes", "recipe_summary",
           "load_recipe", "parse_recipe", "resolve_recipe", "train", "import_tasks", "load_plugins",
           "ENTRY_POINT_GROUP"]
