"""OpenPose-18 body keypoints: the array convention, names, limbs, person selection and resizing.

Array convention used everywhere in this module: a float32 array shaped ``(n_frames, 18, 3)`` holding
``(x, y, confidence)`` per keypoint, with ``x``/``y`` in PIXELS of a given canvas (``x`` to the right,
``y`` down, the same convention as OpenCV and controlnet_aux). A missing keypoint has confidence 0 and
``x = y = 0``. Keypoint order is the COCO-18 order ControlNet-openpose uses, see ``KEYPOINT_NAMES``.

Pure numpy / torch / OpenCV; controlnet_aux is not imported here (the detector lives in ``openpose.py``).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..errors import InputError

__all__ = [
    "KEYPOINT_NAMES", "LIMB_SEQUENCE", "COLORS", "NUM_KEYPOINTS", "as_keypoint_array", "present_mask",
    "check_person", "select_person", "resize_keypoints",
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



def format_indices(indices: Sequence[int], limit: int = 30) -> str:
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


