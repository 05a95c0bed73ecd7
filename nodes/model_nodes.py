"""Model nodes: build the video model from ComfyUI's MODEL + CONTROL_NET, RC-Attn patching,
saving and loading tuned weights."""

from __future__ import annotations

import copy
import logging
import re

import torch

from ..motion_core.video_model.attention import ATTENTION_MODES
from ..motion_core.video_model.convert import controlnet_from_ldm, unet_from_ldm
from ..motion_core.errors import InputError
from ..motion_core.video_model.model import METHODS, MotionModel
from ..motion_core.video_model.sd15 import is_full_size_sd15
from ..motion_core.video_model.weights import read_tuned_weights, save_tuned_weights, verify_tuned_weights
from . import comfy_bridge as bridge
from .handle import CATEGORY, MODEL_TYPE, MotionEngine, MotionHandle, check_handle, device_dtype_choice

log = logging.getLogger("edit_your_motion")

ATTENTION_TOOLTIP = (
    "How each frame's spatial self-attention reads other frames. rc: Recurrent-Causal Attention "
    "(previous frame + itself, the first frame reads the last; Edit-Your-Motion, default). "
    "bidirectional: previous + next frame (the paper's later version). sparse_causal: first + previous "
    "frame (Tune-A-Video). self: the image model's own attention (ablation)."
)
METHOD_TOOLTIP = (
    "eym_v1: Edit-Your-Motion (ACM MM 2024): DPL tuning (EYM Stage 1 / Stage 2 Tuning) and the two-branch "
    "sampler; use attention rc. eym_v2: the later version: adds a Motion Attention adapter on every ControlNet "
    "residual, STL tuning (EYM STL Stage 1 / Stage 2) and the single-branch sampler; use attention bidirectional."
)


def _copy_module(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    with torch.inference_mode(False):
        dup = copy.deepcopy(module)
        for t in list(dup.parameters()) + list(dup.buffers()):
            t.data = t.data.clone()
        return dup.to(dtype=dtype).eval().requires_grad_(False)


class LoadVideoModel:
    DESCRIPTION = (
        "Turns an SD1.5 checkpoint's MODEL and an openpose ControlNet into Edit-Your-Motion's video model: "
        "a temporal attention layer is added to every transformer block and spatial self-attention becomes "
        "RC-Attn (method eym_v2 also adds the later version's Motion Attention adapter). Weights are converted in "
        "memory; nothing is downloaded or written."
    )
    CATEGORY = f"{CATEGORY}/model"
    FUNCTION = "run"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("video_model",)
    OUTPUT_TOOLTIPS = ("The untuned video model. Tune it with Stage 1 and Stage 2, or load tuned weights.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5 MODEL from Load Checkpoint (LoRAs applied to it are kept)."}),
                "control_net": ("CONTROL_NET", {"tooltip": "An SD1.5 openpose ControlNet from Load ControlNet Model (e.g. control_v11p_sd15_openpose)."}),
                "attention_mode": (list(ATTENTION_MODES), {"default": "rc", "tooltip": ATTENTION_TOOLTIP}),
                "weight_dtype": (["auto", "fp32", "fp16", "bf16"], {
                    "default": "auto",
                    "tooltip": "Storage type of the frozen weights. auto: bf16 on GPUs that support it (else fp16), "
                               "fp32 on the CPU (fp16 is GPU-only). The model computes in this type; trained tensors "
                               "always keep a float32 master copy.",
                }),
            },
            "optional": {
                "method": (list(METHODS), {"default": "eym_v1", "tooltip": METHOD_TOOLTIP}),
            },
        }

    def run(self, model, control_net, attention_mode="rc", weight_dtype="auto", method="eym_v1"):
        # converting 1.3 GB of weights takes a while: the bar moves from the first second, one unit per part
        progress = bridge.Progress(0, "Edit-Your-Motion video model", prepare=4)
        dtype = device_dtype_choice(weight_dtype, bridge.torch_device())
        offload = bridge.offload_device()
        unet_src, scale = bridge.unet_weights(model)
        cn_src = bridge.controlnet_weights(control_net)
        progress.phase("converting the UNet")
        if isinstance(unet_src, dict):
            unet = unet_from_ldm(unet_src, dtype=dtype, device=offload)
        else:
            unet = _copy_module(unet_src, dtype)
        progress.phase("converting the ControlNet")
        if isinstance(cn_src, dict):
            cn = controlnet_from_ldm(cn_src, dict(unet.config), dtype=dtype, device=offload,
                                     size="sd15" if is_full_size_sd15(unet) else "tiny")
        else:
            cn = _copy_module(cn_src, dtype)
        progress.phase("building the video model (temporal layers" + (", Motion Attention)" if method == "eym_v2" else ")"))
        with torch.inference_mode(False):
            motion = MotionModel.from_unet(unet, cn, attention_mode=attention_mode, latent_scale=scale, method=method)
        progress.phase("handing the video model to ComfyUI's model management")
        engine = MotionEngine(motion, scale, dtype)
        log.info("Edit-Your-Motion video model ready (%s, %s weights, attention %s)", method, str(dtype).split(".")[-1],
                 attention_mode)
        return (MotionHandle(engine, None, attention_mode),)


