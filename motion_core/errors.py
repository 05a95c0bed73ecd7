"""Errors the engine raises for bad input, and the checks that raise them.

Every message names the argument at fault and says what to do about it, because in ComfyUI the
message is all the user sees.
"""

from __future__ import annotations

from typing import Iterable

import torch


class InputError(ValueError):
    """A public entry point was given input it cannot use. The message names the input and the fix."""


class ModelError(ValueError):
    """A model (UNet, ControlNet, tuned weights) is not what the engine needs."""


#: the module name ComfyUI shows before an error's class name. ComfyUI reports ``module.ClassName``, and
#: imports a custom node pack under its folder's full path, so the real module name would show the
#: user's install path (``/home/.../custom_nodes/<pack>.motion_core.errors.InputError``).
PUBLIC_MODULE = "edit_your_motion"


def short_module_name(cls: type) -> type:
    """Give ``cls`` the short public module name (see :data:`PUBLIC_MODULE`); returns it."""
    cls.__module__ = PUBLIC_MODULE
    return cls


short_module_name(InputError)
short_module_name(ModelError)


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


def check_finite(name: str, value: torch.Tensor | None,
                 fix: str = "check the node or file that made it (a broken frame, a failed VAE Encode, a corrupt pose image)") -> None:
    """A tensor given to the engine must hold no NaN or infinity: one would spread through the model
    and turn every result into NaN. The error names the input and, for frame batches, the frames."""
    if value is None or not torch.is_tensor(value) or not value.is_floating_point():
        return
    bad = ~torch.isfinite(value)
    if not bool(bad.any()):
        return
    where = ""
    if value.ndim == 4:
        frames = bad.flatten(1).any(1).nonzero().flatten().tolist()
        where = f" in frame(s) {frames}"
    raise InputError(f"{name} contains NaN or infinite values ({int(bad.sum())} of {value.numel()}{where}); {fix}")


def nonfinite_tensors(named: Iterable[tuple[str, torch.Tensor]], limit: int = 3) -> list[str]:
    """Names of (up to ``limit``) tensors that hold NaN or infinity (for error messages)."""
    out = []
    for name, t in named:
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            out.append(name)
            if len(out) >= limit:
                break
    return out


def check_inputs_finite(**named: torch.Tensor | None) -> None:
    """:func:`check_finite` for each named input (``None`` is skipped)."""
    for name, value in named.items():
        check_finite(name, value)


def check_guidance(guidance: float, negative: object | None, name: str = "uncond_embeddings") -> None:
    """Classifier-free guidance: ``guidance`` must be >= 1, and above 1 it needs the negative (empty)
    prompt, given as the input called ``name`` (the engine's argument or the node's socket)."""
    if guidance < 1:
        raise InputError(f"guidance must be >= 1 (1 = no classifier-free guidance); got {guidance}")
    if guidance > 1 and negative is None:
        raise InputError(
            f"guidance > 1 needs '{name}', the negative (empty) prompt: connect a CLIP Text Encode with an empty "
            "prompt there, or set guidance to 1"
        )


def check_poses(name: str, poses: torch.Tensor | None, latents: torch.Tensor, has_controlnet: bool,
                factor: int = 8) -> None:
    """Pose hints ``(frames, 3, H, W)`` must be the video's pixel size (``factor`` × the latents') and
    need a ControlNet to read them. ``None`` (no poses) passes."""
    if poses is None:
        return
    want = (latents.shape[-2] * factor, latents.shape[-1] * factor)
    if tuple(poses.shape[-2:]) != want:
        raise InputError(
            f"{name} are {poses.shape[-1]}x{poses.shape[-2]} pixels but the latents are for {want[1]}x{want[0]}; "
            "resize the pose images to the video size"
        )
    if not has_controlnet:
        raise InputError(f"{name} were given but the model has no ControlNet; load an openpose ControlNet")
