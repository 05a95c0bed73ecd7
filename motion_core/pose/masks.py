"""Rough person masks drawn from skeletons, for users without a segmentation model."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from ..errors import InputError
from .align import _anchor_and_size
from .keypoints import (
    LIMB_SEQUENCE, _HEAD_POINTS, _TORSO_POINTS, as_keypoint_array, present_mask,
)


# ----------------------------------------------------------------------------------------------
# rough person masks
# ----------------------------------------------------------------------------------------------

def _body_sizes(kp: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per frame torso length in pixels (neck to mid-hip), estimated from the bbox height / 3 when hips
    or neck are missing, and never below 3% of the short image side (a lone point still gets a blob)."""
    _, torso, ok = _anchor_and_size(kp, "neck_hip", need_size=True)
    _, bbox_h, _ = _anchor_and_size(kp, "bbox", need_size=False)
    _, shoulders, ok_sh = _anchor_and_size(kp, "neck_shoulders", need_size=True)
    fallback = np.maximum(bbox_h / 3.0, np.where(ok_sh, shoulders, 0.0))
    size = np.where(ok, torso, fallback)
    return np.maximum(size, max(0.03 * min(height, width), 2.0))


def person_masks_from_keypoints(keypoints, height: int, width: int, limb_width: float | None = None,
                                dilate: int | None = None, grow: float = 1.0) -> torch.Tensor:
    """Rough person masks from skeletons, for users without a segmentation node.

    Per frame: every limb of ``LIMB_SEQUENCE`` with both ends present as a thick line, a disk on every
    present keypoint, the convex hull of the present torso points (neck, shoulders, hips) filled, and a
    head disk around the present face points (nose, eyes, ears); the result is dilated.

    Sizes are relative to the frame's body size ``T`` (neck to mid-hip distance; bbox height / 3 or the
    shoulder width when that is unavailable; at least 3% of the short image side):
    limb width ``0.35 T`` (unless ``limb_width`` pixels is given), head radius ``0.4 T`` (enlarged to
    reach every face point), dilation ``0.15 T`` pixels (unless ``dilate`` pixels is given; 0 = none).
    ``grow`` multiplies these automatic sizes (limb width, head radius, dilation; not an explicit
    ``limb_width`` / ``dilate``): above 1 for a looser mask around clothes and hair, below 1 for a
    tighter one.

    A frame without any present keypoint gives an all-zero mask; the caller decides if that is an error.

    Returns:
        ``(n, height, width)`` float32 tensor of 0/1.
    """
    kp = as_keypoint_array(keypoints)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise InputError(f"mask size must be positive; got {width}x{height}")
    grow = float(grow)
    if not (math.isfinite(grow) and grow > 0):
        raise InputError(f"grow must be a positive number; got {grow}")
    present = present_mask(kp)
    sizes = _body_sizes(kp, height, width)
    masks = np.zeros((kp.shape[0], height, width), dtype=np.uint8)
    for f in range(kp.shape[0]):
        if not present[f].any():
            continue
        m = masks[f]
        T = float(sizes[f])
        lw = max(1, int(round(limb_width if limb_width is not None else 0.35 * T * grow)))
        pts = np.round(kp[f, :, :2].astype(np.float64)).astype(np.int64)
        pts = np.clip(pts, -(2 ** 20), 2 ** 20)  # keep OpenCV in range for wild outliers
        torso = [pts[j] for j in _TORSO_POINTS if present[f, j]]
        if len(torso) >= 3:
            hull = cv2.convexHull(np.array(torso, dtype=np.int32))
            cv2.fillConvexPoly(m, hull, 1)
        for i, j in LIMB_SEQUENCE:
            if present[f, i] and present[f, j]:
                cv2.line(m, tuple(int(v) for v in pts[i]), tuple(int(v) for v in pts[j]), 1, thickness=lw)
        r_pt = max(1, int(math.ceil(lw / 2)))
        for j in np.nonzero(present[f])[0]:
            cv2.circle(m, tuple(int(v) for v in pts[j]), r_pt, 1, thickness=-1)
        head = [j for j in _HEAD_POINTS if present[f, j]]
        if head:
            centre = kp[f, head, :2].astype(np.float64).mean(axis=0)
            reach = np.linalg.norm(kp[f, head, :2] - centre, axis=1).max()
            radius = int(math.ceil(max(0.4 * T * grow, reach + lw / 2)))
            cv2.circle(m, tuple(int(v) for v in np.round(centre)), radius, 1, thickness=-1)
        d = int(round(0.15 * T * grow)) if dilate is None else int(dilate)
        if d > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * d + 1, 2 * d + 1))
            masks[f] = cv2.dilate(m, kernel)
    return torch.from_numpy(masks).float()


#: the ``grow`` values :func:`fit_mask_grow` tries (the automatic sizes' factor)
FIT_GROWS = tuple(round(0.1 + 0.05 * k, 2) for k in range(39))  # 0.1 .. 2.0


def fit_mask_grow(keypoints, masks, grows=FIT_GROWS) -> tuple[float, float]:
    """The ``grow`` of :func:`person_masks_from_keypoints` whose drawn masks best match a person's own
    masks: ``(grow, IoU)``, IoU = intersection / union summed over all frames (masks >= 0.5).

    Used to draw a *tight* target person: fit ``grow`` on the source person (its skeletons and its
    segmentation mask), then draw the aligned reference skeletons (already at the source person's size)
    with it, so their limbs get the source person's measured thickness instead of the rough default
    (about twice the person). Frames without keypoints are left out; ties go to the smaller ``grow``.
    """
    kp = as_keypoint_array(keypoints)
    m = masks.detach().float().cpu().numpy() if isinstance(masks, torch.Tensor) else np.asarray(masks, np.float32)
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3 or m.shape[0] != kp.shape[0]:
        raise InputError(f"masks must be (frames, height, width) with one per keypoint frame ({kp.shape[0]}); "
                         f"got shape {tuple(m.shape)}")
    if not len(grows):
        raise InputError("fit_mask_grow needs at least one grow value to try")
    keep = present_mask(kp).any(axis=1)
    if not keep.any():
        raise InputError("fitting the mask size needs keypoints in at least one frame")
    kp, truth = kp[keep], m[keep] >= 0.5
    best = None
    for g in grows:
        drawn = person_masks_from_keypoints(kp, m.shape[1], m.shape[2], grow=float(g)).numpy() >= 0.5
        union = int((drawn | truth).sum())
        iou = int((drawn & truth).sum()) / union if union else 0.0
        if best is None or iou > best[1]:
            best = (float(g), iou)
    return best
