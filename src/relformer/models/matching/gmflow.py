"""GMFlow (Xu et al. 2022, "GMFlow: Learning Optical Flow via Global Matching"), optical flow and
stereo disparity from one network on :func:`relformer.attend`.

Per scale (1/8, then optionally 1/4 for the refinement): CNN features of both images (one
shared trunk), the same sine positions in every attention window, a transformer of
self-attention in (shifted) windows and cross-attention to the other image, matching
(``softmax(F0 F1^T / sqrt(C))`` -> expected correspondence -> flow: global at 1/8, in a local
window on the warped features at 1/4, giving a residual), flow propagation by self-attention,
then upsampling to full size: RAFT's convex upsampling after the last scale (``upsampler=
"convex"``, GMFlow's) or bilinear; every intermediate prediction bilinear.

``task="stereo"`` (config or forward argument) gives disparity with the same network: matching
only along the same row of a rectified pair, to the left (``disparity = x0 - x1 >= 0``).

``model(image0, image1) -> GMFlowOutput``: images ``(B, C, H, W)`` with values in ``[0, 1]``
(normalised inside with ``pixel_mean`` / ``pixel_std``), ``H`` and ``W`` multiples of
:attr:`GMFlowConfig.stride` (pad them first: the model raises ``ValueError``, it does not pad).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from ..checks import check_positive
from ..outputs import ModelOutput
from ..registry import PretrainedMixin, builds, register_model
from .gmflow_parts import (CNNEncoder, ConvexUpsampler, FeatureTransformer, FlowPropagation, global_matching,
                           local_matching, row_matching, upsample_bilinear, warp, window_positions)

__all__ = ["GMFlowConfig", "GMFlow", "GMFlowOutput", "flow_loss", "end_point_error", "bad_pixel_rate",
           "disparity_to_flow"]

TASKS = ("flow", "stereo")


@dataclass
class GMFlowOutput(ModelOutput):
    """``flow (B, 2, H, W)``: the final flow ``(dx, dy)`` (stereo: ``(-disparity, 0)``);
    ``disparity (B, 1, H, W)``: stereo only; ``predictions``: every prediction at full size, coarse
    first, the last the final one (flows, or disparities in stereo), for :func:`flow_loss`;
    ``loss``: :func:`flow_loss` when a ``target`` was given."""

    flow: Tensor
    disparity: Tensor | None = None
    predictions: list[Tensor] = field(default_factory=list)
    loss: Tensor | None = None


@dataclass(frozen=True)
class GMFlowConfig:
    """GMFlow hyper-parameters (defaults: the paper's GMFlow at 1/8, 6 layers, 128 channels, one
    head, 2x2 attention windows). Per scale (coarse first, ``num_scales`` of them): ``attn_splits``
    windows per side, ``corr_radius`` (-1: global matching, else a local ``(2r+1)^2`` window; along
    rows ``2r+1`` in stereo) and ``prop_radius`` (-1: global propagation, else ``(2r+1)^2``).
    ``cross_attention``: ``"window"`` (GMFlow: the self-attention's windows), ``"global"`` or
    ``"rows"``. ``upsampler``: ``"convex"`` (RAFT's, GMFlow's) or ``"bilinear"`` after the last scale."""

    in_chans: int = 3
    cnn_widths: tuple[int, int, int] = (64, 96, 128)
    feature_channels: int = 128
    num_layers: int = 6
    num_heads: int = 1
    ffn_expansion: int = 4
    num_scales: int = 1
    attn_splits: tuple[int, ...] = (2,)
    corr_radius: tuple[int, ...] = (-1,)
    prop_radius: tuple[int, ...] = (-1,)
    cross_attention: str = "window"
    upsampler: str = "convex"
    task: str = "flow"
    pixel_mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    pixel_std: tuple[float, ...] = (0.229, 0.224, 0.225)
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, "in_chans", "feature_channels", "num_layers", "num_heads", "ffn_expansion")
        for name in ("cnn_widths", "attn_splits", "corr_radius", "prop_radius", "pixel_mean", "pixel_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        self._check_choices()
        self._check_scales()
        if len(self.cnn_widths) != 3 or not all(_is_int(v) and v > 0 for v in self.cnn_widths):
            raise ValueError(f"GMFlowConfig.cnn_widths must be 3 positive ints, got {self.cnn_widths!r}")
        if self.feature_channels % 4 or self.feature_channels % self.num_heads:
            raise ValueError(f"GMFlowConfig.feature_channels must be a multiple of 4 (sine positions) and of "
                             f"num_heads={self.num_heads}, got {self.feature_channels}")
        for name in ("pixel_mean", "pixel_std"):
            values = getattr(self, name)
            finite = all(isinstance(v, (int, float)) and math.isfinite(v) for v in values)
            if len(values) != self.in_chans or not finite:
                raise ValueError(f"GMFlowConfig.{name} must hold in_chans={self.in_chans} finite numbers, "
                                 f"got {values!r}")
        if not all(v > 0 for v in self.pixel_std):
            raise ValueError(f"GMFlowConfig.pixel_std must be > 0, got {self.pixel_std!r}")

    def _check_choices(self) -> None:
        for name, options in (("cross_attention", FeatureTransformer.CROSS), ("upsampler", ("convex", "bilinear")),
                              ("task", TASKS)):
            if getattr(self, name) not in options:
                raise ValueError(f"GMFlowConfig.{name} must be one of {options}, got {getattr(self, name)!r}")

    def _check_scales(self) -> None:
        if self.num_scales not in (1, 2):
            raise ValueError(f"GMFlowConfig.num_scales must be 1 (1/8) or 2 (1/8 and 1/4), got {self.num_scales!r}")
        for name in ("attn_splits", "corr_radius", "prop_radius"):
            values = getattr(self, name)
            if len(values) != self.num_scales or not all(_is_int(v) for v in values):
                raise ValueError(f"GMFlowConfig.{name} must hold num_scales={self.num_scales} ints, got {values!r}")
        if not all(v >= 1 for v in self.attn_splits):
            raise ValueError(f"GMFlowConfig.attn_splits must be >= 1, got {self.attn_splits!r}")
        for name in ("corr_radius", "prop_radius"):
            if not all(v == -1 or v >= 1 for v in getattr(self, name)):
                raise ValueError(f"GMFlowConfig.{name} must be -1 (global) or >= 1, got {getattr(self, name)!r}")

    @property
    def downsample(self) -> tuple[int, ...]:
        """Each scale's downsampling factor, coarse first: 8, then 4."""
        return tuple(8 // 2 ** s for s in range(self.num_scales))

    @property
    def stride(self) -> int:
        """What ``H`` and ``W`` must be multiples of: every scale's map splits into its windows."""
        return math.lcm(*(d * n for d, n in zip(self.downsample, self.attn_splits)))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def disparity_to_flow(disparity: Tensor) -> Tensor:
    """``(B, 1, H, W)`` disparity -> the flow ``(-disparity, 0)`` ``(B, 2, H, W)``."""
    return torch.cat([-disparity, torch.zeros_like(disparity)], 1)


@builds(GMFlowConfig)
class GMFlow(PretrainedMixin, nn.Module):
    """GMFlow: ``forward(image0, image1, task=None, target=None, valid=None) -> GMFlowOutput``.

    ``task``: ``"flow"`` or ``"stereo"`` (default: the config's). ``target``: the ground truth
    (a flow ``(B, 2, H, W)``, or a disparity ``(B, 1, H, W)`` in stereo) and ``valid (B, H, W)``
    its mask give ``loss`` (:func:`flow_loss`)."""

    def __init__(self, config: GMFlowConfig) -> None:
        super().__init__()
        c = self.config = config
        self.backbone = CNNEncoder(c.in_chans, c.cnn_widths, c.feature_channels, c.num_scales)
        self.transformer = FeatureTransformer(c.feature_channels, c.num_layers, c.num_heads, c.ffn_expansion,
                                              c.cross_attention, c.backend)
        self.propagation = FlowPropagation(c.feature_channels, c.backend)
        self.upsampler = (ConvexUpsampler(c.feature_channels, c.downsample[-1]) if c.upsampler == "convex"
                          else None)
        self.register_buffer("pixel_mean", torch.tensor(c.pixel_mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(c.pixel_std).view(1, -1, 1, 1), persistent=False)

    def check_images(self, image0: Tensor, image1: Tensor) -> None:
        """``ValueError`` naming what is wrong with a pair of images."""
        for name, image in (("image0", image0), ("image1", image1)):
            if not isinstance(image, Tensor) or image.dim() != 4:
                got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"{name} must be a (B, C, H, W) tensor, got {got}")
            if not image.is_floating_point():
                raise ValueError(f"{name} must be floating point with values in [0, 1], got {image.dtype}")
            if image.shape[1] != self.config.in_chans:
                raise ValueError(f"{name} has {image.shape[1]} channels, the model expects {self.config.in_chans}")
        if image0.shape != image1.shape:
            raise ValueError(f"image0 and image1 must have the same shape, got {tuple(image0.shape)} and "
                             f"{tuple(image1.shape)}")
        B, _, H, W = image0.shape
        s = self.config.stride
        if B == 0 or H % s or W % s:
            raise ValueError(f"image height and width must be positive multiples of the stride {s} (1/8 features "
                             f"in {self.config.attn_splits} windows per side), got {H}x{W} (batch {B}); pad the images")
        if not (torch.isfinite(image0).all() and torch.isfinite(image1).all()):
            raise ValueError("image0 / image1 contain NaN or infinite values")

    def _task(self, task: str | None) -> str:
        task = self.config.task if task is None else task
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        return task

    def _match(self, f0: Tensor, f1: Tensor, radius: int, stereo: bool) -> Tensor:
        """The scale's matching step: a flow ``(B, 2, h, w)`` or a disparity ``(B, 1, h, w)``."""
        backend = self.config.backend
        if radius < 0:
            return row_matching(f0, f1, backend) if stereo else global_matching(f0, f1, backend)
        if stereo:
            return -local_matching(f0, f1, (0, radius), backend)[:, :1]
        return local_matching(f0, f1, (radius, radius), backend)

    def _upsample(self, value: Tensor, feature: Tensor, stereo: bool) -> Tensor:
        """The last scale's value to full size (convex or bilinear)."""
        if self.upsampler is None:
            return upsample_bilinear(value, self.config.downsample[-1])
        if stereo:  # the upsampler sees a disparity as the flow (-d, 0), as GMFlow's stereo
            return -self.upsampler(disparity_to_flow(value), feature)[:, :1]
        return self.upsampler(value, feature)

    def forward(self, image0: Tensor, image1: Tensor, task: str | None = None, target: Tensor | None = None,
                valid: Tensor | None = None) -> GMFlowOutput:
        stereo = self._task(task) == "stereo"
        self.check_images(image0, image1)
        if valid is not None and target is None:
            raise ValueError("valid was given without a target")
        B = image0.shape[0]
        c = self.config
        dtype = self.pixel_mean.dtype
        x = (torch.cat([image0, image1]).to(dtype) - self.pixel_mean) / self.pixel_std  # (2B, C, H, W)
        value, predictions = None, []  # value: flow (B, 2, h, w) or disparity (B, 1, h, w)
        for s, feature in enumerate(self.backbone(x)):  # coarse first
            f0, f1 = feature[:B], feature[B:]
            factor = c.downsample[s]
            if value is not None:  # refinement: the coarse result, doubled, warps image 1's features
                value = upsample_bilinear(value, 2).detach()
                f1 = warp(f1, disparity_to_flow(value) if stereo else value)
            pos = window_positions(f0.shape[-2:], c.attn_splits[s], c.feature_channels, f0.device).to(f0.dtype)
            f0, f1 = self.transformer(f0 + pos, f1 + pos, c.attn_splits[s])
            step = self._match(f0, f1, c.corr_radius[s], stereo)
            value = step if value is None else value + step
            if stereo:
                value = value.clamp(min=0)
            predictions.append(upsample_bilinear(value, factor))
            value = self.propagation(f0, value.detach(), c.prop_radius[s])
            if s < c.num_scales - 1:
                predictions.append(upsample_bilinear(value, factor))
            else:
                predictions.append(self._upsample(value, f0, stereo))
        final = predictions[-1]
        loss = flow_loss(predictions, target, valid) if target is not None else None
        if stereo:
            return GMFlowOutput(disparity_to_flow(final), final, predictions, loss)
        return GMFlowOutput(final, None, predictions, loss)


def _check_target(predictions: list[Tensor], target: Tensor, valid: Tensor | None) -> Tensor:
    """The ``(B, H, W)`` bool mask of pixels to score, after checking the shapes."""
    if not predictions:
        raise ValueError("predictions is empty")
    shape = predictions[-1].shape
    if not isinstance(target, Tensor) or target.shape != shape:
        got = tuple(target.shape) if isinstance(target, Tensor) else type(target).__name__
        raise ValueError(f"target must have the predictions' shape {tuple(shape)}, got {got}")
    if any(p.shape != shape for p in predictions):
        shapes = [tuple(p.shape) for p in predictions]
        raise ValueError(f"every prediction must have shape {tuple(shape)}, got {shapes}")
    if valid is None:
        return torch.ones(shape[0], *shape[2:], dtype=torch.bool, device=target.device)
    if not isinstance(valid, Tensor) or valid.shape != (shape[0], *shape[2:]):
        got = tuple(valid.shape) if isinstance(valid, Tensor) else type(valid).__name__
        raise ValueError(f"valid must be (B, H, W) = {(shape[0], *shape[2:])}, got {got}")
    return valid >= 0.5 if valid.is_floating_point() else valid.bool()


def flow_loss(predictions: list[Tensor], target: Tensor, valid: Tensor | None = None, gamma: float = 0.9,
              max_flow: float = 400.0) -> Tensor:
    """GMFlow's (RAFT's) sequence loss: ``sum_i gamma^(N - i) * mean(valid * |V_i - V_gt|)`` over the
    ``N`` predictions (coarse first: later ones weigh more). Pixels with ``valid < 0.5`` or a ground
    truth of magnitude ``>= max_flow`` do not count (the mean still divides by every element, as
    GMFlow). ``predictions``: ``(B, D, H, W)`` each; ``target (B, D, H, W)``; ``valid (B, H, W)``."""
    if not (isinstance(gamma, (int, float)) and 0 < gamma <= 1):
        raise ValueError(f"gamma must be in (0, 1], got {gamma!r}")
    mask = _check_target(predictions, target, valid) & (target.norm(dim=1) < max_flow)
    mask = mask.unsqueeze(1).to(target.dtype)
    n = len(predictions)
    return sum(gamma ** (n - 1 - i) * (mask * (p - target).abs()).mean() for i, p in enumerate(predictions))


def _pixel_errors(prediction: Tensor, target: Tensor, valid: Tensor | None) -> Tensor:
    """End-point errors ``|V - V_gt|_2`` of the valid pixels, flattened."""
    mask = _check_target([prediction], target, valid)
    return (prediction - target).norm(dim=1)[mask]


def end_point_error(prediction: Tensor, target: Tensor, valid: Tensor | None = None) -> Tensor:
    """Mean end-point error over the valid pixels (a flow ``(B, 2, H, W)`` or disparity
    ``(B, 1, H, W)``); NaN when no pixel is valid."""
    return _pixel_errors(prediction, target, valid).mean()


def bad_pixel_rate(prediction: Tensor, target: Tensor, valid: Tensor | None = None, threshold: float = 3.0) -> Tensor:
    """The fraction of valid pixels whose end-point error exceeds ``threshold`` (stereo's "bad 3")."""
    return (_pixel_errors(prediction, target, valid) > threshold).float().mean()


@register_model
def gmflow() -> GMFlowConfig:
    """GMFlow (Xu et al. 2022) without refinement: matching at 1/8, 6 layers of 128 channels, one
    head, 2x2 windows, global matching and propagation, convex upsampling (images: multiples of 16)."""
    return GMFlowConfig()


@register_model
def gmflow_refine() -> GMFlowConfig:
    """GMFlow with refinement: 1/8 then 1/4 (windows 2x2 then 8x8, local matching radius 4 and
    propagation radius 1 at 1/4), as the paper's "GMFlow with refinement" (images: multiples of 32)."""
    return GMFlowConfig(num_scales=2, attn_splits=(2, 8), corr_radius=(-1, 4), prop_radius=(-1, 1))


@register_model
def gmflow_micro() -> GMFlowConfig:
    """A small GMFlow for short CPU training: a narrow trunk, 48 channels, 2 layers, 1/8 then 1/4
    (windows 2x2 then 4x4, local matching radius 3) (images: multiples of 16)."""
    return GMFlowConfig(cnn_widths=(32, 48, 64), feature_channels=48, num_layers=2, ffn_expansion=2, num_scales=2,
                        attn_splits=(2, 4), corr_radius=(-1, 3), prop_radius=(-1, 1))
