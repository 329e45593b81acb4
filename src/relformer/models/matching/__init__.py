"""Matching: attention between the tokens of two images (keypoints or patches) does the work.

GMFlow (:mod:`.gmflow`): global matching optical flow and stereo."""
from .gmflow import (GMFlow, GMFlowConfig, GMFlowOutput, bad_pixel_rate, disparity_to_flow, end_point_error,
                     flow_loss)

__all__ = ["GMFlow", "GMFlowConfig", "GMFlowOutput", "flow_loss", "end_point_error", "bad_pixel_rate",
           "disparity_to_flow"]
