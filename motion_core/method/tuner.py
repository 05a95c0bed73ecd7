"""The tuning loop: one generic loop that runs a stage recipe on a video model.

A :class:`StageRecipe` is a stage as data: which parts of the video model it trains, whether the
frames are shuffled and whether they are background-masked, which prompt it takes and its loss.
Each method's stages are recipes in its own module: the first version's DPL in
:mod:`motion_core.method.dpl`, the later version's STL in :mod:`motion_core.method.stl`;
:mod:`motion_core.method.stages` picks a model's recipe by its method. This module imports no method.

Masking commutes with shuffling and VAE encoding works frame by frame, so a shuffled stage takes the
*encoded* (masked) latents once and permutes latents and poses together at every step: the same as
shuffling the frames, masks and skeletons and encoding them again, without a VAE in the loop.

Randomness (order, timestep, noise) of step ``k`` comes from :func:`~motion_core.seeding.step_generator`
``(seed, k)``, so a stage resumed at ``start_step`` draws what an uninterrupted run would have drawn
(the AdamW moments restart).
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from diffusers import DDPMScheduler

from ..precision import HALF, dtype_of, name_of
from ..errors import InputError, ModelError, check_finite, check_frame_counts, check_latent_size, check_poses, nonfinite_tensors
from ..method.frames import check_permutation, shuffle_permutation
from ..method.windows import tuning_window
from ..seeding import step_generator
from ..video_model.model import MotionModel, to_device

log = logging.getLogger("edit_your_motion")

SHUFFLE_MODES = ("per_step", "fixed", "none")
#: ``adamw``: torch's AdamW (fused on CUDA); ``adamw8bit``: bitsandbytes' 8-bit AdamW (optional library),
#: whose moments take 2 bytes per trained value instead of 8.
OPTIMIZERS = ("adamw", "adamw8bit")
#: Where the copy of the trained tensors kept to undo a failed or cancelled stage lives.
#: What undoes a failed stage: ``host`` (default) and ``device`` keep the tensors the stage started from
#: (on the host / where they are); ``none`` keeps nothing, for a caller that puts the model back itself
#: (the nodes' engine does, from the untuned tensors and the handle's state): a failed stage then leaves
#: the trained tensors as they were when it stopped.
ROLLBACKS = ("host", "device", "none")
BNB_INSTALL = "pip install bitsandbytes"

#: ``callback(step, total_steps, loss)`` after every optimizer step; raise inside it to cancel.
#: ``loss`` is that of the previous step (None at the first): reading the current one would make
#: the host wait for the GPU at every step.
StepCallback = Callable[[int, int, float], None]


@dataclass
class TuneConfig:
    steps: int = 300
    learning_rate: float = 3e-5
    seed: int = 0
    precision: str = "fp32"
    gradient_checkpointing: bool = True
    lam: float = 0.9
    shuffle: str = "per_step"
    control_scale: float = 1.0
    weight_decay: float = 1e-2
    max_grad_norm: float = 1.0
    start_step: int = 0
    optimizer: str = "adamw"
    rollback: str = "host"
    activation_offload: bool = False
    #: Keep the frozen ControlNet's weights on the host during the stage; each step copies them to the
    #: device for the ControlNet's forward only and drops the copies before the UNet runs
    #: (:meth:`~motion_core.video_model.model.MotionModel.controlnet_on_host`). Same results.
    controlnet_offload: bool = False
    #: Long clips (beyond the paper): a :class:`~motion_core.method.windows.ContextOptions`; each step
    #: then sees ``context.length`` frames of the clip (see :func:`~motion_core.method.windows.tuning_window`).
    #: None, or a window at least the clip's length: every step sees the whole clip.
    context: object = None

    def validate(self) -> None:
        if self.steps < 1:
            raise InputError(f"steps must be >= 1; got {self.steps}")
        if not self.learning_rate > 0:
            raise InputError(f"learning_rate must be > 0; got {self.learning_rate}")
        dtype_of(self.precision)
        if not 0.0 <= self.lam <= 1.0:
            raise InputError(f"lambda (lam) must be in [0, 1]; got {self.lam}")
        if self.shuffle not in SHUFFLE_MODES:
            raise InputError(f"shuffle must be one of {', '.join(SHUFFLE_MODES)}; got {self.shuffle!r}")
        if self.start_step < 0:
            raise InputError(f"start_step must be >= 0; got {self.start_step}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.rollback not in ROLLBACKS:
            raise InputError(f"rollback must be one of {', '.join(ROLLBACKS)}; got {self.rollback!r}")
        if self.context is not None:
            self.context.validate()
        if self.optimizer == "adamw8bit":
            bitsandbytes_adamw8bit()  # says what to install before any work is done


#: ``loss(pred, noise, config)``: the stage's training loss from the noise prediction ``pred`` and
#: the true noise, both ``(n, 4, h, w)`` with the frames in the order the model saw them.
StageLoss = Callable[[torch.Tensor, torch.Tensor, "TuneConfig"], torch.Tensor]


@dataclass(frozen=True)
class StageRecipe:
    """One tuning stage of a method, as data.

    ``parts`` name :meth:`MotionModel.part_parameter_names` entries (``attn1``, ``temporal``,
    ``motion_attention``); ``shuffle``: the frames are shown in a random order (``TuneConfig.shuffle``
    says how), else in their order; ``masked``: the stage learns from background-masked frames (the
    caller passes their latents); ``prompt``: ``content`` (``P_c``) or ``source`` (``P_s``).
    """

    method: str
    stage: int
    name: str
    parts: tuple[str, ...]
    shuffle: bool
    masked: bool
    prompt: str
    loss: StageLoss

    def parameter_names(self, model: MotionModel) -> list[str]:
        parts = model.part_parameter_names()
        return [n for part in self.parts for n in parts[part]]


@dataclass
class StageResult:
    stage: int
    steps: int
    losses: list[float] = field(default_factory=list)
    state: dict[str, torch.Tensor] = field(default_factory=dict)


def reconstruction_loss(pred: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``L_rec = ||eps - eps_theta||^2`` as a mean over elements."""
    return F.mse_loss(pred.float(), noise.float())


