"""The shape of Stable Diffusion 1.5, in one place: its noise schedule and latent scale, the
diffusers configs of its UNet and ControlNet (and of the smaller SD1.5-shaped models the tests, the
self-check and CPU benchmarks build), and the checks that a loaded model has that shape.

Everything else asks this module: offline conversion builds these configs, the video model checks
its inputs here, the benchmark and the memory estimate build ``unet_config("sd15")``.
"""

from __future__ import annotations

from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock

from ..errors import ModelError

#: Noise schedule of Stable Diffusion 1.5 (its ``scheduler_config.json``).
SD15_SCHEDULER_CONFIG = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
}
SD15_LATENT_SCALE = 0.18215
SD15_BLOCK_OUT_CHANNELS = (320, 640, 1280, 1280)
SD15_CROSS_ATTENTION_DIM = 768
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


def validate_unet(unet) -> None:
    """Raise ModelError unless ``unet`` is shaped like SD1.5 (any channel width)."""
    if not isinstance(unet, UNet2DConditionModel):
        raise ModelError(
            f"the model must be a diffusers UNet2DConditionModel of Stable Diffusion 1.5; got {type(unet).__name__}"
        )
    cfg = unet.config
    problems = []
    if cfg.in_channels != 4 or cfg.out_channels != 4:
        problems.append(f"it has {cfg.in_channels} input channels (an inpainting or instruct model?); SD1.5 has 4")
    if cfg.addition_embed_type is not None or cfg.class_embed_type is not None:
        problems.append("it has extra (SDXL-style) conditioning embeddings")
    if cfg.use_linear_projection:
        problems.append("it uses linear projections in its transformers (an SD2.x model?)")
    tl = cfg.transformer_layers_per_block
    if (tl if isinstance(tl, int) else max(tl)) != 1:
        problems.append("it has several transformer layers per block (an SDXL model?)")
    if not any(isinstance(m, BasicTransformerBlock) for m in unet.modules()):
        problems.append("it has no cross-attention transformer blocks")
    if problems:
        raise ModelError(
            "this is not a Stable Diffusion 1.5 UNet: " + "; ".join(problems) + ". Load an SD1.5 checkpoint."
        )


def is_full_size_sd15(unet: UNet2DConditionModel) -> bool:
    cfg = unet.config
    return tuple(cfg.block_out_channels) == SD15_BLOCK_OUT_CHANNELS and cfg.cross_attention_dim == SD15_CROSS_ATTENTION_DIM


def validate_controlnet(controlnet, unet: UNet2DConditionModel) -> None:
    """Raise ModelError unless ``controlnet`` is an RGB-conditioned ControlNet matching ``unet``."""
    if not isinstance(controlnet, ControlNetModel):
        raise ModelError(
            f"the ControlNet must be a diffusers ControlNetModel (openpose, SD1.5); got {type(controlnet).__name__}"
        )
    cc, uc = controlnet.config, unet.config
    if cc.conditioning_channels != 3:
        raise ModelError(
            f"the ControlNet takes {cc.conditioning_channels}-channel hints; an openpose ControlNet takes RGB pose images. "
            "Load control_v11p_sd15_openpose (or another SD1.5 openpose ControlNet)."
        )
    if tuple(cc.block_out_channels) != tuple(uc.block_out_channels) or cc.cross_attention_dim != uc.cross_attention_dim:
        raise ModelError(
            f"the ControlNet (channels {tuple(cc.block_out_channels)}, text dim {cc.cross_attention_dim}) does not fit the UNet "
            f"(channels {tuple(uc.block_out_channels)}, text dim {uc.cross_attention_dim}); use an SD1.5 ControlNet with an SD1.5 checkpoint."
        )
    if cc.addition_embed_type is not None:
        raise ModelError("the ControlNet is an SDXL ControlNet; use an SD1.5 openpose ControlNet.")
