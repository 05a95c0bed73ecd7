"""The world's fixed "VAE": the world lives directly in a 4-channel latent space.

Encoding area-averages each 8x8 block of the pose-resolution image (SD1.5's factor 8) and mixes RGB
in [-1, 1] into 4 channels (R, G, B and a luminance channel, as the self-check's stand-in does);
decoding inverts the mix by least squares. Nothing is learned, so "VAE" error is only the 8x8
pooling: the world's images ARE its latents, seen at 1/8 of the pose resolution.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

MIX = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [0.3, 0.45, 0.25]])
UNMIX = torch.linalg.pinv(MIX)  # (3, 4)


def _as_tensor(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        images = torch.from_numpy(np.ascontiguousarray(images))
    return images.float()


def encode(images) -> torch.Tensor:
    """Images ``(n, H, W, 3)`` in 0..1 (H, W divisible by 8) -> latents ``(n, 4, H/8, W/8)``."""
    x = _as_tensor(images).permute(0, 3, 1, 2) * 2 - 1
    x = F.avg_pool2d(x, 8)
    return torch.einsum("nchw,lc->nlhw", x, MIX)


def decode(latents: torch.Tensor) -> torch.Tensor:
    """Latents ``(n, 4, h, w)`` -> images ``(n, h, w, 3)`` in 0..1 (the world's image resolution)."""
    rgb = torch.einsum("nlhw,cl->nchw", latents.float(), UNMIX)
    return ((rgb + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)


def downsample(images) -> torch.Tensor:
    """Pose-resolution images ``(n, H, W, 3)`` -> world-resolution images ``(n, H/8, W/8, 3)``:
    what a perfect encode + decode gives (the ground truth metrics compare against)."""
    return decode(encode(images))


def downsample_masks(masks) -> torch.Tensor:
    """0/1 masks ``(n, H, W)`` -> person-coverage fractions ``(n, H/8, W/8)`` in 0..1."""
    m = _as_tensor(masks)[:, None]
    return F.avg_pool2d(m, 8)[:, 0]


def upscale(images: torch.Tensor, factor: int = 8) -> torch.Tensor:
    """World images ``(n, h, w, 3)`` -> ``(n, h*f, w*f, 3)`` by nearest neighbour, for viewing."""
    return images.repeat_interleave(factor, 1).repeat_interleave(factor, 2)
