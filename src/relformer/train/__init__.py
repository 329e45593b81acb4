"""Training: typed recipes, a generic loop for any task, atomic checkpoints, logs and a report.

    relformer train vit-fashion-mnist --set optim.lr=2e-3 --out runs/vit
    torchrun --nproc_per_node=2 -m relformer.cli train vit-fashion-mnist     # DDP

or from Python: ``train(resolve_recipe("vit-fashion-mnist", ["epochs=1"]))``.
"""
from .engine import Trainer, train
from .recipe import (ModelSection, OptimSection, Recipe, RecipeError, list_recipes, load_recipe, register_recipe,
                     register_task, resolve_recipe)

__all__ = ["train", "Trainer", "Recipe", "ModelSection", "OptimSection", "RecipeError", "resolve_recipe",
           "load_recipe", "list_recipes", "register_recipe", "register_task"]
