"""Nodes of the later version (method eym_v2): STL tuning, the single-branch sampler, and a single
source image repeated to the reference's frame count."""

from __future__ import annotations

import logging

from ..motion_core.method.single_branch import repeat_to_frames, single_branch_sample
from ..motion_core.method.tuner import TuneConfig
from ..motion_core.errors import InputError, check_guidance
from . import comfy_bridge as bridge
from .handle import CATEGORY, MODEL_TYPE, activated, check_handle, embedding, latents_in, latents_out, pose_hint
from .inference_nodes import (INVERSION_KEY, guidance_input, negative_input, steps_input, build_keeper,
                              keep_background_inputs)
from .context_nodes import calls_per_step, context_in, context_input
from .memory_guard import ensure_fits
from .tuning_nodes import controlnet_offload_input, tuning_inputs, run_tuning_node, memory_inputs

log = logging.getLogger("edit_your_motion")


def _stl_config(steps, learning_rate, seed, precision, gradient_checkpointing, control_strength, optimizer,
                activation_offload, context=None) -> TuneConfig:
    return TuneConfig(steps=steps, learning_rate=learning_rate, seed=seed, precision=precision,
                      gradient_checkpointing=gradient_checkpointing, shuffle="none", control_scale=control_strength,
                      optimizer=optimizer, activation_offload=activation_offload, context=context)


class STLStage1:
    DESCRIPTION = (
        "Stage 1 of the later version's spatio-temporal two-stage learning (STL): learns the person's motion from "
        "the background-masked frames in their original order. Trains the temporal attention layers and the Motion "
        "Attention adapter; plain noise-prediction loss. Needs a video model loaded with method eym_v2."
    )
    CATEGORY = f"{CATEGORY}/tuning"
    FUNCTION = "run"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("video_model",)

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "video_model": (MODEL_TYPE, {"tooltip": "The video model from Load Video Model with method eym_v2."}),
            "masked_latent": ("LATENT", {"tooltip": "VAE Encode of the source frames with the background masked out (EYM Mask Background), in their original order."}),
            "source_conditioning": ("CONDITIONING", {"tooltip": "The source prompt P_s: the person and background plus the source motion (e.g. 'a boy in black clothes is dancing'). The paper names no prompt for STL; the frames are in order, so the prompt names their motion."}),
            "source_poses": ("IMAGE", {"tooltip": "Pose images of the source video, one per frame (EYM Extract Poses)."}),
        }
        required.update(tuning_inputs("Optimisation steps (paper: 300, its best setting in Table V)."))
        return {"required": required, "optional": {**memory_inputs(), **context_input(), **controlnet_offload_input()}}

    def run(self, video_model, masked_latent, source_conditioning, source_poses, steps, learning_rate, seed,
            precision, gradient_checkpointing, control_strength, optimizer="adamw", activation_offload=False,
            context=None, controlnet_offload="auto"):
        config = _stl_config(steps, learning_rate, seed, precision, gradient_checkpointing, control_strength,
                             optimizer, activation_offload, context)
        return run_tuning_node(1, video_model, masked_latent, source_conditioning, source_poses, "source_conditioning",
                     "masked_latent", config, method="eym_v2", node="EYM STL Stage 1",
                     controlnet_offload=controlnet_offload)


class STLStage2:
    DESCRIPTION = (
        "Stage 2 of STL: learns the appearance and background from the unmasked frames in order. Trains RCA (the "
        "spatial self-attention, bidirectional frame links) and the Motion Attention adapter; plain noise-prediction "
        "loss."
    )
    CATEGORY = f"{CATEGORY}/tuning"
    FUNCTION = "run"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("video_model",)

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "video_model": (MODEL_TYPE, {"tooltip": "The video model after EYM STL Stage 1."}),
            "latent": ("LATENT", {"tooltip": "VAE Encode of the source frames, unmasked, in their original order."}),
            "source_conditioning": ("CONDITIONING", {"tooltip": "The source prompt P_s."}),
            "source_poses": ("IMAGE", {"tooltip": "Pose images of the source video, one per frame."}),
        }
        required.update(tuning_inputs("Optimisation steps (paper: 300)."))
        return {"required": required, "optional": {**memory_inputs(), **context_input(), **controlnet_offload_input()}}

    def run(self, video_model, latent, source_conditioning, source_poses, steps, learning_rate, seed, precision,
            gradient_checkpointing, control_strength, optimizer="adamw", activation_offload=False, context=None,
            controlnet_offload="auto"):
        config = _stl_config(steps, learning_rate, seed, precision, gradient_checkpointing, control_strength,
                             optimizer, activation_offload, context)
        return run_tuning_node(2, video_model, latent, source_conditioning, source_poses, "source_conditioning", "latent",
                     config, method="eym_v2", node="EYM STL Stage 2", controlnet_offload=controlnet_offload)


