"""Named model variants as data (timm's ``@register_model``, torchtune's builders).

A variant is a function returning a frozen config dataclass; one builder per config class
turns configs into modules::

    @register_model
    def vit_tiny() -> ViTConfig: return ViTConfig(dim=192, depth=12, num_heads=3)

    create_model("vit_tiny", num_classes=10)   # = build_model(model_config("vit_tiny", num_classes=10))

Saved models (:mod:`.hub`'s folder format) come back in one call: ``model.save_pretrained(dir)``,
``from_pretrained(dir)`` (a training run folder too); variants with shipped weights
(:func:`register_weights`) load them with ``create_model(name, pretrained=True)``. Nothing is
downloaded.
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn

from . import hub

__all__ = ["register_model", "builds", "list_models", "model_config", "build_model", "create_model",
           "register_weights", "shipped_weights", "config_classes", "from_pretrained", "save_pretrained",
           "PretrainedMixin"]

_VARIANTS: dict[str, Callable[[], Any]] = {}
_BUILDERS: dict[type, Callable[[Any], nn.Module]] = {}
_WEIGHTS: dict[str, Callable[[], dict[str, Tensor]]] = {}


def register_model(fn: Callable[[], Any]) -> Callable[[], Any]:
    """Register ``fn`` (returning a config dataclass) under its function name."""
    if fn.__name__ in _VARIANTS:
        raise ValueError(f"model variant {fn.__name__!r} is already registered")
    _VARIANTS[fn.__name__] = fn
    return fn


def builds(config_cls: type) -> Callable[[type], type]:
    """Class decorator: the decorated module class is built from ``config_cls`` instances."""
    def deco(model_cls: type) -> type:
        _BUILDERS[config_cls] = model_cls
        return model_cls
    return deco


def list_models(pattern: str = "*") -> list[str]:
    """Registered variant names matching a shell-style ``pattern``, sorted."""
    return sorted(n for n in _VARIANTS if fnmatch.fnmatch(n, pattern))


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=3)
    return f" (did you mean {', '.join(map(repr, close))}?)" if close else ""


def model_config(name: str, **overrides) -> Any:
    """The config of variant ``name`` with ``overrides`` applied; unknown names/keys raise ``ValueError``,
    a name that is not a str ``TypeError``."""
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str, got {type(name).__name__} (see list_models())")
    if name not in _VARIANTS:
        raise ValueError(f"unknown model {name!r}{_suggest(name, _VARIANTS)}; known: {', '.join(list_models())}")
    config = _VARIANTS[name]()
    fields = {f.name for f in dataclasses.fields(config)}
    for key in overrides:
        if key not in fields:
            raise ValueError(f"{type(config).__name__} has no option {key!r}{_suggest(key, fields)}; "
                             f"options: {', '.join(sorted(fields))}")
    return dataclasses.replace(config, **overrides)


def build_model(config: Any) -> nn.Module:
    """The module for a config dataclass instance."""
    builder = _BUILDERS.get(type(config))
    if builder is None:
        raise TypeError(f"no model class is registered for {type(config).__name__}")
    return builder(config)


def register_weights(name: str) -> Callable:
    """Decorator: ``fn() -> state dict`` (relformer names) gives variant ``name``'s shipped weights,
    loaded by ``create_model(name, pretrained=True)``; ``fn`` reads local files only."""
    def deco(fn: Callable[[], dict[str, Tensor]]) -> Callable[[], dict[str, Tensor]]:
        if name in _WEIGHTS:
            raise ValueError(f"weights of {name!r} are already registered")
        _WEIGHTS[name] = fn
        return fn
    return deco


def shipped_weights() -> list[str]:
    """The variants ``create_model(name, pretrained=True)`` can load, sorted."""
    return sorted(_WEIGHTS)


def config_classes() -> dict[str, type]:
    """Class name -> config class, for every class a model is registered for (what ``config.json``
    may name)."""
    return {cls.__name__: cls for cls in _BUILDERS}


def _named(model: nn.Module, name: str | None) -> nn.Module:
    """Record the variant a model was made from (written to ``config.json`` by ``save_pretrained``)."""
    model.variant = name
    return model


def create_model(name: str, pretrained: bool | str | Path = False, **overrides) -> nn.Module:
    """``build_model(model_config(name, **overrides))``; ``pretrained=True`` loads the variant's
    shipped weights (:func:`shipped_weights`), ``pretrained=<folder>`` the weights of a saved model
    or training run folder (see :func:`from_pretrained`), with strict key and shape checks."""
    model = _named(build_model(model_config(name, **overrides)), name)
    if pretrained is False or pretrained is None:
        return model
    if pretrained is True:
        if name not in _WEIGHTS:
            raise ValueError(f"model {name!r} has no shipped weights (pretrained=True); variants with shipped "
                             f"weights: {', '.join(shipped_weights()) or 'none'}; or pass pretrained=<folder>")
        return hub.load_weights(model, _WEIGHTS[name](), f"the shipped weights of {name!r}")
    if not isinstance(pretrained, (str, Path)):
        raise TypeError(f"pretrained must be a bool or a folder path, got {type(pretrained).__name__}")
    folder = hub.checkpoint_folder(pretrained)
    return hub.load_weights(model, hub.read_weights(folder), str(folder / hub.WEIGHTS_FILE))


def from_pretrained(path: str | Path) -> nn.Module:
    """The model saved in ``path`` (``config.json`` + ``model.safetensors``), or the best (else
    latest) checkpoint of a training run folder, whose ``config.json`` sits in the checkpoint or
    in the run folder. Returned in eval mode, as HF's ``from_pretrained``."""
    folder = hub.checkpoint_folder(path)
    config, variant = hub.read_config(hub.config_path(folder, path), config_classes())
    model = _named(build_model(config), variant)
    return hub.load_weights(model, hub.read_weights(folder), str(folder / hub.WEIGHTS_FILE)).eval()


def save_pretrained(model: nn.Module, folder: str | Path) -> Path:
    """Write ``model`` (a module with a registered ``.config``) to ``folder``: ``model.safetensors``
    first, then ``config.json``, each atomically, so a folder with a config has its weights."""
    config = getattr(model, "config", None)
    if type(config) not in _BUILDERS:
        raise TypeError(f"{type(model).__name__} has no .config of a registered config class; "
                        f"known: {', '.join(sorted(config_classes()))}")
    variant = getattr(model, "variant", None)
    hub.config_dict(config, variant)  # a config JSON cannot hold fails before anything is written
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"save folder {folder} exists and is not a folder")
    hub.save_weights(model, folder)
    hub.save_config(config, folder, variant)
    return folder


class PretrainedMixin:
    """``save_pretrained(folder)`` / ``Cls.from_pretrained(folder)`` for a model class built from a
    registered config (HF's ``PreTrainedModel`` methods). Adopted by listing it first among the bases."""

    def save_pretrained(self, folder: str | Path) -> Path:
        return save_pretrained(self, folder)

    @classmethod
    def from_pretrained(cls, path: str | Path) -> nn.Module:
        model = from_pretrained(path)
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}; "
                            "use relformer.models.from_pretrained")
        return model
