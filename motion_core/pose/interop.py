"""POSE_KEYPOINT (comfyui_controlnet_aux) interop: pixel keypoint arrays to and from its per-frame dicts."""

from __future__ import annotations


import numpy as np

from ..errors import InputError
from .keypoints import (
    NUM_KEYPOINTS, format_indices, as_keypoint_array, check_person, present_mask, select_person,
)


# ----------------------------------------------------------------------------------------------
# POSE_KEYPOINT (comfyui_controlnet_aux) interop
# ----------------------------------------------------------------------------------------------

def to_pose_keypoint(keypoints, height: int, width: int, normalized: bool = False) -> list[dict]:
    """Convert pixel keypoints to comfyui_controlnet_aux's POSE_KEYPOINT format (one dict per frame).

    Each frame becomes ``{"people": [{"pose_keypoints_2d": [x, y, c] * 18 (flat), "face_keypoints_2d":
    None, "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}], "canvas_width": width,
    "canvas_height": height}``; a frame without any present keypoint gets ``"people": []``. With
    ``normalized=True`` x is divided by ``width`` and y by ``height``. Missing points are ``0, 0, 0``.
    """
    kp = as_keypoint_array(keypoints).astype(np.float64)
    height, width = int(height), int(width)
    if normalized:
        kp[..., 0] /= width
        kp[..., 1] /= height
    present = present_mask(kp)
    kp[~present] = 0.0
    frames = []
    for f in range(kp.shape[0]):
        people = []
        if present[f].any():
            people.append({
                "pose_keypoints_2d": [float(v) for v in kp[f].reshape(-1)],
                "face_keypoints_2d": None,
                "hand_left_keypoints_2d": None,
                "hand_right_keypoints_2d": None,
            })
        frames.append({"people": people, "canvas_width": width, "canvas_height": height})
    return frames


# present coordinates all within this bound => the frame is taken as normalised (0..1); the slack over
# 1.0 admits points a detector placed a little outside the image. A real pixel-space person never fits.
_NORMALISED_LIMIT = 1.5


def from_pose_keypoint(frames, person: str | int = "largest", allow_missing: bool = False,
                       name: str = "POSE_KEYPOINT") -> tuple[np.ndarray, int, int]:
    """Read comfyui_controlnet_aux POSE_KEYPOINT frames into pixel keypoints.

    Args:
        frames: list of per-frame dicts ``{"people": [{"pose_keypoints_2d": [x, y, c] * 18, ...}],
            "canvas_width": W, "canvas_height": H}`` (a single dict is taken as one frame).
        person: ``"largest"`` (largest bounding box of present points, per frame) or a person index.
        allow_missing: if True a frame without the person gives an all-missing ``(18, 3)`` row;
            if False such a frame raises ``InputError`` naming the frame indices.
        name: input name used in error messages.

    Coordinates are detected per frame: if every present coordinate of every person in the frame is
    at most 1.5 in absolute value the frame is normalised (0..1, slack for points slightly outside
    the image) and is scaled by the canvas size; otherwise it is already in pixels. A point is
    present when its confidence is > 0; missing points become ``(0, 0, 0)``.

    Returns:
        ``(keypoints (n, 18, 3) float32 pixels, height, width)``.
    """
    person = check_person(person)
    if isinstance(frames, dict):
        frames = [frames]
    if not isinstance(frames, (list, tuple)) or len(frames) == 0:
        raise InputError(f"{name} is empty: connect a pose estimator's POSE_KEYPOINT output with at least one frame")

    sizes = []
    for i, frame in enumerate(frames):
        if not isinstance(frame, dict) or "people" not in frame:
            raise InputError(f"{name} frame {i} is not a POSE_KEYPOINT frame (a dict with 'people'); "
                             "connect the POSE_KEYPOINT output of an OpenPose/DWPose estimator node")
        try:
            sizes.append((int(frame["canvas_height"]), int(frame["canvas_width"])))
        except (KeyError, TypeError, ValueError):
            raise InputError(f"{name} frame {i} has no valid canvas_width/canvas_height; "
                             "use the POSE_KEYPOINT output of comfyui_controlnet_aux's pose estimators") from None
    if len(set(sizes)) > 1:
        distinct = sorted(set(sizes))
        listing = ", ".join(f"{w}x{h}" for h, w in distinct)
        raise InputError(f"{name} mixes canvas sizes ({listing}); run the pose estimator on frames of one size "
                         "(resize the video before estimating poses)")
    height, width = sizes[0]
    if height < 1 or width < 1:
        raise InputError(f"{name} has an invalid canvas size {width}x{height}")

    out = np.zeros((len(frames), NUM_KEYPOINTS, 3), dtype=np.float32)
    no_person = []
    for i, frame in enumerate(frames):
        people = []
        for pi, p in enumerate(frame.get("people") or []):
            flat = p.get("pose_keypoints_2d") if isinstance(p, dict) else None
            if flat is None or len(flat) == 0:
                people.append(np.zeros((NUM_KEYPOINTS, 3), np.float32))
                continue
            arr = np.asarray(flat, dtype=np.float32)
            if arr.size != NUM_KEYPOINTS * 3:
                raise InputError(f"{name} frame {i}, person {pi} has {arr.size} body values; expected 54 "
                                 "(18 OpenPose/COCO-18 points as x, y, confidence). Use an OpenPose-18 style estimator.")
            people.append(arr.reshape(NUM_KEYPOINTS, 3))
        if not people:
            no_person.append(i)
            continue
        ppl = np.stack(people)
        present = present_mask(ppl)
        ppl[~present] = 0.0
        if present.any() and np.abs(ppl[..., :2][present]).max() <= _NORMALISED_LIMIT:
            ppl[..., 0] *= width
            ppl[..., 1] *= height
        idx = select_person(ppl, person)
        if idx < 0:
            no_person.append(i)
            continue
        out[i] = ppl[idx]
    if no_person and not allow_missing:
        which = "no person" if person == "largest" else f"no person with index {person}"
        raise InputError(
            f"{name} has {which} in frame(s) {format_indices(no_person)} of {len(frames)}. "
            "Trim those frames from the clip, lower the pose estimator's detection threshold, "
            "or allow frames without a person."
        )
    return out, height, width
