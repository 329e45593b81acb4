"""Matching: attention between the tokens of two images (keypoints or patches) does the work.

LoFTR (:mod:`.loftr`): detector-free matching of coarse patches refined in fine windows;
GMFlow (:mod:`.gmflow`): global matching optical flow and stereo."""
from .gmflow import (GMFlow, GMFlowConfig, GMFlowOutput, bad_pixel_rate, disparity_to_flow, end_point_error,
                     flow_loss)
from .loftr import (KORNIA_KEYMAP, LoFTR, LoFTRConfig, LoFTROutput, LoFTRTargets, from_kornia_state, homography_targets,
                    pad_images)

__all__ = ["GMFlow", "GMFlowConfig", "GMFlowOutput", "flow_loss", "end_point_error", "bad_pixel_rate",
           "disparity_to_flow", "LoFTR", "LoFTRConfig", "LoFTROutput", "LoFTRTargets", "homography_targets",
           "pad_images", "from_kornia_state", "KORNIA_KEYMAP"]
