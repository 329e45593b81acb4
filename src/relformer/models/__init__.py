"""Model families built on relformer's one attention primitive, and the variant registry."""
from . import detection, graph, text, vision
from .registry import build_model, builds, create_model, list_models, model_config, register_model
from .graph import (GPS, GPSConfig, GPSLayer, GraphBatch, GraphLayout, GraphOutput, Graphormer,
                    GraphormerConfig, GraphTransformer, GraphTransformerLayer, GTConfig)
from .detection import DETR, DETRConfig, DetectionOutput
from .text import CausalLM, KVCache, SentenceEncoder, TextConfig, TextEncoder, TextOutput
from .vision import Swin, SwinConfig, ViT, ViTConfig, VisionOutput

__all__ = ["list_models", "create_model", "model_config", "build_model", "register_model", "builds",
           "detection", "DETR", "DETRConfig", "DetectionOutput",
           "graph", "GraphBatch", "GraphOutput", "GraphLayout", "GPS", "GPSConfig", "GPSLayer", "GraphTransformer",
           "GraphTransformerLayer", "GTConfig", "Graphormer", "GraphormerConfig",
           "vision", "ViT", "ViTConfig", "Swin", "SwinConfig", "VisionOutput",
           "text", "TextConfig", "TextEncoder", "TextOutput", "SentenceEncoder", "CausalLM", "KVCache"]
