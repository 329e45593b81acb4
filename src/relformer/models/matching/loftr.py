"""LoFTR, detector-free local feature matching (Sun et al. 2021, CVPR), on relformer's attention.

A ResNet-FPN gives 1/8 and 1/2 feature maps (:mod:`.loftr_backbone`); the 1/8 tokens with 2-D sine
positions pass a coarse transformer ``("self", "cross") * 4`` whose attention is LoFTR's linear
attention (:func:`relformer.attention.linear_attention`) or softmax attention (:func:`relformer.attend`);
a dual softmax with mutual nearest neighbours gives coarse matches, refined in ``W x W`` windows of the
1/2 map by a small transformer and a sub-pixel expectation (:mod:`.loftr_matching`).

Called like ``kornia.feature.LoFTR``: ``model({"image0": (B, 1, H0, W0), "image1": (B, 1, H1, W1)})``,
optional ``mask0 (B, H0, W0)`` / ``mask1`` (True on the real pixels of a top-left padded image) ->
:class:`LoFTROutput` with ``keypoints0``, ``keypoints1`` ``(M, 2)`` (x, y pixels), ``confidence (M,)``,
``batch_indexes (M,)``. The padded area of a masked image never reaches the features: each image is
encoded at its own size, so a batch of pairs of different sizes (:func:`pad_images`) gives what each
pair gives alone.
"""
from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...attention import attend, linear_attention
from ...nn import Linear
from ...relations import Documents
from ..checks import check_positive
from ..keymap import KeyMap, convert_state
from ..outputs import ModelOutput
from ..registry import PretrainedMixin, builds, register_model
from .loftr_backbone import ResNetFPN, sine_positions_2d
from .loftr_matching import (coarse_focal_loss, crop_windows, dual_softmax, fine_l2_loss, inside_border,
                             mutual_matches, window_expectation)

__all__ = ["LoFTRConfig", "LoFTR", "LoFTROutput", "LoFTRTargets", "ImageFeatures", "LoFTRLayer",
           "LoFTRTransformer", "pad_images", "homography_targets", "KORNIA_KEYMAP", "from_kornia_state", "loftr",
           "loftr_micro"]

COARSE_STRIDE, FINE_STRIDE = 8, 2
INPUT_KEYS = ("image0", "image1", "mask0", "mask1")


@dataclass(frozen=True)
class LoFTRConfig:
    """LoFTR hyper-parameters; the defaults are LoFTR's released (and kornia's default) configuration.

    ``stem_dim``, ``backbone_dims``: ResNet-FPN widths (``backbone_dims[2]`` is the coarse ``d_model``,
    ``backbone_dims[0]`` the fine one); ``layer_types`` / ``fine_layer_types``: the coarse / fine
    transformer schedules; ``attention``: ``"linear"`` (LoFTR's) or ``"softmax"``; ``temperature``: the
    dual-softmax ``tau``; ``match_threshold``: the least confidence of a coarse match; ``border``: coarse
    cells dropped along each image side; ``fine_window``: ``W``; ``fine_concat_coarse``: add the coarse
    token to its window's fine tokens; ``pos_fix``: LoFTR's corrected sine frequencies (False: those the
    released weights were trained with)."""

    in_chans: int = 1
    stem_dim: int = 128
    backbone_dims: tuple[int, int, int] = (128, 196, 256)
    num_heads: int = 8
    layer_types: tuple[str, ...] = ("self", "cross") * 4
    fine_num_heads: int = 8
    fine_layer_types: tuple[str, ...] = ("self", "cross")
    attention: Literal["linear", "softmax"] = "linear"
    temperature: float = 0.1
    match_threshold: float = 0.2
    border: int = 2
    fine_window: int = 5
    fine_concat_coarse: bool = True
    pos_fix: bool = False
    backend: str = "auto"

    def __post_init__(self) -> None:
        check_positive(self, "in_chans", "stem_dim", "num_heads", "fine_num_heads", "fine_window")
        if len(self.backbone_dims) != 3 or not all(isinstance(d, int) and d > 0 for d in self.backbone_dims):
            raise ValueError(f"LoFTRConfig.backbone_dims must be three positive ints, got {self.backbone_dims!r}")
        for name, heads, dim in (("num_heads", self.num_heads, self.d_model),
                                 ("fine_num_heads", self.fine_num_heads, self.fine_d_model)):
            if dim % heads:
                raise ValueError(f"LoFTRConfig.{name} ({heads}) must divide the width {dim}")
        if self.d_model % 4:
            raise ValueError(f"LoFTRConfig.backbone_dims[2] ({self.d_model}) must be a multiple of 4 (sine positions)")
        for name in ("layer_types", "fine_layer_types"):
            types = getattr(self, name)
            if not types or any(t not in ("self", "cross") for t in types):
                raise ValueError(f"LoFTRConfig.{name} must be a non-empty sequence of 'self'/'cross', got {types!r}")
        if self.attention not in ("linear", "softmax"):
            raise ValueError(f"LoFTRConfig.attention must be 'linear' or 'softmax', got {self.attention!r}")
        if self.fine_window % 2 == 0:
            raise ValueError(f"LoFTRConfig.fine_window must be odd (a centre cell), got {self.fine_window}")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and self.temperature > 0):
            raise ValueError(f"LoFTRConfig.temperature must be a finite number > 0, got {self.temperature!r}")
        if not (isinstance(self.match_threshold, (int, float)) and math.isfinite(self.match_threshold)):
            raise ValueError(f"LoFTRConfig.match_threshold must be a finite number, got {self.match_threshold!r}")
        if not (isinstance(self.border, int) and self.border >= 0):
            raise ValueError(f"LoFTRConfig.border must be an int >= 0, got {self.border!r}")

    @property
    def d_model(self) -> int:
        return self.backbone_dims[2]

    @property
    def fine_d_model(self) -> int:
        return self.backbone_dims[0]


