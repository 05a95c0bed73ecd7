"""Beyond the paper: keep the source background exactly, and fill the source person's ghost.

Neither paper does this; it is an option beside the paper-faithful samplers (see the README's
"Beyond the paper").

**Keeping the background.** DDIM inversion walks the clean source latents up to ``z_T`` and passes
through one latent per noise level: the *trajectory* (``trajectory[0]`` the clean source latents,
``trajectory[k]`` the latent after inversion step ``k``, ``trajectory[N] = z_T``). Sampling step
``j`` (of ``N``, timesteps descending) lands on the level of ``trajectory[N - 1 - j]``. After every
sampling step the edit's latent is blended with the source's own trajectory latent at that level::

    z <- region * z + (1 - region) * trajectory[level]

``region`` ``(n, 1, h, w)`` in 0..1 is where the edit may change anything (1) and where it must keep
the source (0). At the last step ``trajectory[0]`` is the source latents, so outside the region the
edit IS the source, bit for bit; the model sees a consistent noisy latent at every step, so the
person it generates inside the region blends into the kept background (as in blended-latent
inpainting). With ``region`` all ones the sampler is unchanged (``1 * z + 0 * x == z`` exactly);
with all zeros the edit is the source latents exactly.

**The change region** is the union of the source person (a person mask) and the target person
(drawn from the aligned reference skeletons), brought to latent resolution (a latent pixel belongs
to the person when any of its 8x8 image pixels does), dilated by ``grow`` latent pixels and
feathered over ``feather`` pixels on each side: the feathered mask is exactly 1 on the dilated
region and exactly 0 beyond ``grow + 2 * feather`` pixels. A user-painted mask replaces the union.

**Ghosts** (``ghost_fill="other_frames"``): where the source person stood and the target person does
not reach (the *ghost region*), the edit must show the background that the source person hid. In a
clip with a static camera that background is visible in another frame where the source person has
moved away. For each ghost pixel the nearest frame in time whose source person does not cover the
pixel supplies the known latent (its trajectory latent at the same level), and the pixel is taken out
of the change region; ghost pixels that no frame uncovers stay in the region and are generated.
This assumes a static camera (a moving camera puts another part of the scene at that pixel).

**Partial re-noising** (``renoise_ghost``): the inverted ``z_T`` still carries the source person in
the ghost region, which pulls the edit towards a ghost. With this option the ghost pixels still in
the change region start from fresh noise (seeded) instead: ``sqrt(g) * noise + sqrt(1 - g) * z_T``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..errors import InputError, check_finite

GHOST_FILLS = ("none", "other_frames")


def latent_masks(masks: torch.Tensor, height: int, width: int, name: str = "mask") -> torch.Tensor:
    """Boolean ``(n, 1, height, width)`` from image-resolution masks ``(n, H, W)`` (or ``(n, 1, H, W)``)
    in 0..1: a latent pixel is set when any image pixel of its block is >= 0.5. Masks already at latent
    resolution pass through (thresholded)."""
    if not isinstance(masks, torch.Tensor):
        raise InputError(f"{name} must be a tensor of masks (frames, height, width)")
    m = masks.detach().float().cpu()
    if m.ndim == 4 and m.shape[1] == 1:
        m = m[:, 0]
    if m.ndim == 2:
        m = m[None]
    if m.ndim != 3:
        raise InputError(f"{name} must be masks (frames, height, width); got shape {tuple(masks.shape)}")
    check_finite(name, m, "check the node that made the mask")
    H, W = m.shape[-2:]
    if H % height or W % width or (H // height) != (W // width):
        raise InputError(
            f"{name} is {W}x{H} pixels, which is not the video size ({width * 8}x{height * 8} for its "
            f"{width}x{height} latents); resize the mask to the video size")
    f = H // height
    m = (m >= 0.5).float()[:, None]
    if f > 1:
        m = F.max_pool2d(m, f)
    return m > 0


def dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Boolean ``(n, 1, h, w)`` grown by ``radius`` pixels (square neighbourhood)."""
    if radius <= 0:
        return mask
    return F.max_pool2d(mask.float(), 2 * radius + 1, stride=1, padding=radius) > 0


