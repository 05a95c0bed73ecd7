"""The later version end to end, and the ablations of its Table IV, as plain engine calls.

=====================  ==========================================================================
variant                what changes against ``eym_v2``
=====================  ==========================================================================
``eym_v2``             bidirectional RCA, Motion Attention, STL (300 + 300), single-branch sampling
``eym_v2_without_rca`` spatial self-attention stays per-frame (attention mode ``self``); it is still
                       trained in stage 2 ("we unfreeze the motion attention module and spatial
                       attention layer"), only without the frame links RCA adds
``eym_v2_without_ma``  no Motion Attention: ControlNet residuals go to the UNet as in the first
                       version; stage 1 trains the temporal layers only, stage 2 ``attn1`` only
``eym_v2_without_stl`` one stage instead of two: temporal + RCA + MA trained together on the
                       unmasked, ordered frames for the same total number of steps (600), the
                       reading of Table IV's text ("STL ... by decoupling learning")
=====================  ==========================================================================

Every variant inverts the source with its tuned model (source prompt, source skeletons) and
samples one branch with the target prompt and the reference skeletons.
"""

from __future__ import annotations

import dataclasses

import torch

from ..errors import InputError, check_frame_counts
from ..video_model.model import MotionModel
from .ddim import ddim_invert
from .single_branch import single_branch_sample
from .stl import tune_stl_stage1, tune_stl_stage2, tune_without_stl
from .tuner import StageResult, TuneConfig


@dataclasses.dataclass(frozen=True)
class V2Variant:
    name: str
    attention_mode: str = "bidirectional"
    motion_attention: bool = True
    stl: bool = True


V2_VARIANTS = {
    "eym_v2": V2Variant("eym_v2"),
    "eym_v2_without_rca": V2Variant("eym_v2_without_rca", attention_mode="self"),
    "eym_v2_without_ma": V2Variant("eym_v2_without_ma", motion_attention=False),
    "eym_v2_without_stl": V2Variant("eym_v2_without_stl", stl=False),
}


def get_variant(variant: str | V2Variant) -> V2Variant:
    if isinstance(variant, V2Variant):
        return variant
    if variant not in V2_VARIANTS:
        raise InputError(f"variant must be one of {', '.join(V2_VARIANTS)}; got {variant!r}")
    return V2_VARIANTS[variant]


def build_v2_model(unet, controlnet, variant: str | V2Variant = "eym_v2", **kwargs) -> MotionModel:
    """``MotionModel.from_unet`` for a variant (inflates ``unet`` in place: give each variant its
    own copy of the base UNet)."""
    v = get_variant(variant)
    return MotionModel.from_unet(unet, controlnet, attention_mode=v.attention_mode, method="eym_v2",
                                 motion_attention=v.motion_attention, **kwargs)


def check_model(model: MotionModel, variant: str | V2Variant) -> V2Variant:
    v = get_variant(variant)
    has_ma = model.motion_attention is not None
    if model.method != "eym_v2" or model.attention_mode != v.attention_mode or has_ma != v.motion_attention:
        raise InputError(
            f"the video model (method {model.method}, attention {model.attention_mode}, Motion Attention "
            f"{'on' if has_ma else 'off'}) is not the one {v.name} needs; build it with build_v2_model(unet, "
            f"controlnet, {v.name!r})"
        )
    return v


@dataclasses.dataclass
class V2Result:
    edited: torch.Tensor  # scaled latents (n, 4, h, w)
    inverted: torch.Tensor  # z_T
    stages: list[StageResult]


def tune_v2(model: MotionModel, latents: torch.Tensor, masked_latents: torch.Tensor, poses: torch.Tensor | None,
            text_embeddings: torch.Tensor, variant: str | V2Variant = "eym_v2", config: TuneConfig | None = None,
            stage_steps: tuple[int, int] = (300, 300), callback=None) -> list[StageResult]:
    """Tune ``model`` in place as the variant does: STL stage 1 (masked) then stage 2, or one joint
    stage of ``sum(stage_steps)`` steps for ``eym_v2_without_stl``. ``config`` sets everything but
    the step counts (learning rate, seed, precision, checkpointing, ControlNet strength)."""
    v = check_model(model, variant)
    config = config or TuneConfig()
    if v.stl:
        r1 = tune_stl_stage1(model, masked_latents, text_embeddings, poses,
                             dataclasses.replace(config, steps=stage_steps[0]), callback)
        r2 = tune_stl_stage2(model, latents, text_embeddings, poses,
                             dataclasses.replace(config, steps=stage_steps[1]), callback)
        return [r1, r2]
    return [tune_without_stl(model, latents, text_embeddings, poses,
                             dataclasses.replace(config, steps=sum(stage_steps)), callback)]


def run_v2(model: MotionModel, latents: torch.Tensor, masked_latents: torch.Tensor, source_poses: torch.Tensor,
           reference_poses: torch.Tensor, source_embeddings: torch.Tensor, target_embeddings: torch.Tensor,
           variant: str | V2Variant = "eym_v2", config: TuneConfig | None = None,
           stage_steps: tuple[int, int] = (300, 300), num_steps: int = 50, control_scale: float = 1.0
           ) -> V2Result:
    """The whole later-version edit: tune (:func:`tune_v2`, with ``P_s``), DDIM-invert the source
    (``P_s``, source skeletons), sample one branch (``P_t``, reference skeletons). ``config.context``
    (long clips) windows the tuning, the inversion and the sampling alike."""
    # different lengths are refused before any tuning (the sampler would refuse them after it)
    check_frame_counts(latents=latents, masked_latents=masked_latents, source_poses=source_poses,
                       reference_poses=reference_poses)
    context = None if config is None else config.context
    stages = tune_v2(model, latents, masked_latents, source_poses, source_embeddings, variant, config, stage_steps)
    z_t = ddim_invert(model, latents, source_embeddings, source_poses, num_steps=num_steps, control_scale=control_scale,
                      context=context)
    edited = single_branch_sample(model, z_t, target_embeddings, reference_poses, num_steps=num_steps,
                                  control_scale=control_scale, context=context)
    return V2Result(edited, z_t, stages)
