"""What ViT and Swin share: the output type, the pixel checks, the init and the classifier tail."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from ...nn import Attention
from ..outputs import ModelOutput, classification_loss
from ..registry import PretrainedMixin

__all__ = ["VisionOutput", "pair", "prepare_pixels", "init_weights", "Classifier"]


@dataclass
class VisionOutput(ModelOutput):
    """``loss``: the classification loss when ``labels`` were given (first, as in HF's
    ``ImageClassifierOutput``); ``last_hidden_state (B, L, C)`` after the final norm;
    ``pooler_output (B, C')``; ``logits (B, num_classes)`` or None without a head;
    ``hidden_states``: the embeddings and every layer's (ViT) / stage's (Swin) output, when asked for."""

    last_hidden_state: Tensor
    pooler_output: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None
    loss: Tensor | None = None

    def keys(self) -> list[str]:
        """``loss`` first when set (HF's order), then the other fields that are set."""
        keys = super().keys()
        return ["loss", *keys[:-1]] if self.loss is not None else keys


def pair(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else tuple(x)


def prepare_pixels(pixel_values: Tensor, in_chans: int, dtype: torch.dtype) -> Tensor:
    """``pixel_values (B, C, H, W)`` checked and cast to the model's ``dtype``: a floating-point
    image of another precision (bf16, fp64) is converted as HF ``ViTModel`` does; integer images
    (not normalised), another channel count or an empty batch raise ``ValueError``."""
    if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
        raise ValueError(f"pixel_values must be a (B, C, H, W) tensor, got "
                         f"{tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__}")
    if pixel_values.shape[1] != in_chans:
        raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels, the model expects {in_chans}")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be floating point (normalised), got {pixel_values.dtype}")
    if pixel_values.shape[0] == 0:
        raise ValueError("pixel_values is an empty batch")
    return pixel_values.to(dtype)


def init_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated-normal(0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class Classifier(PretrainedMixin, nn.Module):
    """Shared tail: optional ``head`` on the pooled features, the output with HF's ``labels -> loss``
    rule (:func:`~relformer.models.outputs.classification_loss`); attention capture for the maps."""

    head: nn.Module | None

    def _output(self, x: Tensor, pooled: Tensor, features: Tensor, hidden, labels: Tensor | None) -> VisionOutput:
        logits = self.head(features) if self.head is not None else None
        loss = classification_loss(logits, labels) if labels is not None else None
        return VisionOutput(x, pooled, logits, hidden, loss)

    @torch.no_grad()
    def _capture(self, attn: Attention, pixel_values: Tensor) -> Tensor:
        """Run the model once and return ``attn``'s probabilities ``(B', H, Lq, Lk)`` for its call."""
        seen = {}

        def hook(module, args, kwargs):
            seen["args"], seen["kwargs"] = args, kwargs

        handle = attn.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            self(pixel_values)
        finally:
            handle.remove()
        return attn.probabilities(*seen["args"], **seen["kwargs"])
