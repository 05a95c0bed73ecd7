"""Small SD1.5-shaped models built in code: for tests, the self-check and CPU benchmarks.

Same block types as SD1.5 (three cross-attention down blocks, a plain down block, a cross-attention
mid block, mirrored up blocks), with few channels. Nothing is downloaded.
"""

from __future__ import annotations


import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from ..seeding import name_generator
from ..video_model.model import MotionModel
from ..video_model.sd15 import controlnet_embedding_channels, unet_config  # noqa: F401  (tests build models by size)

def build_unet(size: str = "tiny", seed: int = 0) -> UNet2DConditionModel:
    """Random weights from ``seed``; torch's global random state is left as it was (so building a
    model never hides code that depends on it)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return UNet2DConditionModel(**unet_config(size)).eval()


def build_controlnet(unet: UNet2DConditionModel, size: str = "tiny", seed: int = 1) -> ControlNetModel:
    """A ControlNet copied from ``unet`` whose zero convolutions get small random weights, so that
    the pose images visibly steer a tiny model (a real ControlNet's are trained, not zero)."""
    with torch.random.fork_rng(devices=[]):  # its new layers start random: from the seed, not the global state
        torch.manual_seed(seed)
        controlnet = ControlNetModel.from_unet(
            unet, conditioning_embedding_out_channels=controlnet_embedding_channels(size)
        ).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        zero_convs = list(controlnet.controlnet_down_blocks) + [controlnet.controlnet_mid_block,
                                                               controlnet.controlnet_cond_embedding.conv_out]
        for conv in zero_convs:
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, device="cpu") * 0.05)
    return controlnet


def build_motion_model(size: str = "tiny", attention_mode: str | None = "rc", seed: int = 0,
                       controlnet: bool = True, method: str = "eym_v1") -> MotionModel:
    """An inflated tiny (or SD1.5-shaped, random-weight) model with its ControlNet, for ``method``
    (``eym_v2`` adds Motion Attention; ``attention_mode`` None takes the method's own)."""
    unet = build_unet(size, seed)
    cn = build_controlnet(unet, size, seed + 1) if controlnet else None
    return MotionModel.from_unet(unet, cn, attention_mode=attention_mode, method=method)


def encode_prompt(prompt: str, dim: int = 32, tokens: int = 77) -> torch.Tensor:
    """A stand-in text encoder for tiny models: each word maps to a fixed pseudo-random vector.

    Only for the self-check and tests; real prompts go through the checkpoint's CLIP.
    Returns ``(1, tokens, dim)``.
    """
    words = prompt.lower().replace(",", " ").replace(".", " ").split()[: tokens - 1]
    rows = [torch.zeros(dim)]
    for word in words:
        rows.append(torch.randn(dim, generator=name_generator(word)))
    out = torch.zeros(tokens, dim)
    out[: len(rows)] = torch.stack(rows)
    # Later tokens carry a summary of the sentence, as CLIP's padding tokens do.
    out[len(rows):] = torch.stack(rows).mean(0)
    return out[None]