class SingleBranchSampler:
    DESCRIPTION = (
        "The later version's inference: one branch denoises the inverted source noise with the target prompt and the "
        "reference poses; the Motion Attention adapter carries the skeleton features into the UNet. No reconstruction "
        "branch and no key/value injection: each step runs one branch instead of two (for SD1.5 about 60% of the first "
        "version's two-branch step in FLOPs, Motion Attention included) and holds one branch's activations."
    )
    CATEGORY = f"{CATEGORY}/inference"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("edited_latent",)
    OUTPUT_TOOLTIPS = ("The edited clip: decode with VAE Decode.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video_model": (MODEL_TYPE, {"tooltip": "The tuned video model (after EYM STL Stage 2)."}),
                "inverted_latent": ("LATENT", {"tooltip": "Output of EYM DDIM Inversion."}),
                "target_conditioning": ("CONDITIONING", {"tooltip": "The target prompt P_t: the person and background plus the new motion."}),
                "reference_poses": ("IMAGE", {"tooltip": "Pose images of the new motion, ideally moved onto the source person with EYM Align Skeleton."}),
                "steps": steps_input(),
                "control_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "ControlNet strength."}),
                "guidance": guidance_input(),
            },
            "optional": {
                "negative": negative_input(),
                **keep_background_inputs(),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": "fixed", "tooltip": "Seed of the fresh noise of renoise_ghost."}),
                **context_input(),
            },
        }

    def run(self, video_model, inverted_latent, target_conditioning, reference_poses, steps, control_strength, guidance,
            negative=None, keep_background=False, source_mask=None, reference_keypoints=None, change_region=None,
            region_grow=0, region_feather=0, ghost_fill="other_frames", renoise_ghost=False, seed=0,
            target_mask="fitted", source_keypoints=None, context=None):
        context = context_in(context)
        handle = check_handle(video_model, "video_model")
        scale = handle.engine.latent_scale
        z_t = latents_in(inverted_latent, scale, "inverted_latent")
        calls = calls_per_step(z_t.shape[0], context)  # refuses a bad context or a 1-frame clip with one
        progress = bridge.Progress(steps * calls, "Edit-Your-Motion sampling (single branch)", prepare=1)
        info = inverted_latent.get(INVERSION_KEY)
        if info is None:
            log.warning("inverted_latent does not come from EYM DDIM Inversion; the edit will not keep the source content")
        elif info["steps"] != steps:
            log.warning("the clip was inverted with %d steps but is sampled with %d; use the same number", info["steps"], steps)
        check_guidance(guidance, negative, "negative")
        emb = embedding(target_conditioning, "target_conditioning")
        uncond = embedding(negative, "negative") if guidance > 1 else None
        ref = pose_hint(reference_poses, z_t, "reference_poses")
        keep = build_keeper(inverted_latent, z_t, keep_background, source_mask, reference_keypoints, change_region,
                            region_grow, region_feather, ghost_fill, renoise_ghost, seed, target_mask, source_keypoints)
        need = ensure_fits("EYM Single-Branch Sampler", handle, "single_branch", z_t, guidance=guidance,
                           context=context)
        progress.phase("moving the video model to the device")
        with activated(handle, memory_required=need) as model:
            edited = single_branch_sample(model, z_t, emb, ref, num_steps=steps, control_scale=control_strength,
                                          guidance=guidance, uncond_embeddings=uncond,
                                          callback=lambda s, t: progress.step(), keep=keep, context=context)
        return (latents_out(edited, scale),)


class RepeatImageToClip:
    DESCRIPTION = (
        "A single source image as a clip: repeats the image as many times as the reference has frames (the later "
        "version's recipe for an image source). A batch that already has that many frames passes unchanged."
    )
    CATEGORY = f"{CATEGORY}/frames"
    FUNCTION = "run"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The image repeated to the reference's frame count; use it as the source video.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "The source image (one frame: the person and background to keep)."}),
                "like": ("IMAGE", {"tooltip": "The reference frames (or reference pose images): their count is the clip length."}),
            }
        }

    def run(self, image, like):
        if image.ndim != 4 or like.ndim != 4:
            raise InputError("image and like must be IMAGE batches (frames, height, width, channels)")
        return (repeat_to_frames(image, like.shape[0], "image"),)


NODE_CLASS_MAPPINGS = {
    "EYM_STLStage1": STLStage1,
    "EYM_STLStage2": STLStage2,
    "EYM_SingleBranchSampler": SingleBranchSampler,
    "EYM_RepeatImageToClip": RepeatImageToClip,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EYM_STLStage1": "EYM STL Stage 1 (temporal + Motion Attention, masked, ordered)",
    "EYM_STLStage2": "EYM STL Stage 2 (RCA + Motion Attention, unmasked)",
    "EYM_SingleBranchSampler": "EYM Single-Branch Sampler (later version)",
    "EYM_RepeatImageToClip": "EYM Single Image To Clip",
}
