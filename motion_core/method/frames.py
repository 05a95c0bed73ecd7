"""Frame shuffling, background masking and pose-image layout.

Frames are ComfyUI IMAGE batches ``(n, H, W, C)`` float in 0..1, masks ``(n, H, W)``, latents
``(n, 4, h, w)``, pose conditioning for the ControlNet ``(n, 3, H, W)``.
"""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F

from ..errors import InputError, check_frame_counts, check_masks
from ..seeding import step_generator

log = logging.getLogger("edit_your_motion")

#: Relative difference of aspect ratios above which an image is refused rather than stretched.
ASPECT_TOLERANCE = 0.01


def _same_aspect(h: int, w: int, height: int, width: int) -> bool:
    return abs(h * width - w * height) <= ASPECT_TOLERANCE * h * width


def shuffle_permutation(num_frames: int, seed: int) -> torch.Tensor:
    """A seeded random order of ``num_frames`` frames (same seed, same order, on any device): the
    order stage 1 trains on with ``shuffle="fixed"``, drawn as step -1 of the seed's stream."""
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1; got {num_frames}")
    return torch.randperm(num_frames, generator=step_generator(seed, -1))


def inverse_permutation(perm: torch.Tensor) -> torch.Tensor:
    """``inv`` such that ``x[perm][inv] == x``."""
    check_permutation(perm)
    inv = torch.empty_like(perm)
    inv[perm] = torch.arange(perm.numel(), device=perm.device)
    return inv


def check_permutation(perm: torch.Tensor, num_frames: int | None = None, name: str = "permutation") -> None:
    perm = torch.as_tensor(perm)
    if perm.ndim != 1 or perm.dtype not in (torch.int64, torch.int32):
        raise InputError(f"{name} must be a 1-D integer tensor; got {tuple(perm.shape)} {perm.dtype}")
    n = perm.numel()
    if num_frames is not None and n != num_frames:
        raise InputError(f"{name} orders {n} frames but the clip has {num_frames}; make the permutation from this clip")
    if not torch.equal(perm.sort().values.cpu().long(), torch.arange(n)):
        raise InputError(f"{name} is not a permutation of 0..{n - 1}")


def frame_stride(fps: float | None, target_fps: float) -> int:
    """Take every ``k``-th frame so that ``fps / k`` comes closest to ``target_fps`` (never a rate
    above the clip's own): 1 when either rate is unknown (``None`` or ``<= 0``) or the clip is not
    faster than the target. E.g. 24 fps to 12 -> 2, 30 fps to 12 -> 2 (15 fps), 30 fps to 8 -> 4 (7.5)."""
    if fps is None or not math.isfinite(fps) or fps <= 0 or target_fps <= 0 or fps <= target_fps:
        return 1
    return max(1, round(fps / target_fps))


def select_frames(count: int, every: int, frames: int = 0, start: int = 0) -> torch.Tensor:
    """Indices of the frames taken from a clip of ``count`` frames: from ``start``, every ``every``-th
    frame, at most ``frames`` of them (0: all there are). Raises when none can be taken."""
    if every < 1:
        raise InputError(f"every_nth must be at least 1; got {every}")
    if frames < 0 or start < 0:
        raise InputError(f"frames and start_frame must be 0 or more; got frames={frames}, start_frame={start}")
    if start >= count:
        raise InputError(f"start_frame is {start} but the clip has {count} frames (0..{count - 1}); "
                         f"lower start_frame")
    taken = torch.arange(start, count, every)
    return taken if frames == 0 else taken[:frames]


