"""Named model variants as data (timm's ``@register_model``, torchtune's builders).

A variant is a function returning a frozen config dataclass; one builder per config class
turns configs into modules::

    @register_model
    def vit_tiny() -> ViTConfig: return ViTConfig(dim=192, depth=12, num_heads=3)

    create_model("vit_tiny", num_classes=10)   # = build_model(model_config("vit_tiny", num_classes=10))
"""
from __future__ import annotations

import dataclasses
import difflib
import fnmatch
from typing import Any, Callable

from torch import nn

__all__ = ["register_model", "builds", "list_models", "model_config", "build_model", "create_model"]

_VARIANTS: dict[str, Callable[[], Any]] = {}
_BUILDERS: dict[type, Callable[[Any], nn.Module]] = {}


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


def create_model(name: str, **overrides) -> nn.Module:
    """``build_model(model_config(name, **overrides))``."""
    return build_model(model_config(name, **overrides))
