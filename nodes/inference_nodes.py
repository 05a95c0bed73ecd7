"""Inference nodes: DDIM inversion of the source clip and two-branch sampling with K/V injection."""

from __future__ import annotations

import logging

from ..motion_core.video_model.attention import INJECTION_MODES
from ..motion_core.method.ddim import ddim_invert
from ..motion_core.errors import InputError
from ..motion_core.method.sampler import SamplerConfig, two_branch_sample
from . import comfy_bridge as bridge
from .handle import CATEGORY, MODEL_TYPE, activated, check_handle, embedding, latents_in, latents_out, pose_hint

log = logging.getLogger("edit_your_motion")

INJECT_LAYERS = ("down+mid+up", "down+mid", "mid+up", "down", "mid", "up")
INVERSION_KEY = "eym_inversion"


def _steps_input(default: int = 50) -> tuple:
    return ("INT", {"default": default, "min": 1, "max": 1000, "tooltip": "DDIM steps (paper: 50). Use the same number for inversion and sampling."})


def _guidance_input() -> tuple:
    return ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1,
                      "tooltip": "Classifier-free guidance. 1 = none (paper). Above 1 needs 'negative' and doubles the work."})


def _negative_input() -> tuple:
    return ("CONDITIONING", {"tooltip": "Negative/empty prompt, used only when guidance > 1."})


class DDIMInversion:
    DESCRIPTION = (
        "Inverts the source clip to noise with the tuned video model (deterministic DDIM, source prompt, source "
        "poses, no guidance by default). Both branches of the sampler start from this noise, which is what keeps "
        "the person and background."
    )
    CATEGORY = f"{CATEGORY}/inference"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT",)
    RETURN_NAMES = ("inverted_latent",)
    OUTPUT_TOOLTIPS = ("Noise latents z_T for EYM Two-Branch Sampler (not an image: do not decode it).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video_model": (MODEL_TYPE, {"tooltip": "The tuned video model (after Stage 2)."}),
                "latent": ("LATENT", {"tooltip": "VAE Encode of the source frames, unmasked, in order."}),
                "source_conditioning": ("CONDITIONING", {"tooltip": "The source prompt P_s."}),
                "source_poses": ("IMAGE", {"tooltip": "Pose images of the source video."}),
                "steps": _steps_input(),
                "use_controlnet": ("BOOLEAN", {"default": True, "tooltip": "Invert with the source-pose ControlNet (default). Off: invert without it, as MotionEditor does."}),
                "control_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "ControlNet strength during inversion."}),
                "guidance": _guidance_input(),
            },
            "optional": {"negative": _negative_input()},
        }

    def run(self, video_model, latent, source_conditioning, source_poses, steps, use_controlnet, control_strength,
            guidance, negative=None):
        progress = bridge.Progress(steps, "Edit-Your-Motion inversion", prepare=1)  # shown from the first second
        handle = check_handle(video_model, "video_model")
        scale = handle.engine.latent_scale
        latents = latents_in(latent, scale, "latent")
        emb = embedding(source_conditioning, "source_conditioning")
        hint = pose_hint(source_poses, latents, "source_poses") if use_controlnet else None
        if guidance > 1 and negative is None:
            raise InputError("guidance > 1 needs 'negative': connect a CLIP Text Encode with an empty prompt, or set guidance to 1")
        uncond = embedding(negative, "negative") if guidance > 1 else None
        progress.phase("moving the video model to the device")
        with activated(handle) as model:
            z_t = ddim_invert(model, latents, emb, hint, num_steps=steps, control_scale=control_strength,
                              guidance=guidance, uncond_embeddings=uncond, callback=lambda s, t: progress.step())
        info = {"steps": steps, "frames": latents.shape[0]}
        return (latents_out(z_t, scale, **{INVERSION_KEY: info}),)


