"""The local feature CNN of LoFTR (Sun et al. 2021, sec. 3.1): a ResNet-18-like trunk with a
feature pyramid (Lin et al. 2017) giving a coarse map at 1/8 and a fine map at 1/2 of the image,
and LoFTR's 2-D sine positional encoding of the coarse map (sec. 3.2, eq. 1)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ResNetFPN", "ResidualBlock", "sine_positions_2d"]


def _conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=stride, padding=1, bias=False)


def _conv1x1(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=1, stride=stride, bias=False)


class ResidualBlock(nn.Module):
    """He et al. 2016's basic block: ``relu(x' + bn(conv(relu(bn(conv(x))))))``, with ``x'`` a
    strided 1x1 projection when the block downsamples. ``(B, c_in, H, W) -> (B, c_out, H/s, W/s)``."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(c_in, c_out, stride), nn.BatchNorm2d(c_out)
        self.conv2, self.bn2 = _conv3x3(c_out, c_out), nn.BatchNorm2d(c_out)
        self.shortcut = (nn.Sequential(_conv1x1(c_in, c_out, stride), nn.BatchNorm2d(c_out))
                         if stride != 1 else nn.Identity())

    def forward(self, x: Tensor) -> Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.shortcut(x) + self.bn2(self.conv2(y)))


def _stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(ResidualBlock(c_in, c_out, stride), ResidualBlock(c_out, c_out))


def _smooth(c_mid: int, c_out: int) -> nn.Sequential:
    """The FPN merge after a top-down sum: conv3x3 - BN - LeakyReLU - conv3x3."""
    return nn.Sequential(_conv3x3(c_mid, c_mid), nn.BatchNorm2d(c_mid), nn.LeakyReLU(), _conv3x3(c_mid, c_out))


def _upsample_to(coarse: Tensor, fine: Tensor) -> Tensor:
    """``coarse`` upsampled 2x (bilinear, corners aligned, as LoFTR's FPN) and cropped to ``fine``'s size:
    for a side that is not a multiple of 8 the finer map is up to one cell smaller than twice the coarser."""
    up = F.interpolate(coarse, scale_factor=2.0, mode="bilinear", align_corners=True)
    return up[..., : fine.shape[2], : fine.shape[3]]


class ResNetFPN(nn.Module):
    """LoFTR's ResNet-FPN 8/2: a 7x7 stride-2 stem, three stages of two residual blocks (strides 1, 2,
    2 -> 1/2, 1/4, 1/8) with widths ``dims``, then a top-down pyramid back to 1/2.

    ``(B, in_chans, H, W) -> (coarse (B, dims[2], ceil(H/8), ceil(W/8)), fine (B, dims[0], ceil(H/2), ceil(W/2)))``.
    Every strided kernel is centred, so coarse cell ``(x, y)`` sits on pixel ``(8x, 8y)`` and fine cell
    ``(x, y)`` on pixel ``(2x, 2y)`` whatever the image size."""

    def __init__(self, in_chans: int = 1, stem_dim: int = 128, dims: tuple[int, int, int] = (128, 196, 256)) -> None:
        super().__init__()
        d1, d2, d3 = dims
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem_dim, kernel_size=7, stride=2, padding=3, bias=False),
                                  nn.BatchNorm2d(stem_dim), nn.ReLU())
        self.stages = nn.ModuleList([_stage(stem_dim, d1, 1), _stage(d1, d2, 2), _stage(d2, d3, 2)])
        self.lateral = nn.ModuleList([_conv1x1(d1, d2), _conv1x1(d2, d3), _conv1x1(d3, d3)])  # 1/2, 1/4, 1/8
        self.merge = nn.ModuleList([_smooth(d2, d1), _smooth(d3, d2)])  # 1/2, 1/4
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        x = self.stem(image)
        x2 = self.stages[0](x)   # 1/2
        x4 = self.stages[1](x2)  # 1/4
        x8 = self.stages[2](x4)  # 1/8
        coarse = self.lateral[2](x8)
        mid = self.lateral[1](x4)
        mid = self.merge[1](mid + _upsample_to(coarse, mid))
        fine = self.lateral[0](x2)
        fine = self.merge[0](fine + _upsample_to(mid, fine))
        return coarse, fine


def sine_positions_2d(dim: int, height: int, width: int, fixed: bool = False, device=None,
                      dtype: torch.dtype = torch.float32) -> Tensor:
    """LoFTR's 2-D sine encoding ``(dim, height, width)``: channel ``4k`` holds ``sin(x w_k)``, ``4k+1``
    ``cos(x w_k)``, ``4k+2`` ``sin(y w_k)``, ``4k+3`` ``cos(y w_k)`` with 1-based cell positions ``x, y``
    and ``w_k = exp(-2k log(10000) / (dim / 2))`` (``fixed=True``). ``fixed=False`` is the frequency
    the released LoFTR weights were trained with (LoFTR issue #41): ``w_k = exp(-2k)``."""
    if dim % 4:
        raise ValueError(f"dim must be a multiple of 4 for the 2-D sine encoding, got {dim}")
    k2 = torch.arange(0, dim // 2, 2, device=device, dtype=torch.float32)
    rate = -math.log(10000.0) / (dim // 2) if fixed else (-math.log(10000.0) / dim) // 2
    freq = torch.exp(k2 * rate)[:, None, None]  # (dim/4, 1, 1)
    y = torch.arange(1, height + 1, device=device, dtype=torch.float32)[None, :, None].expand(1, height, width)
    x = torch.arange(1, width + 1, device=device, dtype=torch.float32)[None, None, :].expand(1, height, width)
    pe = torch.stack([torch.sin(x * freq), torch.cos(x * freq), torch.sin(y * freq), torch.cos(y * freq)], dim=1)
    return pe.reshape(dim, height, width).to(dtype)  # (dim/4, 4, H, W) -> channels 4k + {0, 1, 2, 3}
