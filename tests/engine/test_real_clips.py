"""Opt-in: mediapipe poses and person masks on a folder of real clips, as the workflow prepares them.

    EYM_REAL_CLIPS_DIR=/path/to/clips .venv/bin/python -m pytest -q tests/engine/test_real_clips.py -s

Skipped unless ``EYM_REAL_CLIPS_DIR`` names a folder (like the ComfyUI integration test). Nothing is
downloaded and no clip belongs in the repository. Every video in the folder (``.mp4 .mov .avi .webm
.mkv .gif``) is read: up to ``EYM_REAL_CLIPS_FRAMES`` frames (default 32), every
``EYM_REAL_CLIPS_STRIDE``-th (default 1), centre-cropped to a square and resized to 512x512 as the
shipped workflow does. Each clip is one test, and prints what was measured.

Beside a clip ``X.mp4`` the folder may hold:

* ``clips.json``: ``{"X.mp4": {"person": false}}`` marks clips without a person (default: with one);
* ``X.pose.json``: reference poses, comfyui_controlnet_aux's POSE_KEYPOINT (one entry per video frame,
  pixels or normalised, on the video's canvas);
* ``X_masks/``: reference person masks, one image per video frame (sorted by name, white = person).

Checks:

* a clip with a person: found in at least 90% of the frames; the detected head and torso points lie
  inside the mediapipe mask (at least 90% of them); the mask of consecutive frames overlaps
  (median IoU >= 0.6). A clip without a person: nobody in at least 90% of the frames.
* with reference poses: median joint distance <= 10 px at 512x512, >= 90% of joints within 0.2
  torso lengths, and no left/right swap (a left/right pair that fits the reference better crossed
  than straight, where the reference's two sides are more than 0.2 torso lengths apart);
* with reference masks: IoU of the mediapipe mask >= 0.85 (the keypoint mask's IoU is printed).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from edit_your_motion.motion_core.pose import KEYPOINT_NAMES, from_pose_keypoint, person_masks_from_keypoints
from edit_your_motion.motion_core.pose import mediapipe_detector as MP

CLIPS_DIR = os.environ.get("EYM_REAL_CLIPS_DIR")
FRAMES = int(os.environ.get("EYM_REAL_CLIPS_FRAMES", "32"))
STRIDE = int(os.environ.get("EYM_REAL_CLIPS_STRIDE", "1"))
SIZE = 512
VIDEO_SUFFIXES = (".mp4", ".mov", ".avi", ".webm", ".mkv", ".gif")

pytestmark = pytest.mark.skipif(not CLIPS_DIR, reason="set EYM_REAL_CLIPS_DIR to a folder of real clips")


def _clips() -> list[Path]:
    if not CLIPS_DIR:
        return []
    folder = Path(CLIPS_DIR)
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES) if folder.is_dir() else []


def _square(h: int, w: int) -> tuple[int, int, int]:
    side = min(h, w)
    return (h - side) // 2, (w - side) // 2, side


def read_clip(path: Path) -> tuple[np.ndarray, list[int], tuple[int, int]]:
    """``(frames (n, 512, 512, 3) uint8 RGB, the video frame index of each, (video height, width))``."""
    cap = cv2.VideoCapture(str(path))
    frames, indices, i, shape = [], [], 0, None
    while len(frames) < FRAMES:
        ok, bgr = cap.read()
        if not ok:
            break
        shape = bgr.shape[:2]
        if i % STRIDE == 0:
            y0, x0, side = _square(*shape)
            crop = cv2.cvtColor(bgr[y0:y0 + side, x0:x0 + side], cv2.COLOR_BGR2RGB)
            frames.append(cv2.resize(crop, (SIZE, SIZE), interpolation=cv2.INTER_AREA))
            indices.append(i)
        i += 1
    cap.release()
    assert frames, f"could not read any frame of {path.name}"
    return np.stack(frames), indices, shape


def _reference_keypoints(path: Path, indices, shape) -> np.ndarray | None:
    ref = path.with_name(path.stem + ".pose.json")
    if not ref.is_file():
        return None
    kp, ch, cw = from_pose_keypoint(json.loads(ref.read_text()), allow_missing=True, name=ref.name)
    kp = kp[indices]
    h, w = shape
    kp[..., 0] *= w / cw
    kp[..., 1] *= h / ch
    y0, x0, side = _square(h, w)
    present = kp[..., 2] > 0
    kp[..., 0] = np.where(present, (kp[..., 0] - x0) * SIZE / side, 0)
    kp[..., 1] = np.where(present, (kp[..., 1] - y0) * SIZE / side, 0)
    return kp


def _reference_masks(path: Path, indices, shape) -> np.ndarray | None:
    folder = path.with_name(path.stem + "_masks")
    if not folder.is_dir():
        return None
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp"))
    out = []
    for i in indices:
        m = cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE)
        y0, x0, side = _square(*m.shape)
        out.append(cv2.resize(m[y0:y0 + side, x0:x0 + side], (SIZE, SIZE), interpolation=cv2.INTER_NEAREST) >= 128)
    return np.stack(out)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0


NAMES = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
SIDES = [(NAMES[n], NAMES[n.replace("left", "right")]) for n in KEYPOINT_NAMES if n.startswith("left")]
HEAD_TORSO = [NAMES[n] for n in ("nose", "neck", "right_shoulder", "left_shoulder", "right_hip", "left_hip",
                                 "right_eye", "left_eye")]


def pose_errors(kp: np.ndarray, ref: np.ndarray) -> dict:
    """Joint distances against reference keypoints, relative to the reference torso, and side swaps."""
    both = (kp[..., 2] > 0) & (ref[..., 2] > 0)
    dist = np.linalg.norm(kp[..., :2] - ref[..., :2], axis=-1)
    hips = ref[:, [NAMES["right_hip"], NAMES["left_hip"]]]
    neck = ref[:, NAMES["neck"]]
    torso_ok = (hips[..., 2] > 0).all(-1) & (neck[:, 2] > 0)
    torso = np.linalg.norm(hips[..., :2].mean(1) - neck[:, :2], axis=-1)
    rel = dist / np.where(torso_ok, torso, np.nan)[:, None]
    swaps = 0
    for left, right in SIDES:
        # a swap: the pair fits the reference better crossed than straight, where the reference's two
        # sides are clearly apart (more than 0.2 torso lengths; closer ones, e.g. feet together, are ambiguous)
        ok = both[:, left] & both[:, right] & torso_ok
        straight = dist[:, left] + dist[:, right]
        crossed = (np.linalg.norm(kp[:, left, :2] - ref[:, right, :2], axis=-1)
                   + np.linalg.norm(kp[:, right, :2] - ref[:, left, :2], axis=-1))
        apart = np.linalg.norm(ref[:, left, :2] - ref[:, right, :2], axis=-1) > 0.2 * torso
        swaps += int((ok & apart & (crossed < straight)).sum())
    within = rel[both & torso_ok[:, None]]
    return {"median_px": float(np.median(dist[both])) if both.any() else float("nan"),
            "within_0.2_torso": float((within < 0.2).mean()) if within.size else float("nan"),
            "joints": int(both.sum()), "swaps": swaps}


@pytest.mark.parametrize("path", _clips(), ids=lambda p: p.name)
def test_real_clip(path, mediapipe_solutions):
    manifest = path.with_name("clips.json")
    info = json.loads(manifest.read_text()).get(path.name, {}) if manifest.is_file() else {}
    frames, indices, shape = read_clip(path)
    n = len(frames)
    found = MP.detect_poses(frames, video=True, segmentation=True)
    rate = float(found.found.mean())
    if not info.get("person", True):
        print(f"\n[eym] {path.name}: {n} frames, no person expected; mediapipe found one in {found.found.sum()}")
        assert rate <= 0.1, f"mediapipe found a person in {found.found.sum()} of {n} frames of {path.name}"
        return
    masks = (found.masks >= 0.5).numpy()
    kp = found.keypoints
    grown = np.stack([cv2.dilate(m.astype(np.uint8), np.ones((7, 7), np.uint8)) for m in masks]).astype(bool)
    pts = [(f, j) for f in range(n) for j in HEAD_TORSO if kp[f, j, 2] > 0]
    inside = float(np.mean([grown[f, min(SIZE - 1, int(kp[f, j, 1])), min(SIZE - 1, int(kp[f, j, 0]))]
                            for f, j in pts])) if pts else float("nan")
    consecutive = [_iou(masks[f], masks[f + 1]) for f in range(n - 1) if found.found[f] and found.found[f + 1]]
    rough = person_masks_from_keypoints(kp, SIZE, SIZE).numpy().astype(bool)
    area_ratio = float(rough.sum() / max(1, masks.sum()))
    report = (f"\n[eym] {path.name}: {n} frames at {SIZE}x{SIZE}; person found in {found.found.sum()}/{n}; "
              f"{(kp[..., 2] > 0).sum(1).mean():.1f} of 18 joints per frame; head/torso points inside the mask "
              f"{inside:.3f}; consecutive-frame mask IoU median {np.median(consecutive) if consecutive else float('nan'):.3f}; "
              f"mask area {masks.mean():.3f} of the frame; keypoint mask / mediapipe mask area {area_ratio:.2f}")
    ref_kp = _reference_keypoints(path, indices, shape)
    if ref_kp is not None:
        errors = pose_errors(kp, ref_kp)
        report += (f"; vs reference poses: median {errors['median_px']:.1f} px, {errors['within_0.2_torso']:.3f} "
                   f"within 0.2 torso, {errors['swaps']} left/right swaps over {errors['joints']} joints")
    ref_masks = _reference_masks(path, indices, shape)
    if ref_masks is not None:
        iou = _iou(masks, ref_masks)
        report += f"; vs reference masks: IoU {iou:.3f} (keypoint mask {_iou(rough, ref_masks):.3f})"
    print(report)
    assert rate >= 0.9, f"mediapipe found the person in only {found.found.sum()} of {n} frames"
    assert inside >= 0.9 and consecutive and np.median(consecutive) >= 0.6
    if ref_kp is not None:
        assert errors["median_px"] <= 10 and errors["within_0.2_torso"] >= 0.9 and errors["swaps"] == 0
    if ref_masks is not None:
        assert iou >= 0.85
