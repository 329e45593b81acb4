"""Recipes: typed, validated training configs as dataclasses, read from YAML or ``--set`` overrides.

A recipe is a :class:`Recipe` subclass that its task declares (``task.recipe_type``): the shared
top-level fields and sections below, plus the task's own sections (e.g. ``data``, ``loss``). The
names that map a recipe to its task, and registered recipe names to recipes, live with the tasks
that fill them (:mod:`relformer.tasks.registry`); this module only parses and validates.
Every value is checked against its field's type annotation (``int``, ``float``, ``bool``, ``str``,
``tuple[...]``, ``X | None``, ``Literal[...]``, nested dataclasses, ``dict[str, Any]``), and an
unknown key is an error naming it, with close matches::

    recipe = resolve_recipe("vit-fashion-mnist", ["optim.lr=3e-4", "model.options.depth=4"])
    recipe = resolve_recipe("my-run.yaml")            # a YAML file with the same structure
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from ..models import create_model

__all__ = ["Recipe", "ModelSection", "OptimSection", "EarlyStoppingSection", "RecipeError",
           "recipe_from_dict", "read_recipe_yaml",
           "recipe_to_dict", "recipe_to_yaml", "apply_overrides", "recipe_diff", "suggest", "MAX_LR", "MAX_SEED"]

MAX_LR = 10.0  # AdamW moves each weight by about lr per step: beyond this no run can converge
MAX_DEPTH = 32  # a recipe value nests a few levels; deeper is a YAML alias that refers to itself
MAX_SEED = 2 ** 63 - 1  # torch.manual_seed and numpy's SeedSequence take non-negative 64-bit seeds


class RecipeError(ValueError):
    """A recipe key or value that is unknown, mistyped or out of range; the message names the key."""


# ---------------------------------------------------------------------------------------------
# The shared sections
# ---------------------------------------------------------------------------------------------
@dataclass
class ModelSection:
    """``name``: a variant of :func:`relformer.models.create_model`; ``options``: its keyword overrides."""

    name: str = "vit_micro"
    options: dict[str, Any] = field(default_factory=dict)

    def build(self):
        """The module ``create_model(name, **options)``; a bad name or option is a :class:`RecipeError`."""
        try:
            return create_model(self.name, **self.options)
        except (ValueError, TypeError) as e:
            raise RecipeError(f"model (name={self.name!r}, options={self.options}): {e}") from e


@dataclass
class OptimSection:
    """AdamW with decoupled weight decay; linear warmup over ``warmup_epochs`` then cosine to
    ``min_lr``, per step; gradient-norm clipping at ``clip_grad`` (0 = off)."""

    lr: float = 1e-3
    min_lr: float = 1e-5
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_epochs: float = 1.0
    clip_grad: float = 1.0


@dataclass
class EarlyStoppingSection:
    """Stop when ``metric`` (None: the task's main metric) has not improved by more than
    ``min_delta`` for ``patience`` evaluations in a row (0 = never stop early); ``mode``: ``"auto"``
    takes the task's direction for its main metric, else ``"max"`` / ``"min"``."""

    patience: int = 0
    metric: str | None = None
    mode: Literal["auto", "max", "min"] = "auto"
    min_delta: float = 0.0


@dataclass
class Recipe:
    """The fields every task shares. ``batch_size`` is global (split over DDP ranks) and is one
    micro-batch: an optimizer step sums the gradients of ``accumulate_grad_batches`` of them;
    ``eval_batch_size`` is per process; ``checkpoint_every`` in steps (0 = only at epoch ends);
    ``max_steps``: stop after that many optimizer steps (None: ``epochs`` decide; the LR schedule
    spans whichever ends first); ``max_minutes``: a time budget for the run (evaluations
    included) on the clock ``budget_clock`` names (``"wall"``: elapsed time; ``"cpu"``: the CPU time of
    the training process, all its threads, so runs sharing a machine get the same work): training stops at the first step after it (that epoch counts as finished), evaluates and reports, and the cosine
    LR schedule follows whichever of steps or time is further along, so it anneals within the budget; ``init_from``: start from the model weights of a run folder (its
    ``best/``) or a checkpoint folder (weights only, manifest verified; ``--resume`` restores the
    run's own weights instead); ``out_dir`` defaults to
    ``runs/<name>``; ``device``: ``"auto"`` = cuda if available else cpu."""

    name: str = "custom"
    task: str = ""
    model: ModelSection = field(default_factory=ModelSection)
    optim: OptimSection = field(default_factory=OptimSection)
    epochs: int = 10
    batch_size: int = 128
    eval_batch_size: int = 256
    seed: int = 0
    amp: Literal["none", "bf16"] = "none"
    compile: bool = False
    deterministic: bool = False
    checkpoint_every: int = 0
    keep_checkpoints: int = 2
    log_every: int = 50
    out_dir: str | None = None
    device: Literal["auto", "cpu", "cuda"] = "auto"
    max_steps: int | None = None
    max_minutes: float | None = None
    budget_clock: Literal["wall", "cpu"] = "wall"
    accumulate_grad_batches: int = 1
    early_stopping: EarlyStoppingSection = field(default_factory=EarlyStoppingSection)
    init_from: str | None = None

    def run_dir(self) -> Path:
        return Path(self.out_dir if self.out_dir is not None else Path("runs") / self.name)

    def validate(self) -> None:
        """Range checks the types cannot express; raises :class:`RecipeError` naming the key."""
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "eval_batch_size": self.eval_batch_size,
                    "log_every": self.log_every, "keep_checkpoints": self.keep_checkpoints, "optim.lr": self.optim.lr,
                    "accumulate_grad_batches": self.accumulate_grad_batches,
                    "max_steps": 1 if self.max_steps is None else self.max_steps,
                    "max_minutes": 1 if self.max_minutes is None else self.max_minutes}
        non_negative = {"checkpoint_every": self.checkpoint_every, "optim.min_lr": self.optim.min_lr,
                        "optim.weight_decay": self.optim.weight_decay, "optim.warmup_epochs": self.optim.warmup_epochs,
                        "optim.clip_grad": self.optim.clip_grad, "optim.eps": self.optim.eps,
                        "early_stopping.patience": self.early_stopping.patience,
                        "early_stopping.min_delta": self.early_stopping.min_delta}
        for key, value in positive.items():
            if not (value > 0 and _finite(value)):
                raise RecipeError(f"{key} must be > 0 and finite, got {value!r}")
        for key, value in non_negative.items():
            if not (value >= 0 and _finite(value)):
                raise RecipeError(f"{key} must be >= 0 and finite, got {value!r}")
        for key in ("lr", "min_lr"):
            if getattr(self.optim, key) > MAX_LR:
                raise RecipeError(f"optim.{key} must be <= {MAX_LR}, got {getattr(self.optim, key)!r}")
        if not all(0 <= b < 1 for b in self.optim.betas):
            raise RecipeError(f"optim.betas must lie in [0, 1), got {self.optim.betas}")
        if not 0 <= self.seed <= MAX_SEED:
            raise RecipeError(f"seed must lie in [0, 2**63 - 1], got {self.seed}")
        if self.init_from is not None and not self.init_from.strip():
            raise RecipeError("init_from must not be empty; give a run folder or a checkpoint folder, or null")
        if self.out_dir is not None and not self.out_dir.strip():
            raise RecipeError("out_dir must not be empty (it would be the current folder); give a folder name")


