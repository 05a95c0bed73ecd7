"""OpenPose-18 body keypoints: rendering, POSE_KEYPOINT interop, skeleton alignment, rough masks.

Array convention used everywhere in this module: a float32 array shaped ``(n_frames, 18, 3)`` holding
``(x, y, confidence)`` per keypoint, with ``x``/``y`` in PIXELS of a given canvas (``x`` to the right,
``y`` down, the same convention as OpenCV and controlnet_aux). A missing keypoint has confidence 0 and
``x = y = 0``. Keypoint order is the COCO-18 order ControlNet-openpose uses, see ``KEYPOINT_NAMES``.

Pure numpy / torch / OpenCV; controlnet_aux is not imported here (the detector lives in ``openpose.py``).
"""

from __future__ import annotations

import math
from typing import Sequence

import cv2
import numpy as np
import torch

from .errors import InputError

__all__ = [
    "KEYPOINT_NAMES",
    "LIMB_SEQUENCE",
    "COLORS",
    "NUM_KEYPOINTS",
    "as_keypoint_array",
    "present_mask",
    "check_person",
    "select_person",
    "render_pose_images",
    "to_pose_keypoint",
    "from_pose_keypoint",
    "ANCHOR_MODES",
    "resize_keypoints",
    "alignment_parameters",
    "align_skeletons",
    "person_masks_from_keypoints",
]

NUM_KEYPOINTS = 18

KEYPOINT_NAMES: tuple[str, ...] = (
    "nose",
    "neck",
    "right_shoulder",
    "right_elbow",
    "right_wrist",
    "left_shoulder",
    "left_elbow",
    "left_wrist",
    "right_hip",
    "right_knee",
    "right_ankle",
    "left_hip",
    "left_knee",
    "left_ankle",
    "right_eye",
    "left_eye",
    "right_ear",
    "left_ear",
)

NOSE, NECK, R_SHOULDER, R_ELBOW, R_WRIST, L_SHOULDER, L_ELBOW, L_WRIST = range(8)
R_HIP, R_KNEE, R_ANKLE, L_HIP, L_KNEE, L_ANKLE, R_EYE, L_EYE, R_EAR, L_EAR = range(8, 18)

# The 17 limbs controlnet_aux's ``open_pose.util.draw_bodypose`` draws, in its order, as ZERO-based
# index pairs (controlnet_aux writes them one-based: [[2, 3], [2, 6], ...]).
LIMB_SEQUENCE: tuple[tuple[int, int], ...] = (
    (1, 2), (1, 5), (2, 3), (3, 4),
    (5, 6), (6, 7), (1, 8), (8, 9),
    (9, 10), (1, 11), (11, 12), (12, 13),
    (1, 0), (0, 14), (14, 16), (0, 15),
    (15, 17),
)

# RGB colours of ``draw_bodypose``: limb i is drawn with COLORS[i] * 0.6, keypoint j with COLORS[j].
COLORS: tuple[tuple[int, int, int], ...] = (
    (255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0),
    (0, 255, 0), (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255),
    (0, 0, 255), (85, 0, 255), (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85),
)

_HEAD_POINTS = (NOSE, R_EYE, L_EYE, R_EAR, L_EAR)
_TORSO_POINTS = (NECK, R_SHOULDER, L_SHOULDER, L_HIP, R_HIP)


# ----------------------------------------------------------------------------------------------
# basics
# ----------------------------------------------------------------------------------------------

