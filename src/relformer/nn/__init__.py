"""relformer.nn: norms, MLPs, positional encodings, attention blocks and layer stacks."""
from .blocks import Attention, Block, BlockSpec, CrossBlock, Decoder, DropPath, Encoder, LayerScale
from .convert import NORMS, PreNormTransformer, to_pre_crmsnorm, to_pre_rmsnorm
from .deformable import MultiScaleDeformableAttention
from .gemm import Linear, linear, set_linear_kernel
from .mlp import MLP, SwiGLU
from .norms import CRMSNorm, LayerNorm, RMSNorm, TokenBatchNorm, UnifiedNorm
from .posenc import (LearnedPositions, RotaryEmbedding, RotaryEmbedding2D, grid_positions, laplacian_eigenvectors,
                     random_sign_flip, random_walk_encoding, sine_positions, sinusoidal_encoding)

__all__ = [
    "LayerNorm", "RMSNorm", "CRMSNorm", "TokenBatchNorm", "UnifiedNorm",
    "Linear", "linear", "set_linear_kernel",
    "MLP", "SwiGLU",
    "sinusoidal_encoding", "sine_positions", "LearnedPositions", "RotaryEmbedding", "RotaryEmbedding2D", "grid_positions",
    "laplacian_eigenvectors", "random_sign_flip", "random_walk_encoding",
    "Attention", "Block", "CrossBlock", "Encoder", "Decoder", "LayerScale", "DropPath", "BlockSpec",
    "MultiScaleDeformableAttention",
    "PreNormTransformer", "NORMS", "to_pre_rmsnorm", "to_pre_crmsnorm",
]