def _finite(value: int | float) -> bool:
    """An int (any size), or a float that is neither inf nor NaN."""
    return isinstance(value, int) or math.isfinite(value)


def suggest(name: str, options) -> str:
    """`` (did you mean 'x', 'y'?)`` for the close matches of ``name`` among ``options``, else ``""``."""
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.6)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


# ---------------------------------------------------------------------------------------------
# Typed parsing
# ---------------------------------------------------------------------------------------------
class _Text(str):
    """A ``--set`` value as typed on the command line, parsed only once its field's type is known."""


def _check_tree(value: Any, key: str, depth: int = 0) -> Any:
    """``value`` itself, if it is a finite tree of lists and mappings; a YAML alias that refers to
    itself (``&a [*a]``) or nesting deeper than ``MAX_DEPTH`` is a :class:`RecipeError`."""
    if depth > MAX_DEPTH:
        raise RecipeError(f"{key}: the value is nested more than {MAX_DEPTH} levels deep, or refers to itself")
    children = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for child in children:
        _check_tree(child, key, depth + 1)
    return value


def _scalar(text: str, key: str) -> Any:
    """A command-line value: YAML syntax (``true``, ``null``, ``[1, 2]``), numbers such as ``3e-4``."""
    text = str(text)  # a plain str: the recipe must stay YAML-representable
    try:
        value = yaml.safe_load(text) if text.strip() else text
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        for number in (int, float):
            try:
                return number(value)
            except ValueError:
                pass
    return _check_tree(value, key)


