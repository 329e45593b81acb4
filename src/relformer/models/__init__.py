"""Model families built on relformer's one attention primitive, and the variant registry."""
from . import text, vision
from .registry import build_model, builds, create_model, list_models, model_config, register_model
from .text import CausalLM, KVCache, SentenceEncoder, TextConfig, TextEncoder, TextOutput
from .vision import Swin, SwinConfig, ViT, ViTConfig, VisionOutput

__all__ = ["list_models", "create_model", "model_config", "build_model", "register_model", "builds",
           "vision", "ViT", "ViTConfig", "Swin", "SwinConfig", "VisionOutput",
           "text", "TextConfig", "TextEncoder", "TextOutput", "SentenceEncoder", "CausalLM", "KVCache"]
