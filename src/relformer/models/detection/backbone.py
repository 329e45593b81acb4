"""DETR's convolutional backbone (a ResNet, He et al. 2016, with DETR's frozen BatchNorm); its sine
positions of a feature map are :func:`relformer.nn.sine_positions` (re-exported here)."""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ...nn.posenc import sine_positions

__all__ = ["FrozenBatchNorm2d", "ConvNorm", "ResidualUnit", "ResNetBackbone", "sine_positions"]


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm2d with fixed statistics and affine parameters (all buffers), DETR's backbone norm:
    ``x * w / sqrt(var + eps) + (b - mean * w / sqrt(var + eps))``. ``x (B, C, H, W)``."""

    def __init__(self, num_features: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        for name, init in (("weight", torch.ones), ("bias", torch.zeros), ("running_mean", torch.zeros),
                           ("running_var", torch.ones)):
            self.register_buffer(name, init(num_features))

    def scale_shift(self) -> tuple[Tensor, Tensor]:
        """``(scale, shift)``, both ``(1, C, 1, 1)``: the norm is ``x * scale + shift``."""
        scale = self.weight * (self.running_var + self.eps).rsqrt()
        return scale[None, :, None, None], (self.bias - self.running_mean * scale)[None, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        scale, shift = self.scale_shift()
        return x * scale + shift


class ConvNorm(nn.Module):
    """``act(norm(conv(x)))``: a bias-free ``k x k`` convolution (padding ``k // 2``), a norm, ReLU or
    nothing. ``norm``: ``"frozen"`` (:class:`FrozenBatchNorm2d`) or ``"batch"`` (trainable). The frozen
    norm and the ReLU work in place on the convolution's output (its backward never reads it): no
    new activation-sized buffer per layer."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, norm: str = "batch",
                 act: bool = True) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2, bias=False)
        self.norm = FrozenBatchNorm2d(cout) if norm == "frozen" else nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True) if act else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        if isinstance(self.norm, FrozenBatchNorm2d):
            scale, shift = self.norm.scale_shift()
            return self.act(self.conv(x).mul_(scale).add_(shift))
        return self.act(self.norm(self.conv(x)))


class ResidualUnit(nn.Module):
    """ResNet's basic block (two 3x3 convs) or bottleneck (1x1 reduce by 4, 3x3, 1x1 expand), He et al.
    2016, with a projection shortcut when the shape changes. ``stride`` sits on the 3x3 conv of a
    bottleneck unless ``downsample_in_bottleneck`` (then on its first 1x1), as HF ``ResNet``."""

    def __init__(self, cin: int, cout: int, stride: int, kind: str, norm: str,
                 downsample_in_bottleneck: bool = False) -> None:
        super().__init__()
        self.shortcut = (ConvNorm(cin, cout, 1, stride, norm, act=False) if cin != cout or stride != 1
                         else nn.Identity())
        if kind == "basic":
            self.convs = nn.Sequential(ConvNorm(cin, cout, 3, stride, norm), ConvNorm(cout, cout, 3, 1, norm, act=False))
        else:
            mid, first = cout // 4, downsample_in_bottleneck
            self.convs = nn.Sequential(ConvNorm(cin, mid, 1, stride if first else 1, norm),
                                       ConvNorm(mid, mid, 3, 1 if first else stride, norm),
                                       ConvNorm(mid, cout, 1, 1, norm, act=False))

    def forward(self, x: Tensor) -> Tensor:
        return self.convs(x).add_(self.shortcut(x)).relu_()


class ResNetBackbone(nn.Module):
    """ResNet feature extractor (He et al. 2016): 7x7 stride-2 stem + 3x3 stride-2 max pool, then
    ``len(widths)`` stages of residual units (stride 2 at the start of every stage but the first,
    unless ``downsample_first_stage``). ``x (B, C, H, W) -> (B, widths[-1], H / s, W / s)``,
    ``s = 4 * 2 ** (len(widths) - 1)`` (x2 with ``downsample_first_stage``)."""

    def __init__(self, in_channels: int, stem_channels: int, widths: tuple[int, ...], depths: tuple[int, ...],
                 kind: str = "basic", norm: str = "batch", downsample_first_stage: bool = False,
                 downsample_in_bottleneck: bool = False) -> None:
        super().__init__()
        self.stem = ConvNorm(in_channels, stem_channels, 7, 2, norm)
        self.pool = nn.MaxPool2d(3, 2, padding=1)
        stages, cin = [], stem_channels
        for i, (cout, depth) in enumerate(zip(widths, depths)):
            stride = 2 if (i > 0 or downsample_first_stage) else 1
            units = [ResidualUnit(cin if k == 0 else cout, cout, stride if k == 0 else 1, kind, norm,
                                  downsample_in_bottleneck) for k in range(depth)]
            stages.append(nn.Sequential(*units))
            cin = cout
        self.stages = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: Tensor) -> Tensor:
        return self.stages(self.pool(self.stem(x)))
