"""Two-branch sampling with RC-Attn key/value injection (Edit-Your-Motion, inference).

Both branches start from the inverted source latents ``z_T``:

* reconstruction branch: source prompt ``P_s``, ControlNet on the source skeletons (optional);
  plain RC-Attn;
* editing branch: target prompt ``P_t``, ControlNet on the reference skeletons; in every RC-Attn
  layer its keys and values are extended with the reconstruction branch's keys and values of the
  same frame (paper Eq. 17-18): ``K_e = [W_K z^e_p(i), W_K z^e_i, W_K z^r_i]``, same for ``V``.

Both branches (and, with guidance > 1, their unconditional halves) run in ONE UNet call per step,
laid out as ``[recon(uncond), recon(cond), edit(uncond), edit(cond)]``.

``kv_injection``:

* ``concat`` — Eq. 18 literally. The editing branch's own frame ``i`` and the reconstruction's
  frame ``i`` are separate keys, so when both branches carry the same content that frame counts
  twice in the softmax: an "edit" with the source prompt and poses drifts slightly from the
  reconstruction.
* ``balanced`` — the same keys, but the two copies of frame ``i`` share one frame's attention
  weight (a ``log 1/2`` logit bias on each). In the ``rc`` and ``self`` attention modes, where
  frame ``i`` is among its own keys, an edit with the source prompt and poses then reproduces the
  reconstruction exactly; in ``bidirectional`` and ``sparse_causal`` most frames do not read
  themselves, the injected frame ``i`` is an extra key, and the null edit only comes close. Real
  edits still read the source content through the injected keys. Useful as a sanity check and
  when ``concat`` over-smooths the new motion.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..video_model.attention import INJECTION_MODES, UNET_PARTS
from ..method.ddim import ProgressCallback, check_output_finite, ddim_schedule, ddim_step
from ..errors import InputError, check_frame_counts, check_guidance, check_inputs_finite, check_latent_size, check_poses
from ..seeding import step_generator
from ..video_model.model import MotionModel, match_token_lengths, to_device
from .windows import fused_prediction, window_batches


@dataclass
class SamplerConfig:
    num_steps: int = 50
    guidance_scale: float = 1.0
    control_scale: float = 1.0
    recon_controlnet: bool = True
    inject_start: float = 0.0
    inject_end: float = 1.0
    inject_parts: tuple = UNET_PARTS
    kv_injection: str = "concat"
    eta: float = 0.0
    seed: int = 0
    # beyond the paper (README, "Beyond the paper"); the defaults are the paper's sampler
    mask_split_kv: bool = False  # keep the reconstruction's ghost-region tokens out of the injected K/V
    ghost_guidance: float = 0.0  # push the edit away from the reconstruction's prediction on the keeper's ghost pixels
    control_boost: float = 1.0  # the editing branch's ControlNet strength x this in the early steps ...
    control_boost_until: float = 0.0  # ... while step / steps < this

    def validate(self) -> None:
        if self.num_steps < 1:
            raise InputError(f"steps must be >= 1; got {self.num_steps}")
        if self.guidance_scale < 1:
            raise InputError(f"guidance must be >= 1 (1 = no classifier-free guidance); got {self.guidance_scale}")
        if not 0 <= self.inject_start <= self.inject_end <= 1:
            raise InputError(
                f"injection range must satisfy 0 <= start <= end <= 1; got start={self.inject_start}, end={self.inject_end}"
            )
        bad = [p for p in self.inject_parts if p not in UNET_PARTS]
        if bad:
            raise InputError(f"inject_parts may only name {', '.join(UNET_PARTS)}; got {bad}")
        if self.kv_injection not in INJECTION_MODES:
            raise InputError(f"kv_injection must be one of {', '.join(INJECTION_MODES)}; got {self.kv_injection!r}")
        if self.eta < 0:
            raise InputError(f"eta must be >= 0; got {self.eta}")
        if self.control_scale < 0:
            raise InputError(f"ControlNet strength must be >= 0; got {self.control_scale}")
        if self.ghost_guidance < 0:
            raise InputError(f"ghost guidance must be >= 0; got {self.ghost_guidance}")
        if self.control_boost < 0 or not 0 <= self.control_boost_until <= 1:
            raise InputError(f"control boost must be >= 0 and its end in 0..1; got boost={self.control_boost}, "
                             f"until={self.control_boost_until}")


@dataclass
class SampleResult:
    edited: torch.Tensor
    reconstruction: torch.Tensor
    injected_steps: list[int] = field(default_factory=list)


def injection_active(step: int, num_steps: int, start: float, end: float) -> bool:
    """Step ``step`` (0-based) injects when its position ``step / num_steps`` lies in [start, end)."""
    return start <= step / num_steps < end


@torch.no_grad()
def two_branch_sample(model: MotionModel, inverted_latents: torch.Tensor, recon_embeddings: torch.Tensor,
                      edit_embeddings: torch.Tensor, recon_poses: torch.Tensor | None, edit_poses: torch.Tensor | None,
                      config: SamplerConfig | None = None, uncond_embeddings: torch.Tensor | None = None,
                      callback: ProgressCallback | None = None, keep=None, context=None) -> SampleResult:
    """Sample the edited clip (and its reconstruction) from ``inverted_latents`` ``(n, 4, h, w)``.

    ``recon_embeddings`` / ``edit_embeddings``: ``(1, tokens, dim)`` for ``P_s`` / ``P_t``;
    ``recon_poses`` / ``edit_poses``: ControlNet hints ``(n, 3, 8h, 8w)`` of the source / reference
    skeletons (None: that branch runs without ControlNet); ``uncond_embeddings``: needed when
    ``guidance_scale > 1``.

    ``keep`` (beyond the paper): a :class:`~motion_core.method.keep_background.BackgroundKeeper`. After
    every step the editing branch takes the source's own inversion trajectory latent outside the
    change region (the reconstruction branch is unchanged); None is the paper's sampler.

    ``context`` (beyond the paper): :class:`~motion_core.method.windows.ContextOptions`; each step
    predicts both branches window by window and fuses them per frame (see
    :mod:`~motion_core.method.windows`); the progress then counts windows. None: the whole clip.
    """
    config = config or SamplerConfig()
    config.validate()
    check_latent_size("inverted latents", inverted_latents, model.unet.config.in_channels)
    n = check_frame_counts(inverted_latents=inverted_latents, source_poses=recon_poses, reference_poses=edit_poses)
    for name, poses in (("source poses", recon_poses), ("reference poses", edit_poses)):
        check_poses(name, poses, inverted_latents, model.controlnet is not None)
    check_guidance(config.guidance_scale, uncond_embeddings)
    cfg = config.guidance_scale > 1
    check_inputs_finite(inverted_latents=inverted_latents, recon_embeddings=recon_embeddings,
                        edit_embeddings=edit_embeddings, source_poses=recon_poses, reference_poses=edit_poses,
                        uncond_embeddings=uncond_embeddings if cfg else None)
    device = model.device
    k = 2 if cfg else 1  # groups per branch

    def rows(t):
        return t.to(device, torch.float32).expand(n, -1, -1)

    recon_emb = [uncond_embeddings, recon_embeddings] if cfg else [recon_embeddings]
    edit_emb = [uncond_embeddings, edit_embeddings] if cfg else [edit_embeddings]
    emb = torch.cat([rows(e) for e in match_token_lengths(*recon_emb, *edit_emb)])

    hint_shape = (n, 3, inverted_latents.shape[-2] * 8, inverted_latents.shape[-1] * 8)
    zeros = torch.zeros(hint_shape, device=device) if recon_poses is None or edit_poses is None else None
    r_hint = zeros if recon_poses is None else recon_poses.to(device, torch.float32)
    e_hint = zeros if edit_poses is None else edit_poses.to(device, torch.float32)
    batches = window_batches(n, context, model.attention_mode) if context is not None else [None]
    windowed = len(batches) > 1
    # with windows each window's hints are cut when it runs: no copies of the clip's poses per group
    hints = None if windowed else torch.cat([r_hint] * k + [e_hint] * k)
    r_scale = config.control_scale if (recon_poses is not None and config.recon_controlnet) else 0.0
    e_scale = config.control_scale if edit_poses is not None else 0.0
    scale = [r_scale] * (k * n) + [e_scale] * (k * n)  # host floats: no device sync per step
    boosted = [r_scale] * (k * n) + [e_scale * config.control_boost] * (k * n)
    use_cn = model.controlnet is not None and any(x != 0 for x in scale + boosted)

    inject = {k + g: g for g in range(k)}
    plan = model.plan(n, 2 * k, inject, config.kv_injection)
    if windowed:
        window_plans = [model.plan(len(b.frames), 2 * k, inject, config.kv_injection, b.frames, n) for b in batches]
    schedule = ddim_schedule(model.scheduler_config, config.num_steps)
    z_r = inverted_latents.to(device, torch.float32)
    z_e = z_r.clone()
    if keep is not None:
        keep.check(z_r, config.num_steps)
        keep = keep.to(device)
        z_e = keep.start(z_e)
    if config.mask_split_kv:
        if keep is None or keep.ghost_all is None:
            raise InputError("mask-split injection needs keep_background with both the source person mask and the "
                             "target person")
        if windowed:
            raise InputError("mask-split injection works on the whole clip only: run it without a context window "
                             "(or with a window at least as long as the clip)")
        plan = plan.with_injection_excluded(keep.ghost_all[:, 0])
    ghost = None
    if config.ghost_guidance > 0:
        if keep is None or keep.ghost is None:
            raise InputError("ghost guidance needs keep_background with both the source person mask and the target person")
        ghost = keep.ghost if bool(keep.ghost.any()) else None
    injected = []
    total = len(schedule.timesteps)
    work = total * len(batches)
    for step, t in enumerate(schedule.timesteps.tolist()):
        active = injection_active(step, total, config.inject_start, config.inject_end)
        parts = tuple(config.inject_parts) if active else ()
        if parts:
            injected.append(step)
        x = torch.cat([z_r] * k + [z_e] * k)
        boost = config.control_boost != 1 and step / total < config.control_boost_until
        if not windowed:
            eps = model.predict(x, t, emb, n, poses=hints if use_cn else None, control_scale=boosted if boost else scale,
                                plan=plan, inject_parts=parts).float()
        else:
            def predict(i, b, x=x, t=t, parts=parts, boost=boost):
                m = len(b.frames)
                rows = b.index.to(device)
                xb = x.view(2 * k, n, *x.shape[1:]).index_select(1, rows).flatten(0, 1)
                eb = emb.view(2 * k, n, *emb.shape[1:])[:, :1].expand(-1, m, -1, -1).flatten(0, 1)
                sb = [r_scale] * (k * m) + [e_scale * config.control_boost if boost else e_scale] * (k * m)
                hb = None
                if use_cn:
                    hb = torch.cat([r_hint.index_select(0, rows)] * k + [e_hint.index_select(0, rows)] * k)
                return model.predict(xb, t, eb, m, poses=hb, control_scale=sb,
                                     plan=window_plans[i], inject_parts=parts).float()

            def after(i, step=step):
                if callback is not None and i < len(batches) - 1:
                    callback(step * len(batches) + i + 1, work)

            eps = fused_prediction(n, batches, predict, x, after)
        eps_r, eps_e = eps[: k * n], eps[k * n :]
        if cfg:
            g = config.guidance_scale
            eps_r = eps_r[:n] + g * (eps_r[n:] - eps_r[:n])
            eps_e = eps_e[:n] + g * (eps_e[n:] - eps_e[:n])
        if ghost is not None:  # away from the reconstruction (the source person) where the ghost would be
            eps_e = eps_e + config.ghost_guidance * ghost * (eps_e - eps_r)
        noise = None
        if config.eta > 0:
            noise = to_device(torch.randn(z_r.shape, generator=step_generator(config.seed, step)), device)
        a_t, a_prev = schedule.alpha(t), schedule.alpha_prev(t)
        z_r = ddim_step(z_r, eps_r, a_t, a_prev, config.eta, noise)
        z_e = ddim_step(z_e, eps_e, a_t, a_prev, config.eta, noise)
        if keep is not None:
            z_e = keep.blend(z_e, total - 1 - step)
        if callback is not None:
            callback((step + 1) * len(batches), work)
    check_output_finite(model, torch.stack([z_e, z_r]), "two-branch sampling")
    return SampleResult(z_e, z_r, injected)
