"""OpenPose-18 skeleton rendering, pixel-identical to controlnet_aux's ``draw_bodypose``."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from ..errors import InputError
from .keypoints import (
    COLORS, LIMB_SEQUENCE, NUM_KEYPOINTS, as_keypoint_array, present_mask,
)


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------

def render_pose_images(keypoints, height: int, width: int, stick_width: int = 4, point_radius: int = 4) -> torch.Tensor:
    """Draw OpenPose skeletons exactly as controlnet_aux's ``open_pose.util.draw_bodypose`` does.

    Each limb of ``LIMB_SEQUENCE`` whose two ends are present is a filled ellipse (OpenCV
    ``ellipse2Poly`` around the limb's midpoint, half-length = half the limb length, half-width =
    ``stick_width``) in ``0.6 * COLORS[limb]`` (plain overwrite, no alpha blending); afterwards every
    present keypoint is a filled disk of radius ``point_radius`` in ``COLORS[point]``. Coordinates are
    truncated to integers like ``draw_bodypose`` does. Missing points and limbs with a missing end are
    skipped; points outside the canvas are clipped by OpenCV.

    Args:
        keypoints: ``(n, 18, 3)`` or ``(18, 3)`` pixel keypoints, numpy or torch.
        height, width: canvas size in pixels.

    Returns:
        ``(n, height, width, 3)`` float32 tensor in 0..1 (ComfyUI IMAGE layout), black background.
    """
    kp = as_keypoint_array(keypoints)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise InputError(f"pose image size must be positive; got {width}x{height}")
    present = present_mask(kp)
    out = np.zeros((kp.shape[0], height, width, 3), dtype=np.uint8)
    limb_colors = [[int(float(c) * 0.6) for c in color] for color in COLORS]
    for f in range(kp.shape[0]):
        canvas = out[f]
        pts = kp[f].astype(np.float64)
        for (i, j), color in zip(LIMB_SEQUENCE, limb_colors):
            if not (present[f, i] and present[f, j]):
                continue
            xs = np.array([pts[i, 0], pts[j, 0]])
            ys = np.array([pts[i, 1], pts[j, 1]])
            mx, my = float(np.mean(xs)), float(np.mean(ys))
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), int(stick_width)), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, color)
        for j in range(NUM_KEYPOINTS):
            if not present[f, j]:
                continue
            cv2.circle(canvas, (int(pts[j, 0]), int(pts[j, 1])), int(point_radius), list(COLORS[j]), thickness=-1)
    return torch.from_numpy(out).float().div_(255.0)
