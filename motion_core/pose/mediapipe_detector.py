"""Body poses and person masks with mediapipe: nothing to download.

mediapipe 0.10.14 to 0.10.21 (Apache-2.0) ship their pose model (``pose_detection`` +
``pose_landmark_full``) and ``selfie_segmentation`` inside the wheel. This module uses only those:
the pose model is always built with ``model_complexity=1``; 0 and 2 would download their model at
run time, so they are never passed. mediapipe is optional and imported on first use
(:func:`import_mediapipe`); it is not a requirement of the pack.

Install it without its heavy extras (jax, and opencv-contrib, which clashes with the
opencv-python-headless the pack uses)::

    pip install --no-deps mediapipe==0.10.14 && pip install absl-py attrs flatbuffers "protobuf<5" matplotlib

Those versions have no wheel for Python 3.13 or later; there, use OpenPose (``openpose.py``).

Keypoints follow ``keypoints.py``: float32 ``(n, 18, 3)`` (x, y, confidence) in pixels of the input
frames, missing points ``(0, 0, 0)``. The 33 BlazePose landmarks become OpenPose-18 by
:data:`OPENPOSE_FROM_MEDIAPIPE`:

* 17 of the 18 points are a landmark of the same name (nose, eyes, ears, shoulders, elbows, wrists,
  hips, knees, ankles). The eyes are mediapipe's eye centres (not the inner/outer corners).
* The **neck**, which BlazePose lacks, is the mid-shoulder point (OpenPose's own neck label is also
  close to the middle of the shoulders); its confidence is the smaller of the two shoulders'.
* The **hips** are BlazePose's hip landmarks unchanged. They follow BlazePose's annotation, which is
  slightly different from OpenPose's (COCO's) hip convention, so the hips of the two detectors can be
  a few pixels apart on the same frame, and the torso length a little different; nothing corrects this.
* The confidence is mediapipe's landmark ``visibility``. A point whose visibility is below
  ``min_confidence`` or that lies outside the frame is reported missing, as OpenPose would not report it
  (mediapipe always places all 33 landmarks, guessing the hidden ones).

mediapipe's solution API takes one image per call, so detection runs frame by frame; the conversion
and post-processing are batched over frames.
"""

from __future__ import annotations

import logging
import sys
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..errors import InputError, short_module_name
from .images import to_uint8_frames
from .keypoints import NUM_KEYPOINTS

log = logging.getLogger("edit_your_motion")

__all__ = [
    "MEDIAPIPE_INSTALL", "MEDIAPIPE_VERSION", "OPENPOSE_FROM_MEDIAPIPE", "NUM_LANDMARKS", "MediapipeUnavailable",
    "MediapipePose", "import_mediapipe", "mediapipe_available", "mediapipe_problem", "landmarks_to_openpose",
    "detect_poses", "segment_people", "SEGMENTATION_MODELS",
]

MEDIAPIPE_VERSION = "0.10.14"
MEDIAPIPE_INSTALL = (
    f'pip install --no-deps mediapipe=={MEDIAPIPE_VERSION} && '
    'pip install absl-py attrs flatbuffers "protobuf<5" matplotlib'
)
OPENPOSE_ALTERNATIVE = (
    "use the OpenPose detector instead: put body_pose_model.pth from the Hugging Face repository "
    "lllyasviel/Annotators in ComfyUI/models/openpose"
)

