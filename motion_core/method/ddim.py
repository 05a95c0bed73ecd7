"""DDIM inversion and sampling with one model call per step.

Timesteps and the cumulative alphas come from diffusers' :class:`DDIMScheduler` configured like
SD1.5. Inversion and sampling use the same step formula in opposite directions, evaluated at the
same timesteps, as Tune-A-Video and null-text inversion do: inversion step ``k`` moves the latent
from the level of ``prev(t_k)`` to ``t_k`` with ``eps(z, t_k)``; sampling moves from ``t_k`` back to
``prev(t_k)``. ``eps`` evaluated at ``z_{prev(t)}`` instead of ``z_t`` is the only error of the pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from diffusers import DDIMScheduler

from ..errors import (InputError, ModelError, check_frame_counts, check_guidance, check_inputs_finite, check_latent_size,
                      check_poses, nonfinite_tensors)
from ..video_model.model import MotionModel, match_token_lengths
from .windows import fused_prediction, window_batches

#: ``callback(step, total_steps)`` after every step; raise inside it to cancel.
ProgressCallback = Callable[[int, int], None]


@dataclass
class DDIMSchedule:
    timesteps: torch.Tensor  # descending, e.g. 981, 961, ..., 1
    alphas_cumprod: torch.Tensor
    final_alpha: torch.Tensor
    step_ratio: int

    def alpha(self, t: int) -> torch.Tensor:
        return self.alphas_cumprod[int(t)]

    def alpha_prev(self, t: int) -> torch.Tensor:
        prev = int(t) - self.step_ratio
        return self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha


def ddim_schedule(scheduler_config: dict, num_steps: int) -> DDIMSchedule:
    if num_steps < 1:
        raise InputError(f"steps must be >= 1; got {num_steps}")
    sched = DDIMScheduler.from_config(scheduler_config)
    if num_steps > sched.config.num_train_timesteps:
        raise InputError(f"steps must be <= {sched.config.num_train_timesteps}; got {num_steps}")
    sched.set_timesteps(num_steps)
    return DDIMSchedule(
        sched.timesteps.clone(), sched.alphas_cumprod.clone().double(), torch.as_tensor(sched.final_alpha_cumprod).double(),
        sched.config.num_train_timesteps // num_steps,
    )


def ddim_step(sample: torch.Tensor, eps: torch.Tensor, alpha_from, alpha_to, eta: float = 0.0,
              noise: torch.Tensor | None = None) -> torch.Tensor:
    """Move ``sample`` from noise level ``alpha_from`` to ``alpha_to`` (cumulative alphas) along
    the DDIM update with predicted noise ``eps``. ``eta > 0`` (sampling only) adds fresh noise."""
    a0, a1 = float(alpha_from), float(alpha_to)
    x0 = (sample - (1 - a0) ** 0.5 * eps) / a0**0.5
    if eta == 0:
        return a1**0.5 * x0 + (1 - a1) ** 0.5 * eps
    sigma = eta * ((1 - a1) / (1 - a0)) ** 0.5 * (1 - a0 / a1) ** 0.5
    direction = max(1 - a1 - sigma**2, 0.0) ** 0.5 * eps
    return a1**0.5 * x0 + direction + sigma * noise


def guided(eps: torch.Tensor, groups: int, guidance: float) -> torch.Tensor:
    """Classifier-free guidance over a batch laid out as [uncond, cond] halves (``groups == 2``)."""
    if groups == 1:
        return eps
    uncond, cond = eps.chunk(2)
    return uncond + guidance * (cond - uncond)


def check_output_finite(model: MotionModel, result: torch.Tensor, what: str) -> None:
    """Refuse a non-finite result (the inputs were checked before): name the likely cause."""
    if bool(torch.isfinite(result).all()):
        return
    broken = nonfinite_tensors(model.named_parameters())
    if broken:
        raise ModelError(
            f"{what} produced NaN or infinite values because the video model's weights hold them (e.g. {broken[0]}): "
            "load the checkpoint and the tuned weights again, or tune again"
        )
    raise ModelError(
        f"{what} produced NaN or infinite values although its inputs and the model's weights are finite: a half-precision "
        "overflow (load the video model with weight_dtype bf16 or fp32) or inputs far out of range (check the latents)"
    )


@torch.no_grad()
def _ddim_run(model: MotionModel, latents, text_embeddings, poses, num_steps, control_scale, guidance,
              uncond_embeddings, callback, invert: bool, trajectory: list | None = None, keep=None,
              context=None) -> torch.Tensor:
    """The shared loop: inversion walks the timesteps upwards (level prev(t) -> t), sampling
    downwards (t -> prev(t)), both with eps evaluated at label t. ``trajectory`` (a list) receives the
    latent at every level, the start included. ``keep`` (sampling only): a
    :class:`~motion_core.method.keep_background.BackgroundKeeper` blended in after every step.
    ``context``: :class:`~motion_core.method.windows.ContextOptions` (None: the whole clip at once);
    with windows, each step predicts window by window and the progress counts windows."""
    check_latent_size("latents", latents, model.unet.config.in_channels)
    n = check_frame_counts(latents=latents, poses=poses)
    if poses is not None:
        check_poses("poses", poses, latents, model.controlnet is not None)
    check_guidance(guidance, uncond_embeddings)
    check_inputs_finite(latents=latents, text_embeddings=text_embeddings, poses=poses,
                        uncond_embeddings=uncond_embeddings if guidance > 1 else None)
    device = model.device
    groups = 1 if guidance == 1 else 2
    emb = [text_embeddings] if groups == 1 else match_token_lengths(uncond_embeddings, text_embeddings)
    emb = torch.cat([e.to(device, torch.float32).expand(n, -1, -1) for e in emb])
    batches = window_batches(n, context, model.attention_mode) if context is not None else [None]
    windowed = len(batches) > 1
    if windowed:  # each window's hints are cut when it runs: no per-window copies of the clip's poses
        poses_dev = None if poses is None else poses.to(device, torch.float32)
        hint = None
    else:
        hint = None if poses is None else poses.to(device, torch.float32).repeat(groups, 1, 1, 1)
    schedule = ddim_schedule(model.scheduler_config, num_steps)
    steps = schedule.timesteps.flip(0) if invert else schedule.timesteps
    z = latents.to(device, torch.float32)
    if keep is not None:
        keep.check(z, num_steps)
        keep = keep.to(device)
        z = keep.start(z)
    if trajectory is not None:
        trajectory.append(z.clone())
    total = len(steps) * len(batches)
    for k, t in enumerate(steps.tolist()):
        x = z if groups == 1 else torch.cat([z, z])
        if not windowed:
            eps = guided(model.predict(x, t, emb, n, poses=hint, control_scale=control_scale).float(), groups, guidance)
        else:
            def predict(i, b):
                m = len(b.frames)
                xb = x.view(groups, n, *x.shape[1:]).index_select(1, b.index.to(device)).flatten(0, 1)
                eb = emb.view(groups, n, *emb.shape[1:])[:, :1].expand(-1, m, -1, -1).flatten(0, 1)
                plan = model.plan(m, groups, frames=b.frames, clip_length=n)
                hb = None if poses_dev is None else poses_dev.index_select(0, b.index.to(device)).repeat(groups, 1, 1, 1)
                return model.predict(xb, t, eb, m, poses=hb, control_scale=control_scale, plan=plan).float()

            def after(i, k=k):
                if callback is not None and i < len(batches) - 1:
                    callback(k * len(batches) + i + 1, total)

            eps = guided(fused_prediction(n, batches, predict, x, after), groups, guidance)
        a_t, a_prev = schedule.alpha(t), schedule.alpha_prev(t)
        z = ddim_step(z, eps, a_prev, a_t) if invert else ddim_step(z, eps, a_t, a_prev)
        if keep is not None:
            z = keep.blend(z, len(steps) - 1 - k)
        if trajectory is not None:
            trajectory.append(z.clone())
        if callback is not None:
            callback((k + 1) * len(batches), total)
    check_output_finite(model, z, "DDIM inversion" if invert else "DDIM sampling")
    return z


def ddim_invert(model: MotionModel, latents: torch.Tensor, text_embeddings: torch.Tensor,
                poses: torch.Tensor | None = None, num_steps: int = 50, control_scale: float = 1.0,
                guidance: float = 1.0, uncond_embeddings: torch.Tensor | None = None,
                callback: ProgressCallback | None = None, context=None) -> torch.Tensor:
    """DDIM-invert clean scaled latents ``(n, 4, h, w)`` to ``z_T`` with the (tuned) model.

    Defaults follow the paper: source prompt, source-skeleton ControlNet (pass ``poses=None`` to
    invert without it, as MotionEditor does), no classifier-free guidance.
    """
    return _ddim_run(model, latents, text_embeddings, poses, num_steps, control_scale, guidance,
                     uncond_embeddings, callback, invert=True, context=context)


def ddim_invert_trajectory(model: MotionModel, latents: torch.Tensor, text_embeddings: torch.Tensor,
                           poses: torch.Tensor | None = None, num_steps: int = 50, control_scale: float = 1.0,
                           guidance: float = 1.0, uncond_embeddings: torch.Tensor | None = None,
                           callback: ProgressCallback | None = None, context=None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`ddim_invert` that also returns the latent at every noise level it passed:
    ``(z_T, trajectory)`` with ``trajectory`` ``(num_steps + 1, n, 4, h, w)`` float32 on the model's
    device, ``trajectory[0]`` the input latents, ``trajectory[k]`` the latent after inversion step ``k``
    and ``trajectory[num_steps]`` equal to ``z_T``. Sampling step ``j`` lands on the level of
    ``trajectory[num_steps - 1 - j]`` (used to keep the source background, see ``keep_background``)."""
    levels: list[torch.Tensor] = []
    z_t = _ddim_run(model, latents, text_embeddings, poses, num_steps, control_scale, guidance,
                    uncond_embeddings, callback, invert=True, trajectory=levels, context=context)
    return z_t, torch.stack(levels)


def ddim_sample(model: MotionModel, noise_latents: torch.Tensor, text_embeddings: torch.Tensor,
                poses: torch.Tensor | None = None, num_steps: int = 50, control_scale: float = 1.0,
                guidance: float = 1.0, uncond_embeddings: torch.Tensor | None = None,
                callback: ProgressCallback | None = None, keep=None, context=None) -> torch.Tensor:
    """Plain (single-branch) deterministic DDIM sampling from ``z_T``: the inverse of :func:`ddim_invert`.
    ``keep``: a :class:`~motion_core.method.keep_background.BackgroundKeeper` (None: the plain sampler)."""
    return _ddim_run(model, noise_latents, text_embeddings, poses, num_steps, control_scale, guidance,
                     uncond_embeddings, callback, invert=False, keep=keep, context=context)