def as_keypoint_array(keypoints, name: str = "keypoints") -> np.ndarray:
    """Return ``keypoints`` (numpy or torch, ``(n, 18, 3)`` or a single ``(18, 3)`` frame) as a new
    float32 numpy array ``(n, 18, 3)`` whose missing points (confidence <= 0 or non-finite values)
    are exactly ``(0, 0, 0)``."""
    if isinstance(keypoints, torch.Tensor):
        arr = keypoints.detach().to("cpu", torch.float32).numpy()
    else:
        try:
            arr = np.asarray(keypoints, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise InputError(f"{name} must be a numeric array shaped (frames, 18, 3); could not convert it: {exc}") from exc
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3 or arr.shape[1:] != (NUM_KEYPOINTS, 3):
        raise InputError(
            f"{name} must be shaped (frames, 18, 3) = OpenPose-18 body keypoints as (x, y, confidence); "
            f"got shape {tuple(arr.shape)}"
        )
    arr = np.array(arr, dtype=np.float32, copy=True)
    missing = ~present_mask(arr)
    arr[missing] = 0.0
    return arr


def present_mask(keypoints: np.ndarray) -> np.ndarray:
    """Boolean ``(..., 18)``: which keypoints are present (confidence > 0 and finite coordinates)."""
    kp = np.asarray(keypoints)
    return (kp[..., 2] > 0) & np.isfinite(kp).all(axis=-1)


def _bbox_areas(people: np.ndarray) -> np.ndarray:
    """Bounding-box area of the present points of each person in ``(p, 18, 3)``; -1 for nobody."""
    present = present_mask(people)
    xy = people[..., :2].astype(np.float64)
    lo = np.where(present[..., None], xy, np.inf).min(axis=-2)
    hi = np.where(present[..., None], xy, -np.inf).max(axis=-2)
    any_pt = present.any(axis=-1)
    extent = np.where(any_pt[..., None], hi - lo, 0.0)
    return np.where(any_pt, extent[..., 0] * extent[..., 1], -1.0)


def check_person(person) -> str | int:
    """Validate a person choice: ``"largest"`` or a non-negative index (an int or a digit string)."""
    if isinstance(person, str) and person.strip().isdigit():
        person = int(person.strip())
    if isinstance(person, (int, np.integer)) and not isinstance(person, bool) and int(person) >= 0:
        return int(person)
    if person == "largest":
        return "largest"
    raise InputError(f"person must be 'largest' or a person index (0, 1, ...); got {person!r}")


def select_person(people: np.ndarray, person: str | int = "largest", scores: np.ndarray | None = None) -> int:
    """Index of the chosen person in ``people`` ``(p, 18, 3)``, or -1 when there is no such person.

    ``person="largest"`` picks the person whose present keypoints span the largest bounding-box area;
    ties go to the person with more present keypoints, then the higher ``scores`` entry (if given),
    then the earlier index. An ``int`` picks that index (-1 if out of range or the person has no
    present keypoint).
    """
    person = check_person(person)
    people = np.asarray(people, dtype=np.float32).reshape(-1, NUM_KEYPOINTS, 3)
    p = people.shape[0]
    if p == 0:
        return -1
    counts = present_mask(people).sum(axis=-1)
    if isinstance(person, int):
        if person >= p or counts[person] == 0:
            return -1
        return person
    if counts.max() == 0:
        return -1
    areas = _bbox_areas(people)
    sc = np.zeros(p) if scores is None else np.asarray(scores, dtype=np.float64).reshape(p)
    # lexsort: last key is primary; negate for descending, index ascending breaks the final tie
    order = np.lexsort((np.arange(p), -sc, -counts, -areas))
    return int(order[0])


# ----------------------------------------------------------------------------------------------
# rendering
# ----------------------------------------------------------------------------------------------

def render_pose_images(keypoints, height: int, width: int, stick_width: int = 4, point_radius: int = 4) -> torch.Tensor:
    """Draw OpenPose skeletons exactly as controlnet_aux's ``open_pose.util.draw_bodypose`` does.

    Each limb of ``LIMB_SEQUENCE`` whose two ends are present is a filled ellipse (OpenCV
    ``ellipse2Poly`` around the limb's midpoint, half-length = half the limb length, half-width =
    ``stick_width``) in ``0.6 * COLORS[limb]`` (plain overwrite, no alpha blending); afterwards every
    present keypoint is a filled disk of radius ``point_radius`` in ``COLORS[point]``. Coordinates are
    truncated to integers like ``draw_bodypose`` does. Missing points and limbs with a missing end are
    skipped; points outside the canvas are clipped by OpenCV.

    Args:
        keypoints: ``(n, 18, 3)`` or ``(18, 3)`` pixel keypoints, numpy or torch.
        height, width: canvas size in pixels.

    Returns:
        ``(n, height, width, 3)`` float32 tensor in 0..1 (ComfyUI IMAGE layout), black background.
    """
    kp = as_keypoint_array(keypoints)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise InputError(f"pose image size must be positive; got {width}x{height}")
    present = present_mask(kp)
    out = np.zeros((kp.shape[0], height, width, 3), dtype=np.uint8)
    limb_colors = [[int(float(c) * 0.6) for c in color] for color in COLORS]
    for f in range(kp.shape[0]):
        canvas = out[f]
        pts = kp[f].astype(np.float64)
        for (i, j), color in zip(LIMB_SEQUENCE, limb_colors):
            if not (present[f, i] and present[f, j]):
                continue
            xs = np.array([pts[i, 0], pts[j, 0]])
            ys = np.array([pts[i, 1], pts[j, 1]])
            mx, my = float(np.mean(xs)), float(np.mean(ys))
            length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
            angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
            polygon = cv2.ellipse2Poly((int(mx), int(my)), (int(length / 2), int(stick_width)), int(angle), 0, 360, 1)
            cv2.fillConvexPoly(canvas, polygon, color)
        for j in range(NUM_KEYPOINTS):
            if not present[f, j]:
                continue
            cv2.circle(canvas, (int(pts[j, 0]), int(pts[j, 1])), int(point_radius), list(COLORS[j]), thickness=-1)
    return torch.from_numpy(out).float().div_(255.0)


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
            f"{name} has {which} in frame(s) {_format_indices(no_person)} of {len(frames)}. "
            "Trim those frames from the clip, lower the pose estimator's detection threshold, "
            "or allow frames without a person."
        )
    return out, height, width


