"""The task and recipe registries, filled by the task modules beside this one.

A task class is registered with ``@register_task("name")`` and names its
:class:`~relformer.train.recipe.Recipe` subclass as ``recipe_type``; a recipe binds to it through
its ``task`` field. A recipe is a function returning a Recipe, registered with
``@register_recipe("name")`` (its docstring's first line is what ``relformer train --list``
prints). The engine never looks names up: :func:`build_task` turns a recipe into the task object
the engine is handed, and :func:`train` does both::

    train(resolve_recipe("vit-fashion-mnist", ["epochs=1"]))
"""
from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from ..train import engine
from ..train.recipe import Recipe, RecipeError, apply_overrides, read_recipe_yaml, recipe_from_dict, suggest
from ..train.task import Task

__all__ = ["register_task", "register_recipe", "get_task", "build_task", "list_recipes", "recipe_summary",
           "load_recipe", "resolve_recipe", "parse_recipe", "train", "import_tasks", "load_plugins",
           "ENTRY_POINT_GROUP"]

_TASKS: dict[str, type] = {}
_RECIPES: dict[str, Callable[[], Recipe]] = {}
#: installed packages add tasks and recipes under this entry-point group: each entry point names a
#: module (``my_pkg.tasks``) whose import registers them; loaded the first time a name is unknown
ENTRY_POINT_GROUP = "relformer.tasks"
_plugins_loaded = False
#: task modules of relformer's optional extras that could not be imported: module -> why
UNAVAILABLE: dict[str, str] = {}


def import_optional(module: str, extra: str, package: str = __package__) -> ModuleType | None:
    """Import one of relformer's task modules that needs ``extra`` (``pip install relformer[extra]``);
    when a third-party module it needs is missing, record why (named in unknown-name errors)."""
    try:
        return importlib.import_module(f".{module}", package)
    except ModuleNotFoundError as e:
        if e.name is None or e.name.split(".")[0] == "relformer":
            raise
        UNAVAILABLE[module] = f"{module} needs the '{extra}' extra (No module named {e.name!r}; pip install '.[{extra}]')"
        return None


def _unavailable() -> str:
    return f" (unavailable here: {'; '.join(UNAVAILABLE.values())})" if UNAVAILABLE else ""


def import_tasks(module: str | Path) -> ModuleType:
    """Import the user's module ``module`` (a dotted name, or a path to a ``.py`` file) so that
    its ``@register_task`` / ``@register_recipe`` take effect; returns the module."""
    text = str(module)
    if text.endswith(".py") or Path(text).is_file():
        path = Path(text)
        if not path.is_file():
            raise ValueError(f"--import {text}: no such file")
        name = path.stem
        if name in sys.modules and getattr(sys.modules[name], "__file__", None) == str(path.resolve()):
            return sys.modules[name]
        spec = importlib.util.spec_from_file_location(name, path.resolve())
        loaded = importlib.util.module_from_spec(spec)
        sys.modules[name] = loaded
        spec.loader.exec_module(loaded)
        return loaded
    try:
        return importlib.import_module(text)
    except ModuleNotFoundError as e:
        if e.name is not None and text.startswith(e.name):
            raise ValueError(f"--import {text}: no module named {e.name!r} (a module on sys.path or a .py file)") \
                from None
        raise


def load_plugins() -> list[str]:
    """Import the modules of the ``relformer.tasks`` entry points (once); returns their names."""
    global _plugins_loaded
    if _plugins_loaded:
        return []
    _plugins_loaded = True
    names = []
    for entry in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        entry.load()
        names.append(entry.name)
    return names


def register_task(name: str) -> Callable[[type], type]:
    """Class decorator: register a task class (which has a ``recipe_type``) under ``name``."""
    def deco(task_cls: type) -> type:
        if name in _TASKS:
            raise ValueError(f"task {name!r} is already registered")
        if not (isinstance(getattr(task_cls, "recipe_type", None), type) and issubclass(task_cls.recipe_type, Recipe)):
            raise TypeError(f"task {task_cls.__name__} needs a recipe_type attribute, a Recipe subclass")
        _TASKS[name] = task_cls
        return task_cls
    return deco


def register_recipe(name: str) -> Callable[[Callable[[], Recipe]], Callable[[], Recipe]]:
    """Decorator: register a function returning a :class:`Recipe` under ``name``."""
    def deco(fn: Callable[[], Recipe]) -> Callable[[], Recipe]:
        if name in _RECIPES:
            raise ValueError(f"recipe {name!r} is already registered")
        _RECIPES[name] = fn
        return fn
    return deco


def get_task(name: str) -> type:
    """The task class registered as ``name`` (the entry-point plugins are loaded if it is unknown)."""
    if name not in _TASKS:
        load_plugins()
    if name not in _TASKS:
        raise RecipeError(f"task: unknown task {name!r}{suggest(name, _TASKS)}; known: {', '.join(sorted(_TASKS))}"
                          f"{_unavailable()}")
    return _TASKS[name]


def build_task(recipe: Recipe) -> Task:
    """The task object for ``recipe`` (what :func:`relformer.train.engine.train` is handed)."""
    if not isinstance(recipe, Recipe):
        raise TypeError(f"recipe must be a Recipe, got {type(recipe).__name__}")
    return get_task(recipe.task)(recipe)


def list_recipes() -> list[str]:
    load_plugins()
    return sorted(_RECIPES)


def recipe_summary(name: str) -> str:
    """The first sentence of ``name``'s docstring (its first paragraph's lines joined, never cut
    mid-word; the whole paragraph when no sentence ends in it)."""
    doc = (_RECIPES[name].__doc__ or "").strip()
    paragraph = " ".join(doc.split("\n\n")[0].split())
    for i, char in enumerate(paragraph):
        ends = i + 1 == len(paragraph) or paragraph[i + 1] == " "
        if char == "." and ends and not paragraph[:i].endswith(("e.g", "i.e", "et al")):
            return paragraph[:i + 1]
    return paragraph


def parse_recipe(data: Any) -> Recipe:
    """A validated recipe from a plain mapping; its type comes from ``data["task"]``."""
    if not isinstance(data, dict) or "task" not in data:
        raise RecipeError("missing key 'task' (the recipe's task, e.g. 'classification')")
    return recipe_from_dict(data, get_task(str(data["task"])).recipe_type)


def load_recipe(path: str | Path) -> Recipe:
    """A recipe from a YAML file; its ``name`` defaults to the file's stem."""
    return parse_recipe(read_recipe_yaml(path))


def resolve_recipe(name_or_path: str, overrides: list[str] = ()) -> Recipe:
    """A registered recipe by name, or a YAML file by path, with ``overrides`` applied."""
    if name_or_path not in _RECIPES and not Path(name_or_path).is_file():
        load_plugins()
    if name_or_path in _RECIPES:
        recipe = _RECIPES[name_or_path]()
    elif Path(name_or_path).is_file():
        recipe = load_recipe(name_or_path)
    else:
        raise RecipeError(f"unknown recipe {name_or_path!r}{suggest(name_or_path, _RECIPES)} (not a registered "
                          f"name nor a YAML file); registered: {', '.join(sorted(_RECIPES))}{_unavailable()}")
    return apply_overrides(recipe, list(overrides)) if overrides else recipe


def train(recipe: Recipe, *, resume: bool = False, callbacks=()) -> Path:
    """Run (or with ``resume``, continue) ``recipe`` with its task; returns the run folder."""
    return engine.train(build_task(recipe), resume=resume, callbacks=callbacks)
