"""RT-DETR's ResNet backbone (Zhao et al. 2024, "DETRs Beat YOLOs on Real-time Object Detection",
sec. 4.1 and 5.1: ResNet-D, He et al. 2019 "Bag of Tricks", on which the hybrid encoder sits).

The layout (and every parameter name) of HF ``RTDetrResNetBackbone``: a ResNet-D stem of three 3x3
convolutions (stride 2, 1, 1; ``stem/2, stem/2, stem`` channels) and a 3x3 stride-2 max pool, then
stages of basic or bottleneck units. A unit's shortcut is a 1x1 conv + norm; where a unit halves the
resolution the ResNet-D shortcut average-pools (2x2, stride 2) before a stride-1 1x1 conv. As RT-DETR
(and HF), every stage's first basic unit has a shortcut even when its shape is kept. ``norm="frozen"``
is HF ``RTDetrModel``'s backbone (its BatchNorms frozen), ``"batch"`` the trainable one.

``RTDetrResNetBackbone(...)(x (B, C, H, W)) -> [feature map (B, channels[i], H / s_i, W / s_i)]`` for
the stages in ``out_indices`` (0: the stem after its pool, stride 4; stage ``i``: stride ``4 * 2 **
(i - 1)``, x2 with ``downsample_first_stage``).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .backbone import activate, conv_norm_act, conv_norm_parts

__all__ = ["ConvLayer", "RTDetrResNetBackbone"]


class ConvLayer(nn.Module):
    """HF's ``RTDetrResNetConvLayer``: ``activation(normalization(convolution(x)))``, the parts of
    :class:`~relformer.models.detection.backbone.ConvNorm` under HF's names. ``act``: ``True`` (ReLU),
    ``False`` or a module class."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, norm: str = "batch",
                 act: bool | type[nn.Module] = True) -> None:
        super().__init__()
        self.convolution, self.normalization, self.activation = conv_norm_parts(cin, cout, kernel, stride, norm, act)

    def forward(self, x: Tensor) -> Tensor:
        return conv_norm_act(x, self.convolution, self.normalization, self.activation)


def _shortcut(cin: int, cout: int, stride: int, pool: bool, project: bool, norm: str) -> nn.Module:
    """ResNet-D's shortcut: ``AvgPool2d(2, 2, ceil)`` then a 1x1 conv + norm (``pool``), a strided 1x1
    conv + norm, or nothing. HF's names: ``shortcut.{convolution, normalization}`` or ``shortcut.1.*``."""
    proj = ConvLayer(cin, cout, 1, 1 if pool else stride, norm, act=False) if project else nn.Identity()
    return nn.Sequential(nn.AvgPool2d(2, 2, 0, ceil_mode=True), proj) if pool else proj


class BasicUnit(nn.Module):
    """Two 3x3 convs (the first strided) + shortcut, ReLU (HF ``RTDetrResNetBasicLayer``)."""

    def __init__(self, cin: int, cout: int, stride: int, first: bool, norm: str, act: type[nn.Module]) -> None:
        super().__init__()
        # as HF: a first unit that changes the width always pools its shortcut
        self.shortcut = _shortcut(cin, cout, stride, pool=first and cin != cout, project=first, norm=norm)
        self.layer = nn.Sequential(ConvLayer(cin, cout, 3, stride, norm, act), ConvLayer(cout, cout, 3, 1, norm, False))
        self.activation = act()

    def forward(self, x: Tensor) -> Tensor:
        return activate(self.layer(x).add_(self.shortcut(x)), self.activation)


