"""Field checks shared by the model config dataclasses (called from their ``__post_init__``, so a
bad option fails when the config is made, naming ``Config.field`` and the value given)."""
from __future__ import annotations

import math

__all__ = ["check_positive", "check_count", "check_rate", "check_eps"]


def _fail(config, name: str, what: str) -> None:
    raise ValueError(f"{type(config).__name__}.{name} must be {what}, got {getattr(config, name)!r}")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive(config, *names: str) -> None:
    """Each field is an int > 0, or a pair of them (image and patch sizes)."""
    for name in names:
        value = getattr(config, name)
        values = tuple(value) if isinstance(value, (tuple, list)) else (value,)
        if not (1 <= len(values) <= 2 and all(_is_int(v) and v > 0 for v in values)):
            _fail(config, name, "a positive int (or pair)")


def check_count(config, *names: str) -> None:
    """Each field is an int >= 0 (``num_classes=0``: no head)."""
    for name in names:
        value = getattr(config, name)
        if not (_is_int(value) and value >= 0):
            _fail(config, name, "an int >= 0")


def check_rate(config, *names: str) -> None:
    """Each field is a probability in ``[0, 1)`` (dropout, stochastic depth)."""
    for name in names:
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value < 1.0):
            _fail(config, name, "a number in [0, 1)")


def check_eps(config, *names: str) -> None:
    """Each field is a finite number > 0 (norm epsilons: a negative one gives NaN)."""
    for name in names:
        value = getattr(config, name)
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
                and value > 0):
            _fail(config, name, "a finite number > 0")
