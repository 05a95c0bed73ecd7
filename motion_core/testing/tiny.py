"""Small SD1.5-shaped models built in code: for tests, the self-check and CPU benchmarks.

Same block types as SD1.5 (three cross-attention down blocks, a plain down block, a cross-attention
mid block, mirrored up blocks), with few channels. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib

import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from ..video_model.model import SD15_BLOCK_OUT_CHANNELS, SD15_CROSS_ATTENTION_DIM, MotionModel

SD15_DOWN = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")
SD15_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")


def unet_config(size: str = "tiny") -> dict:
    """diffusers UNet2DConditionModel config: ``tiny`` (CPU tests) or ``sd15`` (the real shape)."""
    if size == "sd15":
        return dict(
            sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=SD15_BLOCK_OUT_CHANNELS, down_block_types=SD15_DOWN, up_block_types=SD15_UP,
            cross_attention_dim=SD15_CROSS_ATTENTION_DIM, attention_head_dim=8, norm_num_groups=32,
        )
    if size == "small":
        return dict(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(64, 128, 128, 128), down_block_types=SD15_DOWN, up_block_types=SD15_UP,
            cross_attention_dim=128, attention_head_dim=4, norm_num_groups=32,
        )
    if size != "tiny":
        raise ValueError(f"size must be tiny, small or sd15; got {size!r}")
    return dict(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(16, 32, 32, 32), down_block_types=SD15_DOWN, up_block_types=SD15_UP,
        cross_attention_dim=32, attention_head_dim=2, norm_num_groups=8,
    )


def controlnet_embedding_channels(size: str) -> tuple:
    return (16, 32, 96, 256) if size == "sd15" else (8, 8, 16, 16)


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


def build_motion_model(size: str = "tiny", attention_mode: str = "rc", seed: int = 0,
                       controlnet: bool = True) -> MotionModel:
    """An inflated tiny (or SD1.5-shaped, random-weight) model with its ControlNet."""
    unet = build_unet(size, seed)
    cn = build_controlnet(unet, size, seed + 1) if controlnet else None
    return MotionModel.from_unet(unet, cn, attention_mode=attention_mode)


def encode_prompt(prompt: str, dim: int = 32, tokens: int = 77) -> torch.Tensor:
    """A stand-in text encoder for tiny models: each word maps to a fixed pseudo-random vector.

    Only for the self-check and tests; real prompts go through the checkpoint's CLIP.
    Returns ``(1, tokens, dim)``.
    """
    words = prompt.lower().replace(",", " ").replace(".", " ").split()[: tokens - 1]
    rows = [torch.zeros(dim)]
    for word in words:
        seed = int.from_bytes(hashlib.sha256(word.encode()).digest()[:8], "little")
        rows.append(torch.randn(dim, generator=torch.Generator().manual_seed(seed)))
    out = torch.zeros(tokens, dim)
    out[: len(rows)] = torch.stack(rows)
    # Later tokens carry a summary of the sentence, as CLIP's padding tokens do.
    out[len(rows):] = torch.stack(rows).mean(0)
    return out[None]
