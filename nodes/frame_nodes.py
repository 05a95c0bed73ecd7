"""Frame nodes: take a clip's frames at a target frame rate; shuffle the frames of a clip (with their poses and
masks) in one seeded order, and undo it."""

from __future__ import annotations

import logging

import torch

from ..motion_core.errors import InputError
from ..motion_core.method.frames import (check_permutation, frame_stride, inverse_permutation, permute_frames,
                                         select_frames, shuffle_permutation)
from .handle import CATEGORY, PERMUTATION_TYPE

FRAME_CATEGORY = f"{CATEGORY}/frames"
log = logging.getLogger("edit_your_motion")

PERMUTATION_TOOLTIP = (
    "The frame order used (frame i of the output is frame permutation[i] of the input). Stage 1 Tuning "
    "reshuffles the frames every step by default; connect this to its optional permutation input to train on "
    "this fixed order instead, and to EYM Unshuffle Frames to restore the original order."
)


def _image_batch(images, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4:
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be an IMAGE batch (frames, height, width, channels); got {shape}")
    return images


def _as_permutation(permutation) -> torch.Tensor:
    try:
        perm = torch.as_tensor(permutation)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"permutation must come from EYM Shuffle Frames; got {type(permutation).__name__}") from None
    return perm.to("cpu")


class ShuffleFrames:
    DESCRIPTION = (
        "Puts the frames in a seeded random order, applying the same order to the pose images and masks given. "
        "Stage 1 of Edit-Your-Motion trains on shuffled frames so that it learns the person's appearance "
        "rather than the motion."
    )
    CATEGORY = FRAME_CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "IMAGE", "MASK", PERMUTATION_TYPE)
    RETURN_NAMES = ("images", "poses", "mask", "permutation")
    OUTPUT_TOOLTIPS = (
        "The frames in the shuffled order.",
        "The pose images in the same order (nothing when no poses were connected).",
        "The masks in the same order (nothing when no mask was connected; a 1-frame mask passes unchanged).",
        PERMUTATION_TOOLTIP,
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames to shuffle."}),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": "fixed",
                    "tooltip": "Seed of the random order: the same seed and frame count always give the same order.",
                }),
            },
            "optional": {
                "poses": ("IMAGE", {"tooltip": "Pose images of the same frames; shuffled in the same order."}),
                "mask": ("MASK", {"tooltip": "Masks of the same frames (one per frame); shuffled in the same order."}),
            },
        }

    def run(self, images, seed=0, poses=None, mask=None):
        images = _image_batch(images, "images")
        if poses is not None:
            _image_batch(poses, "poses")
        if mask is not None and mask.ndim == 2:
            mask = mask[None]
        # a single mask is the same in any order: pass it through for nodes that broadcast it
        single_mask = mask is not None and mask.shape[0] == 1 and images.shape[0] != 1
        perm = shuffle_permutation(images.shape[0], int(seed))
        out = permute_frames(perm, images=images, poses=poses, mask=None if single_mask else mask)
        out_mask = mask if single_mask else out["mask"]
        return (out["images"], out["poses"], out_mask, perm)


class UnshuffleFrames:
    DESCRIPTION = "Restores the original frame order of frames shuffled by EYM Shuffle Frames (the inverse permutation)."
    CATEGORY = FRAME_CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("The frames in their original order.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "Frames in the shuffled order (e.g. decoded from shuffled latents)."}),
                "permutation": (PERMUTATION_TYPE, {"tooltip": "The permutation output of the EYM Shuffle Frames that shuffled them."}),
            }
        }

    def run(self, images, permutation):
        images = _image_batch(images, "images")
        perm = _as_permutation(permutation)
        check_permutation(perm, images.shape[0], "permutation")
        inv = inverse_permutation(perm.long())
        return (images.index_select(0, inv.to(images.device)),)


class SelectFrames:
    DESCRIPTION = (
        "Takes the frames of a clip at about a target frame rate: every k-th frame from start_frame, at most "
        "'frames' of them, and the frame rate they play at. Use the same settings on the source and the reference "
        "clip, and connect the fps output to Create Video, so the edit plays at the speed of the source. Long "
        "clips are edited in context windows (EYM Context Options): tuning costs what 8 frames cost, inversion and "
        "sampling grow with the frame count."
    )
    CATEGORY = FRAME_CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "FLOAT", "INT")
    RETURN_NAMES = ("images", "fps", "every_nth")
    OUTPUT_TOOLTIPS = (
        "The frames taken.",
        "The rate they play at: the clip's fps divided by every_nth (connect it to Create Video's fps). Without "
        "the clip's fps connected: target_fps.",
        "k: every k-th frame of the clip was taken.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "All frames of the clip (e.g. Get Video Components' images)."}),
                "frames": ("INT", {
                    "default": 48, "min": 0, "max": 100000,
                    "tooltip": "How many frames to take (0: all there are). 8 is the paper's clip. More frames cost "
                               "inversion and sampling time in proportion (about 1.5x per frame of an 8-frame clip "
                               "with windows of 8 overlapping by 2), not tuning time or memory, when an EYM Context "
                               "Options node is connected. Source and reference must give the same count.",
                }),
                "target_fps": ("FLOAT", {
                    "default": 12.0, "min": 0.0, "max": 240.0, "step": 0.5,
                    "tooltip": "Take every k-th frame so the clip plays at about this rate (24 fps to 12: every 2nd; "
                               "30 fps to 12: every 2nd, 15 fps). 8-12 fps covers a motion with few frames; 0: every "
                               "frame. A clip at or below this rate keeps every frame.",
                }),
                "start_frame": ("INT", {"default": 0, "min": 0, "max": 100000,
                                        "tooltip": "The first frame taken (0: the clip's first)."}),
            },
            "optional": {
                "fps": ("FLOAT", {"forceInput": True,
                                  "tooltip": "The clip's own frame rate (Get Video Components' fps). Not connected: "
                                             "every frame is taken and the output plays at target_fps (30 when that is 0)."}),
            },
        }

    def run(self, images, frames=48, target_fps=12.0, start_frame=0, fps=None):
        images = _image_batch(images, "images")
        every = frame_stride(fps, float(target_fps))
        idx = select_frames(images.shape[0], every, int(frames), int(start_frame))
        if frames and idx.numel() < frames:
            log.warning("EYM Select Frames: the clip gives only %d frames (of %d, from frame %d, every %d); "
                        "asked for %d. Set frames to %d on both Select Frames nodes, or use a longer clip",
                        idx.numel(), images.shape[0], start_frame, every, frames, idx.numel())
        if fps is not None and fps > 0:
            out_fps = float(fps) / every
        else:
            out_fps = float(target_fps) if target_fps > 0 else 30.0
        return (images.index_select(0, idx.to(images.device)), out_fps, every)


NODE_CLASS_MAPPINGS = {
    "EYM_SelectFrames": SelectFrames,
    "EYM_ShuffleFrames": ShuffleFrames,
    "EYM_UnshuffleFrames": UnshuffleFrames,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EYM_SelectFrames": "EYM Select Frames (frame rate, count)",
    "EYM_ShuffleFrames": "EYM Shuffle Frames",
    "EYM_UnshuffleFrames": "EYM Unshuffle Frames",
}
