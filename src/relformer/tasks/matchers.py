"""relformer's matchers behind one call, for ``relformer match`` / ``flow`` and the quality bench.

Every matcher is ``match(image0, image1) -> (kpts0 (N, 2), kpts1 (N, 2), scores (N,))`` on
``(h, w, 3)`` uint8 RGB NumPy images (the OpenCV baselines of :mod:`relformer.interop.opencv` have
the same signature); a flow method is ``flow(image0, image1) -> (h, w, 2)`` and a stereo method
``stereo(left, right) -> (h, w)`` disparity. Keypoints are ``(x, y)`` pixels, OpenCV's frame.

* :class:`LightGlueMatcher`: DISK keypoints + LightGlue with the published weights;
* :class:`LoFTRMatcher`: a LoFTR model (e.g. a ``relformer train loftr-homography`` run folder);
* :class:`GMFlowMatcher`: a GMFlow model for flow and, with 1-D matching, stereo; images are padded
  (edge values) to the model's stride and the result cropped back.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..interop.opencv import OrbMatcher, SiftMatcher, dis_flow, farneback_flow
from ..models import create_model, from_pretrained
from ..models.matching import DiskKeypoints

__all__ = ["LightGlueMatcher", "LoFTRMatcher", "GMFlowMatcher", "rgb_tensor", "make_matcher", "make_flow", "flow_as_disparity", "MATCHERS",
           "FLOWS"]


def rgb_tensor(image: np.ndarray, name: str = "image", grey: bool = False) -> Tensor:
    """An ``(h, w, 3)`` (or ``(h, w)``) uint8 image -> ``(1, C, h, w)`` float in [0, 1]; ``grey``: one
    channel (ITU-R 601 luma)."""
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3)):
        raise ValueError(f"{name} must be an (h, w) or (h, w, 3) uint8 image, got {array.dtype} {array.shape}")
    x = torch.from_numpy(np.ascontiguousarray(np.atleast_3d(array))).permute(2, 0, 1).float().div(255)[None]
    if grey and x.shape[1] == 3:
        x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    if not grey and x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return x


def _numpy(*tensors: Tensor) -> tuple[np.ndarray, ...]:
    return tuple(t.detach().cpu().double().numpy() for t in tensors)


class LightGlueMatcher:
    """DISK (up to ``max_keypoints`` per image) + LightGlue (``model``, default ``lightglue_disk`` with
    its published weights)."""

    def __init__(self, model: nn.Module | None = None, max_keypoints: int = 2048, device: str = "cpu") -> None:
        self.extractor = DiskKeypoints(max_keypoints=max_keypoints).to(device)
        self.model = (model or create_model("lightglue_disk", pretrained=True)).to(device).eval()

    @torch.inference_mode()
    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f0, f1 = (self.extractor(rgb_tensor(im, name))[0] for im, name in ((image0, "image0"), (image1, "image1")))
        out = self.model({"image0": f0.as_lightglue(), "image1": f1.as_lightglue()})
        pairs, scores = out.matches[0], out.scores[0]
        return _numpy(f0.keypoints[pairs[:, 0]], f1.keypoints[pairs[:, 1]], scores)


class LoFTRMatcher:
    """A LoFTR model's coarse-to-fine matches (grey images, as LoFTR)."""

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device

    @torch.inference_mode()
    def __call__(self, image0: np.ndarray, image1: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        grey = getattr(self.model.config, "in_chans", 1) == 1
        out = self.model({"image0": rgb_tensor(image0, "image0", grey).to(self.device),
                          "image1": rgb_tensor(image1, "image1", grey).to(self.device)})
        return _numpy(out.keypoints0, out.keypoints1, out.confidence)


class GMFlowMatcher:
    """A GMFlow model as a flow method (:meth:`flow`) and a stereo method (:meth:`stereo`)."""

    def __init__(self, model: nn.Module, device: str = "cpu") -> None:
        self.model = model.to(device).eval()
        self.device = device

    def _run(self, image0: np.ndarray, image1: np.ndarray, task: str) -> Tensor:
        a, b = rgb_tensor(image0, "image0"), rgb_tensor(image1, "image1")
        if a.shape != b.shape:
            raise ValueError(f"image0 {tuple(a.shape[-2:])} and image1 {tuple(b.shape[-2:])} must have the same size")
        h, w = a.shape[-2:]
        stride = self.model.config.stride
        pad = (0, -w % stride, 0, -h % stride)
        a, b = (F.pad(x, pad, mode="replicate").to(self.device) for x in (a, b))
        with torch.inference_mode():
            out = self.model(a, b, task=task)
        return (out.disparity if task == "stereo" else out.flow)[0, :, :h, :w].cpu()

    def flow(self, image0: np.ndarray, image1: np.ndarray) -> np.ndarray:
        """``(h, w, 2)`` flow from image 0 to image 1."""
        return self._run(image0, image1, "flow").permute(1, 2, 0).double().numpy()

    def stereo(self, left: np.ndarray, right: np.ndarray) -> np.ndarray:
        """``(h, w)`` disparity of the left image (1-D matching along rows)."""
        return self._run(left, right, "stereo")[0].double().numpy()


def flow_as_disparity(flow):
    """A flow method as a stereo method: left ``(x, y)`` is right ``(x - d, y)``, so ``d = -flow_x``."""
    return lambda left, right: -flow(left, right)[..., 0]


MATCHERS = ("lightglue", "loftr", "sift", "orb")
FLOWS = ("gmflow", "dis", "farneback")


def _trained(path: str | None, what: str, recipe: str) -> nn.Module:
    if path is None:
        raise ValueError(f"--model: {what} has no published weights here; give a trained model folder "
                         f"(a run of `relformer train {recipe}`, or its best/ checkpoint)")
    return from_pretrained(path)


def make_matcher(name: str, model: str | None = None, max_keypoints: int = 2048):
    """The matcher called ``name`` (one of :data:`MATCHERS`); ``model``: a saved model folder (LoFTR's
    must be given; LightGlue's defaults to the published weights)."""
    if name == "lightglue":
        return LightGlueMatcher(None if model is None else _trained(model, "LightGlue", ""), max_keypoints)
    if name == "loftr":
        return LoFTRMatcher(_trained(model, "LoFTR", "loftr-homography"))
    if name in ("sift", "orb"):
        return SiftMatcher() if name == "sift" else OrbMatcher()
    raise ValueError(f"--matcher must be one of {', '.join(MATCHERS)}, got {name!r}")


def make_flow(name: str, model: str | None = None, stereo: bool = False):
    """The flow (or with ``stereo``, disparity) method called ``name`` (one of :data:`FLOWS`)."""
    if name == "gmflow":
        matcher = GMFlowMatcher(_trained(model, "GMFlow", "gmflow-homography"))
        return matcher.stereo if stereo else matcher.flow
    if name in ("dis", "farneback"):
        flow = dis_flow if name == "dis" else farneback_flow
        return flow_as_disparity(flow) if stereo else flow
    raise ValueError(f"--method must be one of {', '.join(FLOWS)}, got {name!r}")
