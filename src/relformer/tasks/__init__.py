"""Tasks: what a model learns, from which data, judged by which metrics; and the registries.

A task implements :class:`relformer.train.task.Task` (the engine's contract), is registered with
``@register_task("name")`` and built as ``Task(recipe)``; recipes are registered by name with
``@register_recipe``. The engine receives the built task object and never imports this package::

    from relformer.tasks import resolve_recipe, train
    train(resolve_recipe("vit-fashion-mnist", ["epochs=1"]))
"""
from __future__ import annotations

from ..train.task import Task
from .registry import (build_task, get_task, list_recipes, load_recipe, parse_recipe, recipe_summary, register_recipe,
                       register_task, resolve_recipe, train)
from .classification import ClassificationTask  # registers the task and its recipes
from .graph_regression import GraphRegressionTask
from .detection import DetectionTask

__all__ = ["Task", "ClassificationTask", "GraphRegressionTask", "DetectionTask", "register_task", "register_recipe",
           "get_task", "build_task", "list_recipes", "recipe_summary", "load_recipe", "parse_recipe",
           "resolve_recipe", "train"]