class TwoBranchSampler:
    DESCRIPTION = (
        "Edit-Your-Motion's inference: a reconstruction branch (source prompt, source poses) and an editing branch "
        "(target prompt, reference poses) denoise the inverted noise together in one batched UNet call per step; "
        "the editing branch's RC-Attn keys and values are extended with the reconstruction's, so it keeps the "
        "person, clothes and background while following the new motion."
    )
    CATEGORY = f"{CATEGORY}/inference"
    FUNCTION = "run"
    RETURN_TYPES = ("LATENT", "LATENT")
    RETURN_NAMES = ("edited_latent", "reconstruction_latent")
    OUTPUT_TOOLTIPS = ("The edited clip: decode with VAE Decode.", "The reconstruction branch (should look like the source).")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video_model": (MODEL_TYPE, {"tooltip": "The tuned video model."}),
                "inverted_latent": ("LATENT", {"tooltip": "Output of EYM DDIM Inversion."}),
                "source_conditioning": ("CONDITIONING", {"tooltip": "The source prompt P_s (reconstruction branch)."}),
                "target_conditioning": ("CONDITIONING", {"tooltip": "The target prompt P_t: the content prompt plus the new motion (editing branch)."}),
                "source_poses": ("IMAGE", {"tooltip": "Pose images of the source video (reconstruction branch)."}),
                "reference_poses": ("IMAGE", {"tooltip": "Pose images of the new motion (editing branch), ideally aligned with EYM Align Skeleton."}),
                "steps": _steps_input(),
                "control_strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.05, "tooltip": "ControlNet strength in both branches."}),
                "guidance": _guidance_input(),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": "fixed", "tooltip": "Seed of the fresh noise when eta > 0 (eta 0 is deterministic)."}),
                "eta": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.05, "tooltip": "DDIM eta: 0 = deterministic (paper); above 0 adds noise each step."}),
                "inject_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the steps after which K/V injection starts (0 = from the first step)."}),
                "inject_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip": "Fraction of the steps at which K/V injection stops (1 = to the last step)."}),
                "inject_layers": (list(INJECT_LAYERS), {"default": "down+mid+up", "tooltip": "UNet parts whose RC-Attn layers inject the reconstruction's keys and values."}),
                "kv_injection": (list(INJECTION_MODES), {
                    "default": "concat",
                    "tooltip": "concat: the paper's Eq. 18, reconstruction K/V appended to the editing branch's own. balanced: the "
                               "two copies of the current frame share one frame's attention weight, so with attention mode rc "
                               "(or self) an edit with the source prompt and poses reproduces the source exactly (in "
                               "bidirectional and sparse_causal only approximately); try it when concat over-smooths the motion.",
                }),
                "reconstruction_controlnet": ("BOOLEAN", {"default": True, "tooltip": "Give the reconstruction branch the source-pose ControlNet (default, matching the inversion). Off: as MotionEditor."}),
            },
            "optional": {"negative": _negative_input()},
        }

    def run(self, video_model, inverted_latent, source_conditioning, target_conditioning, source_poses, reference_poses,
            steps, control_strength, guidance, seed, eta, inject_start, inject_end, inject_layers, kv_injection,
            reconstruction_controlnet, negative=None):
        progress = bridge.Progress(steps, "Edit-Your-Motion sampling", prepare=1)  # shown from the first second
        handle = check_handle(video_model, "video_model")
        scale = handle.engine.latent_scale
        z_t = latents_in(inverted_latent, scale, "inverted_latent")
        info = inverted_latent.get(INVERSION_KEY)
        if info is None:
            log.warning("inverted_latent does not come from EYM DDIM Inversion; the edit will not keep the source content")
        elif info["steps"] != steps:
            log.warning("the clip was inverted with %d steps but is sampled with %d; use the same number", info["steps"], steps)
        if guidance > 1 and negative is None:
            raise InputError("guidance > 1 needs 'negative': connect a CLIP Text Encode with an empty prompt, or set guidance to 1")
        if kv_injection == "balanced" and handle.attention_mode not in ("rc", "self"):
            log.warning("kv_injection balanced reproduces the source exactly only with attention mode rc or self; with "
                        "%s most frames do not read themselves and a null edit only comes close", handle.attention_mode)
        config = SamplerConfig(
            num_steps=steps, guidance_scale=guidance, control_scale=control_strength,
            recon_controlnet=reconstruction_controlnet, inject_start=inject_start, inject_end=inject_end,
            inject_parts=tuple(inject_layers.split("+")), kv_injection=kv_injection, eta=eta, seed=seed,
        )
        recon_emb = embedding(source_conditioning, "source_conditioning")
        edit_emb = embedding(target_conditioning, "target_conditioning")
        uncond = embedding(negative, "negative") if guidance > 1 else None
        src = pose_hint(source_poses, z_t, "source_poses")
        ref = pose_hint(reference_poses, z_t, "reference_poses")
        progress.phase("moving the video model to the device")
        with activated(handle) as model:
            result = two_branch_sample(model, z_t, recon_emb, edit_emb, src, ref, config, uncond_embeddings=uncond,
                                       callback=lambda s, t: progress.step())
        return (latents_out(result.edited, scale), latents_out(result.reconstruction, scale))


NODE_CLASS_MAPPINGS = {"EYM_DDIMInversion": DDIMInversion, "EYM_TwoBranchSampler": TwoBranchSampler}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EYM_DDIMInversion": "EYM DDIM Inversion",
    "EYM_TwoBranchSampler": "EYM Two-Branch Sampler (K/V injection)",
}
