"""Training: typed recipes, a generic loop handed a task object, atomic checkpoints, logs and a report.

    relformer train vit-fashion-mnist --set optim.lr=2e-3 --out runs/vit
    torchrun --nproc_per_node=2 -m relformer.cli train vit-fashion-mnist     # DDP

This layer never imports a task: from Python, ``relformer.tasks.train(resolve_recipe(...))``
builds the task a recipe names and hands it to :func:`train` here; ``relformer.tasks.Trainer``
trains a model and data you hold. :class:`Engine` (formerly ``Trainer``, still importable under that
name) is the loop itself; :class:`Callback` hooks into it.
"""
from .callbacks import Callback
from .checkpoint import CheckpointDir, CheckpointError, load_weights
from .engine import Engine, Trainer, train
from .recipe import EarlyStoppingSection, ModelSection, OptimSection, Recipe, RecipeError, apply_overrides
from .task import Task

__all__ = ["train", "Engine", "Trainer", "Callback", "Task", "Recipe", "ModelSection", "OptimSection",
           "EarlyStoppingSection", "RecipeError", "apply_overrides", "CheckpointDir", "CheckpointError", "load_weights"]