def _type_name(tp: Any) -> str:
    return str(tp).replace("typing.", "") if typing.get_origin(tp) else getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against (and converted to) the annotation ``tp``; errors name ``key``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if isinstance(value, _Text) and tp is not str:
        if origin in (typing.Union, types.UnionType) and str in args and value.strip().lower() not in ("null", "none", "~"):
            return str(value)
        value = _scalar(value, key)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.strip().lower() in ("null", "none")):
            if type(None) in args:
                return None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, key)
            except RecipeError:
                pass
        raise RecipeError(f"{key}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise RecipeError(f"{key}: expected one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        return _from_dict(tp, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise RecipeError(f"{key}: expected a list ({_type_name(tp)}), got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise RecipeError(f"{key}: expected {len(args)} values ({_type_name(tp)}), got {len(value)}: {value!r}")
        return tuple(_coerce(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin is dict:
        if not isinstance(value, dict):
            raise RecipeError(f"{key}: expected a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1] if args else Any, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return str(value)
    else:
        raise TypeError(f"recipe field {key} has an unsupported annotation {tp!r}")
    raise RecipeError(f"{key}: expected {_type_name(tp)}, got {value!r} ({type(value).__name__})")


def _from_dict(cls: type, data: Any, prefix: str = "") -> Any:
    """An instance of dataclass ``cls`` from a mapping; missing keys take their defaults."""
    where = prefix or "recipe"
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise RecipeError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    values = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else str(key)
        if key not in names:
            known = [f"{prefix}.{n}" if prefix else n for n in names]
            raise RecipeError(f"unknown key {dotted!r}{suggest(dotted, known)}; {where} has: {', '.join(names)}")
        values[key] = _coerce(value, hints[key], dotted)
    try:
        return cls(**values)
    except TypeError as e:  # a field without default left out
        raise RecipeError(f"{where}: {e}") from e


def recipe_from_dict(data: Any, recipe_type: type) -> Recipe:
    """A validated ``recipe_type`` (a :class:`Recipe` subclass) from a plain mapping."""
    recipe = _from_dict(recipe_type, _check_tree(data, "recipe"))
    recipe.validate()
    return recipe


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def recipe_to_dict(recipe: Recipe) -> dict:
    """Plain nested dicts and lists (tuples become lists), ready for YAML."""
    return _plain(recipe)


def recipe_to_yaml(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)


def read_recipe_yaml(path: str | Path) -> dict:
    """The mapping a recipe YAML file holds; its ``name`` defaults to the file's stem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise RecipeError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: expected a mapping of recipe keys, got {type(data).__name__}")
    data.setdefault("name", path.stem)
    return data


def apply_overrides(recipe: Recipe, overrides: list[str]) -> Recipe:
    """A new recipe with each ``"dotted.key=value"`` applied; the value is parsed for its field's type."""
    data = recipe_to_dict(recipe)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise RecipeError(f"--set expects key=value, got {item!r}")
        *parents, leaf = key.split(".")
        if not all(part.strip() for part in (*parents, leaf)):
            raise RecipeError(f"--set {key}: a key part is empty")
        node = data
        for depth, part in enumerate(parents):
            child = node.get(part, {}) if part not in node or isinstance(node[part], dict) else None
            if child is None:
                raise RecipeError(f"--set {key}: {'.'.join(parents[:depth + 1])!r} is a value, not a section")
            node[part] = child
            node = child
        node[leaf] = _Text(text)
    return recipe_from_dict(data, type(recipe))


def recipe_diff(a: Recipe, b: Recipe, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two recipes."""
    def walk(x: Any, y: Any, key: str) -> list[str]:
        if isinstance(x, dict) and isinstance(y, dict):
            return [k for name in sorted(set(x) | set(y))
                    for k in walk(x.get(name), y.get(name), f"{key}.{name}" if key else name)]
        return [] if x == y else [key]
    return walk(recipe_to_dict(a), recipe_to_dict(b), prefix)
