"""Tuning nodes: the two stages of Detailed Prompt-Guided Learning (DPL)."""

from __future__ import annotations

import logging

from ..motion_core.errors import InputError
from ..motion_core.method.stages import tune_stage
from ..motion_core.method.tuner import OPTIMIZERS, SHUFFLE_MODES, TuneConfig, bitsandbytes_adamw8bit
from . import comfy_bridge as bridge
from .context_nodes import calls_per_step, context_in, context_input
from .memory_guard import ensure_tuning_fits
from .handle import (
    CATEGORY, MODEL_TYPE, PERMUTATION_TYPE, activated, check_handle, embedding, latents_in, pose_hint,
    training_precision,
)

log = logging.getLogger("edit_your_motion")

PRECISION_TOOLTIP = (
    "Arithmetic precision of tuning. auto: bf16 (or fp16 on GPUs without bf16) when the weights are stored in "
    "half precision, else fp32. bf16/fp16 roughly halve memory and time on a GPU; trained tensors keep a float32 "
    "master copy either way. fp16 is GPU-only."
)
CHECKPOINT_TOOLTIP = (
    "Recompute activations during the backward pass instead of storing them: much less memory (needed for 8+ "
    "frames at 512x512 on 12-24 GB cards), about 20-30 % slower. Results are the same."
)


def tuning_inputs(steps_tooltip: str) -> dict:
    return {
        "steps": ("INT", {"default": 300, "min": 1, "max": 10000, "tooltip": steps_tooltip}),
        "learning_rate": ("FLOAT", {"default": 3e-5, "min": 1e-7, "max": 1e-2, "step": 1e-6, "round": False,
                                    "tooltip": "AdamW learning rate (paper: 3e-5)."}),
        "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": "fixed",
                         "tooltip": "Seed of the random timesteps, noise and frame orders (same seed, same result)."}),
        "precision": (["auto", "fp32", "bf16", "fp16"], {"default": "auto", "tooltip": PRECISION_TOOLTIP}),
        "gradient_checkpointing": ("BOOLEAN", {"default": True, "tooltip": CHECKPOINT_TOOLTIP}),
        "control_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05,
                                       "tooltip": "Strength of the openpose ControlNet residuals while tuning."}),
    }


OPTIMIZER_TOOLTIP = (
    "adamw: torch's AdamW (paper). adamw8bit: bitsandbytes' 8-bit AdamW, whose moments take a quarter of the memory "
    "(SD1.5 at 8 x 512x512: about -0.3 GB for the first version, -1.7 GB for the later one); needs `pip install "
    "bitsandbytes` in ComfyUI's Python."
)
OFFLOAD_TOOLTIP = (
    "Keep the activations saved for the backward pass in host memory instead of on the GPU (torch save_on_cpu): "
    "about -1 GB at 8 x 512x512, paid for with copies over PCIe every step. Results are the same."
)

CONTROLNET_OFFLOAD_TOOLTIP = (
    "Where the frozen ControlNet's weights wait while the UNet trains. on: in host memory; each step copies them "
    "to the GPU for the ControlNet's forward only (SD1.5 in bf16: about 0.7 GB over PCIe per step, a few % of a step "
    "on an 8 GB card, and 0.7 GB of pinned host memory), so the UNet's training has that much more room. off: on "
    "the GPU for the whole stage. auto: off, unless the stage would not fit in the free GPU memory otherwise and "
    "fits with it on (never on the CPU): this is what fits the later version (8.5-9.2 GB with the ControlNet on the "
    "GPU, 7.1-7.7 GB without, SD1.5 at 8 x 512x512 by the estimate) on an 8 GB card. Results are the same."
)
CONTROLNET_OFFLOAD = ("auto", "on", "off")


def memory_inputs() -> dict:
    """Optional inputs of every tuning node: the memory levers (defaults = the paper's setup)."""
    return {
        "optimizer": (list(OPTIMIZERS), {"default": "adamw", "tooltip": OPTIMIZER_TOOLTIP}),
        "activation_offload": ("BOOLEAN", {"default": False, "tooltip": OFFLOAD_TOOLTIP}),
    }


def controlnet_offload_input() -> dict:
    """The last optional input of every tuning node (added after the others: saved workflows keep their
    widget values in place)."""
    return {"controlnet_offload": (list(CONTROLNET_OFFLOAD), {"default": "auto", "tooltip": CONTROLNET_OFFLOAD_TOOLTIP})}


