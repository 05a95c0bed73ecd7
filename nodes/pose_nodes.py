"""Pose nodes: OpenPose detection, rendering POSE_KEYPOINT as ControlNet pose images, and the skeleton
offset that moves the reference motion onto the person being edited."""

from __future__ import annotations

import logging
import os

import numpy as np
import torch

from ..motion_core.pose import mediapipe_detector, openpose
from ..motion_core.errors import InputError
from ..motion_core.pose import (
    ANCHOR_MODES, align_skeletons, alignment_parameters, check_person, from_pose_keypoint, render_pose_images,
    resize_keypoints, to_pose_keypoint,
)
from . import comfy_bridge as bridge
from . import detectors
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
    if allow_missing:
        warn_empty_frames(kp, name)
    h, w = _output_size(ch, cw, height, width)
    if (h, w) != (ch, cw):
        kp = resize_keypoints(kp, ch, cw, h, w)
    return kp, h, w


def warn_empty_frames(kp: np.ndarray, name: str) -> list[int]:
    """Tell the user (console and browser) which frames have no person, with allow_missing on: those frames
    are dropped from the motion (black pose images, empty masks). Returns their indices."""
    empty = [int(i) for i in np.flatnonzero(~(np.asarray(kp)[..., 2] > 0).any(axis=1))]
    if empty:
        shown = ", ".join(map(str, empty[:20])) + (", ..." if len(empty) > 20 else "")
        bridge.warn_user(f"{name}: no person in frame(s) {shown} of {len(kp)}; with allow_missing on they stay "
                         "empty (no pose for them: the edit keeps the source there or drifts)")
    return empty


def load_detector(filename: str) -> bridge.Managed:
    """The OpenPose body network of ``filename`` (openpose model folder, or comfyui_controlnet_aux's
    downloaded annotators), loaded once per file version."""
    path = detectors.find_openpose_file(filename)
    if path is None:  # let the engine raise its missing-file message (names the file, source and folder)
        path = os.path.join(bridge.folder_paths_for(bridge.OPENPOSE_FOLDER)[0], filename)
        return bridge.Managed(openpose.load_body_model(path, where_hint=detectors.where_hint()))
    real = os.path.realpath(path)
    key = (real, os.path.getmtime(real))
    managed = _DETECTORS.get(key)
    if managed is None:
        for stale in [k for k in _DETECTORS if k[0] == real]:
            del _DETECTORS[stale]
        managed = bridge.Managed(openpose.load_body_model(path, where_hint=detectors.where_hint()))
        _DETECTORS[key] = managed
        log.info("loaded OpenPose body model %s", path)
    return managed


def _image_batch(images, name: str) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[-1] not in (3, 4):
        shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise InputError(f"{name} must be an IMAGE batch (frames, height, width, 3); got {shape}")
    return images[..., :3]


def _is_still(frames: torch.Tensor) -> bool:
    """One image: a single frame, or the same image repeated (e.g. EYM Single Image To Clip)."""
    return frames.shape[0] == 1 or bool((frames == frames[:1]).all())


