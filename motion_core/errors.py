"""Errors the engine raises for bad input, and the checks that raise them.

Every message names the argument at fault and says what to do about it, because in ComfyUI the
message is all the user sees.
"""

from __future__ import annotations

import torch


class InputError(ValueError):
    """A public entry point was given input it cannot use. The message names the input and the fix."""


class ModelError(ValueError):
    """A model (UNet, ControlNet, tuned weights) is not what the engine needs."""


def check_frame_counts(**named: int | torch.Tensor | None) -> int:
    """All given inputs must have the same number of frames; returns it.

    Values may be ints or tensors (their first axis is the frame axis); ``None`` is skipped.
    """
    counts = {}
    for name, value in named.items():
        if value is None:
            continue
        n = int(value) if isinstance(value, int) else int(value.shape[0])
        counts[name] = n
    if not counts:
        raise InputError("no frames were given")
    for name, n in counts.items():
        if n < 1:
            raise InputError(f"{name} has {n} frames; give at least one frame")
    if len(set(counts.values())) > 1:
        listing = ", ".join(f"{k} has {v}" for k, v in counts.items())
        raise InputError(
            f"frame counts disagree: {listing}. Give every input the same frames "
            "(trim the longer video, or load both with the same frame range and frame rate)."
        )
    return next(iter(counts.values()))


def check_latent_size(name: str, latents: torch.Tensor, channels: int | None = 4) -> None:
    """A latent batch must be (frames, channels, h, w)."""
    if latents.ndim != 4:
        raise InputError(f"{name} must be a batch of latents shaped (frames, channels, height/8, width/8); got shape {tuple(latents.shape)}")
    if channels is not None and latents.shape[1] != channels:
        raise InputError(
            f"{name} has {latents.shape[1]} latent channels but the model expects {channels}: "
            "encode the frames with the VAE of an SD1.5 checkpoint."
        )


def check_pixel_size(name: str, height: int, width: int, multiple: int = 8) -> None:
    """Pixel sizes must be divisible by the VAE factor."""
    if height % multiple or width % multiple:
        h2, w2 = height // multiple * multiple, width // multiple * multiple
        raise InputError(
            f"{name} is {width}x{height}; width and height must be divisible by {multiple}. "
            f"Resize or crop it to e.g. {w2}x{h2} first."
        )


def check_masks(name: str, masks: torch.Tensor) -> None:
    """Masks must mark at least some pixels of every frame as the person."""
    if masks.ndim != 3:
        raise InputError(f"{name} must be shaped (frames, height, width); got {tuple(masks.shape)}")
    flat = masks.reshape(masks.shape[0], -1)
    empty = (flat.amax(dim=1) <= 0).nonzero().flatten().tolist()
    if empty:
        raise InputError(
            f"{name} is empty (no person pixels) in frame(s) {empty}. Check the segmentation for those "
            "frames, trim them from the clip, or build the mask from keypoints instead."
        )