NUM_LANDMARKS = 33
# BlazePose landmark indices (mediapipe.solutions.pose.PoseLandmark)
_MP = {
    "nose": 0, "left_eye": 2, "right_eye": 5, "left_ear": 7, "right_ear": 8,
    "left_shoulder": 11, "right_shoulder": 12, "left_elbow": 13, "right_elbow": 14, "left_wrist": 15,
    "right_wrist": 16, "left_hip": 23, "right_hip": 24, "left_knee": 25, "right_knee": 26, "left_ankle": 27,
    "right_ankle": 28,
}
# For each OpenPose-18 point (keypoints.KEYPOINT_NAMES order): the BlazePose landmarks it is the mean of.
OPENPOSE_FROM_MEDIAPIPE: tuple[tuple[int, ...], ...] = (
    (_MP["nose"],),
    (_MP["left_shoulder"], _MP["right_shoulder"]),  # neck = mid-shoulder point
    (_MP["right_shoulder"],), (_MP["right_elbow"],), (_MP["right_wrist"],),
    (_MP["left_shoulder"],), (_MP["left_elbow"],), (_MP["left_wrist"],),
    (_MP["right_hip"],), (_MP["right_knee"],), (_MP["right_ankle"],),
    (_MP["left_hip"],), (_MP["left_knee"],), (_MP["left_ankle"],),
    (_MP["right_eye"],), (_MP["left_eye"],), (_MP["right_ear"],), (_MP["left_ear"],),
)
# the same table as two index arrays: point i is the mean of landmarks _SRC_A[i] and _SRC_B[i]
_SRC_A = np.array([s[0] for s in OPENPOSE_FROM_MEDIAPIPE])
_SRC_B = np.array([s[-1] for s in OPENPOSE_FROM_MEDIAPIPE])

# segmentation models in the wheel: the pose model's own output, or the selfie segmentation model
SEGMENTATION_MODELS = ("pose", "selfie")


class MediapipeUnavailable(ImportError):
    """mediapipe (with its pose solution) cannot be imported here; the message says how to get it."""


short_module_name(MediapipeUnavailable)


_IMPORTED: dict = {}


def _python_version() -> tuple[int, int]:
    return tuple(sys.version_info[:2])


def _problem_message(exc: BaseException | None) -> str:
    py = _python_version()
    why = f" (importing it failed: {exc})" if exc is not None else ""
    if py >= (3, 13):
        return (
            f"mediapipe is not available{why}: mediapipe 0.10.14 to 0.10.21, the versions whose wheel carries "
            f"the pose and segmentation models, have no wheel for Python {py[0]}.{py[1]} (they stop at "
            f"Python 3.12). On this Python, {OPENPOSE_ALTERNATIVE}."
        )
    return (
        f"mediapipe is not available{why}. Install it into ComfyUI's Python with: {MEDIAPIPE_INSTALL} "
        f"(--no-deps keeps out jax and opencv-contrib, which clashes with opencv-python-headless). "
        f"Or {OPENPOSE_ALTERNATIVE}."
    )


def import_mediapipe():
    """Import mediapipe on first use and return its ``solutions`` package.

    Raises:
        MediapipeUnavailable: mediapipe is missing, fails to import, or has no legacy ``solutions`` API
        (mediapipe after 0.10.21); the message gives the one-line install, or on Python >= 3.13 says
        that no wheel exists and names the OpenPose path.
    """
    if "solutions" in _IMPORTED:
        return _IMPORTED["solutions"]
    if "error" in _IMPORTED:
        raise MediapipeUnavailable(_IMPORTED["error"])
    try:
        import mediapipe  # noqa: PLC0415 - optional and heavy: imported on demand
        from mediapipe.python import solutions  # noqa: PLC0415
        from mediapipe.python.solutions import pose as _pose  # noqa: F401, PLC0415
        from mediapipe.python.solutions import selfie_segmentation as _selfie  # noqa: F401, PLC0415
    except Exception as exc:  # ImportError, or a dependency (protobuf, matplotlib) failing inside it
        if isinstance(exc, ModuleNotFoundError) and exc.name == "mediapipe":
            exc = None
        _IMPORTED["error"] = _problem_message(exc)
        raise MediapipeUnavailable(_IMPORTED["error"]) from None
    log.info("using mediapipe %s", getattr(mediapipe, "__version__", "?"))
    _IMPORTED["solutions"] = solutions
    return solutions