def run_tuning_node(stage: int, video_model, latent, conditioning, poses, cond_name: str, latent_name: str,
                    config: TuneConfig, permutation=None, method: str = "eym_v1", node: str = "",
                    controlnet_offload: str = "auto"):
    """What every tuning node runs (both methods, both stages): check the inputs, ask ComfyUI for the memory,
    tune ``stage`` of ``method`` on the handle's model; returns the node output (the handle with that stage).
    ``controlnet_offload``: ``on``, ``off`` or ``auto`` (on only when the stage needs it to fit)."""
    if controlnet_offload not in CONTROLNET_OFFLOAD:
        raise InputError(f"controlnet_offload must be one of {', '.join(CONTROLNET_OFFLOAD)}; got {controlnet_offload!r}")
    # the bar shows from the first second; its 3 set-up units cover what runs before the first step
    progress = bridge.Progress(config.steps, f"Edit-Your-Motion stage {stage}", prepare=3)
    handle = check_handle(video_model, "video_model")
    built_for = handle.engine.model.method
    if built_for != method:
        other = "EYM STL Stage 1 / Stage 2" if built_for == "eym_v2" else "EYM Stage 1 / Stage 2 Tuning"
        raise InputError(
            f"video_model is built for {built_for} but this node tunes {method}; tune it with {other}, or set "
            f"EYM Load Video Model's method to {method}"
        )
    scale = handle.engine.latent_scale
    latents = latents_in(latent, scale, latent_name)
    emb = embedding(conditioning, cond_name)
    hint = pose_hint(poses, latents, "source_poses")
    config.start_step = handle.steps.get(stage, 0)  # continuing a tuned model draws fresh randomness
    # The engine puts the model back itself after a failed stage (from the checkpoint's tensors, the initial
    # values and the handle's state), so the stage keeps no rollback tensors (#16 §3).
    config.rollback = "none"
    config.context = context_in(config.context)
    calls_per_step(latents.shape[0], config.context)  # refuses a bad context, or a 1-frame clip with one, before anything is unloaded
    if config.optimizer == "adamw8bit":
        bitsandbytes_adamw8bit()  # not installed: say so before anything is unloaded
    progress.phase("freeing the device (unloading ComfyUI's other models)")
    bridge.unload_other_models()
    levers = ensure_tuning_fits(node or f"Edit-Your-Motion stage {stage}", handle, f"stage{stage}", latents,
                                gradient_checkpointing=config.gradient_checkpointing, optimizer=config.optimizer,
                                activation_offload=config.activation_offload, context=config.context,
                                controlnet_offload={"on": True, "off": False}.get(controlnet_offload, "auto"))
    config.controlnet_offload = levers["controlnet_offload"]
    progress.phase("moving the video model to the device")
    with activated(handle, trains=True) as model:
        progress.phase("building the optimiser and running the first step")
        config.precision = training_precision(config.precision, handle, model.device)
        result = tune_stage(model, stage, latents, emb, hint, config,
                            callback=lambda step, total, loss: progress.step(loss=loss), permutation=permutation)
    log.info("stage %d: %d steps, loss %.4f -> %.4f", stage, config.steps, result.losses[0], result.losses[-1])
    return (handle.with_stage(stage, config.steps, result.state),)


