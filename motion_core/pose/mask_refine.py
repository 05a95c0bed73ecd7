"""Post-processing for person masks: temporal smoothing, thresholding, growing / shrinking in pixels."""

from __future__ import annotations

import math

import cv2
import numpy as np
import torch

from ..errors import InputError

__all__ = ["smooth_masks_over_time", "grow_masks", "refine_masks"]


def _mask_batch(masks, name: str = "masks") -> torch.Tensor:
    if not isinstance(masks, torch.Tensor):
        masks = torch.as_tensor(np.asarray(masks))
    if masks.ndim == 2:
        masks = masks[None]
    if masks.ndim != 3 or masks.shape[0] == 0:
        raise InputError(f"{name} must be masks shaped (frames, height, width); got {tuple(masks.shape)}")
    return masks.detach().to("cpu", torch.float32)


def smooth_masks_over_time(masks, radius: int) -> torch.Tensor:
    """Average every frame's mask with its ``radius`` neighbours on each side (a box filter over time).

    The window is cut at the ends of the clip (the first frame averages frames 0..radius), so a mask that
    is the same in every frame does not change. On soft masks (probabilities) this steadies flicker at
    the edges; on 0/1 masks thresholded at 0.5 afterwards it is a majority vote over the window, which
    removes a blob that appears in a single frame and fills a single-frame dropout. ``radius = 0`` returns
    the masks unchanged. Batched over frames and pixels (cumulative sums).

    Returns:
        float32 ``(n, H, W)``.
    """
    masks = _mask_batch(masks)
    radius = int(radius)
    if radius < 0:
        raise InputError(f"temporal smoothing radius must be >= 0 frames; got {radius}")
    n = masks.shape[0]
    if radius == 0 or n == 1:
        return masks.clone()
    csum = torch.cat([torch.zeros_like(masks[:1], dtype=torch.float64), masks.double().cumsum(0)])
    idx = torch.arange(n)
    lo, hi = (idx - radius).clamp(min=0), (idx + radius + 1).clamp(max=n)
    window = (csum[hi] - csum[lo]) / (hi - lo).to(torch.float64).view(n, 1, 1)
    return window.float()


def grow_masks(masks, pixels: int) -> torch.Tensor:
    """Grow (``pixels > 0``) or shrink (``pixels < 0``) 0/1 masks by ``|pixels|`` pixels.

    A pixel joins the grown mask when it lies within ``pixels`` (Euclidean distance, a disk-shaped
    structuring element) of a mask pixel; shrinking is the same applied to the background. Values are
    thresholded at 0.5 first. OpenCV's morphology runs per frame (it is one C call per frame).

    Returns:
        float32 ``(n, H, W)`` of 0/1.
    """
    masks = _mask_batch(masks)
    pixels = int(pixels)
    binary = (masks >= 0.5).numpy().astype(np.uint8)
    if pixels == 0:
        return torch.from_numpy(binary.astype(np.float32))
    r = abs(pixels)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    op = cv2.dilate if pixels > 0 else cv2.erode
    # border: shrinking does not eat in from the frame edge (a person cut by the frame stays cut there)
    out = np.stack([op(m, kernel, borderType=cv2.BORDER_REPLICATE) for m in binary])
    return torch.from_numpy(out.astype(np.float32))


def refine_masks(masks, threshold: float = 0.5, smoothing: int = 0, grow: int = 0) -> torch.Tensor:
    """Soft or 0/1 person masks -> 0/1 masks: temporal smoothing (``smoothing`` frames each side), then
    ``>= threshold``, then grow/shrink by ``grow`` pixels. Returns float32 ``(n, H, W)`` of 0/1."""
    threshold = float(threshold)
    if not (math.isfinite(threshold) and 0.0 < threshold < 1.0):
        raise InputError(f"threshold must be between 0 and 1 (exclusive); got {threshold}")
    soft = smooth_masks_over_time(masks, smoothing)
    binary = (soft >= threshold).float()
    return grow_masks(binary, grow) if int(grow) != 0 else binary