def mediapipe_problem() -> str | None:
    """None when mediapipe imports; otherwise the message of :class:`MediapipeUnavailable`."""
    try:
        import_mediapipe()
    except MediapipeUnavailable as exc:
        return str(exc)
    return None


def mediapipe_available() -> bool:
    """Whether mediapipe's pose and selfie-segmentation solutions can be used here (imports it once)."""
    return mediapipe_problem() is None


# ----------------------------------------------------------------------------------------------
# 33 landmarks -> OpenPose-18
# ----------------------------------------------------------------------------------------------

def landmarks_to_openpose(landmarks, height: int, width: int, min_confidence: float = 0.5) -> np.ndarray:
    """BlazePose landmarks -> OpenPose-18 pixel keypoints (see the module docstring for the mapping).

    Args:
        landmarks: ``(n, 33, 3)`` (x, y, visibility) with x, y normalised to 0..1 of the frame, as
            mediapipe returns them; a frame of NaN (or all-zero visibility) means "nobody" and gives
            all-missing keypoints. A single ``(33, 3)`` frame is accepted.
        height, width: the frame size in pixels.
        min_confidence: points with a lower visibility are reported missing.

    Returns:
        float32 ``(n, 18, 3)`` pixels; missing points ``(0, 0, 0)``. Points outside the frame are missing.
    """
    lm = np.asarray(landmarks, dtype=np.float64)
    if lm.ndim == 2:
        lm = lm[None]
    if lm.ndim != 3 or lm.shape[1:] != (NUM_LANDMARKS, 3):
        raise InputError(f"landmarks must be shaped (frames, 33, 3) = BlazePose (x, y, visibility); got {lm.shape}")
    height, width = int(height), int(width)
    if height < 1 or width < 1:
        raise InputError(f"frame size must be positive; got {width}x{height}")
    xy = (lm[:, _SRC_A, :2] + lm[:, _SRC_B, :2]) / 2.0 * np.array([width, height])
    conf = np.minimum(lm[:, _SRC_A, 2], lm[:, _SRC_B, 2])
    inside = (xy[..., 0] >= 0) & (xy[..., 0] <= width - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= height - 1)
    keep = np.isfinite(xy).all(-1) & np.isfinite(conf) & (conf >= float(min_confidence)) & (conf > 0) & inside
    out = np.zeros((lm.shape[0], NUM_KEYPOINTS, 3), dtype=np.float32)
    out[..., :2] = np.where(keep[..., None], xy, 0.0)
    out[..., 2] = np.where(keep, conf, 0.0)
    return out


# ----------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------

def _process(solution, frame: np.ndarray):
    with warnings.catch_warnings():  # protobuf 4 warns about an API mediapipe 0.10.x still calls
        warnings.filterwarnings("ignore", message=".*GetPrototype.*")
        return solution.process(frame)


@dataclass
class MediapipePose:
    """What :func:`detect_poses` found, per frame."""

    keypoints: np.ndarray  # (n, 18, 3) float32 pixels (OpenPose-18)
    landmarks: np.ndarray  # (n, 33, 3) float32 (x, y normalised, visibility); NaN where nobody was found
    found: np.ndarray  # (n,) bool
    masks: torch.Tensor | None  # (n, H, W) float32 0..1 person probability (segmentation=True), 0 where nobody


