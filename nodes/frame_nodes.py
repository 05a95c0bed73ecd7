"""Frame nodes: shuffle the frames of a clip (with their poses and masks) in one seeded order, and undo it."""

from __future__ import annotations

import torch

from ..motion_core.errors import InputError
from ..motion_core.method.frames import check_permutation, inverse_permutation, permute_frames, shuffle_permutation
from .handle import CATEGORY, PERMUTATION_TYPE

FRAME_CATEGORY = f"{CATEGORY}/frames"

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


NODE_CLASS_MAPPINGS = {
    "EYM_ShuffleFrames": ShuffleFrames,
    "EYM_UnshuffleFrames": UnshuffleFrames,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EYM_ShuffleFrames": "EYM Shuffle Frames",
    "EYM_UnshuffleFrames": "EYM Unshuffle Frames",
}