@dataclass
class LoFTROutput(ModelOutput):
    """Matches of a batch of pairs, all pairs together: ``keypoints0``, ``keypoints1 (M, 2)`` (x, y) in
    pixels of image 0 / 1 (coarse cell ``(x, y)`` of image 0 sits on pixel ``(8x, 8y)``), ``confidence (M,)``
    (the dual-softmax score), ``batch_indexes (M,)`` (the pair of each match)."""

    keypoints0: Tensor
    keypoints1: Tensor
    confidence: Tensor
    batch_indexes: Tensor


@dataclass
class LoFTRTargets:
    """Ground-truth correspondences for :meth:`LoFTR.loss`, all pairs packed: coarse cell ``i_ids (K,)`` of
    image 0 (row-major on its 1/8 grid) corresponds to cell ``j_ids (K,)`` of image 1 in pair
    ``batch_indexes (K,)``; ``points1 (K, 2)`` is where cell ``i``'s pixel ``(8x, 8y)`` lands in image 1
    (x, y pixels; drives the fine term). :func:`homography_targets` builds them from a known warp."""

    batch_indexes: Tensor
    i_ids: Tensor
    j_ids: Tensor
    points1: Tensor


class ImageFeatures(NamedTuple):
    """One side of a batch of pairs after the backbone: coarse ``tokens (B, h*w, C)`` with their sine
    positions, the ``fine`` map ``(B, Cf, Hf, Wf)``, ``valid (B, h*w)`` bool real cells (None when no
    mask was given), the coarse ``grid (h, w)`` and the real ``cells (B, 2)`` (rows, columns) of each image."""

    tokens: Tensor
    fine: Tensor
    valid: Tensor | None
    grid: tuple[int, int]
    cells: Tensor


