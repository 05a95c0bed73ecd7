"""Body poses: OpenPose-18 keypoint arrays, rendering, POSE_KEYPOINT interop, skeleton alignment,
rough masks, and the detectors, imported on demand: OpenPose (``pose.openpose``) and mediapipe poses
and person masks (``pose.mediapipe_detector``; mask post-processing in ``pose.mask_refine``)."""

from .align import ANCHOR_MODES, align_skeletons, alignment_parameters
from .interop import from_pose_keypoint, to_pose_keypoint
from .keypoints import (
    COLORS, KEYPOINT_NAMES, LIMB_SEQUENCE, NUM_KEYPOINTS, as_keypoint_array, check_person, present_mask,
    resize_keypoints, select_person,
)
from .keypoints import (  # joint indices
    L_ANKLE, L_EAR, L_ELBOW, L_EYE, L_HIP, L_KNEE, L_SHOULDER, L_WRIST, NECK, NOSE, R_ANKLE, R_EAR, R_ELBOW,
    R_EYE, R_HIP, R_KNEE, R_SHOULDER, R_WRIST,
)
from .masks import fit_mask_grow, person_masks_from_keypoints
from .render import render_pose_images

__all__ = [
    "KEYPOINT_NAMES", "LIMB_SEQUENCE", "COLORS", "NUM_KEYPOINTS", "as_keypoint_array", "present_mask",
    "check_person", "select_person", "render_pose_images", "to_pose_keypoint", "from_pose_keypoint",
    "ANCHOR_MODES", "resize_keypoints", "alignment_parameters", "align_skeletons", "person_masks_from_keypoints", "fit_mask_grow",
]