def _format_indices(indices: Sequence[int], limit: int = 30) -> str:
    shown = ", ".join(str(i) for i in indices[:limit])
    return shown + (f", ... ({len(indices)} in all)" if len(indices) > limit else "")


def resize_keypoints(keypoints, height: int, width: int, new_height: int, new_width: int) -> np.ndarray:
    """Rescale pixel keypoints from a ``width x height`` canvas to ``new_width x new_height``.

    ``x`` is multiplied by ``new_width / width`` and ``y`` by ``new_height / height`` (the same mapping
    as resizing the image); missing points stay ``(0, 0, 0)``, confidences are unchanged. Returns a new
    float32 ``(n, 18, 3)`` array.
    """
    kp = as_keypoint_array(keypoints)
    sizes = [int(height), int(width), int(new_height), int(new_width)]
    if min(sizes) < 1:
        raise InputError(f"canvas sizes must be positive; got {width}x{height} -> {new_width}x{new_height}")
    present = present_mask(kp)
    kp[..., 0] = np.where(present, kp[..., 0] * (sizes[3] / sizes[1]), 0.0)
    kp[..., 1] = np.where(present, kp[..., 1] * (sizes[2] / sizes[0]), 0.0)
    return kp


# ----------------------------------------------------------------------------------------------
# skeleton offset (alignment)
# ----------------------------------------------------------------------------------------------

_ANCHOR_MODES = ("neck_hip", "neck_shoulders", "bbox")
# the anchor choices callers may pass to alignment_parameters / align_skeletons (neck_shoulders is only
# the automatic fallback of neck_hip)
ANCHOR_MODES: tuple[str, ...] = ("neck_hip", "bbox")


def _anchor_and_size(kp: np.ndarray, mode: str, need_size: bool):
    """Per frame anchor ``(n, 2)``, body size ``(n,)`` and usability ``(n,)`` for one anchor mode."""
    present = present_mask(kp)
    xy = kp[..., :2].astype(np.float64)
    n = kp.shape[0]
    if mode == "neck_hip":
        hips = present[:, [R_HIP, L_HIP]]
        n_hips = hips.sum(axis=1)
        mid_hip = (xy[:, [R_HIP, L_HIP]] * hips[..., None]).sum(axis=1) / np.maximum(n_hips, 1)[:, None]
        anchor = 0.5 * (xy[:, NECK] + mid_hip)
        size = np.linalg.norm(xy[:, NECK] - mid_hip, axis=1)
        ok = present[:, NECK] & (n_hips > 0)
    elif mode == "neck_shoulders":
        anchor = xy[:, NECK]
        size = np.linalg.norm(xy[:, R_SHOULDER] - xy[:, L_SHOULDER], axis=1)
        ok = present[:, NECK] & present[:, R_SHOULDER] & present[:, L_SHOULDER]
    elif mode == "bbox":
        ok = present.any(axis=1)
        lo = np.where(present[..., None], xy, np.inf).min(axis=1)
        hi = np.where(present[..., None], xy, -np.inf).max(axis=1)
        lo = np.where(ok[:, None], lo, 0.0)
        hi = np.where(ok[:, None], hi, 0.0)
        anchor = 0.5 * (lo + hi)
        size = hi[:, 1] - lo[:, 1]
    else:  # pragma: no cover - guarded by callers
        raise ValueError(mode)
    size = np.where(ok, size, 0.0)
    if need_size:
        ok = ok & (size > 1e-6)
    return anchor.reshape(n, 2), size, ok