class LoFTRLayer(nn.Module):
    """LoFTR's encoder layer (sec. 3.2): attention from ``x`` to ``source``, then an MLP on ``[x, message]``,
    each followed by a LayerNorm, one residual: ``x + norm2(mlp([x, norm1(proj(attn(x, source)))]))``.
    Self-attention is ``source = x``. ``(B, L, C), (B, S, C) -> (B, L, C)``."""

    def __init__(self, dim: int, num_heads: int, attention: str = "linear", backend: str = "auto") -> None:
        super().__init__()
        self.num_heads, self.attention, self.backend = num_heads, attention, backend
        self.q = Linear(dim, dim, bias=False)
        self.kv = Linear(dim, 2 * dim, bias=False)
        self.proj = Linear(dim, dim, bias=False)
        self.norm1 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(Linear(2 * dim, 2 * dim, bias=False), nn.ReLU(), Linear(2 * dim, dim, bias=False))
        self.norm2 = nn.LayerNorm(dim)

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, x_mask: Tensor | None, source_mask: Tensor | None) -> Tensor:
        if self.attention == "linear":
            return linear_attention(q, k, v, x_mask, source_mask)
        relation = None
        if x_mask is not None or source_mask is not None:  # padded cells: no key, and a zero output
            ids = [torch.zeros(q.shape[0], n, dtype=torch.long, device=q.device) if m is None else m.long() - 1
                   for m, n in ((x_mask, q.shape[2]), (source_mask, k.shape[2]))]
            relation = Documents(*ids)
        return attend(q, k, v, relation, backend=self.backend)

    def forward(self, x: Tensor, source: Tensor, x_mask: Tensor | None = None,
                source_mask: Tensor | None = None) -> Tensor:
        B, L, C = x.shape
        H, D = self.num_heads, C // self.num_heads
        q = self.q(x).view(B, L, H, D).transpose(1, 2)  # (B, H, L, D)
        k, v = self.kv(source).view(B, source.shape[1], 2, H, D).permute(2, 0, 3, 1, 4)  # 2 x (B, H, S, D)
        message = self._attend(q, k, v, x_mask, source_mask).transpose(1, 2).reshape(B, L, C)
        message = self.norm1(self.proj(message))
        return x + self.norm2(self.mlp(torch.cat([x, message], dim=-1)))


class LoFTRTransformer(nn.Module):
    """LoFTR's local feature transformer: one :class:`LoFTRLayer` per entry of ``layer_types``; ``"self"``
    updates each image from itself, ``"cross"`` image 0 from image 1 and then image 1 from the updated
    image 0 (LoFTR's order). ``feat0 (B, L, C), feat1 (B, S, C)``, masks ``(B, L)`` / ``(B, S)`` bool."""

    def __init__(self, dim: int, num_heads: int, layer_types: tuple[str, ...], attention: str = "linear",
                 backend: str = "auto") -> None:
        super().__init__()
        self.layer_types = tuple(layer_types)
        self.layers = nn.ModuleList(LoFTRLayer(dim, num_heads, attention, backend) for _ in self.layer_types)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def forward(self, feat0: Tensor, feat1: Tensor, mask0: Tensor | None = None,
                mask1: Tensor | None = None) -> tuple[Tensor, Tensor]:
        for layer, kind in zip(self.layers, self.layer_types):
            if kind == "self":
                feat0, feat1 = layer(feat0, feat0, mask0, mask0), layer(feat1, feat1, mask1, mask1)
            else:
                feat0 = layer(feat0, feat1, mask0, mask1)
                feat1 = layer(feat1, feat0, mask1, mask0)
        return feat0, feat1


def _check_image(name: str, image, in_chans: int) -> Tensor:
    if not isinstance(image, Tensor) or image.dim() != 4:
        got = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"{name} must be a (B, {in_chans}, H, W) tensor, got {got}")
    if image.shape[1] != in_chans:
        raise ValueError(f"{name} has {image.shape[1]} channels, LoFTR takes {in_chans} (grayscale in [0, 1] "
                         "for the released weights)")
    if not image.is_floating_point():
        raise ValueError(f"{name} must be floating point (in [0, 1]), got {image.dtype}")
    if image.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch")
    if image.shape[2] < COARSE_STRIDE or image.shape[3] < COARSE_STRIDE:
        raise ValueError(f"{name} is {tuple(image.shape[2:])} pixels; LoFTR needs at least "
                         f"{COARSE_STRIDE}x{COARSE_STRIDE} (one cell of its 1/{COARSE_STRIDE} grid)")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return image


def _mask_extents(name: str, mask, image: Tensor) -> Tensor:
    """``(B, 2)`` valid rows / columns of a top-left padded image's ``mask (B, H, W)``."""
    B, _, H, W = image.shape
    if not isinstance(mask, Tensor) or tuple(mask.shape) != (B, H, W):
        got = tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__
        raise ValueError(f"{name} must be a (B, H, W) = {(B, H, W)} tensor like its image, got {got}")
    if mask.dtype != torch.bool and not ((mask == 0) | (mask == 1)).all():
        raise ValueError(f"{name} must be bool or hold only 0 and 1 (1 = a real pixel)")
    mask = mask.bool()
    extents = torch.stack([mask.any(2).sum(1), mask.any(1).sum(1)], dim=1)  # (B, 2)
    if not torch.equal(mask, _top_left(extents, H, W)):
        raise ValueError(f"{name} must mark a top-left rectangle of real pixels (an image padded at the bottom "
                         "and right)")
    if (extents < COARSE_STRIDE).any():
        raise ValueError(f"{name} leaves fewer than {COARSE_STRIDE}x{COARSE_STRIDE} real pixels in an image")
    return extents