class RCAttnPatch:
    DESCRIPTION = (
        "Sets how frames attend to each other in the video model (RC-Attn patching). Changing the mode keeps the "
        "tuned weights; the paper tunes and samples with rc."
    )
    CATEGORY = f"{CATEGORY}/model"
    FUNCTION = "run"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("video_model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video_model": (MODEL_TYPE, {"tooltip": "The video model to patch."}),
                "attention_mode": (list(ATTENTION_MODES), {"default": "rc", "tooltip": ATTENTION_TOOLTIP}),
            }
        }

    def run(self, video_model, attention_mode):
        return (check_handle(video_model, "video_model").replace(attention_mode=attention_mode),)


def _next_free_name(folder, prefix: str) -> str:
    prefix = prefix.strip().replace("\\", "/").strip("/")
    if not prefix or ".." in prefix.split("/"):
        raise InputError(f"filename_prefix {prefix!r} must be a plain name such as 'dancer' or 'clips/dancer'")
    pattern = re.compile(re.escape(prefix.split("/")[-1]) + r"_(\d{5})\.safetensors$")
    sub = (folder / prefix).parent
    taken = [int(m.group(1)) for p in sub.glob("*.safetensors") if (m := pattern.match(p.name))] if sub.is_dir() else []
    return f"{prefix}_{max(taken, default=0) + 1:05d}.safetensors"


class SaveTunedWeights:
    DESCRIPTION = (
        "Saves the tuned tensors (RC-Attn and temporal layers, about 0.4 GB for SD1.5, plus Motion Attention for eym_v2, "
        "about 1 GB in all) as safetensors in ComfyUI/models/edit_your_motion, with the method, attention mode, stages and a "
        "fingerprint of the base model."
    )
    CATEGORY = f"{CATEGORY}/model"
    FUNCTION = "run"
    OUTPUT_NODE = True
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("video_model",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "video_model": (MODEL_TYPE, {"tooltip": "A tuned video model (after Stage 1 and/or Stage 2)."}),
                "filename_prefix": ("STRING", {"default": "edit_your_motion", "tooltip": "File name prefix; a 5-digit counter and .safetensors are added."}),
            }
        }

    def run(self, video_model, filename_prefix):
        handle = check_handle(video_model, "video_model")
        if not handle.state:
            raise InputError("video_model has not been tuned yet; connect it after Stage 1 / Stage 2 Tuning")
        folder = bridge.output_folder(bridge.TUNED_FOLDER)
        name = _next_free_name(folder, filename_prefix)
        model = handle.engine.model
        with torch.inference_mode(False):
            model.set_attention_mode(handle.attention_mode)
            handle.engine.invalidate()
            path = save_tuned_weights(folder / name, model, handle.state, handle.steps)
        bridge.return_freed_host_memory()  # the file's serialised copy is gone
        log.info("saved tuned weights to %s", path)
        return {"ui": {"text": [str(name)]}, "result": (handle,)}


class LoadTunedWeights:
    DESCRIPTION = (
        "Loads tuned weights saved by Save Tuned Weights onto the video model of the same base checkpoint, so a "
        "clip tuned once can be edited again without tuning."
    )
    CATEGORY = f"{CATEGORY}/model"
    FUNCTION = "run"
    RETURN_TYPES = (MODEL_TYPE,)
    RETURN_NAMES = ("video_model",)

    @classmethod
    def INPUT_TYPES(cls):
        files = bridge.list_files(bridge.TUNED_FOLDER, (".safetensors",)) or ["(no tuned weights saved yet)"]
        return {
            "required": {
                "video_model": (MODEL_TYPE, {"tooltip": "The untuned video model of the checkpoint the weights were tuned on."}),
                "tuned_weights": (files, {"tooltip": "A file in ComfyUI/models/edit_your_motion."}),
                "check_base_model": ("BOOLEAN", {"default": True, "tooltip": "Refuse weights tuned on another base checkpoint."}),
            }
        }

    def run(self, video_model, tuned_weights, check_base_model=True):
        handle = check_handle(video_model, "video_model")
        path = bridge.full_path(bridge.TUNED_FOLDER, tuned_weights)
        if path is None:
            raise InputError(
                f"tuned_weights {tuned_weights!r} was not found in {', '.join(bridge.folder_paths_for(bridge.TUNED_FOLDER))}; "
                "save tuned weights first or copy the file there"
            )
        tensors, meta = read_tuned_weights(path)
        verify_tuned_weights(tensors, meta, handle.engine.model, tuned_weights, check_base_model)
        steps = tuple(sorted(meta["stages"].items()))
        return (handle.replace(state=tensors, attention_mode=meta["attention_mode"], stage_steps=steps),)


NODE_CLASS_MAPPINGS = {
    "EYM_LoadVideoModel": LoadVideoModel,
    "EYM_RCAttnPatch": RCAttnPatch,
    "EYM_SaveTunedWeights": SaveTunedWeights,
    "EYM_LoadTunedWeights": LoadTunedWeights,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "EYM_LoadVideoModel": "EYM Load Video Model (SD1.5 + ControlNet)",
    "EYM_RCAttnPatch": "EYM RC-Attn Patch (attention mode)",
    "EYM_SaveTunedWeights": "EYM Save Tuned Weights",
    "EYM_LoadTunedWeights": "EYM Load Tuned Weights",
}
