"""ViT (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words") on :func:`relformer.attend`:
patch embedding (or the convolutional stem of Xiao et al. 2021), class token or mean pooling,
learned absolute or 2-D rotary positions (Heo et al. 2024), and an optional per-layer 2-D relative
position bias (:class:`~relformer.relations.GridRelativeBias`). ``model(pixel_values (B, C, H, W))
-> VisionOutput``."""
from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn import Encoder, Linear, RotaryEmbedding2D, grid_positions
from ...relations import GridRelativeBias
from ..checks import check_count, check_eps, check_positive, check_rate
from ..registry import builds, register_model
from .common import Classifier, VisionOutput, init_weights, pair, prepare_pixels

__all__ = ["ViTConfig", "ViT", "ConvStem"]


class ConvStem(nn.Sequential):
    """The convolutional stem of Xiao et al. 2021 ("Early Convolutions Help Transformers See
    Better", ViT_C) in place of the patchify convolution: ``log2(patch_size)`` 3x3 stride-2
    convolutions with BatchNorm + ReLU, widths doubling up to ``dim``, then a 1x1 convolution.
    ``(B, C, H, W) -> (B, dim, H / patch, W / patch)``, the same grid as the patch embedding."""

    def __init__(self, in_chans: int, dim: int, patch_size) -> None:
        self.check(patch_size, dim)
        n = pair(patch_size)[0].bit_length() - 1
        widths = [in_chans] + [dim >> (n - 1 - i) for i in range(n)]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers, nn.Conv2d(dim, dim, 1))

    @staticmethod
    def check(patch_size, dim: int) -> None:
        p = pair(patch_size)
        if p[0] != p[1] or p[0] < 2 or p[0] & (p[0] - 1):
            raise ValueError(f"stem='conv' needs a square power-of-two patch_size >= 2, got {patch_size!r}")
        if dim % (p[0] // 2):
            raise ValueError(f"stem='conv' halves the width per stride-2 step: dim ({dim}) must be divisible "
                             f"by patch_size / 2 ({p[0] // 2})")


@dataclass(frozen=True)
class ViTConfig:
    """ViT hyper-parameters. ``mlp_hidden`` defaults to ``dim * mlp_ratio``; ``pool``: ``"cls"``
    (class token) or ``"mean"``; ``pos_embed``: ``"learned"`` (interpolated to other image sizes),
    ``"rope"`` (2-D axial RoPE; the class token sits at (-1, -1)) or ``"none"``; ``rel_pos_bias``:
    a learned 2-D relative bias per layer over the whole patch grid; ``pooler``: HF's
    ``tanh(Linear(cls))`` pooler; ``stem``: ``"patch"`` (one ``patch_size``-stride convolution,
    the original ViT) or ``"conv"`` (:class:`ConvStem`). ``num_classes=0`` builds no head."""

    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 16
    in_chans: int = 3
    num_classes: int = 1000
    dim: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    mlp_hidden: int | None = None
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    pool: Literal["cls", "mean"] = "cls"
    pos_embed: Literal["learned", "rope", "none"] = "learned"
    rel_pos_bias: bool = False
    pooler: bool = False
    stem: Literal["patch", "conv"] = "patch"
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.0
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, "image_size", "patch_size", "in_chans", "dim", "depth", "num_heads")
        check_count(self, "num_classes")
        check_eps(self, "norm_eps")
        check_rate(self, "dropout", "attn_dropout", "drop_path")
        if self.mlp_hidden is not None:
            check_positive(self, "mlp_hidden")
        if self.stem not in ("patch", "conv"):
            raise ValueError(f"ViTConfig.stem must be 'patch' or 'conv', got {self.stem!r}")
        if self.stem == "conv":
            ConvStem.check(self.patch_size, self.dim)
        if self.dim % self.num_heads:
            raise ValueError(f"ViTConfig.dim ({self.dim}) must be divisible by num_heads ({self.num_heads})")
        if self.pool not in ("cls", "mean"):
            raise ValueError(f"ViTConfig.pool must be 'cls' or 'mean', got {self.pool!r}")
        if self.pos_embed not in ("learned", "rope", "none"):
            raise ValueError(f"ViTConfig.pos_embed must be 'learned', 'rope' or 'none', got {self.pos_embed!r}")
        if self.pos_embed == "rope" and (self.dim // self.num_heads) % 4:
            raise ValueError("ViTConfig.pos_embed='rope' needs a head dim (dim // num_heads) divisible by 4")
        if any(i % p for i, p in zip(pair(self.image_size), pair(self.patch_size))):
            raise ValueError(f"ViTConfig.image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(i // p for i, p in zip(pair(self.image_size), pair(self.patch_size)))


@builds(ViTConfig)
class ViT(Classifier):
    """Vision Transformer: ``pixel_values (B, C, H, W) -> VisionOutput``; tokens ``(B, P + Gh*Gw, dim)``
    with ``P = 1`` class token (``pool="cls"``) or none."""

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        c = self.config = config
        self.num_prefix_tokens = 1 if c.pool == "cls" else 0
        self.patch_embed = (nn.Conv2d(c.in_chans, c.dim, kernel_size=c.patch_size, stride=c.patch_size)
                            if c.stem == "patch" else ConvStem(c.in_chans, c.dim, c.patch_size))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.dim)) if c.pool == "cls" else None
        num_tokens = self.num_prefix_tokens + c.grid_size[0] * c.grid_size[1]
        self.pos_embed = nn.Parameter(torch.zeros(1, num_tokens, c.dim)) if c.pos_embed == "learned" else None
        rope = RotaryEmbedding2D(c.dim // c.num_heads) if c.pos_embed == "rope" else None
        self.encoder = Encoder(c.dim, c.depth, c.num_heads, mlp_ratio=c.mlp_ratio, mlp_hidden=c.mlp_hidden,
                               norm_layer=partial(nn.LayerNorm, eps=c.norm_eps), qkv_bias=c.qkv_bias,
                               backend=c.backend, rope=rope, dropout=c.dropout, attn_dropout=c.attn_dropout,
                               drop_path=c.drop_path, final_norm=True)
        self.rel_bias = nn.ModuleList(
            GridRelativeBias(c.num_heads, c.grid_size, c.grid_size, self.num_prefix_tokens) for _ in range(c.depth)
        ) if c.rel_pos_bias else None
        self.pooler = Linear(c.dim, c.dim) if c.pooler else None
        self.head = Linear(c.dim, c.num_classes) if c.num_classes > 0 else None
        self.apply(init_weights)
        for p in (self.cls_token, self.pos_embed):
            if p is not None:
                nn.init.trunc_normal_(p, std=0.02)

    def _positions(self, grid: tuple[int, int], device) -> Tensor:
        """RoPE ``(row, col)`` per token ``(P + Gh*Gw, 2)``; the class token at (-1, -1)."""
        pos = grid_positions(*grid, device=device)
        return torch.cat((pos.new_full((self.num_prefix_tokens, 2), -1), pos))

    def _position_embeddings(self, grid: tuple[int, int]) -> Tensor:
        """The learned table, bicubically resampled when the patch grid differs from the config's."""
        if grid == self.config.grid_size:
            return self.pos_embed
        P, (Gh, Gw) = self.num_prefix_tokens, self.config.grid_size
        table = self.pos_embed[:, P:].reshape(1, Gh, Gw, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=grid, mode="bicubic", align_corners=False)
        return torch.cat((self.pos_embed[:, :P], table.flatten(2).transpose(1, 2)), dim=1)

    def embed(self, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``(B, C, H, W) -> tokens (B, P + Gh*Gw, dim)`` and the patch grid ``(Gh, Gw)``."""
        pixel_values = prepare_pixels(pixel_values, self.config.in_chans, next(self.patch_embed.parameters()).dtype)
        patch = pair(self.config.patch_size)
        if pixel_values.shape[-2] < patch[0] or pixel_values.shape[-1] < patch[1]:
            raise ValueError(f"pixel_values is {tuple(pixel_values.shape[-2:])} pixels, smaller than one "
                             f"{patch} patch")
        x = self.patch_embed(pixel_values)  # (B, dim, Gh, Gw)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, Gh*Gw, dim)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self._position_embeddings(grid)
        return x, grid

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False,
                labels: Tensor | None = None) -> VisionOutput:
        """``labels (B,)`` class ids (or float targets, see ``classification_loss``) add ``.loss``."""
        x, grid = self.embed(pixel_values)
        if self.rel_bias is not None and grid != self.config.grid_size:
            raise ValueError(f"this ViT has a relative position bias for a {self.config.grid_size} patch grid; "
                             f"the image gives {grid}: build it with image_size={tuple(pixel_values.shape[-2:])}")
        positions = self._positions(grid, x.device) if self.config.pos_embed == "rope" else None
        out = self.encoder(x, self.rel_bias, positions=positions, return_hidden=output_hidden_states)
        x, hidden = out if output_hidden_states else (out, None)
        features = x[:, 0] if self.config.pool == "cls" else x.mean(1)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else features
        return self._output(x, pooled, features, hidden, labels)

    def attention_maps(self, pixel_values: Tensor) -> Tensor:
        """Where the last layer looks, ``(B, Gh, Gw)``: the class token's attention to the patches
        (``pool="cls"``) or the attention each patch receives on average (``"mean"``), mean over heads."""
        probs = self._capture(self.encoder.layers[-1].attn, pixel_values).mean(1)  # (B, L, L)
        P = self.num_prefix_tokens
        maps = probs[:, 0, P:] if P else probs.mean(1)
        Gh = pixel_values.shape[-2] // pair(self.config.patch_size)[0]
        return maps.reshape(maps.shape[0], Gh, -1)


@register_model
def vit_tiny() -> ViTConfig:
    """ViT-Ti/16 (DeiT-Tiny, Touvron et al. 2021): 5.7M parameters at 224x224."""
    return ViTConfig(dim=192, depth=12, num_heads=3)


@register_model
def vit_small() -> ViTConfig:
    """ViT-S/16 (DeiT-Small): 22M parameters at 224x224."""
    return ViTConfig(dim=384, depth=12, num_heads=6)


@register_model
def vit_micro() -> ViTConfig:
    """A ViT for 28x28 grey images (Fashion-MNIST): 4x4 patches (7x7 grid + class token)."""
    return ViTConfig(image_size=28, patch_size=4, in_chans=1, num_classes=10, dim=64, depth=6, num_heads=4,
                     mlp_ratio=2.0)

