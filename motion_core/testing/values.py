"""What the tests feed the engine and the nodes, built from a synthetic clip and the tiny models:
the engine's tensors (latents, masked latents, pose hints) and ComfyUI's value types (CONDITIONING,
LATENT). Plain Python values; nothing here imports ComfyUI."""

from __future__ import annotations

import torch

from ..method.frames import apply_background_mask, poses_to_condition
from ..video_model.sd15 import SD15_LATENT_SCALE as LATENT_SCALE
from .synthetic import SyntheticClip, frames_to_latents
from .tiny import encode_prompt


def engine_inputs(clip: SyntheticClip) -> dict:
    """The tuner's and samplers' inputs for ``clip``: ``latents``, ``masked`` (the latents of the frames with
    the background masked out, stage 1's input) and ``poses`` (ControlNet hints at the clip's size)."""
    height, width = clip.frames.shape[1:3]
    return dict(
        latents=frames_to_latents(clip.frames),
        masked=frames_to_latents(apply_background_mask(clip.frames, clip.masks)),
        poses=poses_to_condition(clip.poses, height, width),
    )


def conditioning(text: str) -> list:
    """A CONDITIONING as CLIP Text Encode returns it: ``[[embedding (1, tokens, dim), {"pooled_output": …}]]``,
    with the tiny text encoder's embedding of ``text``."""
    return [[encode_prompt(text), {"pooled_output": None}]]


def latent(frames: torch.Tensor, scale: float = LATENT_SCALE) -> dict:
    """A LATENT as VAE Encode returns it: ``{"samples": latents / scale}`` (ComfyUI keeps latents unscaled;
    the nodes multiply by the model's scale), from the tests' stand-in encoder."""
    return {"samples": frames_to_latents(frames) / scale}