def detect_poses(images, video: bool = True, segmentation: bool = True, min_confidence: float = 0.5,
                 min_detection_confidence: float = 0.5,
                 callback: Callable[[int, int], None] | None = None) -> MediapipePose:
    """Detect one person's body pose (and person mask) in every frame with mediapipe's pose model.

    Args:
        images: ``(n, H, W, 3)`` RGB frames, float 0..1 (torch/numpy, ComfyUI IMAGE) or uint8.
        video: treat the frames as a clip: mediapipe tracks the person from frame to frame (its
            ``static_image_mode=False``), which on real clips finds the person in more frames and jitters
            less than detecting every frame on its own (``False``). mediapipe's own landmark and mask
            smoothing filters stay off: they lag behind motion (on a crop panning 8 px per frame the
            smoothed nose moved 0.2 px, then 4.8 px); smooth masks with ``mask_refine`` instead.
        segmentation: also return the pose model's person segmentation (``enable_segmentation``).
        min_confidence: landmarks with a lower visibility become missing OpenPose points.
        min_detection_confidence: mediapipe's person detector threshold.
        callback: called as ``callback(i, n)`` after each frame (progress / interruption checks).

    The model is mediapipe's ``model_complexity=1`` pose model, the one inside the wheel: nothing is
    downloaded. mediapipe finds at most one person per frame (the most prominent one).

    Returns:
        :class:`MediapipePose`. Frames without a person have all-missing keypoints, ``found`` False and
        an all-zero mask; the caller decides whether that is an error.
    """
    solutions = import_mediapipe()
    frames = to_uint8_frames(images)
    n, h, w = frames.shape[:3]
    landmarks = np.full((n, NUM_LANDMARKS, 3), np.nan, dtype=np.float32)
    masks = np.zeros((n, h, w), dtype=np.float32) if segmentation else None
    # model_complexity=1 is the only pose landmark model in the wheel; 0 and 2 are downloaded on use
    with solutions.pose.Pose(static_image_mode=not video, model_complexity=1, smooth_landmarks=False,
                             enable_segmentation=bool(segmentation), smooth_segmentation=False,
                             min_detection_confidence=float(min_detection_confidence),
                             min_tracking_confidence=0.5) as pose:
        for i in range(n):
            result = _process(pose, frames[i])
            if result.pose_landmarks is not None:
                landmarks[i] = [(p.x, p.y, p.visibility) for p in result.pose_landmarks.landmark]
                if segmentation and result.segmentation_mask is not None:
                    masks[i] = result.segmentation_mask
            if callback is not None:
                callback(i, n)
    found = np.isfinite(landmarks).all(axis=(1, 2))
    keypoints = landmarks_to_openpose(np.where(found[:, None, None], landmarks, np.nan), h, w, min_confidence)
    found &= (keypoints[..., 2] > 0).any(axis=1)
    return MediapipePose(keypoints, landmarks, found, torch.from_numpy(masks) if segmentation else None)


def segment_people(images, model: str = "pose", video: bool = True,
                   callback: Callable[[int, int], None] | None = None) -> torch.Tensor:
    """Person probability masks with a segmentation model from the mediapipe wheel.

    Args:
        images: ``(n, H, W, 3)`` RGB frames (float 0..1 or uint8).
        model: ``"pose"``: the pose model's segmentation of the one person it tracks (the more accurate
            of the two, IoU 0.945 against reference masks on real dance clips as measured by the issue
            author); ``"selfie"``: the selfie segmentation model (general 256x256 variant), which
            segments every person in the frame (IoU 0.90 in the same measurement).
        video: frames are a clip (the pose model tracks the person); ignored by ``selfie``.
        callback: called as ``callback(i, n)`` after each frame.

    Returns:
        float32 ``(n, H, W)`` probabilities 0..1 (not thresholded), at the input size.
    """
    if model not in SEGMENTATION_MODELS:
        raise InputError(f"model must be one of {', '.join(SEGMENTATION_MODELS)}; got {model!r}")
    if model == "pose":
        return detect_poses(images, video=video, segmentation=True, callback=callback).masks
    solutions = import_mediapipe()
    frames = to_uint8_frames(images)
    n, h, w = frames.shape[:3]
    masks = np.zeros((n, h, w), dtype=np.float32)
    with solutions.selfie_segmentation.SelfieSegmentation(model_selection=0) as selfie:
        for i in range(n):
            result = _process(selfie, frames[i])
            if result.segmentation_mask is not None:
                masks[i] = result.segmentation_mask
            if callback is not None:
                callback(i, n)
    return torch.from_numpy(masks)
