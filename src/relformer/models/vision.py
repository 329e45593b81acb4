"""Vision Transformers on :func:`relformer.attend`: ViT and Swin.

* :class:`ViT` (Dosovitskiy et al. 2021, "An Image is Worth 16x16 Words"): patch embedding,
  class token or mean pooling, learned absolute or 2-D rotary positions (Heo et al. 2024), and
  an optional per-layer 2-D relative position bias (:class:`~relformer.relations.GridRelativeBias`).
* :class:`Swin` (Liu et al. 2021, "Swin Transformer"): patch merging, window attention whose
  relation is the 2-D relative position bias, shifted windows via the
  :class:`~relformer.relations.ShiftedWindowRegions` mask. Windows are packed along the batch
  (``window_partition``), so no ``L x L`` mask is built; feature maps that are not a multiple
  of the window are zero-padded after the norm, as in Swin's reference code.

Both are called as ``model(pixel_values (B, C, H, W))`` and return :class:`VisionOutput`
(``last_hidden_state``, ``pooler_output``, ``logits``; ``hidden_states`` on request), the
field names of HF ``transformers``. Variants are registered data (:func:`list_models`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..attention import Relation
from ..nn import MLP, Attention, DropPath, Encoder, Linear, RotaryEmbedding2D, grid_positions
from ..relations import GridRelativeBias, ShiftedWindowRegions
from .registry import builds, register_model

__all__ = ["ViTConfig", "SwinConfig", "ViT", "Swin", "VisionOutput", "window_partition", "window_reverse"]


@dataclass
class VisionOutput:
    """``last_hidden_state (B, L, C)`` after the final norm; ``pooler_output (B, C')``; ``logits
    (B, num_classes)`` or None without a head; ``hidden_states``: the embeddings and every
    layer's (ViT) / stage's (Swin) output, when asked for."""

    last_hidden_state: Tensor
    pooler_output: Tensor | None = None
    logits: Tensor | None = None
    hidden_states: tuple[Tensor, ...] | None = None


def _pair(x) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else tuple(x)


def _check_positive(config, *names: str) -> None:
    for name in names:
        value = getattr(config, name)
        if not all(isinstance(v, int) and v > 0 for v in _pair(value)):
            raise ValueError(f"{type(config).__name__}.{name} must be a positive int (or pair), got {value!r}")


def _check_pixels(pixel_values: Tensor, in_chans: int) -> None:
    if not isinstance(pixel_values, Tensor) or pixel_values.dim() != 4:
        raise ValueError(f"pixel_values must be a (B, C, H, W) tensor, got "
                         f"{tuple(pixel_values.shape) if isinstance(pixel_values, Tensor) else type(pixel_values).__name__}")
    if pixel_values.shape[1] != in_chans:
        raise ValueError(f"pixel_values has {pixel_values.shape[1]} channels, the model expects {in_chans}")
    if not pixel_values.is_floating_point():
        raise ValueError(f"pixel_values must be floating point (normalised), got {pixel_values.dtype}")
    if pixel_values.shape[0] == 0:
        raise ValueError("pixel_values is an empty batch")


def _init_weights(module: nn.Module) -> None:
    """timm's ViT init: truncated-normal(0.02) linear weights, zero biases."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class _Classifier(nn.Module):
    """Shared tail: optional ``head`` on the pooled features; hidden-state bookkeeping."""

    head: nn.Module | None

    def _head(self, features: Tensor) -> Tensor | None:
        return self.head(features) if self.head is not None else None

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


# ---------------------------------------------------------------------------------------------
# ViT
# ---------------------------------------------------------------------------------------------
class ConvStem(nn.Sequential):
    """The convolutional stem of Xiao et al. 2021 ("Early Convolutions Help Transformers See
    Better", ViT_C) in place of the patchify convolution: ``log2(patch_size)`` 3x3 stride-2
    convolutions with BatchNorm + ReLU, widths doubling up to ``dim``, then a 1x1 convolution.
    ``(B, C, H, W) -> (B, dim, H / patch, W / patch)``, the same grid as the patch embedding."""

    def __init__(self, in_chans: int, dim: int, patch_size) -> None:
        self.check(patch_size, dim)
        n = _pair(patch_size)[0].bit_length() - 1
        widths = [in_chans] + [dim >> (n - 1 - i) for i in range(n)]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(widths, widths[1:]):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False), nn.BatchNorm2d(c_out),
                       nn.ReLU(inplace=True)]
        super().__init__(*layers, nn.Conv2d(dim, dim, 1))

    @staticmethod
    def check(patch_size, dim: int) -> None:
        p = _pair(patch_size)
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
        _check_positive(self, "image_size", "patch_size", "in_chans", "dim", "depth", "num_heads")
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
        if any(i % p for i, p in zip(_pair(self.image_size), _pair(self.patch_size))):
            raise ValueError(f"ViTConfig.image_size {self.image_size} must be a multiple of patch_size {self.patch_size}")

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(i // p for i, p in zip(_pair(self.image_size), _pair(self.patch_size)))


@builds(ViTConfig)
class ViT(_Classifier):
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
        self.apply(_init_weights)
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
        _check_pixels(pixel_values, self.config.in_chans)
        x = self.patch_embed(pixel_values)  # (B, dim, Gh, Gw)
        grid = tuple(x.shape[-2:])
        x = x.flatten(2).transpose(1, 2)  # (B, Gh*Gw, dim)
        if self.cls_token is not None:
            x = torch.cat((self.cls_token.expand(x.shape[0], -1, -1), x), dim=1)
        if self.pos_embed is not None:
            x = x + self._position_embeddings(grid)
        return x, grid

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False) -> VisionOutput:
        x, grid = self.embed(pixel_values)
        if self.rel_bias is not None and grid != self.config.grid_size:
            raise ValueError(f"this ViT has a relative position bias for a {self.config.grid_size} patch grid; "
                             f"the image gives {grid}: build it with image_size={tuple(pixel_values.shape[-2:])}")
        positions = self._positions(grid, x.device) if self.config.pos_embed == "rope" else None
        hidden = [x]
        for i, layer in enumerate(self.encoder.layers):
            x = layer(x, self.rel_bias[i] if self.rel_bias is not None else None, positions=positions)
            hidden.append(x)
        x = self.encoder.norm(x)
        features = x[:, 0] if self.config.pool == "cls" else x.mean(1)
        pooled = torch.tanh(self.pooler(x[:, 0])) if self.pooler is not None else features
        return VisionOutput(x, pooled, self._head(features), tuple(hidden) if output_hidden_states else None)

    def attention_maps(self, pixel_values: Tensor) -> Tensor:
        """Where the last layer looks, ``(B, Gh, Gw)``: the class token's attention to the patches
        (``pool="cls"``) or the attention each patch receives on average (``"mean"``), mean over heads."""
        probs = self._capture(self.encoder.layers[-1].attn, pixel_values).mean(1)  # (B, L, L)
        P = self.num_prefix_tokens
        maps = probs[:, 0, P:] if P else probs.mean(1)
        Gh = pixel_values.shape[-2] // _pair(self.config.patch_size)[0]
        return maps.reshape(maps.shape[0], Gh, -1)


