"""The frames the pose detectors read: ComfyUI IMAGE batches (or arrays) as RGB ``uint8``."""

from __future__ import annotations

import numpy as np
import torch

from ..errors import InputError


def to_uint8_frames(images) -> np.ndarray:
    """``images`` — a float IMAGE batch ``(n, H, W, 3)`` in 0..1 (a tensor or an array), a ``uint8`` one, or
    a single frame ``(H, W, 3)`` — as a contiguous RGB ``uint8`` array ``(n, H, W, 3)``. An alpha channel is
    dropped."""
    if isinstance(images, torch.Tensor):
        arr = images.detach().to("cpu")
        arr = arr.numpy() if arr.dtype == torch.uint8 else (arr.float().clamp(0, 1) * 255.0).round().to(torch.uint8).numpy()
    else:
        arr = np.asarray(images)
        if arr.dtype != np.uint8:
            arr = (np.clip(arr.astype(np.float32), 0.0, 1.0) * 255.0).round().astype(np.uint8)
    if arr.ndim == 3:
        arr = arr[None]
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4):
        raise InputError(f"images must be RGB frames shaped (frames, height, width, 3); got {tuple(arr.shape)}")
    if arr.shape[0] == 0:
        raise InputError("images has no frames")
    return np.ascontiguousarray(arr[..., :3])
