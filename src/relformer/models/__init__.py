"""Model families built on relformer's one attention primitive, the variant registry and the
one-call save / load (``save_pretrained`` / ``from_pretrained``, :mod:`.hub`)."""
from . import detection, graph, grounding, hub, matching, outputs, temporal, text, vision
from .matching import (GMFlow, GMFlowConfig, DiskKeypoints, LightGlue, LightGlueConfig, LoFTR, LoFTRConfig, MatchOutput,
                       PackedMatches)
from .hub import save_config
from .outputs import ModelOutput, classification_loss
from .registry import (PretrainedMixin, build_model, builds, config_classes, create_model, from_pretrained, list_models,
                       model_config, register_model, register_weights, save_pretrained, shipped_weights)
from .graph import (GPS, GPSConfig, GPSLayer, GraphBatch, GraphLayout, GraphOutput, Graphormer,
                    GraphormerConfig, GraphTransformer, GraphTransformerLayer, GTConfig)
from .detection import DETR, DETRConfig, DetectionOutput
from .text import CausalLM, KVCache, SentenceEncoder, TextConfig, TextEncoder, TextOutput
from .vision import Swin, SwinConfig, ViT, ViTConfig, VisionOutput

__all__ = ["list_models", "create_model", "model_config", "build_model", "register_model", "builds",
           "from_pretrained", "save_pretrained", "save_config", "PretrainedMixin", "register_weights",
           "shipped_weights", "config_classes", "hub", "outputs", "ModelOutput", "classification_loss",
           "detection", "DETR", "DETRConfig", "DetectionOutput", "grounding",
           "graph", "GraphBatch", "GraphOutput", "GraphLayout", "GPS", "GPSConfig", "GPSLayer", "GraphTransformer",
           "GraphTransformerLayer", "GTConfig", "Graphormer", "GraphormerConfig",
           "vision", "ViT", "ViTConfig", "Swin", "SwinConfig", "VisionOutput",
           "matching", "LightGlue", "LightGlueConfig", "MatchOutput", "PackedMatches", "DiskKeypoints",
           "LoFTR", "LoFTRConfig", "GMFlow", "GMFlowConfig",
           "temporal", "text", "TextConfig", "TextEncoder", "TextOutput", "SentenceEncoder", "CausalLM", "KVCache"]