def permute_frames(perm: torch.Tensor, **tensors: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """Apply one permutation to every given frame batch (frames, poses, masks, latents...).

    All inputs must have the same number of frames; ``None`` passes through.
    """
    n = check_frame_counts(**tensors)
    perm = torch.as_tensor(perm)
    check_permutation(perm, n)
    return {k: None if v is None else v.index_select(0, perm.to(v.device)) for k, v in tensors.items()}


def resize_masks(masks: torch.Tensor, height: int, width: int, name: str = "masks") -> torch.Tensor:
    """Masks at the frames' size: resized (bilinear, with a warning) when they have the frames'
    aspect ratio; another aspect ratio is refused, since stretching would move the person's outline."""
    h, w = masks.shape[-2:]
    if (h, w) == (height, width):
        return masks
    if not _same_aspect(h, w, height, width):
        raise InputError(
            f"{name} is {w}x{h} but the frames are {width}x{height}; a mask of another aspect ratio would be "
            f"stretched over the person. Make the mask at the frames' size ({width}x{height}), e.g. from the same frames."
        )
    log.warning("%s: resizing the %dx%d mask to the %dx%d frames", name, w, h, width, height)
    return F.interpolate(masks[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def apply_background_mask(frames: torch.Tensor, masks: torch.Tensor, background: float = 0.0) -> torch.Tensor:
    """``U_M = U * M + background * (1 - M)`` (paper Eq. 10 with background 0).

    ``frames`` (n, H, W, C); ``masks`` (n or 1, h, w) with 1 = person, resized to the frames if
    needed (same aspect ratio only, see :func:`resize_masks`). Empty masks are refused: a frame with
    no person would train on nothing.
    """
    if frames.ndim != 4:
        raise InputError(f"frames must be an IMAGE batch (frames, height, width, channels); got {tuple(frames.shape)}")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[0] == 1:
        masks = masks.expand(frames.shape[0], -1, -1)
    check_frame_counts(frames=frames, masks=masks)
    masks = resize_masks(masks, frames.shape[1], frames.shape[2], "masks").clamp(0, 1).to(frames)
    check_masks("masks", masks)
    m = masks[..., None]
    return frames * m + background * (1 - m)


def poses_to_condition(poses: torch.Tensor, height: int, width: int, name: str = "poses") -> torch.Tensor:
    """Pose IMAGE batch ``(n, H, W, 3)`` -> ControlNet hint ``(n, 3, height, width)`` in 0..1.

    * Pose images of a video whose size is not divisible by 8 (``H // 8 * 8 == height``...): ComfyUI's
      VAE Encode cropped the frames to the centred multiple of 8, so the pose images are cropped the
      same way (they stay on the person), with a warning that the result is smaller.
    * Other sizes of the same aspect ratio are resized (bilinear), with a warning.
    * Another aspect ratio is refused: stretched skeletons would not fit the person.
    """
    if poses.ndim != 4 or poses.shape[-1] not in (3, 4):
        raise InputError(f"{name} must be an IMAGE batch (frames, height, width, 3); got {tuple(poses.shape)}")
    hint = poses[..., :3].permute(0, 3, 1, 2).float()
    h, w = hint.shape[-2:]
    if (h, w) == (height, width):
        pass
    elif (h // 8 * 8, w // 8 * 8) == (height, width):
        top, left = (h % 8) // 2, (w % 8) // 2  # where ComfyUI's VAE Encode crops
        hint = hint[..., top:top + height, left:left + width]
        log.warning(
            "%s are %dx%d: the frames were cropped to %dx%d by VAE Encode (sizes must be divisible by 8), so the "
            "result will be %dx%d; cropping the pose images the same way. Resize the video to a multiple of 8 "
            "(e.g. Upscale Image) to keep every pixel.", name, w, h, width, height, width, height,
        )
    elif _same_aspect(h, w, height, width):
        log.warning("%s: resizing the %dx%d pose images to the video's %dx%d", name, w, h, width, height)
        hint = F.interpolate(hint, size=(height, width), mode="bilinear", align_corners=False)
    else:
        raise InputError(
            f"{name} are {w}x{h} but the video is {width}x{height}; pose images of another aspect ratio would be "
            f"stretched. Render them at the video's size (EYM Render Poses width/height, or EYM Align Skeleton)."
        )
    return hint.clamp(0, 1).contiguous()
