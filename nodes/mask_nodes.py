"""Mask nodes: mask out the background of the source frames (stage 1 trains on U·M), and a rough person
mask from keypoints for users without a segmentation node."""

from __future__ import annotations

import torch

from ..motion_core.errors import InputError, check_frame_counts
from ..motion_core.method.frames import apply_background_mask
from ..motion_core.pose import mediapipe_detector, person_masks_from_keypoints
from ..motion_core.pose.keypoints import format_indices
from ..motion_core.pose.mask_refine import refine_masks
from . import comfy_bridge as bridge
from . import detectors
from .handle import CATEGORY
from .pose_nodes import ALLOW_MISSING_TOOLTIP, PERSON_TOOLTIP, SIZE_TOOLTIP, keypoints_at_size

MASK_CATEGORY = f"{CATEGORY}/masks"


def _mask_batch(mask, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.ndim not in (2, 3):
        shape = tuple(mask.shape) if isinstance(mask, torch.Tensor) else type(mask).__name__
        raise InputError(f"{name} must be a MASK (frames, height, width); got {shape}")
    return mask[None] if mask.ndim == 2 else mask


class MaskFrames:
    DESCRIPTION = (
        "Masks out the background of the source frames: masked = frames x mask + background x (1 - mask). "
        "Stage 1 of Edit-Your-Motion learns the person's appearance and motion from the frames with the "
        "background removed (U·M): encode this node's output with VAE Encode and connect that LATENT to "
        "Stage 1's masked_latent."
    )
    CATEGORY = MASK_CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("masked_images",)
    OUTPUT_TOOLTIPS = ("The frames with everything outside the mask set to the background value (U·M for Stage 1).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The source video frames."}),
                "mask": ("MASK", {
                    "tooltip": "The person mask (1 = person): from a segmentation node, EYM Person Mask From "
                               "Keypoints, or Load Image's alpha (ComfyUI's mask is 1 where the image is "
                               "transparent: add Invert Mask when the person is the opaque part). One frame (used "
                               "for all) or one per frame; resized to the frames if it has their aspect ratio (another "
                               "aspect ratio is refused rather than stretched). Every frame must contain some "
                               "person pixels.",
                }),
                "background": ("FLOAT", {
                    "default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01,
                    "tooltip": "Value of the masked-out pixels: 0 = black, as in the paper.",
                }),
            }
        }

    def run(self, images, mask, background=0.0):
        if not isinstance(images, torch.Tensor) or images.ndim != 4:
            raise InputError("images must be an IMAGE batch (frames, height, width, channels)")
        mask = _mask_batch(mask, "mask").to(images.device)
        if mask.shape[0] != 1:
            check_frame_counts(images=images, mask=mask)
        out = apply_background_mask(images, mask, float(background))
        return (out.to(bridge.intermediate_device()),)


class KeypointMask:
    DESCRIPTION = (
        "A rough person mask drawn from the skeleton (thick limbs, filled torso, head disk, then dilated), for "
        "masking the background when no segmentation node is at hand. A segmentation mask (e.g. SAM) follows "
        "clothes and hair more closely."
    )
    CATEGORY = MASK_CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("Person mask (1 = person), one per frame.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "Keypoints of the source video (e.g. from EYM Extract Poses)."}),
                "person": ("STRING", {"default": "largest", "tooltip": PERSON_TOOLTIP}),
                "width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip": SIZE_TOOLTIP.format(what="mask width")}),
                "height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip": SIZE_TOOLTIP.format(what="mask height")}),
                "grow": ("FLOAT", {
                    "default": 1.0, "min": 0.1, "max": 4.0, "step": 0.05,
                    "tooltip": "Multiplier on the automatic sizes (limb width 0.35, head radius 0.4 and dilation "
                               "0.15 of the torso length): above 1 covers loose clothes and hair, below 1 hugs "
                               "the skeleton.",
                }),
                "allow_missing": ("BOOLEAN", {
                    "default": False,
                    "tooltip": ALLOW_MISSING_TOOLTIP.format(what="give those frames an empty mask"),
                }),
            }
        }

    def run(self, pose_keypoint, person="largest", width=0, height=0, grow=1.0, allow_missing=False):
        kp, h, w = keypoints_at_size(pose_keypoint, person, bool(allow_missing), height, width)
        masks = person_masks_from_keypoints(kp, h, w, grow=float(grow))
        return (masks.to(bridge.intermediate_device()),)


