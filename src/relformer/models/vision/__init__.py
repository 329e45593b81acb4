"""Vision Transformers on :func:`relformer.attend`: :class:`ViT` (:mod:`.vit`) and :class:`Swin`
(:mod:`.swin`). Both are called as ``model(pixel_values (B, C, H, W))`` and return
:class:`VisionOutput` (``last_hidden_state``, ``pooler_output``, ``logits``; ``hidden_states`` on
request), the field names of HF ``transformers``. Variants are registered data (:func:`list_models`)."""
from .common import VisionOutput
from .swin import PatchMerging, Swin, SwinBlock, SwinConfig, SwinStage, window_partition
from .vit import ConvStem, ViT, ViTConfig

__all__ = ["ViTConfig", "SwinConfig", "ViT", "Swin", "VisionOutput", "ConvStem", "SwinBlock", "SwinStage",
           "PatchMerging", "window_partition"]