# ---------------------------------------------------------------------------------------------
# Swin
# ---------------------------------------------------------------------------------------------
def window_partition(x: Tensor, window: int) -> Tensor:
    """``(B, H, W, C) -> (B * nW, window * window, C)``, windows in row-major order (Swin's layout)."""
    B, H, W, C = x.shape
    x = x.view(B, H // window, window, W // window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, window * window, C)


def window_reverse(windows: Tensor, window: int, H: int, W: int) -> Tensor:
    """Inverse of :func:`window_partition`: ``(B * nW, window * window, C) -> (B, H, W, C)``."""
    C = windows.shape[-1]
    x = windows.view(-1, H // window, W // window, window, window, C).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, H, W, C)


class _Permute(torch.autograd.Function):
    """``x.index_select(1, order)`` for a permutation ``order`` of ``x``'s tokens; the gradient is
    the inverse gather ``grad.index_select(1, inverse)`` (index_select's own backward is zeros +
    ``index_add``: two activation-sized passes, one of them a scatter)."""

    @staticmethod
    def forward(ctx, x: Tensor, order: Tensor, inverse: Tensor) -> Tensor:
        ctx.save_for_backward(inverse)
        return x.index_select(1, order)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(1, inverse), None, None


def _gather(perm: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(perm, its inverse)`` for :class:`_Permute`, or None when ``perm`` is the identity."""
    if torch.equal(perm, torch.arange(len(perm), device=perm.device)):
        return None
    return perm, torch.argsort(perm)


class SwinBlock(nn.Module):
    """Swin Transformer block (Liu et al. 2021, Eq. 3): ``x + W-MSA(LN(x))`` then ``x + MLP(LN(x))``.

    The attention is :class:`~relformer.nn.Attention` on windows packed along the batch, with
    relation ``GridRelativeBias`` (+ ``ShiftedWindowRegions`` when shifted). A feature map not
    a multiple of ``window_size`` is zero-padded after ``norm1``; a map no larger than the window
    is one unshifted window. ``forward(x (B, H*W, C), grid=(H, W)) -> (B, H*W, C)``.
    """

    def __init__(self, dim: int, num_heads: int, window_size: int, shift: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, norm_eps: float = 1e-5, dropout: float = 0.0, attn_dropout: float = 0.0,
                 drop_path: float = 0.0, backend: str = "auto") -> None:
        super().__init__()
        if not 0 <= shift < window_size:
            raise ValueError(f"shift must be in [0, window_size={window_size}), got {shift}")
        self.window_size, self.shift = window_size, shift
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, backend=backend, attn_dropout=attn_dropout,
                              proj_dropout=dropout)
        self.rel_bias = GridRelativeBias(num_heads, window_size)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MLP(dim, int(dim * mlp_ratio), dropout=dropout)
        self.drop_path = DropPath(drop_path)
        self._layouts: dict = {}  # (Hp, Wp, shift, device) -> (relation, order, inverse)

    def layout(self, padded: tuple[int, int], shift: int, device) -> tuple[Relation, Tensor, Tensor]:
        """For a padded ``(Hp, Wp)`` map: the attention's relation (the window bias, plus the
        shifted-window region mask when ``shift > 0``) and the token permutation ``order`` that
        does Swin's cyclic shift and ``window_partition`` in one gather (``inverse`` undoes both).
        Built once per map size."""
        key = (*padded, shift, str(device))
        if key not in self._layouts:
            with torch.inference_mode(False):  # cached: must stay usable when later calls need grad
                self._layouts[key] = self._build_layout(padded, shift, device)
        return self._layouts[key]

    def _build_layout(self, padded: tuple[int, int], shift: int, device) -> tuple[Relation, Tensor, Tensor]:
        grid = torch.arange(padded[0] * padded[1], device=device).view(1, *padded, 1)
        rolled = torch.roll(grid, shifts=(-shift, -shift), dims=(1, 2)) if shift else grid
        order = window_partition(rolled, self.window_size).flatten()  # window order -> grid index
        relation = self.rel_bias
        if shift:
            relation = relation + ShiftedWindowRegions(self.window_size, padded, shift).to(device)
        return relation, order, torch.argsort(order)

    def effective_shift(self, grid: tuple[int, int]) -> int:
        """The shift on a ``grid`` map: none when the map is no larger than one window."""
        return self.shift if min(grid) > self.window_size else 0

    def _attention(self, x: Tensor, grid: tuple[int, int], probabilities: bool = False) -> Tensor:
        """``x (B, H*W, C)`` -> the attention branch ``(B, H*W, C)``, or with ``probabilities`` the
        attention each token receives, averaged over heads and queries of its window ``(B, Hp*Wp)``."""
        B, L, C = x.shape
        H, W = grid
        ws = self.window_size
        shift = self.effective_shift(grid)
        x = self.norm1(x)
        pad_b, pad_r = (-H) % ws, (-W) % ws
        if pad_b or pad_r:
            x = F.pad(x.view(B, H, W, C), (0, 0, 0, pad_r, 0, pad_b)).view(B, -1, C)
        Hp, Wp = H + pad_b, W + pad_r
        relation, order, inverse = self.layout((Hp, Wp), shift, x.device)
        windows = _Permute.apply(x, order, inverse).view(-1, ws * ws, C)  # (B * nW, ws*ws, C)
        if probabilities:
            probs = self.attn.probabilities(windows, relation).mean((1, 2))  # (B * nW, ws*ws)
            return probs.reshape(B, Hp * Wp).index_select(1, inverse)
        x = _Permute.apply(self.attn(windows, relation).view(B, Hp * Wp, C), inverse, order)
        if pad_b or pad_r:
            x = x.view(B, Hp, Wp, C)[:, :H, :W].reshape(B, L, C)
        return x

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        x = self.drop_path.add_to(x, self._attention(x, grid))
        return self.drop_path.add_to(x, self.mlp(self.norm2(x)))

    def forward_windows(self, x: Tensor, relation: Relation) -> Tensor:
        """The block on tokens already in its window order ``(B, L, C)`` (a map that needs no
        padding; :meth:`layout`'s ``order``): the same result, permuted, with no gathers."""
        B, L, C = x.shape
        windows = self.norm1(x).view(-1, self.window_size ** 2, C)  # (B * nW, ws*ws, C)
        x = self.drop_path.add_to(x, self.attn(windows, relation).view(B, L, C))
        return self.drop_path.add_to(x, self.mlp(self.norm2(x)))


class PatchMerging(nn.Module):
    """Swin's downsampling: concatenate each 2x2 neighbourhood (``x0 = (0,0), x1 = (1,0), x2 = (0,1),
    x3 = (1,1)``), LayerNorm, ``Linear(4C -> 2C)``. Odd maps are zero-padded.
    ``(B, H*W, C), (H, W) -> (B, ceil(H/2)*ceil(W/2), 2C)``."""

    def __init__(self, dim: int, norm_eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(4 * dim, eps=norm_eps)
        self.reduction = Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x: Tensor, grid: tuple[int, int]) -> Tensor:
        B, _, C = x.shape
        H, W = grid
        x = x.view(B, H, W, C)
        if H % 2 or W % 2:
            x = F.pad(x, (0, 0, 0, W % 2, 0, H % 2))
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.flatten(1, 2)))


class SwinStage(nn.Module):
    """``depth`` Swin blocks alternating plain and shifted windows, then optional patch merging."""

    def __init__(self, dim: int, depth: int, num_heads: int, window_size: int, downsample: bool,
                 drop_path: list[float], **block_kw) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(
            SwinBlock(dim, num_heads, window_size, 0 if i % 2 == 0 else window_size // 2, drop_path=drop_path[i],
                      **block_kw) for i in range(depth))
        self.downsample = PatchMerging(dim, block_kw.get("norm_eps", 1e-5)) if downsample else None
        self._moves: dict = {}  # (H, W, device) -> per block (relation, gather), then the gather back

    def _plan(self, grid: tuple[int, int], device) -> tuple[list, tuple | None]:
        """For a map that needs no padding: per block its relation and the gather ``(perm, inverse)``
        (None for the identity) taking the stream from the previous block's window order (the grid
        order for the first) to its own, and the gather back to grid order after the last block."""
        key = (*grid, str(device))
        if key not in self._moves:
            with torch.inference_mode(False):
                moves, back = [], None  # back: the inverse of the current order (None: grid order)
                for block in self.blocks:
                    relation, order, inverse = block.layout(grid, block.effective_shift(grid), device)
                    perm = order if back is None else back[order]
                    moves.append((relation, _gather(perm)))
                    back = inverse
                self._moves[key] = moves, _gather(back)
        return self._moves[key]

    def forward(self, x: Tensor, grid: tuple[int, int]) -> tuple[Tensor, tuple[int, int]]:
        ws = self.blocks[0].window_size if self.blocks else 1
        if grid[0] % ws or grid[1] % ws:  # padded windows: each block pads and gathers on its own
            for block in self.blocks:
                x = block(x, grid)
        else:  # the residual stream stays in window order: one gather between blocks, not two per block
            moves, back = self._plan(grid, x.device)
            for block, (relation, move) in zip(self.blocks, moves):
                x = block.forward_windows(_Permute.apply(x, *move) if move else x, relation)
            x = _Permute.apply(x, *back) if back else x
        if self.downsample is not None:
            x, grid = self.downsample(x, grid), ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        return x, grid


@dataclass(frozen=True)
class SwinConfig:
    """Swin hyper-parameters (defaults: Swin-T). ``depths`` / ``num_heads`` per stage; width doubles
    each stage from ``embed_dim``. A stage whose map at ``image_size`` is no larger than
    ``window_size`` uses one window of the map's size (as Swin's reference code)."""

    image_size: int | tuple[int, int] = 224
    patch_size: int | tuple[int, int] = 4
    in_chans: int = 3
    num_classes: int = 1000
    embed_dim: int = 96
    depths: tuple[int, ...] = (2, 2, 6, 2)
    num_heads: tuple[int, ...] = (3, 6, 12, 24)
    window_size: int = 7
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-5
    patch_norm_eps: float = 1e-5
    abs_pos_embed: bool = False
    dropout: float = 0.0
    attn_dropout: float = 0.0
    drop_path: float = 0.1
    backend: str = "auto"

    def __post_init__(self) -> None:
        _check_positive(self, "image_size", "patch_size", "in_chans", "embed_dim", "window_size")
        depths, heads = tuple(self.depths), tuple(self.num_heads)
        if len(depths) != len(heads) or not depths:
            raise ValueError(f"SwinConfig.depths {self.depths} and num_heads {self.num_heads} need the same length > 0")
        for i, h in enumerate(heads):
            if (self.embed_dim * 2 ** i) % h:
                raise ValueError(f"SwinConfig: stage {i} width {self.embed_dim * 2 ** i} is not divisible by "
                                 f"num_heads[{i}] = {h}")
        object.__setattr__(self, "depths", depths)
        object.__setattr__(self, "num_heads", heads)

    @property
    def stage_windows(self) -> tuple[int, ...]:
        """The window of each stage at ``image_size``: ``window_size``, or the whole map when it is smaller."""
        grid, windows = self.grid_size, []
        for _ in self.depths:
            windows.append(min(*grid, self.window_size))
            grid = ((grid[0] + 1) // 2, (grid[1] + 1) // 2)
        return tuple(windows)

    @property
    def grid_size(self) -> tuple[int, int]:
        return tuple(-(-i // p) for i, p in zip(_pair(self.image_size), _pair(self.patch_size)))

    @property
    def num_features(self) -> int:
        return self.embed_dim * 2 ** (len(self.depths) - 1)


@builds(SwinConfig)
class Swin(_Classifier):
    """Swin Transformer: ``pixel_values (B, C, H, W) -> VisionOutput``; ``last_hidden_state
    (B, h*w, num_features)``, ``pooler_output`` the token mean. Images not a multiple of the
    patch size are zero-padded (right/bottom), as HF does."""

    def __init__(self, config: SwinConfig) -> None:
        super().__init__()
        c = self.config = config
        self.patch_embed = nn.Conv2d(c.in_chans, c.embed_dim, kernel_size=c.patch_size, stride=c.patch_size)
        self.patch_norm = nn.LayerNorm(c.embed_dim, eps=c.patch_norm_eps)
        Gh, Gw = c.grid_size
        self.pos_embed = nn.Parameter(torch.zeros(1, Gh * Gw, c.embed_dim)) if c.abs_pos_embed else None
        self.pos_drop = nn.Dropout(c.dropout)
        rates = torch.linspace(0, c.drop_path, sum(c.depths)).tolist() if sum(c.depths) > 1 else [c.drop_path]
        block_kw = dict(mlp_ratio=c.mlp_ratio, qkv_bias=c.qkv_bias, norm_eps=c.norm_eps, dropout=c.dropout,
                        attn_dropout=c.attn_dropout, backend=c.backend)
        stages, start = [], 0
        for i, (depth, heads) in enumerate(zip(c.depths, c.num_heads)):
            stages.append(SwinStage(c.embed_dim * 2 ** i, depth, heads, c.stage_windows[i],
                                    downsample=i < len(c.depths) - 1, drop_path=rates[start:start + depth], **block_kw))
            start += depth
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(c.num_features, eps=c.norm_eps)
        self.head = Linear(c.num_features, c.num_classes) if c.num_classes > 0 else None
        self.apply(_init_weights)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)

    def embed(self, pixel_values: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """``(B, C, H, W) -> tokens (B, Gh*Gw, embed_dim)`` and the patch grid."""
        _check_pixels(pixel_values, self.config.in_chans)
        ph, pw = _pair(self.config.patch_size)
        H, W = pixel_values.shape[-2:]
        if H % ph or W % pw:
            pixel_values = F.pad(pixel_values, (0, (-W) % pw, 0, (-H) % ph))
        x = self.patch_embed(pixel_values)  # (B, C, Gh, Gw)
        grid = tuple(x.shape[-2:])
        x = self.patch_norm(x.flatten(2).transpose(1, 2))
        if self.pos_embed is not None:
            if grid != self.config.grid_size:
                raise ValueError(f"abs_pos_embed is sized for a {self.config.grid_size} patch grid, got {grid}")
            x = x + self.pos_embed
        return self.pos_drop(x), grid

    def forward(self, pixel_values: Tensor, output_hidden_states: bool = False) -> VisionOutput:
        x, grid = self.embed(pixel_values)
        hidden = [x]
        for stage in self.stages:
            x, grid = stage(x, grid)
            hidden.append(x)
        x = self.norm(x)
        pooled = x.mean(1)
        return VisionOutput(x, pooled, self._head(pooled), tuple(hidden) if output_hidden_states else None)

    @torch.no_grad()
    def attention_maps(self, pixel_values: Tensor) -> Tensor:
        """Attention each token of the last stage receives in the last block, averaged over heads
        and the queries of its window: ``(B, h, w)`` on the last stage's grid."""
        x, grid = self.embed(pixel_values)
        for stage in self.stages[:-1]:
            x, grid = stage(x, grid)
        last = self.stages[-1]
        for block in last.blocks[:-1]:
            x = block(x, grid)
        block = last.blocks[-1]
        maps = block._attention(x, grid, probabilities=True)  # (B, Hp*Wp), grid order
        Wp = -(-grid[1] // block.window_size) * block.window_size
        maps = maps.view(maps.shape[0], -1, Wp)
        return maps[:, :grid[0], :grid[1]]


# ---------------------------------------------------------------------------------------------
# Registered variants
# ---------------------------------------------------------------------------------------------
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


@register_model
def swin_tiny() -> SwinConfig:
    """Swin-T (Liu et al. 2021): 28M parameters at 224x224, windows of 7."""
    return SwinConfig()


@register_model
def swin_micro() -> SwinConfig:
    """A Swin for 28x28 grey images: 2x2 patches, windows of 7; stage 1 is 14x14 (4 windows,
    shifted every other block), stage 2 is 7x7 (one window)."""
    return SwinConfig(image_size=28, patch_size=2, in_chans=1, num_classes=10, embed_dim=48, depths=(2, 4),
                      num_heads=(2, 4), window_size=7, mlp_ratio=2.0, drop_path=0.0)