class PersonMask:
    DESCRIPTION = (
        "The person mask for the background masking of Stage 1. mediapipe: the segmentation of mediapipe's pose "
        "model, which follows the person's outline, clothes and hair (optional package, nothing to download). "
        "mediapipe_selfie: mediapipe's selfie segmentation (every person in the frame). keypoints: the rough mask "
        "drawn from the skeleton (about twice the person's size). auto: mediapipe when it is installed, else "
        "keypoints. Then optional smoothing over time and growing or shrinking in pixels."
    )
    CATEGORY = MASK_CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("MASK",)
    RETURN_NAMES = ("mask",)
    OUTPUT_TOOLTIPS = ("Person mask (1 = person), one per frame, the size of the images.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The source video frames; the mask has their size."}),
                "method": (list(detectors.MASK_METHODS), {
                    "default": "auto",
                    "tooltip": "mediapipe: segmentation by mediapipe's pose model (one person; needs the optional "
                               "package: " + mediapipe_detector.MEDIAPIPE_INSTALL + "). mediapipe_selfie: "
                               "mediapipe's selfie segmentation (every person). keypoints: the rough mask drawn "
                               "from pose_keypoint. auto: mediapipe when installed, else keypoints.",
                }),
                "threshold": ("FLOAT", {
                    "default": 0.5, "min": 0.01, "max": 0.99, "step": 0.01,
                    "tooltip": "mediapipe methods: a pixel belongs to the person when its person probability "
                               "(after smoothing) is at least this. Lower takes in more hair and loose clothes.",
                }),
                "temporal_smoothing": ("INT", {
                    "default": 0, "min": 0, "max": 8,
                    "tooltip": "Average each frame's mask with this many frames before and after it (0 = off). "
                               "Steadies flickering edges; 1 also fills a one-frame dropout and removes a "
                               "one-frame blob.",
                }),
                "grow_pixels": ("INT", {
                    "default": 0, "min": -128, "max": 128,
                    "tooltip": "Grow (positive) or shrink (negative) the mask by this many pixels, e.g. a few "
                               "pixels to keep the hair's edge.",
                }),
            },
            "optional": {
                "pose_keypoint": ("POSE_KEYPOINT", {
                    "tooltip": "Keypoints of the same frames (e.g. from EYM Extract Poses): needed by the "
                               "keypoints method, and by auto when mediapipe is not installed.",
                }),
                "person": ("STRING", {"default": "largest", "tooltip": PERSON_TOOLTIP + " keypoints method only."}),
                "allow_missing": ("BOOLEAN", {
                    "default": False,
                    "tooltip": ALLOW_MISSING_TOOLTIP.format(what="give those frames an empty mask"),
                }),
            },
        }

    def run(self, images, method="auto", threshold=0.5, temporal_smoothing=0, grow_pixels=0, pose_keypoint=None,
            person="largest", allow_missing=False):
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
            raise InputError("images must be an IMAGE batch (frames, height, width, 3)")
        n, h, w = images.shape[:3]
        progress = bridge.Progress(n, "Edit-Your-Motion person mask", prepare=1)  # shown from the first second
        chosen = detectors.choose_mask_method(method)
        if chosen == "keypoints":
            if pose_keypoint is None:
                raise InputError(
                    f"method {method}{' (mediapipe is not installed)' if method == 'auto' else ''} draws the mask from "
                    "keypoints: connect pose_keypoint (e.g. from EYM Extract Poses), or install mediapipe: "
                    + mediapipe_detector.MEDIAPIPE_INSTALL
                )
            kp, _, _ = keypoints_at_size(pose_keypoint, person, bool(allow_missing), h, w)
            check_frame_counts(images=n, pose_keypoint=kp.shape[0])
            soft = person_masks_from_keypoints(kp, h, w)
        else:
            progress.phase("starting mediapipe segmentation")
            model = "selfie" if chosen == "mediapipe_selfie" else "pose"
            soft = mediapipe_detector.segment_people(images[..., :3], model=model, video=True,
                                                     callback=lambda i, total: progress.step())
        masks = refine_masks(soft, threshold=float(threshold), smoothing=int(temporal_smoothing),
                             grow=int(grow_pixels))
        empty = torch.nonzero(masks.flatten(1).amax(1) == 0).flatten().tolist()
        if empty and not allow_missing:
            raise InputError(
                f"the {chosen} person mask is empty in images frame(s) {format_indices(empty)} of {n}: no person "
                "was found there (or grow_pixels shrank it away). Trim those frames, try another method, or turn on "
                "allow_missing."
            )
        return (masks.to(bridge.intermediate_device()),)


NODE_CLASS_MAPPINGS = {
    "EYM_MaskFrames": MaskFrames,
    "EYM_KeypointMask": KeypointMask,
    "EYM_PersonMask": PersonMask,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EYM_MaskFrames": "EYM Mask Background",
    "EYM_KeypointMask": "EYM Person Mask From Keypoints",
    "EYM_PersonMask": "EYM Person Mask (mediapipe / keypoints)",
}