class BottleneckUnit(nn.Module):
    """1x1 reduce by 4, 3x3, 1x1 expand + shortcut, ReLU (HF ``RTDetrResNetBottleNeckLayer``); the
    stride sits on the 3x3 conv, or on the first 1x1 with ``downsample_in_bottleneck``."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str, act: type[nn.Module],
                 downsample_in_bottleneck: bool) -> None:
        super().__init__()
        mid, first = cout // 4, downsample_in_bottleneck
        self.shortcut = _shortcut(cin, cout, stride, pool=stride == 2, project=cin != cout or stride != 1, norm=norm)
        self.layer = nn.Sequential(ConvLayer(cin, mid, 1, stride if first else 1, norm, act),
                                   ConvLayer(mid, mid, 3, 1 if first else stride, norm, act),
                                   ConvLayer(mid, cout, 1, 1, norm, act=False))
        self.activation = act()

    def forward(self, x: Tensor) -> Tensor:
        return activate(self.layer(x).add_(self.shortcut(x)), self.activation)


class _Stem(nn.Module):
    def __init__(self, in_channels: int, stem_channels: int, norm: str, act: type[nn.Module]) -> None:
        super().__init__()
        half = stem_channels // 2
        self.embedder = nn.Sequential(ConvLayer(in_channels, half, 3, 2, norm, act), ConvLayer(half, half, 3, 1, norm, act),
                                      ConvLayer(half, stem_channels, 3, 1, norm, act))
        self.pooler = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.pooler(self.embedder(x))


class _Stage(nn.Module):
    def __init__(self, units: list[nn.Module]) -> None:
        super().__init__()
        self.layers = nn.Sequential(*units)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


class _Stages(nn.Module):
    def __init__(self, stages: list[nn.Module]) -> None:
        super().__init__()
        self.stages = nn.ModuleList(stages)


class RTDetrResNetBackbone(nn.Module):
    """RT-DETR's ResNet-D (see the module docstring); HF ``RTDetrResNetConfig`` fields in brackets.

    Args:
        in_channels: image channels [``num_channels``].
        stem_channels: stem width [``embedding_size``], even.
        widths / depths: per stage [``hidden_sizes`` / ``depths``].
        block: ``"basic"`` or ``"bottleneck"`` [``layer_type``].
        out_indices: the returned maps, 0 = stem, ``i`` = stage ``i`` [``out_indices``].
        norm: ``"frozen"`` (HF ``RTDetrModel``) or ``"batch"``.
        act: activation class [``hidden_act``], default ReLU.
        downsample_first_stage / downsample_in_bottleneck: as HF's config.
        channels_last: in inference (eval mode, no gradient recorded), run the convolutions on a channels-last
            copy of the image (oneDNN's native layout on CPU: no layout reorder around every conv); the maps
            come out channels-last, same values up to rounding. Training and gradients keep the plain layout.
    """

    def __init__(self, in_channels: int = 3, stem_channels: int = 64, widths: Sequence[int] = (256, 512, 1024, 2048),
                 depths: Sequence[int] = (3, 4, 6, 3), block: str = "bottleneck", out_indices: Sequence[int] = (2, 3, 4),
                 norm: str = "frozen", act: type[nn.Module] = nn.ReLU, downsample_first_stage: bool = False,
                 downsample_in_bottleneck: bool = False, channels_last: bool = True) -> None:
        super().__init__()
        self.channels_last = channels_last
        widths, depths, out_indices = tuple(widths), tuple(depths), tuple(out_indices)
        if block not in ("basic", "bottleneck"):
            raise ValueError(f"block must be 'basic' or 'bottleneck', got {block!r}")
        if not widths or len(widths) != len(depths) or min(widths) < 1 or min(depths) < 1:
            raise ValueError(f"widths and depths must be equally long lists of positive ints, got {widths}, {depths}")
        if stem_channels < 2 or stem_channels % 2:
            raise ValueError(f"stem_channels must be an even int >= 2, got {stem_channels}")
        if not out_indices or sorted(set(out_indices)) != list(out_indices) or not 0 <= out_indices[0] <= out_indices[-1] <= len(widths):
            raise ValueError(f"out_indices must be increasing stage indices in [0, {len(widths)}], got {out_indices}")
        if block == "basic" and not downsample_first_stage and stem_channels != widths[0]:
            raise ValueError(f"basic blocks need stem_channels == widths[0] ({stem_channels} != {widths[0]}) unless "
                             "downsample_first_stage: the first unit's ResNet-D shortcut pools (as HF)")
        self.embedder = _Stem(in_channels, stem_channels, norm, act)
        stages, cin = [], stem_channels
        for i, (cout, depth) in enumerate(zip(widths, depths)):
            stride = 2 if (i > 0 or downsample_first_stage) else 1
            if block == "basic":
                units = [BasicUnit(cin if k == 0 else cout, cout, stride if k == 0 else 1, k == 0, norm, act)
                         for k in range(depth)]
            else:
                units = [BottleneckUnit(cin if k == 0 else cout, cout, stride if k == 0 else 1, norm, act,
                                        downsample_in_bottleneck) for k in range(depth)]
            stages.append(_Stage(units))
            cin = cout
        self.encoder = _Stages(stages)
        self.out_indices = out_indices
        self.channels = [((stem_channels,) + widths)[i] for i in out_indices]

    def forward(self, x: Tensor) -> list[Tensor]:
        if not (isinstance(x, Tensor) and x.dim() == 4 and x.is_floating_point()):
            raise ValueError("images must be a float (B, C, H, W) tensor, got "
                             f"{(x.dtype, tuple(x.shape)) if isinstance(x, Tensor) else type(x).__name__}")
        expected = self.embedder.embedder[0].convolution.in_channels
        if x.shape[1] != expected:
            raise ValueError(f"images have {x.shape[1]} channels, the backbone takes {expected}")
        channels_last = self.channels_last and not self.training and not torch.is_grad_enabled()
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        h = self.embedder(x)
        if channels_last:  # a one-channel image is contiguous in both formats: its stem output is not yet
            h = h.contiguous(memory_format=torch.channels_last)
        maps = [h] if 0 in self.out_indices else []
        for i, stage in enumerate(self.encoder.stages, start=1):
            if i > self.out_indices[-1]:
                break
            h = stage(h)
            if i in self.out_indices:
                maps.append(h)
        return maps