def _top_left(extents: Tensor, height: int, width: int) -> Tensor:
    """``(B, height, width)`` bool: True on the top-left ``extents (B, 2)`` (rows, columns) rectangle."""
    rows = torch.arange(height, device=extents.device)[None, :, None] < extents[:, 0, None, None]
    cols = torch.arange(width, device=extents.device)[None, None, :] < extents[:, 1, None, None]
    return rows & cols


def _cells(extents: Tensor, stride: int) -> Tensor:
    """Cells of a ``stride`` map over ``extents`` pixels: ``ceil(extents / stride)``."""
    return (extents + stride - 1) // stride


@builds(LoFTRConfig)
class LoFTR(PretrainedMixin, nn.Module):
    """LoFTR (module doc). Submodules: ``backbone`` (:class:`~.loftr_backbone.ResNetFPN`),
    ``coarse_transformer`` / ``fine_transformer`` (:class:`LoFTRTransformer`), ``fine_down`` /
    ``fine_merge`` (the coarse context added to the fine windows)."""

    def __init__(self, config: LoFTRConfig) -> None:
        super().__init__()
        c = self.config = config
        self.backbone = ResNetFPN(c.in_chans, c.stem_dim, c.backbone_dims)
        self.coarse_transformer = LoFTRTransformer(c.d_model, c.num_heads, c.layer_types, c.attention, c.backend)
        if c.fine_concat_coarse:
            self.fine_down = Linear(c.d_model, c.fine_d_model)
            self.fine_merge = Linear(2 * c.fine_d_model, c.fine_d_model)
            for p in (self.fine_down.weight, self.fine_merge.weight):
                nn.init.kaiming_normal_(p, mode="fan_out", nonlinearity="relu")
        self.fine_transformer = LoFTRTransformer(c.fine_d_model, c.fine_num_heads, c.fine_layer_types, c.attention,
                                                 c.backend)

    # ---- inputs and features ---------------------------------------------------------------
    def _inputs(self, data) -> tuple[list[Tensor], list[Tensor | None]]:
        if not isinstance(data, Mapping):
            raise TypeError(f"LoFTR takes a dict with image0, image1 (and optional mask0, mask1), got "
                            f"{type(data).__name__}")
        unknown = sorted(set(data) - set(INPUT_KEYS))
        if unknown or "image0" not in data or "image1" not in data:
            raise ValueError(f"LoFTR's input needs image0 and image1 and takes {', '.join(INPUT_KEYS)}; "
                             f"got keys {sorted(data)}")
        images = [_check_image(f"image{s}", data[f"image{s}"], self.config.in_chans) for s in (0, 1)]
        if images[0].shape[0] != images[1].shape[0]:
            raise ValueError(f"image0 and image1 must hold the same number of images, got {images[0].shape[0]} "
                             f"and {images[1].shape[0]}")
        extents = [_mask_extents(f"mask{s}", data[f"mask{s}"], images[s]) if data.get(f"mask{s}") is not None
                   else None for s in (0, 1)]
        return images, extents

    def _encode(self, image: Tensor, extents: Tensor | None) -> tuple[Tensor, Tensor]:
        """Backbone maps of each image at its own size (``extents``), zero-padded to the batch's grids (in
        training mode BatchNorm sees the images of each size as one batch)."""
        dtype = next(self.backbone.parameters()).dtype
        image = image.to(dtype)
        full = torch.tensor(image.shape[2:], device=image.device)
        if extents is None or bool((extents == full).all()):
            return self.backbone(image)
        coarse_hw, fine_hw = _cells(full, COARSE_STRIDE).tolist(), _cells(full, FINE_STRIDE).tolist()
        coarse: list = [None] * image.shape[0]
        fine: list = [None] * image.shape[0]
        for hw in torch.unique(extents, dim=0).tolist():
            idx = (extents == torch.tensor(hw, device=extents.device)).all(1).nonzero()[:, 0]
            c, f = self.backbone(image[idx, :, : hw[0], : hw[1]])
            c = F.pad(c, (0, coarse_hw[1] - c.shape[3], 0, coarse_hw[0] - c.shape[2]))
            f = F.pad(f, (0, fine_hw[1] - f.shape[3], 0, fine_hw[0] - f.shape[2]))
            for n, b in enumerate(idx.tolist()):
                coarse[b], fine[b] = c[n], f[n]
        return torch.stack(coarse), torch.stack(fine)

    def features(self, data) -> tuple[ImageFeatures, ImageFeatures]:
        """Both images through the backbone (one pass when they share a size and have no mask)."""
        images, extents = self._inputs(data)
        if extents == [None, None] and images[0].shape == images[1].shape:
            coarse, fine = self.backbone(torch.cat(images).to(next(self.backbone.parameters()).dtype))
            maps = list(zip(coarse.chunk(2), fine.chunk(2)))
        else:
            maps = [self._encode(images[s], extents[s]) for s in (0, 1)]
        out = []
        for s, (coarse, fine) in enumerate(maps):
            B, C, h, w = coarse.shape
            pe = sine_positions_2d(C, h, w, self.config.pos_fix, coarse.device, coarse.dtype)
            full = torch.tensor([[h, w]], device=coarse.device).expand(B, 2)
            cells = _cells(extents[s], COARSE_STRIDE) if extents[s] is not None else full
            valid = None if torch.equal(cells, full) else _top_left(cells, h, w).reshape(B, h * w)
            tokens = (coarse + pe).flatten(2).transpose(1, 2).contiguous()  # (B, h*w, C)
            out.append(ImageFeatures(tokens, fine, valid, (h, w), cells))
        return out[0], out[1]

    # ---- matching ------------------------------------------------------------------------------
    def coarse(self, feats: tuple[ImageFeatures, ImageFeatures]) -> tuple[Tensor, Tensor, Tensor]:
        """The coarse transformer's tokens of both images and their dual-softmax confidence ``(B, L, S)``."""
        f0, f1 = self.coarse_transformer(feats[0].tokens, feats[1].tokens, feats[0].valid, feats[1].valid)
        return f0, f1, dual_softmax(f0, f1, self.config.temperature, feats[0].valid, feats[1].valid)

    def refine(self, feats: tuple[ImageFeatures, ImageFeatures], f0: Tensor, f1: Tensor, b_ids: Tensor,
               i_ids: Tensor, j_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Fine windows around coarse matches ``(b, i, j)``, the fine transformer and the expectation:
        ``xy (M, 2)`` in window units and ``std (M,)`` (see :func:`.loftr_matching.window_expectation`)."""
        c, W = self.config, self.config.fine_window
        stride = COARSE_STRIDE // FINE_STRIDE
        win0 = crop_windows(feats[0].fine, b_ids, i_ids, feats[0].grid[1], W, stride)  # (M, W*W, Cf)
        win1 = crop_windows(feats[1].fine, b_ids, j_ids, feats[1].grid[1], W, stride)
        if c.fine_concat_coarse:
            context = self.fine_down(torch.cat([f0[b_ids, i_ids], f1[b_ids, j_ids]]))  # (2M, Cf)
            both = torch.cat([torch.cat([win0, win1]), context[:, None].expand(-1, W * W, -1)], dim=-1)
            win0, win1 = self.fine_merge(both).chunk(2)
        win0, win1 = self.fine_transformer(win0, win1)
        return window_expectation(win0, win1, c.backend)

    def forward(self, data: Mapping[str, Tensor]) -> LoFTROutput:
        """Matches of each pair (module doc)."""
        feats = self.features(data)
        f0, f1, conf = self.coarse(feats)
        border = self.config.border
        inside = [inside_border(feats[s].grid, feats[s].cells, border) for s in (0, 1)]
        b_ids, i_ids, j_ids, confidence = mutual_matches(conf, self.config.match_threshold, *inside)
        kpts0 = self._cell_pixels(i_ids, feats[0].grid[1], confidence.dtype)
        kpts1 = self._cell_pixels(j_ids, feats[1].grid[1], confidence.dtype)
        if b_ids.numel():
            xy, _ = self.refine(feats, f0, f1, b_ids, i_ids, j_ids)
            kpts1 = kpts1 + xy.to(kpts1.dtype) * (self.config.fine_window // 2) * FINE_STRIDE
        return LoFTROutput(kpts0, kpts1, confidence, b_ids)

    @staticmethod
    def _cell_pixels(ids: Tensor, width: int, dtype: torch.dtype) -> Tensor:
        """Pixel ``(x, y)`` of coarse cells ``ids`` of a ``width``-wide grid: ``8 * (column, row)``."""
        dtype = torch.promote_types(dtype, torch.float32)
        return torch.stack([ids % width, ids // width], dim=1).to(dtype) * COARSE_STRIDE

    # ---- training ------------------------------------------------------------------------------
    def loss(self, data: Mapping[str, Tensor], targets: LoFTRTargets, coarse_weight: float = 1.0,
             fine_weight: float = 1.0) -> dict[str, Tensor]:
        """LoFTR's training loss (sec. 3.5) on ground-truth correspondences: ``{"coarse": focal loss on the
        confidence matrix, "fine": L2 of the sub-pixel refinement (windows at the ground-truth matches),
        "loss": coarse_weight * coarse + fine_weight * fine}``."""
        feats = self.features(data)
        f0, f1, conf = self.coarse(feats)
        b, i, j = targets.batch_indexes, targets.i_ids, targets.j_ids
        positive = torch.zeros_like(conf, dtype=torch.bool)
        positive[b, i, j] = True
        valid = None
        if feats[0].valid is not None or feats[1].valid is not None:
            v0, v1 = (feats[s].valid if feats[s].valid is not None
                      else torch.ones(conf.shape[0], conf.shape[s + 1], dtype=torch.bool, device=conf.device)
                      for s in (0, 1))
            valid = v0[:, :, None] & v1[:, None, :]  # (B, L, S): pairs of real cells
        terms = {"coarse": coarse_focal_loss(conf, positive, valid)}
        if b.numel():
            xy, std = self.refine(feats, f0, f1, b, i, j)
            centre1 = self._cell_pixels(j, feats[1].grid[1], xy.dtype)
            target = (targets.points1.to(xy.dtype) - centre1) / ((self.config.fine_window // 2) * FINE_STRIDE)
            terms["fine"] = fine_l2_loss(xy, std, target)
        else:
            terms["fine"] = conf.sum() * 0.0
        terms["loss"] = coarse_weight * terms["coarse"] + fine_weight * terms["fine"]
        return terms


def pad_images(images: Sequence[Tensor]) -> tuple[Tensor, Tensor]:
    """Images ``(1, C, H_b, W_b)`` (or ``(C, H_b, W_b)``) of different sizes as one top-left zero-padded
    batch ``(B, C, H, W)`` and its mask ``(B, H, W)`` (True on real pixels): LoFTR's ``image0`` / ``mask0``."""
    if not images or not all(isinstance(im, Tensor) and im.dim() in (3, 4) for im in images):
        raise ValueError("images must be a non-empty sequence of (1, C, H, W) or (C, H, W) tensors")
    images = [im[0] if im.dim() == 4 else im for im in images]
    if any(im.shape[0] != images[0].shape[0] for im in images):
        raise ValueError(f"images must share a channel count, got {[im.shape[0] for im in images]}")
    H, W = max(im.shape[1] for im in images), max(im.shape[2] for im in images)
    batch = images[0].new_zeros(len(images), images[0].shape[0], H, W)
    mask = torch.zeros(len(images), H, W, dtype=torch.bool, device=images[0].device)
    for b, im in enumerate(images):
        batch[b, :, : im.shape[1], : im.shape[2]] = im
        mask[b, : im.shape[1], : im.shape[2]] = True
    return batch, mask


