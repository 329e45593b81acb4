"""Callbacks: user code the engine calls at fixed points of a run (as Lightning's / Keras').

Subclass :class:`Callback` and override what you need; every hook is a no-op by default and
receives the :class:`~relformer.train.engine.Engine` (``engine.model``, ``engine.progress``,
``engine.run_dir``, ``engine.request_stop()``). Callbacks run on the main process only and are
not saved in checkpoints: a resumed run is handed them again.
"""
from __future__ import annotations

from typing import Any

__all__ = ["Callback", "run_callbacks"]


class Callback:
    """No-op hooks; override any of them."""

    def on_train_start(self, engine: Any) -> None:
        """Before the first (or, resumed, the next) step."""

    def on_eval(self, engine: Any, metrics: dict[str, float]) -> None:
        """After each evaluation, with the task's metrics (``{name: value}``)."""

    def on_epoch_end(self, engine: Any, row: dict[str, float]) -> None:
        """After an epoch's evaluation and checkpoint, with its history row (epoch, step,
        ``train_*`` means, ``eval_*`` metrics)."""

    def on_train_end(self, engine: Any) -> None:
        """After the last epoch (or an early stop), before the report."""


def run_callbacks(callbacks: list[Callback], hook: str, *args: Any) -> None:
    """Call ``hook`` on every callback, in order."""
    for callback in callbacks:
        getattr(callback, hook)(*args)