def alignment_parameters(reference, source, anchor: str = "neck_hip", scale: bool = True,
                         reference_name: str = "reference pose", source_name: str = "source pose") -> dict:
    """Compute the skeleton-offset transform used by :func:`align_skeletons` (see there).

    Returns a dict with ``mode`` (the anchor mode actually used), ``scale`` (float), ``reference_anchor``
    and ``source_anchor`` (``(x, y)`` numpy arrays), ``reference_frame`` and ``source_frame`` (the frame
    indices the anchors/sizes were measured on), ``reference_size`` and ``source_size``.
    """
    ref = as_keypoint_array(reference, reference_name)
    src = as_keypoint_array(source, source_name)
    if anchor not in ANCHOR_MODES:
        raise InputError(f"anchor must be 'neck_hip' or 'bbox'; got {anchor!r}")
    modes = _ANCHOR_MODES if anchor == "neck_hip" else ("bbox",)
    for mode in modes:
        a_r, s_r, ok_r = _anchor_and_size(ref, mode, scale)
        a_s, s_s, ok_s = _anchor_and_size(src, mode, scale)
        if ok_r.any() and ok_s.any():
            fr, fs = int(np.argmax(ok_r)), int(np.argmax(ok_s))
            factor = float(s_s[fs] / s_r[fr]) if scale else 1.0
            return {
                "mode": mode,
                "scale": factor,
                "reference_anchor": a_r[fr],
                "source_anchor": a_s[fs],
                "reference_frame": fr,
                "source_frame": fs,
                "reference_size": float(s_r[fr]),
                "source_size": float(s_s[fs]),
            }
    # no mode worked for both: name the input(s) that lack even a bbox anchor
    what = "two body keypoints at different heights" if scale else "any body keypoint"
    bad = [nm for nm, kp in ((reference_name, ref), (source_name, src)) if not _anchor_and_size(kp, "bbox", scale)[2].any()]
    if not bad:  # only reachable for anchor='bbox' (both usable handled above) - defensive
        bad = [reference_name, source_name]
    raise InputError(
        f"{' and '.join(bad)} {'has' if len(bad) == 1 else 'have'} no frame with {what}, so the skeletons "
        "cannot be aligned. Check that the pose estimator found the person (look at its preview), "
        "or turn the skeleton offset off."
    )


def align_skeletons(reference, source, anchor: str = "neck_hip", scale: bool = True,
                    reference_name: str = "reference pose", source_name: str = "source pose") -> np.ndarray:
    """Skeleton offset: move (and optionally scale) the reference skeletons onto the source person.

    The reference person usually stands elsewhere and at another size than the source person; rendering
    the reference skeletons unchanged makes the edited person jump there (ghosting). This moves the
    whole reference sequence rigidly so that its anchor lands on the source person's anchor:

        p' = s * (p - a_ref) + a_src          for every present reference point p of every frame

    * ``a_ref`` / size_ref are measured on the FIRST reference frame where the anchor is usable,
      ``a_src`` / size_src on the first such source frame (``source`` may be ``(m, 18, 3)`` or one
      ``(18, 3)`` frame).
    * ``s = size_src / size_ref`` if ``scale`` else 1.
    * Because one transform is applied to all frames, the reference motion's frame-to-frame
      displacement is kept (multiplied by ``s``); missing points stay ``(0, 0, 0)``; confidences are
      unchanged.

    Anchor modes:
      * ``anchor="neck_hip"`` (default): anchor = midpoint of the neck (1) and the mid-hip (mean of the
        present hips 8 / 11; one hip is enough, e.g. in profile); size = neck-to-mid-hip distance.
        Fallback when either input has no frame with neck and a hip: anchor = neck, size = shoulder
        width (needs neck and both shoulders); if that is not usable in both inputs either, the
        ``"bbox"`` mode. The same mode is always used for both inputs so the anchors mean the same body
        point. (Shoulder width shrinks when a person turns sideways, so the fallback scale is rougher.)
      * ``anchor="bbox"``: anchor = centre of the bounding box of the present points; size = bounding
        box height.

    A frame counts as usable only if its size is > 0 when ``scale`` is on.

    Raises:
        InputError: naming the input that has no frame usable for any anchor (no keypoints at all,
        or - with ``scale`` - no two points at different heights).

    Returns:
        float32 ``(n, 18, 3)`` aligned reference keypoints.
    """
    ref = as_keypoint_array(reference, reference_name)
    params = alignment_parameters(ref, source, anchor=anchor, scale=scale,
                                  reference_name=reference_name, source_name=source_name)
    s = params["scale"]
    a_ref = params["reference_anchor"]
    a_src = params["source_anchor"]
    present = present_mask(ref)
    moved = s * (ref[..., :2].astype(np.float64) - a_ref) + a_src
    out = ref.copy()
    out[..., :2] = np.where(present[..., None], moved, 0.0).astype(np.float32)
    return out