def homography_targets(homography: Tensor, image0_size: tuple[int, int], image1_size: tuple[int, int],
                       extents1: Tensor | None = None) -> LoFTRTargets:
    """Ground truth for :meth:`LoFTR.loss` from homographies ``(B, 3, 3)`` mapping image-0 points ``(x, y, 1)``
    to image 1: every coarse cell of image 0 (pixel ``(8x, 8y)``) whose warp lands inside image 1
    (``image1_size = (H1, W1)``, or the real pixels ``extents1 (B, 2)`` (rows, columns) of padded images)
    corresponds to the image-1 cell nearest to it. The frame is the keypoints' frame; with OpenCV's
    (``cv2.warpPerspective``: pixel ``(x, y)`` centred at ``(x, y)``) a model trained on these targets
    outputs keypoints in OpenCV's frame (the released LoFTR weights put pixel centres at ``+0.5``)."""
    if not isinstance(homography, Tensor) or homography.dim() != 3 or homography.shape[1:] != (3, 3):
        raise ValueError(f"homography must be a (B, 3, 3) tensor, got "
                         f"{tuple(homography.shape) if isinstance(homography, Tensor) else type(homography).__name__}")
    B = homography.shape[0]
    h0, w0 = (-(-s // COARSE_STRIDE) for s in image0_size)
    h1, w1 = (-(-s // COARSE_STRIDE) for s in image1_size)
    ids = torch.arange(h0 * w0, device=homography.device)
    xy0 = torch.stack([ids % w0, ids // w0], dim=1).to(homography.dtype) * COARSE_STRIDE  # (L, 2)
    xyh = torch.cat([xy0, torch.ones_like(xy0[:, :1])], dim=1) @ homography.transpose(1, 2)  # (B, L, 3)
    xy1 = xyh[..., :2] / xyh[..., 2:].clamp_min(1e-12)
    limit = (torch.tensor(image1_size[::-1], device=homography.device).expand(B, 2) if extents1 is None
             else extents1.flip(1)).to(xy1.dtype)  # (B, 2) as (W, H)
    inside = (xyh[..., 2] > 0) & (xy1 >= 0).all(-1) & (xy1 <= limit[:, None] - 1).all(-1)
    cell = torch.round(xy1 / COARSE_STRIDE).long()
    inside &= (cell[..., 0] < w1) & (cell[..., 1] < h1)
    b_ids, i_ids = inside.nonzero(as_tuple=True)
    j_ids = cell[b_ids, i_ids, 1] * w1 + cell[b_ids, i_ids, 0]
    return LoFTRTargets(b_ids, i_ids, j_ids, xy1[b_ids, i_ids])


# ---- kornia.feature.LoFTR's state dict (the released checkpoints' layout) -> relformer's ------------
KORNIA_KEYMAP = KeyMap(
    prefix="",
    keys=[
        (r"backbone\.conv1\.(\w+)", r"backbone.stem.0.\1"),
        (r"backbone\.bn1\.(\w+)", r"backbone.stem.1.\1"),
        *[(rf"backbone\.layer{n + 1}\.(\d)\.downsample\.(.*)", rf"backbone.stages.{n}.\1.shortcut.\2")
          for n in range(3)],
        *[(rf"backbone\.layer{n + 1}\.(.*)", rf"backbone.stages.{n}.\1") for n in range(3)],
        *[(rf"backbone\.layer{n + 1}_outconv\.(\w+)", rf"backbone.lateral.{n}.\1") for n in range(3)],
        *[(rf"backbone\.layer{n + 1}_outconv2\.(.*)", rf"backbone.merge.{n}.\1") for n in range(2)],
        (r"loftr_(coarse|fine)\.layers\.(\d+)\.q_proj\.(\w+)", r"\1_transformer.layers.\2.q.\3"),
        (r"loftr_(coarse|fine)\.layers\.(\d+)\.merge\.(\w+)", r"\1_transformer.layers.\2.proj.\3"),
        (r"loftr_(coarse|fine)\.layers\.(\d+)\.(norm1|norm2|mlp\.\d)\.(\w+)", r"\1_transformer.layers.\2.\3.\4"),
        (r"fine_preprocess\.down_proj\.(\w+)", r"fine_down.\1"),
        (r"fine_preprocess\.merge_feat\.(\w+)", r"fine_merge.\1"),
    ],
    kv=re.compile(r"(loftr_(?:coarse|fine)\.layers\.\d+\.)([kv])_proj\.(\w+)$"),
    kv_out_proj="merge.weight",
)


def from_kornia_state(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A ``kornia.feature.LoFTR`` (or released LoFTR checkpoint, ``matcher.`` prefix dropped) state dict in
    relformer's names: k / v projections fused into ``kv``."""
    state = {k.removeprefix("matcher."): v for k, v in state.items()}
    return convert_state(state, KORNIA_KEYMAP)


@register_model
def loftr() -> LoFTRConfig:
    """LoFTR as released (Sun et al. 2021; kornia's default): ResNet-FPN 128-196-256, coarse d_model 256 with 8
    heads and ``("self", "cross") * 4`` linear attention, fine d_model 128, 5x5 windows: 11.6M parameters."""
    return LoFTRConfig()


@register_model
def loftr_micro() -> LoFTRConfig:
    """A CPU-trainable LoFTR: ResNet-FPN 32-64-128, coarse d_model 128 with 4 heads, fine d_model 32."""
    return LoFTRConfig(stem_dim=32, backbone_dims=(32, 64, 128), num_heads=4, fine_num_heads=4)
