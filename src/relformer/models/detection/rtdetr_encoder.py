"""RT-DETR's efficient hybrid encoder (Zhao et al. 2024, "DETRs Beat YOLOs on Real-time Object
Detection", sec. 4.2, Fig. 3 and eq. 1):

    Q = K = V = Flatten(S5),  F5 = Reshape(AIFI(Q, K, V)),  O = CCFM({S3, S4, F5})

* :func:`input_projections` -- a bias-free 1x1 conv + BatchNorm per backbone level (HF ``RTDetrModel.
  encoder_input_proj``), ``S_i (B, C_i, h_i, w_i) -> (B, dim, h_i, w_i)``.
* **AIFI** (attention-based intra-scale feature interaction, sec. 4.2): one Transformer encoder
  layer on the top-level map only, its tokens with 2-D sin-cos positions (:func:`sincos_positions_2d`)
  added to queries and keys; attention through :func:`relformer.attend`, post-norm by default.
* **CCFM** (CNN-based cross-scale feature fusion, sec. 4.2, Fig. 4): a top-down FPN (lateral 1x1
  conv, nearest 2x upsampling, concat, fusion block) then a bottom-up PAN (3x3 stride-2 conv,
  concat, fusion block); the fusion block is a CSP layer of RepVGG units (:class:`CSPRepLayer`).

:class:`RTDetrHybridEncoder` has the layout and parameter names of HF ``RTDetrHybridEncoder``:
``[S_i (B, dim, h_i, w_i)] -> [O_i (B, dim, h_i, w_i)]`` for every level.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...nn import MLP
from .backbone import (ConvNorm, activate, conv_norm_act, folded_conv, in_format, inference_cached, is_channels_last,
                       prepacked_conv_act)
from .rtdetr_decoder import PositionalSelfAttention

__all__ = ["ConvBN", "input_projections", "sincos_positions_2d", "AIFILayer", "AIFI", "RepVggBlock",
           "CSPRepLayer", "RTDetrHybridEncoder"]


class ConvBN(nn.Sequential):
    """``Sequential(Conv2d(cin, cout, k, stride, k // 2, bias=False), BatchNorm2d(cout, eps))`` (HF's projection
    layout, keys ``0.weight``, ``1.*``), the norm folded into the conv in eval (:func:`~.backbone.conv_norm_act`)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1, eps: float = 1e-5) -> None:
        super().__init__(nn.Conv2d(cin, cout, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(cout, eps))

    def forward(self, x: Tensor) -> Tensor:
        return conv_norm_act(x, self[0], self[1])


def input_projections(in_channels: Sequence[int], dim: int, eps: float = 1e-5) -> nn.ModuleList:
    """Per level a :class:`ConvBN` ``C_i -> dim``, 1x1 (HF's ``encoder_input_proj``; keys ``{i}.0.weight``,
    ``{i}.1.*``)."""
    return nn.ModuleList(ConvBN(c, dim, 1, eps=eps) for c in in_channels)


def sincos_positions_2d(height: int, width: int, dim: int, temperature: float = 10000.0, device=None,
                        dtype: torch.dtype = torch.float32) -> Tensor:
    """RT-DETR's 2-D sin-cos positions of a ``height x width`` grid, row-major: ``(height * width,
    dim)`` laid out ``[sin(y w_k) | cos(y w_k) | sin(x w_k) | cos(x w_k)]``, ``w_k = temperature **
    (-k / (dim / 4))``, ``k < dim / 4``; computed in float64 (as HF), returned in ``dtype``."""
    if dim % 4:
        raise ValueError(f"dim must be divisible by 4 for 2-D sin-cos positions, got {dim}")
    wide = torch.float64 if device is None or torch.device(device).type != "mps" else torch.float32
    quarter = dim // 4
    omega = 1.0 / temperature ** (torch.arange(quarter, dtype=wide, device=device) / quarter)  # (dim/4,)
    y, x = torch.meshgrid(torch.arange(height, dtype=wide, device=device),
                          torch.arange(width, dtype=wide, device=device), indexing="ij")
    ang_y, ang_x = y.flatten().outer(omega), x.flatten().outer(omega)  # (hw, dim/4) each
    return torch.cat([ang_y.sin(), ang_y.cos(), ang_x.sin(), ang_x.cos()], 1).to(dtype)


class AIFILayer(nn.Module):
    """One Transformer encoder layer (HF ``RTDetrEncoderLayer``): attention and FFN sub-layers with
    residuals, LayerNorm after each (post-norm, RT-DETR's) or before (``pre_norm``); the attention's queries
    and keys see ``x + pos``, its values ``x`` (:class:`~.rtdetr_decoder.PositionalSelfAttention`, through
    :func:`relformer.attend`)."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, act: type[nn.Module] = nn.GELU, dropout: float = 0.0,
                 pre_norm: bool = False, eps: float = 1e-5, backend: str = "auto") -> None:
        super().__init__()
        self.pre_norm, self.dropout = pre_norm, dropout
        self.self_attn = PositionalSelfAttention(dim, num_heads, dropout, backend)
        self.self_attn_layer_norm = nn.LayerNorm(dim, eps=eps)
        self.mlp = MLP(dim, ffn_dim, act=act, dropout=dropout)
        self.final_layer_norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, pos: Tensor | None = None) -> Tensor:
        norm1, norm2 = self.self_attn_layer_norm, self.final_layer_norm
        h = self.self_attn(norm1(x) if self.pre_norm else x, pos)
        x = x + F.dropout(h, self.dropout, self.training)
        x = x if self.pre_norm else norm1(x)
        x = x + self.mlp(norm2(x) if self.pre_norm else x)
        return x if self.pre_norm else norm2(x)


class AIFI(nn.Module):
    """AIFI on one map (HF ``RTDetrAIFILayer``): flatten, ``layers`` with 2-D sin-cos positions,
    reshape. ``(B, C, h, w) -> (B, C, h, w)``, in the input's memory format (contiguous or channels-last)."""

    def __init__(self, dim: int, num_layers: int, temperature: float = 10000.0, **layer) -> None:
        super().__init__()
        self.dim, self.temperature = dim, temperature
        self.layers = nn.ModuleList(AIFILayer(dim, **layer) for _ in range(num_layers))

    def forward(self, feature_map: Tensor) -> Tensor:
        B, C, h, w = feature_map.shape
        x = feature_map.flatten(2).transpose(1, 2)  # (B, hw, C)
        pos = sincos_positions_2d(h, w, self.dim, self.temperature, x.device, x.dtype)[None]  # (1, hw, C)
        for layer in self.layers:
            x = layer(x, pos)
        if is_channels_last(feature_map):
            return x.view(B, h, w, C).permute(0, 3, 1, 2)  # the tokens as a channels-last map: a view, like the input
        return x.transpose(1, 2).reshape(B, C, h, w).contiguous()  # (the reshape alone is a channels-last view)


class RepVggBlock(nn.Module):
    """RepVGG unit (Ding et al. 2021, "RepVGG: Making VGG-style ConvNets Great Again"):
    ``act(BN(conv3x3(x)) + BN(conv1x1(x)))``, ``(B, C, h, w) -> (B, C, h, w)``. In inference (both norms
    fixed, no gradient recorded) the branches are re-parameterised into one 3x3 conv (sec. 3.3): each BN folded
    into its conv, the 1x1 kernel zero-padded to the centre of the 3x3 one, kernels and biases summed (exact up
    to rounding)."""

    def __init__(self, channels: int, act: type[nn.Module] = nn.SiLU, eps: float = 1e-5) -> None:
        super().__init__()
        self.conv1 = ConvNorm(channels, channels, 3, act=False, eps=eps)
        self.conv2 = ConvNorm(channels, channels, 1, act=False, eps=eps)
        self.activation = act()

    def fused(self) -> tuple[Tensor, Tensor] | None:
        """``(weight (C, C, 3, 3), bias (C,))`` of the single equivalent 3x3 conv, or None while a norm trains."""
        a = folded_conv(self.conv1.conv, self.conv1.norm)
        b = folded_conv(self.conv2.conv, self.conv2.norm)
        if a is None or b is None:
            return None
        return a[0] + F.pad(b[0], (1, 1, 1, 1)), a[1] + b[1]

    def forward(self, x: Tensor) -> Tensor:
        # inference only (gradients keep both branches): oneDNN's fused kernel on the fused weight packed once,
        # else the fused weight kept per state of the weights in the input's memory format (see conv_norm_act)
        if not torch.is_grad_enabled():
            cl = is_channels_last(x)
            out = prepacked_conv_act(x, self.fused, self.conv1.conv, self.activation, self, self) if cl else None
            if out is not None:
                return out
            fused = inference_cached(self, "_fused_cl" if cl else "_fused", lambda: in_format(self.fused(), cl))
            if fused is not None:
                return activate(F.conv2d(x, fused[0], fused[1], padding=1), self.activation)
        return self.activation(self.conv1(x) + self.conv2(x))


class CSPRepLayer(nn.Module):
    """CCFM's fusion block (sec. 4.2, Fig. 5): a cross-stage-partial layer (Wang et al. 2020,
    CSPNet) of ``num_blocks`` RepVGG units: ``conv3(RepVGG^n(conv1(x)) + conv2(x))``, 1x1 convs with
    ``act``; ``conv3`` only when ``hidden = out * expansion != out``. ``(B, cin, h, w) -> (B, out, h, w)``."""

    def __init__(self, cin: int, out: int, num_blocks: int = 3, expansion: float = 1.0,
                 act: type[nn.Module] = nn.SiLU, eps: float = 1e-5) -> None:
        super().__init__()
        hidden = int(out * expansion)
        self.conv1 = ConvNorm(cin, hidden, 1, act=act, eps=eps)
        self.conv2 = ConvNorm(cin, hidden, 1, act=act, eps=eps)
        self.bottlenecks = nn.Sequential(*(RepVggBlock(hidden, act, eps) for _ in range(num_blocks)))
        self.conv3 = ConvNorm(hidden, out, 1, act=act, eps=eps) if hidden != out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        return self.conv3(self.bottlenecks(self.conv1(x)) + self.conv2(x))


class RTDetrHybridEncoder(nn.Module):
    """AIFI on the maps ``encode_proj_layers`` (RT-DETR: the top one, S5) + CCFM (see the module
    docstring); HF ``RTDetrConfig`` fields in brackets.

    Args:
        dim: width of every level [``encoder_hidden_dim``].
        num_levels: input maps [``len(encoder_in_channels)``].
        encode_proj_layers: levels that get AIFI [``encode_proj_layers``].
        num_layers: Transformer layers per AIFI [``encoder_layers``]; 0: CCFM only.
        num_heads / ffn_dim: of the AIFI layers [``encoder_attention_heads`` / ``encoder_ffn_dim``].
        ffn_act: FFN activation class [``encoder_activation_function``, GELU].
        act: CCFM activation class [``activation_function``, SiLU].
        dropout: [``dropout``]; pre_norm: [``normalize_before``]; expansion: [``hidden_expansion``].
        layer_norm_eps / batch_norm_eps / temperature: [``layer_norm_eps`` / ``batch_norm_eps`` /
        ``positional_encoding_temperature``]; num_blocks: RepVGG units per CSP layer (3).
        backend: passed to :func:`relformer.attend`.

    ``forward([S_i (B, dim, h_i, w_i)], i < num_levels, finest first, h_i = 2 h_{i+1}) -> [O_i]``, same shapes.
    """

    def __init__(self, dim: int = 256, num_levels: int = 3, encode_proj_layers: Sequence[int] = (2,),
                 num_layers: int = 1, num_heads: int = 8, ffn_dim: int = 1024, ffn_act: type[nn.Module] = nn.GELU,
                 act: type[nn.Module] = nn.SiLU, dropout: float = 0.0, pre_norm: bool = False, expansion: float = 1.0,
                 layer_norm_eps: float = 1e-5, batch_norm_eps: float = 1e-5, temperature: float = 10000.0,
                 num_blocks: int = 3, backend: str = "auto") -> None:
        super().__init__()
        self.encode_proj_layers = tuple(encode_proj_layers)
        if num_levels < 1 or not all(0 <= i < num_levels for i in self.encode_proj_layers):
            raise ValueError(f"encode_proj_layers must index the {num_levels} levels, got {self.encode_proj_layers}")
        self.num_levels, self.num_layers = num_levels, num_layers
        self.aifi = nn.ModuleList(
            AIFI(dim, num_layers, temperature, num_heads=num_heads, ffn_dim=ffn_dim, act=ffn_act, dropout=dropout,
                 pre_norm=pre_norm, eps=layer_norm_eps, backend=backend) for _ in self.encode_proj_layers)
        conv = dict(act=act, eps=batch_norm_eps)
        fuse = dict(num_blocks=num_blocks, expansion=expansion, act=act, eps=batch_norm_eps)
        stages = range(num_levels - 1)
        self.lateral_convs = nn.ModuleList(ConvNorm(dim, dim, 1, **conv) for _ in stages)
        self.fpn_blocks = nn.ModuleList(CSPRepLayer(2 * dim, dim, **fuse) for _ in stages)
        self.downsample_convs = nn.ModuleList(ConvNorm(dim, dim, 3, 2, **conv) for _ in stages)
        self.pan_blocks = nn.ModuleList(CSPRepLayer(2 * dim, dim, **fuse) for _ in stages)

    def _check(self, maps: Sequence[Tensor]) -> None:
        if len(maps) != self.num_levels:
            raise ValueError(f"feature_maps must hold {self.num_levels} maps, got {len(maps)}")
        for i in range(self.num_levels - 1):
            (h, w), (h2, w2) = maps[i].shape[-2:], maps[i + 1].shape[-2:]
            if (h, w) != (2 * h2, 2 * w2):
                raise ValueError(f"feature_maps[{i}] is {h}x{w}, twice feature_maps[{i + 1}] ({h2}x{w2}) expected "
                                 "(CCFM upsamples by 2): make the image size a multiple of the largest stride")

    def forward(self, feature_maps: Sequence[Tensor]) -> list[Tensor]:
        self._check(feature_maps)
        maps = list(feature_maps)
        if self.num_layers > 0:  # AIFI, eq. 1
            for aifi, level in zip(self.aifi, self.encode_proj_layers):
                maps[level] = aifi(maps[level])
        # CCFM top-down (FPN): coarsest first
        top = maps[-1]
        fpn = []
        for idx, (lateral, block) in enumerate(zip(self.lateral_convs, self.fpn_blocks)):
            top = lateral(top)
            fpn.append(top)
            up = F.interpolate(top, scale_factor=2.0, mode="nearest")
            top = block(torch.cat([up, maps[self.num_levels - idx - 2]], 1))
        fpn.append(top)
        fpn.reverse()  # finest first
        # CCFM bottom-up (PAN)
        out = [fpn[0]]
        for idx, (down, block) in enumerate(zip(self.downsample_convs, self.pan_blocks)):
            out.append(block(torch.cat([down(out[-1]), fpn[idx + 1]], 1)))
        return out
