"""Offline conversion of the user's own weights (LDM/ComfyUI layout) into diffusers modules.

No hub access: the diffusers configs are built in code (SD1.5 shapes), and diffusers' own key
mapping (``convert_ldm_unet_checkpoint`` / ``convert_controlnet_checkpoint``) does the renaming.
Modules are created on the meta device and filled with the caller's tensors (``assign=True``): no
random initialisation, and no inference-mode tensors (ComfyUI loads weights under
``torch.inference_mode()``; those cannot take part in training). Frozen weights that need no
conversion (same values, device and dtype) *share storage* with the caller's tensors through a plain
tensor over the same memory: the host then holds one copy of the checkpoint, not two (#16 §3).
Tuning never changes the caller's model: it trains fresh copies of the tensors it trains and writes
into no tensor in place (see :meth:`~motion_core.video_model.model.MotionModel.load_tuned_state`).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint, convert_ldm_unet_checkpoint

from ..errors import InputError, ModelError
from .sd15 import controlnet_embedding_channels, unet_config

LDM_UNET_PREFIX = "model.diffusion_model."
LDM_CONTROLNET_PREFIX = "control_model."


def _strip(state_dict: dict, prefix: str) -> dict:
    if any(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return dict(state_dict)


def plain_alias(t: torch.Tensor) -> torch.Tensor:
    """A plain (not inference-mode) tensor over ``t``'s memory: no copy. Inference tensors cannot be
    saved for backward, so a frozen weight that tuning's backward reads must not be one; the
    inference flag belongs to the tensor, not to its storage."""
    with torch.inference_mode(False):
        out = torch.empty(0, dtype=t.dtype, device=t.device)
        return out.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())


def _same_memory(a: torch.Tensor, b: torch.Tensor) -> bool:
    try:
        return a.untyped_storage().data_ptr() == b.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # storage-less subclasses: compare the data itself
        return a.data_ptr() == b.data_ptr()


def converted(src: torch.Tensor, device, dtype: torch.dtype, share: bool) -> torch.Tensor:
    """A plain tensor holding ``src``'s values on ``device`` as ``dtype``: ``src``'s own memory where
    ``share`` and no conversion was needed, else memory of our own.

    ``src.to()`` runs first because ComfyUI's lazy parameters apply the model's patches (LoRAs)
    there; they may also ignore the requested device, dtype and copy, and hand back ComfyUI's own
    inference-mode storage. The result is therefore converted again; a result still in ``src``'s
    memory is cloned unless ``share``, and an inference tensor becomes a plain one over its memory.
    """
    v = src.to(device=device, dtype=dtype)
    if type(v) is not torch.Tensor:
        v = v.as_subclass(torch.Tensor)
    v = v.detach().to(device=device, dtype=dtype)
    if v.device.type == "meta":
        return v
    if not share and _same_memory(v, src):
        return v.clone()
    return plain_alias(v) if v.is_inference() else v


def own_copy(src: torch.Tensor, device, dtype: torch.dtype) -> torch.Tensor:
    """A plain tensor of our own (never ``src``'s memory) holding ``src``'s values on ``device`` as ``dtype``."""
    return converted(src, device, dtype, share=False)


def _materialise(module_cls, config: dict, state: dict, what: str, dtype: torch.dtype, device) -> torch.nn.Module:
    """``module_cls(**config)`` holding ``state``'s values, in the caller's memory where no conversion is needed."""
    with torch.device("meta"):
        module = module_cls(**config)
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or wrong:
        detail = f"{len(missing)} missing tensors (e.g. {missing[0]})" if missing else ""
        if wrong:
            k = wrong[0]
            detail += ("; " if detail else "") + f"{len(wrong)} with other shapes (e.g. {k}: {tuple(state[k].shape)} vs {tuple(expected[k].shape)})"
        raise ModelError(f"these weights are not an SD1.5 {what}: {detail}. Load an SD1.5 {what}.")
    with torch.inference_mode(False):
        tensors = {k: converted(state[k], device, dtype, share=True) for k in expected}
        module.load_state_dict(tensors, strict=True, assign=True)
    del unexpected
    return module.eval().requires_grad_(False)


def unet_from_ldm(state_dict: dict, config: dict | None = None, dtype: torch.dtype = torch.float32,
                  device="cpu") -> UNet2DConditionModel:
    """A diffusers UNet from an LDM-layout state dict (``input_blocks.*``, optional
    ``model.diffusion_model.`` prefix), SD1.5 config by default. Its frozen weights share memory
    with ``state_dict``'s tensors where ``dtype`` and ``device`` are theirs (see the module doc)."""
    config = dict(config or unet_config("sd15"))
    sd = _strip(state_dict, LDM_UNET_PREFIX)
    if "input_blocks.0.0.weight" not in sd:
        raise ModelError("these weights are not a Stable Diffusion UNet (no input_blocks.0.0.weight); load an SD1.5 checkpoint")
    if "label_emb.0.0.weight" in sd:
        raise ModelError("this is an SDXL UNet; Edit-Your-Motion needs an SD1.5 checkpoint")
    ctx = next((v.shape[1] for k, v in sd.items() if k.endswith("attn2.to_k.weight")), None)
    if ctx is not None and ctx != config["cross_attention_dim"]:
        raise ModelError(
            f"this UNet takes {ctx}-wide text embeddings (SD1.5 takes {config['cross_attention_dim']}); load an SD1.5 checkpoint"
        )
    full = {LDM_UNET_PREFIX + k: v for k, v in sd.items()}
    renamed = convert_ldm_unet_checkpoint(full, config)
    return _materialise(UNet2DConditionModel, config, renamed, "UNet", dtype, device)


def controlnet_from_ldm(state_dict: dict, unet_cfg: dict | None = None, dtype: torch.dtype = torch.float32,
                        device="cpu", size: str = "sd15") -> ControlNetModel:
    """A diffusers ControlNet from an LDM-layout ControlNet state dict (``input_hint_block.*``,
    ``zero_convs.*``, optional ``control_model.`` prefix). Nothing of it is trained: its weights
    share memory with ``state_dict``'s tensors where ``dtype`` and ``device`` are theirs."""
    sd = _strip(state_dict, LDM_CONTROLNET_PREFIX)
    if "input_hint_block.0.weight" not in sd:
        raise ModelError(
            "these weights are not a ControlNet (no input_hint_block); load an SD1.5 openpose ControlNet "
            "(T2I-Adapters and Control-LoRAs are not supported)"
        )
    if "label_emb.0.0.weight" in sd:
        raise ModelError("this is an SDXL ControlNet; use an SD1.5 openpose ControlNet")
    u = dict(unet_cfg or unet_config(size))
    cfg = dict(
        in_channels=u["in_channels"], down_block_types=u["down_block_types"], block_out_channels=u["block_out_channels"],
        layers_per_block=u["layers_per_block"], cross_attention_dim=u["cross_attention_dim"],
        attention_head_dim=u["attention_head_dim"], norm_num_groups=u["norm_num_groups"],
        conditioning_channels=int(sd["input_hint_block.0.weight"].shape[1]),
        conditioning_embedding_out_channels=controlnet_embedding_channels(size),
    )
    if cfg["conditioning_channels"] != 3:
        raise ModelError(
            f"this ControlNet takes {cfg['conditioning_channels']}-channel hints; an openpose ControlNet takes RGB pose images"
        )
    renamed = convert_controlnet_checkpoint(sd, cfg)
    return _materialise(ControlNetModel, cfg, renamed, "ControlNet", dtype, device)


def read_safetensors(path: str | os.PathLike, what: str, where: str) -> dict:
    """Tensors of a ``.safetensors`` file, with an error naming the missing file and its folder."""
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{what} file {path.name!r} was not found at {path.parent}; put it in {where}")
    if path.suffix != ".safetensors":
        raise InputError(f"{what} file {path.name} is not .safetensors; convert it, or use the safetensors release")
    return load_file(str(path))
