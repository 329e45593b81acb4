"""Model outputs that read like Hugging Face ``ModelOutput``s while staying plain dataclasses:
``out.logits``, ``out["logits"]``, ``out[0]`` (positions count only the fields that are not None,
as HF's), ``out.keys()``, ``out.to_tuple()``. And the ``labels= -> loss`` rule of HF's
``*ForImageClassification`` / ``*ForSequenceClassification`` heads (:func:`classification_loss`).

A family's output adopts it by subclassing: ``@dataclass class GraphOutput(ModelOutput): ...``."""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import torch.nn.functional as F
from torch import Tensor

__all__ = ["ModelOutput", "classification_loss"]


class ModelOutput:
    """Mixin for ``@dataclass`` outputs: dict-like access over the fields that are not None, in
    field order (HF drops None fields, so ``out[0]`` is the loss only when labels were given)."""

    def keys(self) -> list[str]:
        return [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is not None]

    def values(self) -> list[Any]:
        return [getattr(self, k) for k in self.keys()]

    def items(self) -> list[tuple[str, Any]]:
        return [(k, getattr(self, k)) for k in self.keys()]

    def to_tuple(self) -> tuple:
        """The fields that are not None, in order (HF's ``to_tuple``)."""
        return tuple(self.values())

    def __getitem__(self, key: str | int | slice) -> Any:
        if isinstance(key, str):
            if key not in self.keys():
                raise KeyError(f"{type(self).__name__} has no field {key!r} set; set fields: {self.keys()}")
            return getattr(self, key)
        if isinstance(key, (int, slice)) and not isinstance(key, bool):
            return self.to_tuple()[key]
        raise TypeError(f"{type(self).__name__} indices must be str, int or slice, got {type(key).__name__}")

    def __iter__(self) -> Iterator[str]:
        """Over the keys, as iterating a dict (and HF's ``ModelOutput``)."""
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self.keys())

    def __contains__(self, key: object) -> bool:
        return key in self.keys()


def classification_loss(logits: Tensor | None, labels: Tensor) -> Tensor:
    """HF's ``problem_type`` rule for a classification head ``logits (B, K)``: one output -> mean
    squared error (regression); integer ``labels (B,)`` -> cross-entropy; float ``labels (B, K)``
    -> binary cross-entropy with logits (multi-label)."""
    if logits is None:
        raise ValueError("labels given but the model has no classification head (num_classes=0)")
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a tensor, got {type(labels).__name__}")
    labels = labels.to(logits.device)
    if logits.shape[-1] == 1:
        return F.mse_loss(logits.squeeze(-1), labels.to(logits.dtype).reshape(logits.shape[:-1]))
    if not labels.is_floating_point():
        if labels.shape != logits.shape[:-1]:
            raise ValueError(f"integer labels must have shape {tuple(logits.shape[:-1])}, got {tuple(labels.shape)}")
        return F.cross_entropy(logits, labels.long())
    if labels.shape != logits.shape:
        raise ValueError(f"float (multi-label) labels must have the logits' shape {tuple(logits.shape)}, "
                         f"got {tuple(labels.shape)}")
    return F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