def plain_loss(pred: torch.Tensor, noise: torch.Tensor, config: TuneConfig) -> torch.Tensor:
    """A recipe's loss that is ``L_rec`` alone."""
    return reconstruction_loss(pred, noise)


def bitsandbytes_adamw8bit():
    """bitsandbytes' ``AdamW8bit`` class, or an InputError that says how to install it."""
    try:
        import bitsandbytes as bnb  # optional: only the adamw8bit optimizer needs it
    except ImportError as exc:
        raise InputError(
            f"optimizer adamw8bit needs the bitsandbytes library, which is not installed ({exc}); install it into "
            f"ComfyUI's Python with `{BNB_INSTALL}`, or choose optimizer adamw"
        ) from None
    return bnb.optim.AdamW8bit


def make_optimizer(params: list[torch.Tensor], config: TuneConfig, device: torch.device) -> torch.optim.Optimizer:
    """The stage's optimizer: torch's AdamW (fused on CUDA) or bitsandbytes' 8-bit AdamW, with the
    config's learning rate and weight decay and AdamW's default betas and epsilon."""
    if config.optimizer == "adamw8bit":
        return bitsandbytes_adamw8bit()(params, lr=config.learning_rate, weight_decay=config.weight_decay)
    return torch.optim.AdamW(params, lr=config.learning_rate, weight_decay=config.weight_decay,
                             fused=device.type == "cuda")


