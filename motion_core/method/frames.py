"""Frame shuffling, background masking and pose-image layout.

Frames are ComfyUI IMAGE batches ``(n, H, W, C)`` float in 0..1, masks ``(n, H, W)``, latents
``(n, 4, h, w)``, pose conditioning for the ControlNet ``(n, 3, H, W)``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import InputError, check_frame_counts, check_masks


def shuffle_permutation(num_frames: int, seed: int) -> torch.Tensor:
    """A seeded random order of ``num_frames`` frames (same seed, same order, on any device)."""
    if num_frames < 1:
        raise InputError(f"num_frames must be >= 1; got {num_frames}")
    return torch.randperm(num_frames, generator=torch.Generator().manual_seed(int(seed)))


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
    if not torch.equal(perm.sort().values.cpu(), torch.arange(n)):
        raise InputError(f"{name} is not a permutation of 0..{n - 1}")


def permute_frames(perm: torch.Tensor, **tensors: torch.Tensor | None) -> dict[str, torch.Tensor | None]:
    """Apply one permutation to every given frame batch (frames, poses, masks, latents...).

    All inputs must have the same number of frames; ``None`` passes through.
    """
    n = check_frame_counts(**tensors)
    perm = torch.as_tensor(perm)
    check_permutation(perm, n)
    return {k: None if v is None else v.index_select(0, perm.to(v.device)) for k, v in tensors.items()}


def resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    if masks.shape[-2:] == (height, width):
        return masks
    return F.interpolate(masks[:, None].float(), size=(height, width), mode="bilinear", align_corners=False)[:, 0]


def apply_background_mask(frames: torch.Tensor, masks: torch.Tensor, background: float = 0.0) -> torch.Tensor:
    """``U_M = U * M + background * (1 - M)`` (paper Eq. 10 with background 0).

    ``frames`` (n, H, W, C); ``masks`` (n or 1, h, w) with 1 = person, resized to the frames if needed.
    Empty masks are refused: a frame with no person would train on nothing.
    """
    if frames.ndim != 4:
        raise InputError(f"frames must be an IMAGE batch (frames, height, width, channels); got {tuple(frames.shape)}")
    if masks.ndim == 2:
        masks = masks[None]
    if masks.shape[0] == 1:
        masks = masks.expand(frames.shape[0], -1, -1)
    check_frame_counts(frames=frames, masks=masks)
    masks = resize_masks(masks, frames.shape[1], frames.shape[2]).clamp(0, 1).to(frames)
    check_masks("masks", masks)
    m = masks[..., None]
    return frames * m + background * (1 - m)


def poses_to_condition(poses: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Pose IMAGE batch ``(n, H, W, 3)`` -> ControlNet hint ``(n, 3, height, width)`` in 0..1.

    Resized (bilinear) when the pose images are not at the frames' pixel size, as ComfyUI's own
    ControlNet apply does.
    """
    if poses.ndim != 4 or poses.shape[-1] not in (3, 4):
        raise InputError(f"poses must be an IMAGE batch (frames, height, width, 3); got {tuple(poses.shape)}")
    hint = poses[..., :3].permute(0, 3, 1, 2).float()
    if hint.shape[-2:] != (height, width):
        hint = F.interpolate(hint, size=(height, width), mode="bilinear", align_corners=False)
    return hint.clamp(0, 1).contiguous()