class ExtractPoses:
    DESCRIPTION = (
        "Detects the body pose of one person in every frame and renders the skeletons as ControlNet pose images. "
        "Detectors: OpenPose (controlnet_aux's body network; needs body_pose_model.pth from the Hugging Face "
        "repository lllyasviel/Annotators in ComfyUI/models/openpose) or mediapipe (optional package, nothing to "
        "download; its 33 landmarks are converted to OpenPose-18). auto uses OpenPose when its file is there, "
        "else mediapipe. Run it on the source video and on the reference (motion) video."
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
                "detector": (list(detectors.DETECTOR_MODES), {
                    "default": "auto",
                    "tooltip": "openpose: OpenPose with the file chosen in openpose_model. mediapipe: mediapipe's "
                               "pose model (optional package, nothing to download: " + mediapipe_detector.MEDIAPIPE_INSTALL
                               + "; Python 3.12 or older); one person per frame, 33 landmarks converted to "
                               "OpenPose-18. auto: OpenPose when its file is in ComfyUI/models/openpose, else mediapipe.",
                }),
                "person": ("STRING", {"default": "largest", "tooltip": PERSON_TOOLTIP + " mediapipe finds one person per frame."}),
                "detect_resolution": ("INT", {
                    "default": 512, "min": 64, "max": 2048, "step": 64,
                    "tooltip": "OpenPose only: frames are resized so the short side has this many pixels for "
                               "detection (as controlnet_aux does); keypoints come back in pixels of the input "
                               "frames. Higher finds small people better but is slower.",
                }),
                "stick_width": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip": STICK_TOOLTIP}),
            },
            "optional": {
                "openpose_model": (detectors.openpose_model_choices(), {
                    "default": detectors.AUTO_OPENPOSE_FILE,
                    "tooltip": "The OpenPose body model: body_pose_model.pth from the Hugging Face repository "
                               "lllyasviel/Annotators (or a .safetensors conversion). auto: body_pose_model.pth from "
                               "ComfyUI/models/openpose, or from comfyui_controlnet_aux's downloads (its "
                               "ckpts/lllyasviel/Annotators folder), so users of that pack download nothing. Or "
                               "pick a file of ComfyUI/models/openpose. Not needed by mediapipe; the detector auto "
                               "falls back to mediapipe when the file is absent.",
                }),
            },
        }

    @classmethod
    def VALIDATE_INPUTS(cls, detector, openpose_model=None):
        # naming both inputs makes ComfyUI skip its list check: an absent openpose_model is fine for auto and
        # mediapipe, and old graphs hold a file name in detector (see detectors.validate_detector)
        return detectors.validate_detector(detector)

    def run(self, images, detector="auto", person="largest", detect_resolution=512, stick_width=4,
            openpose_model=None):
        frames = _image_batch(images, "images")
        person = check_person(person)
        n, h, w = frames.shape[:3]
        progress = bridge.Progress(n, "Edit-Your-Motion poses", prepare=1)  # shown from the first second
        kind, filename = detectors.choose_pose_detector(detector, openpose_model)
        if kind == "mediapipe":
            if person not in ("largest", 0):
                raise InputError(f"person {person!r}: mediapipe finds one person per frame; use 'largest' (or 0), "
                                 "or the openpose detector to pick another person")
            progress.phase("starting mediapipe")
            found_pose = mediapipe_detector.detect_poses(frames, video=True, segmentation=False,
                                                         callback=lambda i, total: progress.step())
            kp = found_pose.keypoints
            openpose.require_people(found_pose.found, "images", detector="mediapipe", still=_is_still(frames))
            log.info("mediapipe found the person in %d frames", n)
            pose_images = render_pose_images(kp, h, w, stick_width=int(stick_width))
            return (pose_images.to(bridge.intermediate_device()), to_pose_keypoint(kp, h, w))
        managed = load_detector(filename)
        progress.phase("OpenPose loaded; moving it to the device")
        device = managed.load(memory_required=512 * 1024 ** 2)
        try:
            kp, found = openpose.detect_keypoints(
                frames, managed.module, person=person, detect_resolution=int(detect_resolution),
                callback=lambda i, total: progress.step(),
            )
        finally:
            managed.release()
        openpose.require_people(found, "images", still=_is_still(frames))
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
        if allow_missing:
            warn_empty_frames(ref, "reference")
        src, sh, sw = from_pose_keypoint(source, allow_missing=True, name="source")
        if len(ref) != len(src):  # the first place both clips meet: refuse before any tuning runs
            raise InputError(
                f"reference has {len(ref)} frames but source has {len(src)}; the edit needs the same number of frames "
                "in both clips. Take as many frames from each video (Get Image from Batch / the loader's frame "
                "count), or repeat a still reference pose to the source's frame count."
            )
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
    "EYM_ExtractPoses": "EYM Extract Poses (OpenPose / mediapipe)",
    "EYM_RenderPoses": "EYM Render Poses (POSE_KEYPOINT)",
    "EYM_AlignSkeleton": "EYM Align Skeleton (offset)",
}
