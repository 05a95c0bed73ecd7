"""Detailed Prompt-Guided Learning (DPL): the first version's two tuning stages (ACM MM 2024, Sec. 3.3).

* **Stage 1, spatial content**: shuffled, background-masked frames with the content prompt ``P_c``;
  trains the RC-Attn projections (``attn1``: to_q, to_k, to_v, to_out) only; loss ``L_rec``.
* **Stage 2, temporal**: ordered, unmasked frames with the source prompt ``P_s``; trains the
  temporal attention layers only; loss ``(1 - lambda) * L_noise + lambda * L_rec``, lambda = 0.9
  (``TuneConfig.lam``), with the noise-constraint loss :func:`noise_constraint_loss`.

Both run through the generic loop :func:`motion_core.method.tuner.tune`. :func:`run_v1` is the
whole first-version edit in one call: stage 1, stage 2, DDIM inversion, two-branch sampling.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import check_frame_counts
from ..video_model.model import MotionModel
from .ddim import ddim_invert
from .sampler import SampleResult, SamplerConfig, two_branch_sample
from .tuner import StageRecipe, StageResult, StepCallback, TuneConfig, plain_loss, reconstruction_loss, tune


def noise_constraint_loss(pred: torch.Tensor) -> torch.Tensor:
    """``L_noise = 1/(n-1) * sum_i ||eps_theta(z^{f_i}) - eps_theta(z^{f_{i+1}})||^2`` over the
    ``n`` frames of one clip, each squared norm taken as a mean over elements (the scale of
    ``L_rec``). Zero for a single frame."""
    if pred.shape[0] < 2:
        return pred.sum() * 0.0
    diff = (pred[1:] - pred[:-1]).float()
    return diff.pow(2).flatten(1).mean(1).mean()


def stage2_loss(pred: torch.Tensor, noise: torch.Tensor, config: TuneConfig) -> torch.Tensor:
    """DPL stage 2's loss: ``(1 - lambda) * L_noise + lambda * L_rec`` (``lambda = config.lam``).

    ``L_rec`` is built first: autograd sums the gradients of ``pred``'s uses in the reverse order of
    their creation, so this order keeps training bit-identical to the releases before the recipes."""
    rec = reconstruction_loss(pred, noise)
    return (1 - config.lam) * noise_constraint_loss(pred) + config.lam * rec


STAGE1 = StageRecipe(method="eym_v1", stage=1, name="DPL stage 1", parts=("attn1",), shuffle=True, masked=True,
                     prompt="content", loss=plain_loss)
STAGE2 = StageRecipe(method="eym_v1", stage=2, name="DPL stage 2", parts=("temporal",), shuffle=False, masked=False,
                     prompt="source", loss=stage2_loss)
STAGES = (STAGE1, STAGE2)


def tune_stage1(model: MotionModel, masked_latents: torch.Tensor, content_embeddings: torch.Tensor,
                poses: torch.Tensor | None, config: TuneConfig | None = None, callback: StepCallback | None = None,
                permutation: torch.Tensor | None = None) -> StageResult:
    """Stage 1: shuffled, masked frames with the content prompt; trains RC-Attn (``attn1``)."""
    return tune(model, STAGE1, masked_latents, content_embeddings, poses, config, callback, permutation)


def tune_stage2(model: MotionModel, latents: torch.Tensor, source_embeddings: torch.Tensor,
                poses: torch.Tensor | None, config: TuneConfig | None = None,
                callback: StepCallback | None = None) -> StageResult:
    """Stage 2: ordered, unmasked frames with the source prompt; trains the temporal layers."""
    return tune(model, STAGE2, latents, source_embeddings, poses, config, callback)


@dataclasses.dataclass
class V1Result:
    edited: torch.Tensor  # scaled latents (n, 4, h, w)
    reconstruction: torch.Tensor  # the reconstruction branch (should match the source)
    inverted: torch.Tensor  # z_T
    stages: list[StageResult]


def run_v1(model: MotionModel, latents: torch.Tensor, masked_latents: torch.Tensor, source_poses: torch.Tensor | None,
           reference_poses: torch.Tensor | None, content_embeddings: torch.Tensor, source_embeddings: torch.Tensor,
           target_embeddings: torch.Tensor, config: TuneConfig | None = None, stage_steps: tuple[int, int] = (300, 300),
           sampler: SamplerConfig | None = None, callback: StepCallback | None = None) -> V1Result:
    """The whole first-version edit: DPL stage 1 (masked latents, ``P_c``) and stage 2 (``P_s``),
    DDIM inversion of the source (``P_s``, source skeletons), two-branch sampling (reconstruction:
    ``P_s`` + source skeletons; edit: ``P_t`` + reference skeletons, with K/V injection).
    ``config`` sets everything but the step counts; ``sampler`` the inversion's and sampler's
    steps and ControlNet strength (default: 50 steps, as the paper). ``config.context`` (long clips)
    windows the tuning, the inversion and the sampling alike."""
    config = config or TuneConfig()
    sampler = sampler or SamplerConfig()
    # different lengths are refused before any tuning (the sampler would refuse them after it)
    check_frame_counts(latents=latents, masked_latents=masked_latents, source_poses=source_poses,
                       reference_poses=reference_poses)
    r1 = tune_stage1(model, masked_latents, content_embeddings, source_poses,
                     dataclasses.replace(config, steps=stage_steps[0]), callback)
    r2 = tune_stage2(model, latents, source_embeddings, source_poses,
                     dataclasses.replace(config, steps=stage_steps[1]), callback)
    z_t = ddim_invert(model, latents, source_embeddings, source_poses, num_steps=sampler.num_steps,
                      control_scale=sampler.control_scale, context=config.context)
    result: SampleResult = two_branch_sample(model, z_t, source_embeddings, target_embeddings, source_poses,
                                             reference_poses, sampler, context=config.context)
    return V1Result(result.edited, result.reconstruction, z_t, [r1, r2])
