"""The world's base model: the same diffusers classes as SD1.5 (UNet2DConditionModel + an RGB-pose
ControlNetModel) at small widths, plus the world's text encoder. Trained from scratch on single world
frames by ``python -m motion_core.world.train``; the weights ship in ``world/weights/``."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from safetensors.torch import load_file, save_file

from ..errors import InputError
from ..pose import render_pose_images
from ..video_model.model import MotionModel
from ..video_model.sd15 import SD15_SCHEDULER_CONFIG
from .scene import LATENT_SIZE, POSE_SIZE
from .text import WorldTextEncoder

WEIGHTS = Path(__file__).resolve().parent / "weights" / "world_base_model.safetensors"
TEXT_DIM = 64
STICK = 3  # pose-image stick width and point radius at POSE_SIZE pixels

UNET_CONFIG = dict(
    sample_size=LATENT_SIZE, in_channels=4, out_channels=4, layers_per_block=1,
    block_out_channels=(32, 64, 128),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=TEXT_DIM, attention_head_dim=4, norm_num_groups=16,
)
CONTROLNET_EMBEDDING = (8, 16, 32, 64)
#: the world keeps SD1.5's noise schedule; its latents need no scale (they are already ~unit range)
SCHEDULER_CONFIG = dict(SD15_SCHEDULER_CONFIG)
LATENT_SCALE = 1.0


@dataclass
class WorldModels:
    unet: UNet2DConditionModel
    controlnet: ControlNetModel
    text: WorldTextEncoder
    meta: dict

    def motion_model(self, attention_mode: str = "rc", **kwargs) -> MotionModel:
        """A fresh inflated video model over copies of the base weights (tuning never touches these);
        ``kwargs`` go to :meth:`MotionModel.from_unet` (e.g. ``method="eym_v2"``)."""
        unet = UNet2DConditionModel.from_config(self.unet.config)
        unet.load_state_dict(self.unet.state_dict())
        cn = ControlNetModel.from_config(self.controlnet.config)
        cn.load_state_dict(self.controlnet.state_dict())
        return MotionModel.from_unet(unet.eval(), cn.eval(), attention_mode=attention_mode,
                                     scheduler_config=SCHEDULER_CONFIG, latent_scale=LATENT_SCALE, **kwargs)


def build(seed: int = 0) -> WorldModels:
    """Freshly initialised models (seeded, independent of the global RNG state)."""
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(seed)
        unet = UNet2DConditionModel(**UNET_CONFIG)
        # trained from scratch together with the UNet: its own random init (zero convs zero), not a copy
        config = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=CONTROLNET_EMBEDDING).config
        controlnet = ControlNetModel.from_config(config)
        text = WorldTextEncoder(TEXT_DIM)
    finally:
        torch.random.set_rng_state(state)
    return WorldModels(unet, controlnet, text, {})


def save(models: WorldModels, path: str | os.PathLike, meta: dict, dtype=torch.float16) -> Path:
    """Write all three models into one safetensors file (atomically), with ``meta`` as metadata."""
    path = Path(path)
    tensors = {}
    for prefix, module in (("unet.", models.unet), ("controlnet.", models.controlnet), ("text.", models.text)):
        for k, v in module.state_dict().items():
            tensors[prefix + k] = v.detach().to("cpu", dtype).contiguous()
    bad = [k for k, v in tensors.items() if not torch.isfinite(v.float()).all()]
    if bad:
        raise ValueError(f"refusing to save non-finite weights, e.g. {bad[0]}")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata={"format": "pt", "eym_world": json.dumps(meta)})
    os.replace(tmp, path)
    return path


def load(path: str | os.PathLike | None = None, device: str | torch.device = "cpu") -> WorldModels:
    """Load the shipped (or a retrained) world base model in float32."""
    path = Path(path or WEIGHTS)
    if not path.is_file():
        raise InputError(f"the world base model {path} is missing; retrain it with `python -m motion_core.world.train`")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = json.loads((f.metadata() or {}).get("eym_world", "{}"))
    state = load_file(str(path))
    models = build(0)
    for prefix, module in (("unet.", models.unet), ("controlnet.", models.controlnet), ("text.", models.text)):
        sub = {k[len(prefix):]: v.float() for k, v in state.items() if k.startswith(prefix)}
        module.load_state_dict(sub)
        module.to(device).eval().requires_grad_(False)
    models.meta = meta
    return models


def pose_hints(keypoints: np.ndarray) -> torch.Tensor:
    """ControlNet hints ``(n, 3, S, S)`` in 0..1 of pixel keypoints ``(n, 18, 3)`` on the world's canvas."""
    images = render_pose_images(keypoints, POSE_SIZE, POSE_SIZE, stick_width=STICK, point_radius=STICK)
    return images.permute(0, 3, 1, 2).contiguous()


def tokenize_prompts(prompts: list[str]) -> torch.Tensor:
    from .text import tokenize

    return tokenize(prompts)