# ----------------------------------------------------------------------------------------------
# rough person masks
# ----------------------------------------------------------------------------------------------

def _body_sizes(kp: np.ndarray, height: int, width: int) -> np.ndarray:
    """Per frame torso length in pixels (neck to mid-hip), estimated from the bbox height / 3 when hips
    or neck are missing, and never below 3% of the short image side (a lone point still gets a blob)."""
    _, torso, ok = _anchor_and_size(kp, "neck_hip", need_size=True)
    _, bbox_h, _ = _anchor_and_size(kp, "bbox", need_size=False)
    _, shoulders, ok_sh = _anchor_and_size(kp, "neck_shoulders", need_size=True)
    fallback = np.maximum(bbox_h / 3.0, np.where(ok_sh, shoulders, 0.0))
    size = np.where(ok, torso, fallback)
    return np.maximum(size, max(0.03 * min(height, width), 2.0))


def person_masks_from_keypoints(keypoints, height: int, width: int, limb_width: float | None = None,
                                dilate: int | None = None, grow: float = 1.0) -> torch.Tensor:
    """Rough person masks from skeletons, for users without a segmentation node.

    Per frame: every limb of ``LIMB_SEQUENCE`` with both ends present as a thick line, a disk on every
    present keypoint, the convex hull of the present torso points (neck, shoulders, hips) filled, and a
    head disk around the present face points (nose, eyes, ears); the result is dilated.

    Sizes are relative to the frame's body size ``T`` (neck to mid-hip distance; bbox height / 3 or the
    shoulder width when that is unavailable; at least 3% of the short image side):
    limb width ``0.35 T`` (unless ``limb_width`` pixels is given), head radius ``0.4 T`` (enlarged to
    reach every face point), dilation ``0.15 T`` pixels (unless ``dilate`` pixels is given; 0 = none).
    ``grow`` multiplies these automatic sizes (limb width, head radius, dilation; not an explicit
    ``limb_width`` / ``dilate``): above 1 for a looser mask around clothes and hair, below 1 for a
    tighter one.

    A frame without any present keypoint gives an all-zero mask; the caller decides if that is an error.

    Returns:
        ``(n, height, width)`` float32 tensor of 0/1.
    """
    kp = as_keypoint_array(keypoints)
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise InputError(f"mask size must be positive; got {width}x{height}")
    grow = float(grow)
    if not (math.isfinite(grow) and grow > 0):
        raise InputError(f"grow must be a positive number; got {grow}")
    present = present_mask(kp)
    sizes = _body_sizes(kp, height, width)
    masks = np.zeros((kp.shape[0], height, width), dtype=np.uint8)
    for f in range(kp.shape[0]):
        if not present[f].any():
            continue
        m = masks[f]
        T = float(sizes[f])
        lw = max(1, int(round(limb_width if limb_width is not None else 0.35 * T * grow)))
        pts = np.round(kp[f, :, :2].astype(np.float64)).astype(np.int64)
        pts = np.clip(pts, -(2 ** 20), 2 ** 20)  # keep OpenCV in range for wild outliers
        torso = [pts[j] for j in _TORSO_POINTS if present[f, j]]
        if len(torso) >= 3:
            hull = cv2.convexHull(np.array(torso, dtype=np.int32))
            cv2.fillConvexPoly(m, hull, 1)
        for i, j in LIMB_SEQUENCE:
            if present[f, i] and present[f, j]:
                cv2.line(m, tuple(int(v) for v in pts[i]), tuple(int(v) for v in pts[j]), 1, thickness=lw)
        r_pt = max(1, int(math.ceil(lw / 2)))
        for j in np.nonzero(present[f])[0]:
            cv2.circle(m, tuple(int(v) for v in pts[j]), r_pt, 1, thickness=-1)
        head = [j for j in _HEAD_POINTS if present[f, j]]
        if head:
            centre = kp[f, head, :2].astype(np.float64).mean(axis=0)
            reach = np.linalg.norm(kp[f, head, :2] - centre, axis=1).max()
            radius = int(math.ceil(max(0.4 * T * grow, reach + lw / 2)))
            cv2.circle(m, tuple(int(v) for v in np.round(centre)), radius, 1, thickness=-1)
        d = int(round(0.15 * T * grow)) if dilate is None else int(dilate)
        if d > 0:
            kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * d + 1, 2 * d + 1))
            masks[f] = cv2.dilate(m, kernel)
    return torch.from_numpy(masks).float()
