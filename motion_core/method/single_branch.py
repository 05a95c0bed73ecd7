"""The later version's inference: ONE branch from the inverted source, and single-image sources.

Paper 001, Sec. III-D "The Inference Stage" (Eq. 17): the source images/video are DDIM-inverted
with the tuned model to ``z_T``; sampling then runs from ``z_T`` with the skeleton features injected
"through motion attention". There is no reconstruction branch and no key/value injection: that is
the GPU memory the paper saves over the first version's two-branch structure. The paper does not
say which prompt or guidance the branch uses: we use the target prompt ``P_t`` and no
classifier-free guidance (guidance 1), as the first version does.

Single source image (paper, Sec. IV-C: "if only one source image is available, we repeat it n
times to create a video of length n, where n matches the length of the reference skeleton
video"): :func:`repeat_to_frames` turns a one-frame batch (image, mask, pose image, latent) into
``n`` identical frames; everything after it (poses and masks of the source, STL tuning, inversion,
sampling) treats the result as an ordinary n-frame clip.
"""

from __future__ import annotations

import torch

from ..errors import InputError, check_frame_counts, check_latent_size, check_poses
from ..video_model.model import MotionModel
from .ddim import ProgressCallback, ddim_sample


def single_branch_sample(model: MotionModel, inverted_latents: torch.Tensor, edit_embeddings: torch.Tensor,
                         edit_poses: torch.Tensor | None, num_steps: int = 50, control_scale: float = 1.0,
                         guidance: float = 1.0, uncond_embeddings: torch.Tensor | None = None,
                         callback: ProgressCallback | None = None, keep=None, context=None) -> torch.Tensor:
    """Sample the edited clip from ``inverted_latents`` ``(n, 4, h, w)`` in one branch.

    ``edit_embeddings``: ``(1, tokens, dim)`` of ``P_t``; ``edit_poses``: ControlNet hints
    ``(n, 3, 8h, 8w)`` of the (offset-corrected) reference skeletons; ``uncond_embeddings``: needed
    when ``guidance > 1``. Deterministic DDIM, the same step formula as :func:`ddim_invert`, so with
    the source prompt and poses it walks the inversion back. Returns the edited latents.

    ``keep`` (beyond the paper): a :class:`~motion_core.method.keep_background.BackgroundKeeper`; outside
    its change region the edit takes the source's own inversion trajectory at every step.
    ``context``: windows for a long clip (:class:`~motion_core.method.windows.ContextOptions`).
    """
    check_latent_size("inverted latents", inverted_latents, model.unet.config.in_channels)
    check_frame_counts(inverted_latents=inverted_latents, reference_poses=edit_poses)
    check_poses("reference poses", edit_poses, inverted_latents, model.controlnet is not None)
    if control_scale < 0:
        raise InputError(f"ControlNet strength must be >= 0; got {control_scale}")
    return ddim_sample(model, inverted_latents, edit_embeddings, edit_poses, num_steps=num_steps,
                       control_scale=control_scale, guidance=guidance, uncond_embeddings=uncond_embeddings,
                       callback=callback, keep=keep, context=context)


def repeat_to_frames(frames: torch.Tensor, num_frames: int, name: str = "source") -> torch.Tensor:
    """A one-frame batch repeated to ``num_frames`` frames (a batch that already has them is
    returned as it is). Works for any frame-first tensor: IMAGE ``(1, H, W, C)``, MASK
    ``(1, H, W)``, latents ``(1, 4, h, w)``."""
    if num_frames < 1:
        raise InputError(f"the clip must have at least one frame; got {num_frames}")
    n = frames.shape[0]
    if n == num_frames:
        return frames
    if n != 1:
        raise InputError(
            f"{name} has {n} frames but the reference motion has {num_frames}; give one image (it is repeated) or a "
            "clip with as many frames as the reference"
        )
    return frames.expand(num_frames, *frames.shape[1:]).contiguous()
