"""A synthetic clip: a stick-figure person moving over a textured background.

Used by the tests, the self-check and the CPU benchmark, so that nothing needs real footage. The
figure's OpenPose-18 keypoints, person masks and ControlNet pose images come with the frames.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch

from ..errors import InputError, check_pixel_size
from ..pose import render_pose_images

# Rest pose in units of body height, origin at the top of the head's centre line; (x, y).
_REST = np.array([
    (0.0, 0.06), (0.0, 0.17), (-0.10, 0.18), (-0.14, 0.33), (-0.16, 0.46), (0.10, 0.18), (0.14, 0.33),
    (0.16, 0.46), (-0.06, 0.50), (-0.07, 0.72), (-0.08, 0.95), (0.06, 0.50), (0.07, 0.72), (0.08, 0.95),
    (-0.025, 0.045), (0.025, 0.045), (-0.05, 0.06), (0.05, 0.06),
], dtype=np.float64)

MOTIONS = ("wave", "walk", "squat")
_LIMBS = [(1, 2), (2, 3), (3, 4), (1, 5), (5, 6), (6, 7), (1, 8), (8, 9), (9, 10), (1, 11), (11, 12), (12, 13), (8, 11)]


@dataclass
class SyntheticClip:
    frames: torch.Tensor  # (n, H, W, 3) float 0..1
    keypoints: np.ndarray  # (n, 18, 3) pixels, confidence 1
    masks: torch.Tensor  # (n, H, W) 0/1, 1 = person
    poses: torch.Tensor  # (n, H, W, 3) ControlNet-openpose pose images


def _rotate(vec: np.ndarray, angle: np.ndarray) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * vec[..., 0] - s * vec[..., 1], s * vec[..., 0] + c * vec[..., 1]], axis=-1)


def skeleton_motion(num_frames: int, motion: str = "wave") -> np.ndarray:
    """Body-unit joint positions ``(n, 18, 2)`` of one motion cycle (vectorised over frames)."""
    if motion not in MOTIONS:
        raise InputError(f"motion must be one of {', '.join(MOTIONS)}; got {motion!r}")
    phase = 2 * np.pi * np.arange(num_frames) / max(num_frames, 1)
    pts = np.repeat(_REST[None], num_frames, axis=0)

    def swing(parent, child, angle):
        # rotate the chain below ``parent`` (child and its descendants in the same limb) by ``angle``
        pts[:, child] = pts[:, parent] + _rotate(pts[:, child] - pts[:, parent], angle)

    if motion == "wave":
        up = 2.2 * (0.5 + 0.5 * np.sin(phase))  # right arm raises sideways and waves
        for j in (3, 4):
            swing(2, j, up)
        swing(3, 4, -0.8 * np.sin(2 * phase))
        for j in (6, 7):
            swing(5, j, 0.2 * np.sin(phase))
    elif motion == "walk":
        for hip, knee, ankle, sign in ((8, 9, 10, 1), (11, 12, 13, -1)):
            for j in (knee, ankle):
                swing(hip, j, sign * 0.45 * np.sin(phase))
            swing(knee, ankle, 0.3 * np.clip(np.sin(phase + sign), 0, None))
        for sh, el, wr, sign in ((2, 3, 4, -1), (5, 6, 7, 1)):
            for j in (el, wr):
                swing(sh, j, sign * 0.4 * np.sin(phase))
        pts[..., 0] += 0.25 * np.sin(phase)[:, None]
    else:  # squat
        depth = 0.12 * (0.5 - 0.5 * np.cos(phase))
        upper = [0, 1, 2, 3, 4, 5, 6, 7, 8, 11, 14, 15, 16, 17]
        pts[:, upper, 1] += depth[:, None]
        pts[:, [9, 12], 0] += np.array([-1, 1]) * depth[:, None] * 0.8
        pts[:, [9, 12], 1] += depth[:, None] * 0.5
    return pts


def make_clip(num_frames: int = 8, height: int = 64, width: int = 64, motion: str = "wave", seed: int = 0,
              center: tuple[float, float] = (0.5, 0.15), body_height: float = 0.75) -> SyntheticClip:
    """Render ``num_frames`` frames of a figure doing ``motion`` over a seeded textured background.

    ``center``: the figure's head x and top y as fractions of the frame; ``body_height`` as a
    fraction of the frame height.
    """
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1; got {num_frames}")
    if height < 16 or width < 16:
        raise InputError(f"the synthetic clip needs at least 16x16 pixels; got {width}x{height}")
    check_pixel_size("the synthetic clip", height, width)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    f1, f2 = rng.uniform(3, 9, size=2)
    base = rng.uniform(0.2, 0.8, size=3)
    bg = np.stack([
        base[c] + 0.15 * np.sin(2 * np.pi * (f1 * xx + c / 3)) * np.cos(2 * np.pi * f2 * yy) for c in range(3)
    ], axis=-1)
    bg = np.clip(bg + rng.normal(0, 0.03, size=bg.shape), 0, 1).astype(np.float32)

    body = body_height * height
    joints = skeleton_motion(num_frames, motion) * body
    joints[..., 0] += center[0] * width
    joints[..., 1] += center[1] * height
    kp = np.concatenate([joints, np.ones(joints.shape[:2] + (1,))], axis=-1).astype(np.float32)

    shirt, pants, skin = rng.uniform(0, 1, size=3), rng.uniform(0, 0.5, size=3), np.array([0.9, 0.75, 0.6])
    thick = max(2, int(round(body * 0.07)))
    frames = np.empty((num_frames, height, width, 3), dtype=np.float32)
    masks = np.empty((num_frames, height, width), dtype=np.float32)
    for i in range(num_frames):  # OpenCV draws one image at a time
        img, mask = bg.copy(), np.zeros((height, width), dtype=np.uint8)
        p = np.round(joints[i]).astype(np.int32)
        for a, b in _LIMBS:
            color = pants if b in (9, 10, 12, 13) or (a, b) == (8, 11) else shirt
            cv2.line(img, tuple(map(int, p[a])), tuple(map(int, p[b])), tuple(map(float, color)), thick, cv2.LINE_AA)
            cv2.line(mask, tuple(map(int, p[a])), tuple(map(int, p[b])), 1, thick, cv2.LINE_AA)
        torso = p[[2, 5, 11, 8]]
        cv2.fillConvexPoly(img, torso, tuple(map(float, shirt)), cv2.LINE_AA)
        cv2.fillConvexPoly(mask, torso, 1, cv2.LINE_AA)
        radius = max(2, int(round(body * 0.07)))
        cv2.circle(img, tuple(map(int, p[0])), radius, tuple(map(float, skin)), -1, cv2.LINE_AA)
        cv2.circle(mask, tuple(map(int, p[0])), radius, 1, -1, cv2.LINE_AA)
        frames[i], masks[i] = img, mask
    stick = max(1, int(round(4 * min(height, width) / 512)))
    poses = render_pose_images(kp, height, width, stick_width=stick, point_radius=stick)
    return SyntheticClip(torch.from_numpy(np.clip(frames, 0, 1)), kp, torch.from_numpy(masks), poses)


def frames_to_latents(frames: torch.Tensor, channels: int = 4) -> torch.Tensor:
    """A stand-in "VAE encoder" for tiny models: 8x8 average pooling plus a fixed colour mixing to
    ``channels`` latent channels. Returns ``(n, channels, H/8, W/8)``; only for tests and the
    self-check, where no real VAE exists."""
    x = frames.permute(0, 3, 1, 2) * 2 - 1
    x = torch.nn.functional.avg_pool2d(x, 8)
    mix = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.33, 0.33, 0.33]])[:channels]
    return torch.einsum("nchw,lc->nlhw", x, mix)


def latents_to_frames(latents: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`frames_to_latents` up to the pooling: ``(n, H, W, 3)`` in 0..1."""
    mix = torch.tensor([[0.8, 0.1, 0.1], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8]])
    rgb = torch.einsum("nlhw,lc->nchw", latents[:, :3], torch.linalg.inv(mix))
    rgb = torch.nn.functional.interpolate(rgb, scale_factor=8, mode="bilinear", align_corners=False)
    return ((rgb + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
