"""Run the method, its ablations and the baselines on a world edit case, through the public engine.

The world's base model stands where a user's SD1.5 stands: every variant builds a fresh
:class:`~motion_core.video_model.model.MotionModel` over copies of the base weights, tunes it with
:func:`~motion_core.method.tuner.tune_stage`, inverts with :func:`~motion_core.method.ddim.ddim_invert`
and samples with :func:`~motion_core.method.sampler.two_branch_sample` (or plain DDIM sampling),
exactly as the nodes do. Variants that differ only at sampling reuse the tuned weights.

**Scaling the paper's settings to the world** (one rule, written once): the paper tunes SD1.5 for
300 + 300 steps at learning rate 3e-5, and SD1.5 itself was trained at 1e-4; the world's base model
was trained at 1e-3, so tuning uses the paper's learning rate times the same ratio,
3e-5 x (1e-3 / 1e-4) = 3e-4. Steps per stage, DDIM steps and frames are options (``Settings``); the
benchmark's defaults (100 + 100 tuning steps, 25 DDIM steps, 8 frames) are what a 2-core CPU runs for
every method of the table in well under an hour and a half; ``--quick`` divides the steps further.
Guidance is 1 (no classifier-free guidance) for the method, as in the paper. The ControlNet-only
baseline samples from fresh noise, where a diffusion model needs guidance: it uses 3.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from ..method.ddim import ddim_invert, ddim_invert_trajectory, ddim_sample
from ..method.keep_background import BackgroundKeeper, make_keeper
from ..method.frames import apply_background_mask
from ..method.sampler import SamplerConfig, two_branch_sample
from ..method.stages import tune_stage
from ..method.tuner import TuneConfig
from ..pose.masks import fit_mask_grow, person_masks_from_keypoints
from . import vae
from .model import WorldModels, pose_hints
from .scene import POSE_SIZE, SKIN, EditCase

PAPER_TUNING_LR = 3e-5
SD15_PRETRAINING_LR = 1e-4
WORLD_PRETRAINING_LR = 1e-3
TUNING_LR = PAPER_TUNING_LR * WORLD_PRETRAINING_LR / SD15_PRETRAINING_LR


@dataclass
class Settings:
    stage_steps: int = 100
    ddim_steps: int = 25
    learning_rate: float = TUNING_LR
    seed: int = 0
    baseline_guidance: float = 3.0
    #: long clips (beyond the paper): a :class:`~motion_core.method.windows.ContextOptions` for tuning,
    #: inversion and sampling; None, or a window at least the clip's length: the whole clip at once
    context: object = None
    #: inversion and sampling only, when set (``quality --sample-window``): e.g. tuning in windows while
    #: inversion and sampling run over the whole clip at once ("whole"); None: ``context``
    sample_context: object = None
    #: the tuning optimizer: ``adamw`` (torch, the paper's) or ``adamw8bit`` (bitsandbytes, a memory lever)
    optimizer: str = "adamw"

    @property
    def sampling_context(self):
        """The context of inversion and sampling: ``sample_context`` ("whole": no windows) or ``context``."""
        if self.sample_context == "whole":
            return None
        return self.sample_context if self.sample_context is not None else self.context

    def as_dict(self) -> dict:
        """The settings as plain values (the context as a dict), for JSON."""
        return dataclasses.asdict(self)


@dataclass
class CaseInputs:
    """Everything the engine needs for one case, encoded once."""

    case: EditCase
    latents: torch.Tensor  # (n, 4, h, w) of the source frames
    masked_latents: torch.Tensor  # of the background-masked source frames
    source_hints: torch.Tensor  # (n, 3, 8h, 8w)
    reference_hints: torch.Tensor  # aligned reference skeletons
    unaligned_hints: torch.Tensor  # reference skeletons where the reference person stood
    p_c: torch.Tensor
    p_s: torch.Tensor
    p_t: torch.Tensor
    uncond: torch.Tensor
    source_person: torch.Tensor  # (n, S, S) 0/1: the source person (what a segmentation node gives)
    target_person: torch.Tensor  # (n, S, S) 0/1: drawn from the aligned reference skeletons (as the nodes do)
    cache: dict = field(default_factory=dict)  # tuned states shared by sampling-only variants
    cache_masks: dict = field(default_factory=dict)  # fitted target person masks

    @classmethod
    def build(cls, case: EditCase, models: WorldModels) -> "CaseInputs":
        src = case.source
        frames = torch.from_numpy(src.images)
        masked = apply_background_mask(frames, torch.from_numpy(src.masks).float())
        enc = models.text.encode
        return cls(
            case, vae.encode(frames), vae.encode(masked), pose_hints(src.keypoints), pose_hints(case.aligned_keypoints),
            pose_hints(case.reference.keypoints), enc(case.prompt_content), enc(case.prompt_source),
            enc(case.prompt_target), enc(""), torch.from_numpy(src.masks).float(),
            person_masks_from_keypoints(case.aligned_keypoints, POSE_SIZE, POSE_SIZE),
        )

    # --- what metrics need
    def truth(self) -> torch.Tensor:
        return vae.downsample(self.case.truth_images)

    def source_frames(self) -> torch.Tensor:
        return vae.downsample(self.case.source.images)

    def truth_masks(self) -> torch.Tensor:
        return vae.downsample_masks(self.case.truth_masks)

    def source_masks(self) -> torch.Tensor:
        return vae.downsample_masks(self.case.source.masks)

    def background(self) -> torch.Tensor:
        return vae.downsample(self.case.source.scene.image[None])[0]

    def fitted_target_person(self, scale: float = 1.0) -> torch.Tensor:
        """The target person drawn tight: the aligned reference skeletons with the mask size (``grow``)
        fitted to the source person's own mask and skeletons, times ``scale`` (as the nodes do with
        ``target_mask=fitted``)."""
        key = ("_fitted_target", scale)
        if key not in self.cache_masks:
            src = self.case.source
            grow, _ = fit_mask_grow(src.keypoints, torch.from_numpy(src.masks).float())
            self.cache_masks[key] = person_masks_from_keypoints(self.case.aligned_keypoints, POSE_SIZE, POSE_SIZE,
                                                                grow=grow * scale)
        return self.cache_masks[key]

    def palette(self) -> np.ndarray:
        p = self.case.source.person
        return np.stack([p.shirt, p.trousers, p.pattern_colour, SKIN])


def _tune(model, inputs: CaseInputs, settings: Settings, stage: int, *, masked: bool, prompt: torch.Tensor,
          lam: float = 0.9, shuffle: str = "per_step", names: list[str] | None = None, progress=None):
    cfg = TuneConfig(steps=settings.stage_steps, learning_rate=settings.learning_rate, seed=settings.seed,
                     gradient_checkpointing=False, lam=lam, shuffle=shuffle, context=settings.context,
                     optimizer=settings.optimizer)
    latents = inputs.masked_latents if masked else inputs.latents
    # ``names``: a custom trainable set (Tune-A-Video trains attn1 and temporal together)
    tune_stage(model, stage, latents, prompt, inputs.source_hints, cfg,
               callback=None if progress is None else (lambda k, total, loss: progress()), parameters=names)


def _tuned(models: WorldModels, inputs: CaseInputs, settings: Settings, key: str, mode: str,
           recipe: Callable, progress=None):
    """A model in attention ``mode`` carrying the tuned state ``key`` (tuned once per case)."""
    model = models.motion_model(mode)
    if key in inputs.cache:
        model.load_tuned_state(inputs.cache[key])
    else:
        recipe(model, progress)
        inputs.cache[key] = model.tuned_state()
    return model


def _v1_stage1(inputs, settings, mode):
    def recipe(model, progress):
        _tune(model, inputs, settings, 1, masked=True, prompt=inputs.p_c, progress=progress)
    return recipe


def _v1_full(inputs, settings, mode, lam=0.9, stage1=True):
    def recipe(model, progress):
        if stage1:
            key = f"v1_s1_{mode}"
            if key in inputs.cache:
                model.load_tuned_state(inputs.cache[key])
            else:
                _tune(model, inputs, settings, 1, masked=True, prompt=inputs.p_c, progress=progress)
                inputs.cache[key] = model.tuned_state()
        _tune(model, inputs, settings, 2, masked=False, prompt=inputs.p_s, lam=lam, progress=progress)
    return recipe


def _two_branch(model, inputs, settings, *, hints=None, injection="concat", inject=True):
    z_t = ddim_invert(model, inputs.latents, inputs.p_s, inputs.source_hints,
                      num_steps=settings.ddim_steps, context=settings.sampling_context)
    cfg = SamplerConfig(num_steps=settings.ddim_steps, kv_injection=injection,
                        inject_start=0.0 if inject else 1.0, inject_end=1.0)
    ref = inputs.reference_hints if hints is None else hints
    return two_branch_sample(model, z_t, inputs.p_s, inputs.p_t, inputs.source_hints, ref, cfg,
                             context=settings.sampling_context).edited


def _single_branch(model, inputs, settings):
    z_t = ddim_invert(model, inputs.latents, inputs.p_s, inputs.source_hints,
                      num_steps=settings.ddim_steps, context=settings.sampling_context)
    return ddim_sample(model, z_t, inputs.p_t, inputs.reference_hints,
                      num_steps=settings.ddim_steps, context=settings.sampling_context)


# ----------------------------------------------------------------------------- beyond the paper
@dataclass(frozen=True)
class Enhancements:
    """The options beyond the paper (``motion_core/method/keep_background.py``), as the shipped
    workflows set them. ``grow`` / ``feather`` in latent pixels (the world's image pixels)."""

    keep_background: bool = True
    ghost_fill: str = "other_frames"
    renoise_ghost: bool = False  # measured: no gain (README, "Beyond the paper")
    grow: int = 0
    feather: int = 0  # measured: 1 (the earlier default) leaves a soft ring the metric counts as background
    target_mask: str = "fitted"  # "keypoints": rough (about twice the person); "fitted": size fitted to the source mask
    fit_scale: float = 1.0  # "fitted": the fitted size times this
    mask_split_kv: bool = False  # first version: the source person's ghost tokens kept out of the injected K/V
    ghost_guidance: float = 0.0  # first version: away from the reconstruction's prediction on the ghost pixels left
    control_boost: float = 1.0  # first version: editing branch's ControlNet x this while step / steps < control_boost_until
    control_boost_until: float = 0.0


ENHANCED = Enhancements()


def keeper_for(inputs: CaseInputs, trajectory: torch.Tensor, enh: Enhancements, seed: int = 0
               ) -> BackgroundKeeper | None:
    """The keeper the nodes build from the source person mask and the aligned reference keypoints.
    Without ``keep_background`` only the re-noising of the ghost (which needs no blending) remains."""
    if not (enh.keep_background or enh.renoise_ghost):
        return None
    target = inputs.fitted_target_person(enh.fit_scale) if enh.target_mask == "fitted" else inputs.target_person
    keeper = make_keeper(trajectory, inputs.source_person, target, grow=enh.grow,
                         feather_radius=enh.feather, ghost_fill=enh.ghost_fill if enh.keep_background else "none",
                         renoise_ghost=enh.renoise_ghost, seed=seed)
    if not enh.keep_background:  # the plain sampler (region everywhere), started from the re-noised z_T
        keeper = BackgroundKeeper(trajectory, torch.ones_like(keeper.region), None, keeper.renoise, seed)
    return keeper


def _invert(model, inputs, settings):
    return ddim_invert_trajectory(model, inputs.latents, inputs.p_s, inputs.source_hints,
                      num_steps=settings.ddim_steps, context=settings.sampling_context)


def run_eym_v1_enhanced(models, inputs, settings, progress=None, enh: Enhancements = ENHANCED):
    """The first version (same tuned weights as ``eym_v1``) sampled with the options beyond the paper."""
    model = _tuned(models, inputs, settings, "v1_rc", "rc", _v1_full(inputs, settings, "rc"), progress)
    z_t, traj = _invert(model, inputs, settings)
    cfg = SamplerConfig(num_steps=settings.ddim_steps, ghost_guidance=enh.ghost_guidance if enh.keep_background else 0.0,
                        mask_split_kv=enh.mask_split_kv and enh.keep_background,
                        control_boost=enh.control_boost, control_boost_until=enh.control_boost_until)
    return two_branch_sample(model, z_t, inputs.p_s, inputs.p_t, inputs.source_hints, inputs.reference_hints, cfg,
                             keep=keeper_for(inputs, traj, enh, settings.seed), context=settings.sampling_context).edited


def run_eym_v2_enhanced(models, inputs, settings, progress=None, enh: Enhancements = ENHANCED):
    """The later version (same tuned weights as ``eym_v2``) sampled with the options beyond the paper."""
    from ..method.single_branch import single_branch_sample

    model = _tuned_v2(models, inputs, settings, "eym_v2", progress)
    z_t, traj = _invert(model, inputs, settings)
    return single_branch_sample(model, z_t, inputs.p_t, inputs.reference_hints, num_steps=settings.ddim_steps,
                                keep=keeper_for(inputs, traj, enh, settings.seed), context=settings.sampling_context)


def run_eym_v1(models, inputs, settings, progress=None, mode="rc", **sample):
    model = _tuned(models, inputs, settings, f"v1_{mode}", mode, _v1_full(inputs, settings, mode), progress)
    return _two_branch(model, inputs, settings, **sample)


def _tuned_v2(models, inputs, settings, variant, progress=None):
    from ..method.eym_v2 import get_variant, tune_v2

    v = get_variant(variant)
    model = models.motion_model(v.attention_mode, method="eym_v2", motion_attention=v.motion_attention)
    key = f"v2_{variant}"
    if key in inputs.cache:
        model.load_tuned_state(inputs.cache[key])
    else:
        cfg = TuneConfig(learning_rate=settings.learning_rate, seed=settings.seed, gradient_checkpointing=False,
                         context=settings.context, optimizer=settings.optimizer)
        tune_v2(model, inputs.latents, inputs.masked_latents, inputs.source_hints, inputs.p_s, variant, cfg,
                stage_steps=(settings.stage_steps, settings.stage_steps),
                callback=None if progress is None else (lambda k, total, loss: progress()))
        inputs.cache[key] = model.tuned_state()
    return model


def run_eym_v2(models, inputs, settings, progress=None, variant="eym_v2"):
    """The later version (STL tuning, then inversion and ONE branch with P_t and the aligned reference
    skeletons, no K/V injection) or one of its Table IV ablations, as ``method.eym_v2`` defines them."""
    from ..method.single_branch import single_branch_sample

    model = _tuned_v2(models, inputs, settings, variant, progress)
    z_t = ddim_invert(model, inputs.latents, inputs.p_s, inputs.source_hints,
                      num_steps=settings.ddim_steps, context=settings.sampling_context)
    return single_branch_sample(model, z_t, inputs.p_t, inputs.reference_hints,
                      num_steps=settings.ddim_steps, context=settings.sampling_context)


#: each option beyond the paper -> the Enhancements without it (its ablation row)
#: (``eym_v1_enhanced_without_keep_background`` is ``eym_v1`` exactly: ghost filling works through
#: the blending, and the shipped settings do not re-noise.)
ENHANCEMENT_OPTIONS = {
    "keep_background": dataclasses.replace(ENHANCED, keep_background=False),
    "ghost_fill": dataclasses.replace(ENHANCED, ghost_fill="none"),
    "fitted_mask": dataclasses.replace(ENHANCED, target_mask="keypoints"),
}
#: candidates measured and not shipped, and settings compared
ENHANCEMENT_CANDIDATES = {
    "eym_v1_enhanced_with_region_feather8": dataclasses.replace(ENHANCED, feather=1),
    "eym_v1_enhanced_rough_region": dataclasses.replace(ENHANCED, target_mask="keypoints", feather=1),  # the earlier default
    "eym_v1_enhanced_with_renoise_ghost": dataclasses.replace(ENHANCED, renoise_ghost=True),
    "eym_v1_enhanced_grow1": dataclasses.replace(ENHANCED, grow=1),
    "eym_v1_enhanced_fit_scale1.3": dataclasses.replace(ENHANCED, fit_scale=1.3),
    "eym_v1_enhanced_with_mask_split_kv": dataclasses.replace(ENHANCED, mask_split_kv=True),
    "eym_v1_enhanced_with_ghost_guidance3": dataclasses.replace(ENHANCED, ghost_guidance=3.0),
    "eym_v1_enhanced_with_control_boost2": dataclasses.replace(ENHANCED, control_boost=2.0, control_boost_until=0.5),
}


def enhanced_with(enh: Enhancements):
    return lambda m, i, s, p: run_eym_v1_enhanced(m, i, s, p, enh)


def _method_table() -> dict[str, tuple[int, Callable]]:
    """name -> (tuning stage-runs it may need, runner(models, inputs, settings, progress) -> edited latents)."""

    def v1(**kw):
        return lambda m, i, s, p: run_eym_v1(m, i, s, p, **kw)

    def without_stage1(m, i, s, p):
        model = _tuned(m, i, s, "v1_no_s1", "rc", _v1_full(i, s, "rc", stage1=False), p)
        return _two_branch(model, i, s)

    def without_stage2(m, i, s, p):
        model = _tuned(m, i, s, "v1_s1_rc", "rc", _v1_stage1(i, s, "rc"), p)
        return _two_branch(model, i, s)

    def without_noise_constraint(m, i, s, p):
        model = _tuned(m, i, s, "v1_lam1", "rc", _v1_full(i, s, "rc", lam=1.0), p)
        return _two_branch(model, i, s)

    def controlnet_only(m, i, s, p):
        model = m.motion_model("rc")
        gen = torch.Generator().manual_seed(s.seed)
        noise = torch.randn(i.latents.shape, generator=gen)
        return ddim_sample(model, noise, i.p_t, i.reference_hints, num_steps=s.ddim_steps,
                           guidance=s.baseline_guidance, uncond_embeddings=i.uncond, context=s.sampling_context)

    def no_tuning(m, i, s, p):
        return _single_branch(m.motion_model("rc"), i, s)

    def tune_a_video(m, i, s, p):
        def recipe(model, progress):
            names = model.trainable_parameter_names()
            _tune(model, i, s, 1, masked=False, prompt=i.p_s, shuffle="none", names=names, progress=progress)
        model = _tuned(m, i, s, "tav", "sparse_causal", recipe, p)
        return _single_branch(model, i, s)

    return {
        "eym_v1": (2, v1()),
        "controlnet_only": (0, controlnet_only),
        "no_tuning": (0, no_tuning),
        "tune_a_video": (1, tune_a_video),
        "eym_v1_without_stage1": (1, without_stage1),
        "eym_v1_without_stage2": (1, without_stage2),
        "eym_v1_without_noise_constraint": (2, without_noise_constraint),
        "eym_v1_without_kv_injection": (2, v1(inject=False)),
        "eym_v1_balanced": (2, v1(injection="balanced")),
        "eym_v1_without_alignment": (2, lambda m, i, s, p: run_eym_v1(m, i, s, p, hints=i.unaligned_hints)),
        "eym_v1_self": (2, v1(mode="self")),
        "eym_v1_sparse_causal": (2, v1(mode="sparse_causal")),
        "eym_v1_bidirectional": (2, v1(mode="bidirectional")),
        "eym_v2": (2, lambda m, i, s, p: run_eym_v2(m, i, s, p)),
        "eym_v2_without_rca": (2, lambda m, i, s, p: run_eym_v2(m, i, s, p, "eym_v2_without_rca")),
        "eym_v2_without_ma": (2, lambda m, i, s, p: run_eym_v2(m, i, s, p, "eym_v2_without_ma")),
        "eym_v2_without_stl": (2, lambda m, i, s, p: run_eym_v2(m, i, s, p, "eym_v2_without_stl")),
        # beyond the paper: the same tuned weights, sampled with the shipped workflows' options
        "eym_v1_enhanced": (2, run_eym_v1_enhanced),
        "eym_v2_enhanced": (2, run_eym_v2_enhanced),
        **{f"eym_v1_enhanced_without_{name}": (2, enhanced_with(e)) for name, e in ENHANCEMENT_OPTIONS.items()},
        **{name: (2, enhanced_with(e)) for name, e in ENHANCEMENT_CANDIDATES.items()},
    }


METHODS = _method_table()