class TuneStage1:
    DESCRIPTION = (
        "Stage 1 of Edit-Your-Motion's two-stage tuning: learns the person's appearance and the background-free "
        "content from shuffled, background-masked frames with the content prompt. Trains only RC-Attn (the spatial "
        "self-attention projections)."
    )
    CATEGORY = f"{CATEGORY}/tuning"
    FUNCTION = "run"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("video_model",)

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "video_model": (MODEL_TYPE, {"tooltip": "The video model from Load Video Model (or a tuned one to continue)."}),
            "masked_latent": ("LATENT", {"tooltip": "VAE Encode of the source frames with the background masked out (EYM Mask Background), in their original order."}),
            "content_conditioning": ("CONDITIONING", {"tooltip": "The content prompt P_c: the person and background, no motion (e.g. 'a boy wearing black clothes and gray pants')."}),
            "source_poses": ("IMAGE", {"tooltip": "Pose images of the source video, one per frame (EYM Extract Poses)."}),
        }
        required.update(tuning_inputs("Optimisation steps (paper: 300)."))
        required["shuffle"] = (list(SHUFFLE_MODES), {
            "default": "per_step",
            "tooltip": "per_step: a fresh random frame order every step (paper). fixed: one order (the 'permutation' input, "
                       "else one from the seed). none: original order (ablation). A connected permutation always means "
                       "its fixed order (with per_step too); with none it is an error.",
        })
        return {"required": required, "optional": {
            **memory_inputs(),
            **context_input(),
            "permutation": (PERMUTATION_TYPE, {"tooltip": "A frame order from EYM Shuffle Frames: stage 1 then trains on this fixed order (shuffle per_step or fixed; refused with none). It must order exactly this clip's frames."}),
            **controlnet_offload_input(),
        }}

    def run(self, video_model, masked_latent, content_conditioning, source_poses, steps, learning_rate, seed,
            precision, gradient_checkpointing, control_strength, shuffle, permutation=None, optimizer="adamw",
            activation_offload=False, context=None, controlnet_offload="auto"):
        config = TuneConfig(steps=steps, learning_rate=learning_rate, seed=seed, precision=precision,
                            gradient_checkpointing=gradient_checkpointing, shuffle=shuffle, control_scale=control_strength,
                            optimizer=optimizer, activation_offload=activation_offload, context=context)
        return run_tuning_node(1, video_model, masked_latent, content_conditioning, source_poses, "content_conditioning",
                     "masked_latent", config, permutation, node="EYM Stage 1 Tuning",
                     controlnet_offload=controlnet_offload)


class TuneStage2:
    DESCRIPTION = (
        "Stage 2 of Edit-Your-Motion's two-stage tuning: learns the clip's temporal coherence from the ordered, "
        "unmasked frames with the source prompt. Trains only the temporal attention layers; the loss mixes the "
        "reconstruction loss with the noise constraint loss between neighbouring frames."
    )
    CATEGORY = f"{CATEGORY}/tuning"
    FUNCTION = "run"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("video_model",)

    @classmethod
    def INPUT_TYPES(cls):
        required = {
            "video_model": (MODEL_TYPE, {"tooltip": "The video model after Stage 1 Tuning."}),
            "latent": ("LATENT", {"tooltip": "VAE Encode of the source frames, unmasked, in their original order."}),
            "source_conditioning": ("CONDITIONING", {"tooltip": "The source prompt P_s: the content prompt plus the source motion (e.g. '... is dancing')."}),
            "source_poses": ("IMAGE", {"tooltip": "Pose images of the source video, one per frame."}),
        }
        required.update(tuning_inputs("Optimisation steps (paper: 300)."))
        required["noise_constraint_lambda"] = ("FLOAT", {
            "default": 0.9, "min": 0.0, "max": 1.0, "step": 0.01,
            "tooltip": "lambda in (1 - lambda) * L_noise + lambda * L_rec (paper: 0.9). Lower values smooth the motion more.",
        })
        return {"required": required, "optional": {**memory_inputs(), **context_input(), **controlnet_offload_input()}}

    def run(self, video_model, latent, source_conditioning, source_poses, steps, learning_rate, seed, precision,
            gradient_checkpointing, control_strength, noise_constraint_lambda, optimizer="adamw",
            activation_offload=False, context=None, controlnet_offload="auto"):
        config = TuneConfig(steps=steps, learning_rate=learning_rate, seed=seed, precision=precision,
                            gradient_checkpointing=gradient_checkpointing, lam=noise_constraint_lambda,
                            control_scale=control_strength, optimizer=optimizer, activation_offload=activation_offload,
                            context=context)
        return run_tuning_node(2, video_model, latent, source_conditioning, source_poses, "source_conditioning", "latent", config,
                     node="EYM Stage 2 Tuning", controlnet_offload=controlnet_offload)


NODE_CLASS_MAPPINGS = {"EYM_TuneStage1": TuneStage1, "EYM_TuneStage2": TuneStage2}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EYM_TuneStage1": "EYM Stage 1 Tuning (content, shuffled + masked)",
    "EYM_TuneStage2": "EYM Stage 2 Tuning (temporal, ordered)",
}
