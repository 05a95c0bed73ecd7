"""Pose nodes: OpenPose detection, rendering POSE_KEYPOINT as ControlNet pose images, and the skeleton
offset that moves the reference motion onto the person being edited."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from ..motion_core.pose import openpose
from ..motion_core.errors import InputError
from ..motion_core.pose import (
    ANCHOR_MODES, align_skeletons, alignment_parameters, check_person, from_pose_keypoint, render_pose_images,
    resize_keypoints, to_pose_keypoint,
)
from . import comfy_bridge as bridge
from .handle import CATEGORY

log = logging.getLogger("edit_your_motion")

POSE_CATEGORY = f"{CATEGORY}/poses"

PERSON_TOOLTIP = (
    "Which person to use when a frame shows several: 'largest' (largest skeleton bounding box, chosen per "
    "frame) or a person index such as 0 or 1 (the pose estimator's order)."
)
STICK_TOOLTIP = "Half-width of the drawn limbs in pixels (controlnet_aux draws 4 at 512 pixels)."
POSE_IMAGES_TOOLTIP = "OpenPose skeleton images (black background) for the openpose ControlNet, one per frame."
POSE_KEYPOINT_TOOLTIP = (
    "The keypoints in comfyui_controlnet_aux's POSE_KEYPOINT format (pixel coordinates, one person per frame)."
)
SIZE_TOOLTIP = (
    "Output {what} in pixels. 0 = the keypoints' canvas size (or, when only the other side is given, keep the "
    "canvas aspect ratio). Keypoints are rescaled to the new size."
)
ALLOW_MISSING_TOOLTIP = (
    "Frames where the person is not found: off = stop with an error naming those frames; on = {what}."
)

_DETECTORS: dict = {}  # (real path, mtime) -> bridge.Managed(body network)


def _output_size(canvas_h: int, canvas_w: int, height: int, width: int) -> tuple[int, int]:
    """The requested output size; 0 keeps the canvas size (or its aspect ratio when one side is given)."""
    height, width = int(height), int(width)
    if height < 0 or width < 0:
        raise InputError(f"width and height must be >= 0 (0 = canvas size); got {width}x{height}")
    if height == 0 and width == 0:
        return canvas_h, canvas_w
    if height == 0:
        return max(1, round(canvas_h * width / canvas_w)), width
    if width == 0:
        return height, max(1, round(canvas_w * height / canvas_h))
    return height, width


def keypoints_at_size(pose_keypoint, person, allow_missing: bool, height: int, width: int,
                      name: str = "pose_keypoint") -> tuple[np.ndarray, int, int]:
    """Pixel keypoints of ``pose_keypoint`` rescaled to the requested size (0 = canvas size)."""
    kp, ch, cw = from_pose_keypoint(pose_keypoint, person=person, allow_missing=allow_missing, name=name)
    h, w = _output_size(ch, cw, height, width)
    if (h, w) != (ch, cw):
        kp = resize_keypoints(kp, ch, cw, h, w)
    return kp, h, w


def _detector_choices() -> list[str]:
    files = bridge.list_files(bridge.OPENPOSE_FOLDER, (".pth", ".safetensors"))
    if not files:
        return [openpose.BODY_MODEL_FILENAME]
    # the body model first; hand/face models of other packs may share the folder
    return sorted(files, key=lambda f: (os.path.basename(f) != openpose.BODY_MODEL_FILENAME, f))


def _where_hint() -> str:
    folders = bridge.folder_paths_for(bridge.OPENPOSE_FOLDER)
    return " or ".join(folders) + " (ComfyUI/models/openpose)"


def load_detector(filename: str) -> bridge.Managed:
    """The OpenPose body network of ``filename`` in the openpose model folder, loaded once per file version."""
    path = bridge.full_path(bridge.OPENPOSE_FOLDER, filename)
    if path is None:  # let the engine raise its missing-file message (names the file, source and folder)
        path = os.path.join(bridge.folder_paths_for(bridge.OPENPOSE_FOLDER)[0], filename)
        return bridge.Managed(openpose.load_body_model(path, where_hint=_where_hint()))
    real = os.path.realpath(path)
    key = (real, os.path.getmtime(real))
    managed = _DETECTORS.get(key)
    if managed is None:
        for stale in [k for k in _DETECTORS if k[0] == real]:
            del _DETECTORS[stale]
        managed = bridge.Managed(openpose.load_body_model(path, where_hint=_where_hint()))
        _DETECTORS[key] = managed
        log.info("loaded OpenPose body model %s", path)
    return managed


def _image_batch(images, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be an IMAGE batch (frames, height, width, 3); got {shape}")
    return images[..., :3]


class ExtractPoses:
    DESCRIPTION = (
        "Detects the body pose of one person in every frame with OpenPose (controlnet_aux's body network) and "
        "renders the skeletons as ControlNet pose images. Needs body_pose_model.pth from the Hugging Face "
        "repository lllyasviel/Annotators in ComfyUI/models/openpose. Run it on the source video and on the "
        "reference (motion) video."
    )
    CATEGORY = POSE_CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE", "POSE_KEYPOINT")
    RETURN_NAMES = ("pose_images", "pose_keypoint")
    OUTPUT_TOOLTIPS = (POSE_IMAGES_TOOLTIP + " Same size as the input frames.", POSE_KEYPOINT_TOOLTIP)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The video frames (an IMAGE batch, e.g. from a video loader)."}),
                "detector": (_detector_choices(), {
                    "tooltip": "The OpenPose body model in ComfyUI/models/openpose: body_pose_model.pth from the "
                               "Hugging Face repository lllyasviel/Annotators (or a .safetensors conversion).",
                }),
                "person": ("STRING", {"default": "largest", "tooltip": PERSON_TOOLTIP}),
                "detect_resolution": ("INT", {
                    "default": 512, "min": 64, "max": 2048, "step": 64,
                    "tooltip": "Frames are resized so the short side has this many pixels for detection (as "
                               "controlnet_aux does); keypoints come back in pixels of the input frames. Higher "
                               "finds small people better but is slower.",
                }),
                "stick_width": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": STICK_TOOLTIP}),
            }
        }

    def run(self, images, detector, person="largest", detect_resolution=512, stick_width=4):
        frames = _image_batch(images, "images")
        person = check_person(person)
        n, h, w = frames.shape[:3]
        managed = load_detector(detector)
        progress = bridge.Progress(n, "OpenPose")
        device = managed.load(memory_required=512 * 1024 ** 2)
        try:
            kp, found = openpose.detect_keypoints(
                frames, managed.module, person=person, detect_resolution=int(detect_resolution),
                callback=lambda i, total: progress.step(),
            )
        finally:
            managed.release()
        openpose.require_people(found, "images")
        log.info("OpenPose found the person in %d frames (%s)", n, device)
        pose_images = render_pose_images(kp, h, w, stick_width=int(stick_width))
        return (pose_images.to(bridge.intermediate_device()), to_pose_keypoint(kp, h, w))


class RenderPoses:
    DESCRIPTION = (
        "Renders POSE_KEYPOINT (from this pack or other pose estimators such as comfyui_controlnet_aux's "
        "OpenPose / DWPose; normalised or pixel coordinates) as ControlNet pose images: one person's body "
        "skeleton per frame, drawn exactly as controlnet_aux draws it."
    )
    CATEGORY = POSE_CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("pose_images",)
    OUTPUT_TOOLTIPS = (POSE_IMAGES_TOOLTIP,)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pose_keypoint": ("POSE_KEYPOINT", {"tooltip": "Keypoints from a pose estimator node (OpenPose-18 body points)."}),
                "person": ("STRING", {"default": "largest", "tooltip": PERSON_TOOLTIP}),
                "width": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip": SIZE_TOOLTIP.format(what="width")}),
                "height": ("INT", {"default": 0, "min": 0, "max": 8192, "step": 8, "tooltip": SIZE_TOOLTIP.format(what="height")}),
                "stick_width": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": STICK_TOOLTIP}),
                "allow_missing": ("BOOLEAN", {"default": False, "tooltip": ALLOW_MISSING_TOOLTIP.format(what="render them black")}),
            }
        }

    def run(self, pose_keypoint, person="largest", width=0, height=0, stick_width=4, allow_missing=False):
        kp, h, w = keypoints_at_size(pose_keypoint, person, bool(allow_missing), height, width)
        images = render_pose_images(kp, h, w, stick_width=int(stick_width))
        return (images.to(bridge.intermediate_device()),)


class AlignSkeleton:
    DESCRIPTION = (
        "Skeleton offset (from the paper's later version): the person in the reference video usually stands "
        "elsewhere in the frame and at another size than the person you edit. Driving the edit with the "
        "reference skeletons unchanged makes the person jump to the reference position, leaving a ghost of "
        "them at the old place. This moves (and scales) the whole reference motion rigidly so its body anchor "
        "lands on the source person's, keeping the motion itself."
    )
    CATEGORY = POSE_CATEGORY
    FUNCTION = "run"
    RETURN_TYPES = ("POSE_KEYPOINT", "IMAGE")
    RETURN_NAMES = ("pose_keypoint", "pose_images")
    OUTPUT_TOOLTIPS = (
        "The reference motion moved onto the source person, on the source video's canvas size (pixels).",
        POSE_IMAGES_TOOLTIP + " Source canvas size; use them as the target poses of the edit.",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reference": ("POSE_KEYPOINT", {"tooltip": "Keypoints of the reference video: the motion to transfer."}),
                "source": ("POSE_KEYPOINT", {
                    "tooltip": "Keypoints of the source video: the person to edit. Its first frame with a usable "
                               "body anchor sets where (and how large) the moved skeleton is.",
                }),
                "anchor": (list(ANCHOR_MODES), {
                    "default": ANCHOR_MODES[0],
                    "tooltip": "The body point matched between the two people. neck_hip: midpoint of the neck and "
                               "the hips, size = torso length (falls back to neck + shoulder width, then bbox, "
                               "when points are missing). bbox: centre and height of the skeleton's bounding box.",
                }),
                "scale": ("BOOLEAN", {
                    "default": True,
                    "tooltip": "Also resize the reference skeleton to the source person's body size, so a "
                               "taller or closer reference person does not make the edited person grow. Off: "
                               "only move it (sizes are still relative to the frame height).",
                }),
                "stick_width": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": STICK_TOOLTIP}),
                "allow_missing": ("BOOLEAN", {
                    "default": False,
                    "tooltip": ALLOW_MISSING_TOOLTIP.format(what="keep those reference frames empty (black pose images)"),
                }),
            }
        }

    def run(self, reference, source, anchor="neck_hip", scale=True, stick_width=4, allow_missing=False):
        if anchor not in ANCHOR_MODES:
            raise InputError(f"anchor must be one of {', '.join(ANCHOR_MODES)}; got {anchor!r}")
        ref, rh, rw = from_pose_keypoint(reference, allow_missing=bool(allow_missing), name="reference")
        src, sh, sw = from_pose_keypoint(source, allow_missing=True, name="source")
        if (rh, rw) != (sh, sw):
            # uniform rescale (by height) so proportions survive and scale=False keeps the size relative to the frame
            k = sh / rh
            ref = resize_keypoints(ref, rh, rw, max(1, round(rh * k)), max(1, round(rw * k)))
            if abs(rw / rh - sw / sh) > 1e-3:
                log.info("reference canvas %dx%d and source canvas %dx%d differ in aspect ratio; the reference "
                         "skeleton was rescaled by the height ratio %.3f", rw, rh, sw, sh, k)
        params = alignment_parameters(ref, src, anchor=anchor, scale=bool(scale),
                                      reference_name="reference", source_name="source")
        aligned = align_skeletons(ref, src, anchor=anchor, scale=bool(scale),
                                  reference_name="reference", source_name="source")
        ra, sa = params["reference_anchor"], params["source_anchor"]
        log.info(
            "skeleton offset: anchor %s (used %s), scale %.3f; reference anchor (%.1f, %.1f) in frame %d -> source "
            "anchor (%.1f, %.1f) in frame %d; body size %.1f -> %.1f px",
            anchor, params["mode"], params["scale"], ra[0], ra[1], params["reference_frame"], sa[0], sa[1],
            params["source_frame"], params["reference_size"], params["source_size"],
        )
        images = render_pose_images(aligned, sh, sw, stick_width=int(stick_width))
        return (to_pose_keypoint(aligned, sh, sw), images.to(bridge.intermediate_device()))


NODE_CLASS_MAPPINGS = {
    "EYM_ExtractPoses": ExtractPoses,
    "EYM_RenderPoses": RenderPoses,
    "EYM_AlignSkeleton": AlignSkeleton,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EYM_ExtractPoses": "EYM Extract Poses (OpenPose)",
    "EYM_RenderPoses": "EYM Render Poses (POSE_KEYPOINT)",
    "EYM_AlignSkeleton": "EYM Align Skeleton (offset)",
}