def feather(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Soft ``(n, 1, h, w)`` float32: exactly 1 on ``mask``, exactly 0 farther than ``2 * radius``
    pixels from it, a linear-ish ramp between (box average of the mask grown by ``radius``)."""
    m = mask.float()
    if radius <= 0:
        return m
    grown = dilate(mask, radius).float()
    return F.avg_pool2d(grown, 2 * radius + 1, stride=1, padding=radius, count_include_pad=False)


def nearest_uncovered_frame(covered: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For boolean ``covered`` ``(n, 1, h, w)`` (the source person per frame): the index of the frame
    nearest in time whose pixel is NOT covered, per frame and pixel ``(n, 1, h, w)`` (long), and
    whether such a frame exists (bool). Ties go to the earlier frame."""
    n = covered.shape[0]
    idx = torch.arange(n)
    dist = (idx[:, None] - idx[None, :]).abs().double() + idx[None, :].double() / (2 * n)  # (i, j), ties -> earlier
    big = float(4 * n)
    cost = dist[:, :, None, None, None] + big * covered[None].double()  # (i, j, 1, h, w)
    best = cost.argmin(1)  # (n, 1, h, w)
    found = ~torch.gather(covered.expand(n, *covered.shape[1:]), 0, best)
    return best, found


@dataclass
class BackgroundKeeper:
    """What the samplers need to keep the source outside the change region.

    ``trajectory`` ``(N + 1, n, 4, h, w)`` float32 scaled latents (``trajectory[0]`` the source,
    ``trajectory[N]`` ``z_T``); ``region`` ``(n, 1, h, w)`` float32, 1 = may change; ``source_frame``
    ``(n, 1, h, w)`` long: which frame's trajectory supplies each kept pixel (its own frame, or
    another frame for filled ghost pixels); ``renoise`` ``(n, 1, h, w)`` float32 or None: where
    ``z_T`` is replaced by fresh noise; ``seed`` of that noise; ``ghost`` ``(n, 1, h, w)`` float32 or
    None: the ghost pixels that stay in the change region (the samplers' ghost guidance and mask-split
    injection act there).
    """

    trajectory: torch.Tensor
    region: torch.Tensor
    source_frame: torch.Tensor | None = None
    renoise: torch.Tensor | None = None
    seed: int = 0
    ghost: torch.Tensor | None = None  # (n, 1, h, w) float32: ghost pixels left in the change region (1), else 0
    ghost_all: torch.Tensor | None = None  # (n, 1, h, w) bool: every ghost pixel (source person, not target), filled or not

    @property
    def num_steps(self) -> int:
        return self.trajectory.shape[0] - 1

    def check(self, latents: torch.Tensor, num_steps: int) -> None:
        if self.num_steps != num_steps:
            raise InputError(
                f"the stored inversion trajectory has {self.num_steps} steps but the sampler runs {num_steps}; "
                "use the same number of steps for EYM DDIM Inversion and the sampler")
        if tuple(self.trajectory.shape[1:]) != tuple(latents.shape):
            raise InputError(
                f"the stored inversion trajectory is for latents {tuple(self.trajectory.shape[1:])} but the inverted "
                f"latent is {tuple(latents.shape)}; connect the sampler to the inversion that made it")

    def to(self, device) -> "BackgroundKeeper":
        mv = (lambda t: None if t is None else t.to(device))
        return BackgroundKeeper(self.trajectory.to(device, torch.float32), self.region.to(device, torch.float32),
                                mv(self.source_frame), mv(self.renoise), self.seed, mv(self.ghost),
                                mv(self.ghost_all))

    def known(self, level: int) -> torch.Tensor:
        """The source's latent at inversion level ``level`` for every kept pixel ``(n, 4, h, w)``."""
        lat = self.trajectory[level]
        if self.source_frame is None:
            return lat
        return torch.gather(lat, 0, self.source_frame.expand(lat.shape))

    def blend(self, z: torch.Tensor, level: int) -> torch.Tensor:
        return self.region * z + (1 - self.region) * self.known(level)

    def start(self, z_t: torch.Tensor) -> torch.Tensor:
        """The editing branch's starting latent: ``z_T`` with the re-noised pixels replaced, blended at level N."""
        z = z_t
        if self.renoise is not None:
            from .sampler import step_generator

            noise = torch.randn(z.shape, generator=step_generator(self.seed, -1)).to(z.device)
            z = self.renoise.sqrt() * noise + (1 - self.renoise).sqrt() * z
        return self.blend(z, self.num_steps)


def make_keeper(trajectory: torch.Tensor, source_masks: torch.Tensor | None = None,
                target_masks: torch.Tensor | None = None, region: torch.Tensor | None = None, grow: int = 1,
                feather_radius: int = 1, ghost_fill: str = "none", renoise_ghost: bool = False,
                seed: int = 0) -> BackgroundKeeper:
    """Build a :class:`BackgroundKeeper`.

    ``trajectory``: from :func:`~motion_core.method.ddim.ddim_invert_trajectory`. ``source_masks`` /
    ``target_masks``: the source person and the target person (drawn from the aligned reference
    skeletons), ``(n, H, W)`` at image or latent resolution. ``region``: a user-painted change region
    that replaces their union (one mask for all frames, or one per frame). ``grow`` / ``feather_radius``
    in latent pixels. ``ghost_fill`` and ``renoise_ghost``: see the module docstring (they need both
    person masks).
    """
    if not isinstance(trajectory, torch.Tensor) or trajectory.ndim != 5:
        raise InputError("the inversion trajectory must be a tensor (steps + 1, frames, 4, h, w); invert with "
                         "EYM DDIM Inversion (it stores the trajectory in its LATENT)")
    if ghost_fill not in GHOST_FILLS:
        raise InputError(f"ghost_fill must be one of {', '.join(GHOST_FILLS)}; got {ghost_fill!r}")
    if grow < 0 or feather_radius < 0:
        raise InputError(f"grow and feather must be >= 0; got grow={grow}, feather={feather_radius}")
    trajectory = trajectory.float()
    n, _, h, w = trajectory.shape[1:]

    def frames(m, name):
        m = latent_masks(m, h, w, name)
        if m.shape[0] == 1 and n > 1:
            m = m.expand(n, -1, -1, -1)
        if m.shape[0] != n:
            raise InputError(f"{name} has {m.shape[0]} frames but the clip has {n}; give one mask per frame (or one for all)")
        return m

    source_frame, renoise = None, None
    if region is not None:
        core = frames(region, "change region")
        soft = feather(dilate(core, grow), feather_radius)
        return BackgroundKeeper(trajectory, soft, None, None, seed)
    if source_masks is None and target_masks is None:
        raise InputError("keeping the background needs a change region: give the source person mask and the reference "
                         "keypoints (the target person), or paint a change region")
    src = frames(source_masks, "source mask") if source_masks is not None else torch.zeros(n, 1, h, w, dtype=torch.bool)
    tgt = frames(target_masks, "target mask") if target_masks is not None else torch.zeros(n, 1, h, w, dtype=torch.bool)
    src_g, tgt_g = dilate(src, grow), dilate(tgt, grow)
    free = src_g | tgt_g
    ghost = src_g & ~tgt_g
    ghost_all = ghost if (source_masks is not None and target_masks is not None) else None
    if ghost_fill == "other_frames" or renoise_ghost:
        if source_masks is None or target_masks is None:
            raise InputError("ghost_fill and renoise_ghost need both the source person mask and the target person "
                             "(reference keypoints)")
    if ghost_fill == "other_frames":
        # a frame whose source person (grown and feathered: its soft edge is not clean background) leaves the pixel free
        covered = feather(src_g, feather_radius) > 0
        best, found = nearest_uncovered_frame(covered)
        filled = ghost & found
        free = tgt_g | (ghost & ~found)
        source_frame = torch.where(filled, best, torch.arange(n).view(n, 1, 1, 1).expand_as(best))
        ghost = ghost & ~found
    soft = feather(free, feather_radius)
    if renoise_ghost:
        renoise = (soft * ghost.float()).clamp(0, 1) if ghost.any() else None
    ghost_left = ghost.float() if (source_masks is not None and target_masks is not None) else None
    return BackgroundKeeper(trajectory, soft, source_frame, renoise, seed, ghost_left, ghost_all)


def region_fraction(keeper: BackgroundKeeper) -> float:
    """The mean of the change region: 0 keeps everything, 1 changes everything (for logs)."""
    return float(keeper.region.mean())


def latent_grow(pixels: int) -> int:
    """Image pixels -> latent pixels (rounded up; the VAE's factor 8)."""
    return int(math.ceil(max(int(pixels), 0) / 8))