@contextmanager
def _training_mode(model: MotionModel, names: list[str], config: TuneConfig):
    """Unfreeze ``names`` (as float32 master tensors), set precision and checkpointing; undo after.

    On any exception (including cancellation from the callback) the trained tensors are put back
    as they were, so nothing is left half-trained.
    """
    params = dict(model.unet.named_parameters())
    trained = [params[n] for n in names]
    # What undoes a failed stage. The stage trains fresh copies (below) and never writes into the tensors
    # the parameters held, so those stay as they were and are kept as they are (no copy), where they
    # already are on the host or with rollback "device"; from a GPU with rollback "host" (the default),
    # a host copy is kept and the device memory freed (it is read only on failure). Writing nothing in
    # place also keeps every state sharing those tensors intact (the untuned ones, a handle's, ComfyUI's).
    # With rollback "none" nothing is kept: the tensors the parameters held are dropped when the stage
    # replaces them (and freed, unless a state or ComfyUI holds them).
    host = torch.device("cpu")
    before = {n: (params[n].detach().to(host, copy=True)
                  if config.rollback == "host" and params[n].device.type != "cpu" else params[n].detach())
              for n in names} if config.rollback != "none" else {}
    dtypes = {n: params[n].dtype for n in names}
    compute = dtype_of(config.precision)
    training = set(names)
    frozen_half = any(p.dtype in HALF for n, p in params.items() if n not in training)
    if compute == torch.float32 and frozen_half:
        raise InputError("precision fp32 needs the model's weights in float32; choose bf16 or fp16, or load the model in fp32")
    storage = model.storage_dtype
    if storage != torch.float32 and compute != storage and model.device.type == "cpu":
        # CPU kernels (group norm) cannot mix bf16 activations with fp16 weights; CUDA autocast can
        name = name_of(storage)
        raise InputError(f"precision {config.precision} does not match the model's {name} weights; choose precision "
                         f"{name} (auto does), or load the model with another weight_dtype")
    if compute == torch.float16 and model.device.type == "cpu":
        raise InputError("precision fp16 is for GPUs; on the CPU use bf16 or fp32")
    old_compute, old_ckpt = model.compute_dtype, model.unet.is_gradient_checkpointing
    for n, p in zip(names, trained):
        # fresh float32 storage to train (from the float32 master where one stands for a half-precision value)
        p.data = model.master(n, p).detach().to(device=p.device, dtype=torch.float32, copy=True)
        p.requires_grad_(True)
    model.compute_dtype = compute
    if config.gradient_checkpointing:
        model.unet.enable_gradient_checkpointing()
    model.unet.train()
    ok = False
    try:
        yield trained
        ok = True
    finally:
        for n, p in zip(names, trained):
            p.requires_grad_(False)
            p.grad = None
            if not ok and n in before:
                p.data = before[n].to(p.device)
            if p.dtype != dtypes[n]:  # back to the storage dtype (the state was read before, in float32)
                p.data = p.data.to(dtypes[n])
        model.compute_dtype = old_compute
        if not old_ckpt:
            model.unet.disable_gradient_checkpointing()
        model.unet.eval()


def tune(model: MotionModel, recipe: StageRecipe, latents: torch.Tensor, text_embeddings: torch.Tensor,
         poses: torch.Tensor | None, config: TuneConfig | None = None, callback: StepCallback | None = None,
         permutation: torch.Tensor | None = None, parameters: list[str] | None = None) -> StageResult:
    """Run ``recipe`` on ``model`` in place and return the losses and the trained tensors.

    ``latents``: scaled VAE latents ``(n, 4, h, w)`` in their original order (of the
    background-masked frames where ``recipe.masked``); ``text_embeddings``: ``(1, tokens, dim)`` of
    the recipe's prompt; ``poses``: ControlNet hints ``(n, 3, 8h, 8w)`` of the source skeletons, or
    None to tune without ControlNet; ``permutation`` (a shuffled recipe only): a fixed frame order,
    used with ``shuffle`` ``fixed`` or ``per_step`` (it replaces the per-step orders) and refused
    with ``none``; without it, ``fixed`` uses a seeded order; ``parameters``: UNet parameter names
    to train instead of the recipe's (e.g. every trainable tensor at once, for the later version's
    "without STL" ablation). ``config.context`` (long clips): each step trains on a window of the
    clip (:func:`~motion_core.method.windows.tuning_window`); a window at least the clip's length
    changes nothing.
    """
    config = config or TuneConfig()
    config.validate()
    if model.method != recipe.method:
        raise InputError(
            f"{recipe.name} tunes a video model built for {recipe.method}; this one is built for {model.method}. "
            f"Load the video model with method {recipe.method}, or tune it with {model.method}'s own stages"
        )
    stage = recipe.stage
    check_latent_size("latents", latents, model.unet.config.in_channels)
    n = check_frame_counts(latents=latents, poses=poses)
    check_poses("poses", poses, latents, model.controlnet is not None)
    if text_embeddings.ndim != 3 or text_embeddings.shape[0] != 1:
        raise InputError(f"text_embeddings must be one prompt, shaped (1, tokens, dim); got {tuple(text_embeddings.shape)}")
    if text_embeddings.shape[-1] != model.unet.config.cross_attention_dim:
        raise InputError(
            f"the prompt embedding has width {text_embeddings.shape[-1]} but the UNet expects "
            f"{model.unet.config.cross_attention_dim}; encode the prompt with the checkpoint's own CLIP"
        )
    for name, value in (("latents", latents), ("poses", poses), ("text_embeddings", text_embeddings)):
        check_finite(name, value)
    shuffle = config.shuffle if recipe.shuffle else "none"
    if permutation is not None:  # a given order always means that fixed order (README)
        if not recipe.shuffle:
            raise InputError(f"a permutation applies to shuffled stages only (the first version's stage 1 only); "
                             f"{recipe.name} trains on the frames in their original order")
        if shuffle == "none":
            raise InputError("shuffle is 'none' (original order) but a permutation was given: disconnect the "
                             "permutation, or set shuffle to 'fixed' to train on its order")
        permutation = torch.as_tensor(permutation)
        check_permutation(permutation, n)
        if shuffle == "per_step":
            log.info("stage 1: a permutation was given, so the frames keep that fixed order instead of a fresh one per step")
            shuffle = "fixed"
    if shuffle == "fixed":
        permutation = permutation if permutation is not None else shuffle_permutation(n, config.seed)
        check_permutation(permutation, n)

    window = n if config.context is None else config.context.window(n)
    device = model.device
    names = list(parameters) if parameters is not None else recipe.parameter_names(model)
    if not names or not set(names) <= set(model.trainable_parameter_names()):
        raise InputError("parameters must name tensors the video model can tune (see trainable_parameter_names)")
    result = StageResult(stage, config.steps)

    with torch.inference_mode(False), torch.enable_grad():
        # Inputs and model storage may come from inference mode (ComfyUI runs nodes in it);
        # tensors saved for backward must not be inference tensors.
        _normalise_storage(model)
        latents = latents.to(device, torch.float32).clone()
        poses = None if poses is None else poses.to(device, torch.float32).clone()
        text_embeddings = text_embeddings.to(device, torch.float32).clone()
        if permutation is not None:
            permutation = permutation.clone()
        plan = model.plan(window)
        scheduler = DDPMScheduler.from_config(model.scheduler_config)
        # Lever controlnet_offload: the ControlNet leaves the device before the stage allocates anything
        # and comes back once the stage's tensors are gone.
        with model.controlnet_on_host() if config.controlnet_offload else nullcontext():
            result = _train(model, recipe, names, latents, text_embeddings, poses, config, callback, shuffle,
                            permutation, plan, scheduler, result, window)
    model.keep_masters(result.state)  # a later stage or a resumed run starts from them
    return result


def _normalise_storage(model: MotionModel) -> None:
    """Replace inference tensors among the model's parameters and buffers (a model built or loaded
    under ``torch.inference_mode()``, as ComfyUI runs nodes) by ordinary copies; call it outside
    inference mode. A parameter object made in inference mode stays an inference tensor even when
    its ``.data`` is swapped, so the object itself is replaced (no optimizer holds it yet)."""
    for module in model.modules():
        for name, t in list(module._parameters.items()):
            if t is not None and t.is_inference():
                module._parameters[name] = nn.Parameter(t.detach().clone(), requires_grad=t.requires_grad)
        for name, t in list(module._buffers.items()):
            if t is not None and t.is_inference():
                module._buffers[name] = t.clone()


def _train(model, recipe, names, latents, text_embeddings, poses, config, callback, shuffle, permutation, plan,
           scheduler, result, window=None) -> StageResult:
    device = model.device
    clip = latents.shape[0]
    n = clip if window is None else window  # frames per step
    stage = recipe.stage
    with _training_mode(model, names, config) as trained:
        optimizer = make_optimizer(trained, config, device)
        offload = (torch.autograd.graph.save_on_cpu(pin_memory=device.type == "cuda") if config.activation_offload
                   else nullcontext())
        scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
        pending = None
        for k in range(config.start_step, config.start_step + config.steps):
            gen = step_generator(config.seed, k)
            # Randomness is drawn on the host (same results on every device) and copied without
            # making the host wait for the GPU.
            if n < clip:  # a window of the clip (long clips): its frames, in the order the model sees them
                order = tuning_window(clip, n, k, config.seed, shuffle != "none",
                                      permutation if shuffle == "fixed" else None)
            else:
                order = torch.randperm(n, generator=gen) if shuffle == "per_step" else permutation
            z0 = latents
            step_poses, pose_order = poses, order
            if order is not None:
                order = to_device(order, device)
                z0 = z0.index_select(0, order)
                pose_order = order
                if n < clip and poses is not None:  # a window: the ControlNet embeds the window's poses only
                    step_poses, pose_order = poses.index_select(0, order), None
            t = torch.randint(0, scheduler.config.num_train_timesteps, (1,), generator=gen)
            noise = to_device(torch.randn(z0.shape, generator=gen), device)
            t = to_device(t, device).expand(n)
            zt = scheduler.add_noise(z0, noise, t)
            with offload:  # activations saved for backward go to the host (lever activation_offload)
                pred = model.predict(zt, t, text_embeddings, n, poses=step_poses, pose_order=pose_order,
                                     control_scale=config.control_scale, plan=plan)
            loss = recipe.loss(pred, noise, config)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            if config.max_grad_norm > 0:
                torch.nn.utils.clip_grad_norm_(trained, config.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            # The gradients are spent: freed here, not at the next backward, so the next step's forward
            # (the ControlNet's included) runs without them.
            optimizer.zero_grad(set_to_none=True)
            # Read the previous step's loss while this step runs: no per-step wait on the GPU.
            value = float(pending) if pending is not None else None
            if value is not None:
                _check_loss(model, stage, names, k - config.start_step, value, config)
                result.losses.append(value)
            pending = loss.detach()
            if callback is not None:
                callback(k - config.start_step + 1, config.steps, value)
        _check_loss(model, stage, names, config.steps, float(pending), config)
        result.losses.append(float(pending))
        del optimizer
        # Read while the float32 masters are the parameters, before storage returns to bf16/fp16.
        result.state = model.tuned_state(names=names)
    return result


def _check_loss(model, stage, names, step, value, config) -> None:
    """Stop at the first non-finite loss (read one step late: no per-step wait on the GPU). Raising
    inside the training mode puts the weights back as they were before the stage."""
    if math.isfinite(value):
        return
    trained = set(names)
    broken = nonfinite_tensors((n, p) for n, p in model.named_parameters() if n.removeprefix("unet.") not in trained)
    if broken:
        raise ModelError(
            f"stage {stage}: the loss is {value} because the video model's own weights hold NaN or infinite values "
            f"(e.g. {broken[0]}); the checkpoint or ControlNet is damaged: load it again"
        )
    hint = "; or use precision bf16 instead of fp16" if config.precision == "fp16" else ""
    raise InputError(
        f"stage {stage} diverged: the loss became {value} at step {step}, so tuning stopped and the weights were "
        f"restored to what they were before this stage. The inputs and weights are finite: lower learning_rate "
        f"(now {config.learning_rate:g}){hint}"
    )
