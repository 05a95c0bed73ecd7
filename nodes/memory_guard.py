"""Before a node's first step: the device memory its job needs, room made for it through ComfyUI,
and a clear error when it still cannot fit.

The need comes from the engine's estimate (:mod:`motion_core.apps.memory`): the pack's own code
run on data-less tensors shaped like the user's models, for this node's phase, frame count, size
and levers. It costs a few seconds for SD1.5 shapes and is cached per job shape, so re-running a
node with new prompts or seeds costs nothing.
"""

from __future__ import annotations

import functools
import json
import logging

import torch

from ..motion_core.apps import memory
from ..motion_core.errors import InputError
from ..motion_core.method.windows import frames_per_call
from . import comfy_bridge as bridge

log = logging.getLogger("edit_your_motion")

#: Share of the live-tensor peak added for kernel workspaces and fragmentation when checking a fit
#: (the low end of the estimate's band: a job is refused only when it clearly cannot fit).
MARGIN = memory.OVERHEAD[0]


def _config_key(config) -> str:
    return json.dumps(dict(config), sort_keys=True, default=str)


@functools.lru_cache(maxsize=128)
def _estimate(phase: str, job: memory.Job, unet_key: str, controlnet_key: str | None, motion_attention: bool,
              attention_mode: str) -> memory.PhaseEstimate:
    unet_config = json.loads(unet_key)
    controlnet_config = json.loads(controlnet_key) if controlnet_key is not None else None
    return memory.estimate(job, (phase,), unet_config, controlnet_config, motion_attention, attention_mode)[phase]


def estimate_for(handle, phase: str, latents: torch.Tensor, device: torch.device, **levers) -> memory.PhaseEstimate:
    """The estimate of ``phase`` for the handle's models at the size of ``latents`` (n, 4, h, w)."""
    model = handle.engine.model
    n, _, h, w = latents.shape
    job = memory.Job(method=model.method, frames=int(n), resolution=int(h) * 8, width=int(w) * 8,
                     weight_dtype=handle.engine.weight_dtype, block=memory.CUDA_BLOCK if device.type == "cuda" else 1,
                     **levers)
    cn = model.controlnet
    return _estimate(phase, job, _config_key(model.unet.config), None if cn is None else _config_key(cn.config),
                     model.motion_attention is not None, handle.attention_mode)


def _needed(est: memory.PhaseEstimate, device: torch.device, model) -> int:
    """Bytes the phase needs free on ``device``: its peak with the margin, less the weights already
    there (ComfyUI keeps the engine off the GPU between nodes; on the CPU the weights stay put)."""
    on_device = model.device == device or device.type == "cpu"
    base = est.peak_bytes - (est.weights_bytes if on_device else 0)
    return int(base * (1 + MARGIN))


TUNING_LEVERS = {
    "gradient_checkpointing on": dict(gradient_checkpointing=True),
    "controlnet_offload on": dict(controlnet_offload=True),
    "optimizer adamw8bit (needs bitsandbytes)": dict(optimizer="adamw8bit"),
    "activation_offload on": dict(activation_offload=True),
    "optimizer adamw8bit + activation_offload on": dict(optimizer="adamw8bit", activation_offload=True),
}


def ensure_fits(node: str, handle, phase: str, latents: torch.Tensor, guidance: float = 1.0, context=None,
                **levers) -> int:
    """Make room for ``phase`` on the compute device and return the bytes it needs beyond the
    weights (for ``memory_required`` when loading); raise InputError at once when it cannot fit.
    ``context`` (long clips): a step then holds one model call's frames (a tuning window, or the largest
    window batch of inversion and sampling), so the estimate is for those, and the message speaks of
    the context window rather than the clip. ``controlnet_offload="auto"`` (tuning): see
    :func:`ensure_tuning_fits`, which also says what was chosen.

    Nothing has changed when it raises: the engine was not loaded, no weight written, no file made.
    """
    return _fit(node, handle, phase, latents, guidance, context, levers)[0]


def ensure_tuning_fits(node: str, handle, phase: str, latents: torch.Tensor, context=None, **levers) -> dict:
    """:func:`ensure_fits` for a tuning stage; returns the levers to tune with. ``controlnet_offload``
    ``"auto"`` becomes True or False: the job is first estimated with the ControlNet on the device; when
    that does not fit in the free memory and the job with the ControlNet offloaded does, the offload is
    turned on (and logged) instead of refusing. On the CPU (the host is the device) auto is off."""
    return _fit(node, handle, phase, latents, 1.0, context, levers)[1]


def _fit(node, handle, phase, latents, guidance, context, levers) -> tuple[int, dict]:
    levers = dict(levers)
    auto = levers.get("controlnet_offload") == "auto"
    if auto:
        levers["controlnet_offload"] = False
    windowed = context is not None
    if windowed:
        latents = latents[: frames_per_call(latents.shape[0], context, handle.attention_mode,
                                            tuning=phase in ("stage1", "stage2"))]
    device = bridge.torch_device()
    model = handle.engine.model
    est = estimate_for(handle, phase, latents, device, guidance=guidance, **levers)
    needed = _needed(est, device, model)
    free = bridge.free_memory(needed, device)
    activations = int((est.peak_bytes - est.weights_bytes) * (1 + MARGIN))
    if free is None or free >= needed:
        log.info("%s: estimated peak %.2f GB on %s (%.2f GB needed free, %.2f GB free)", node, est.peak_gb, device,
                 needed / memory.GB, (free or 0) / memory.GB)
        return activations, levers
    if auto and device.type != "cpu" and model.controlnet is not None:
        # controlnet_offload auto: the ControlNet's weights on the host, when that makes the job fit
        levers["controlnet_offload"] = True
        other = estimate_for(handle, phase, latents, device, guidance=guidance, **levers)
        other_needed = _needed(other, device, model)
        if other_needed <= free:
            log.info("%s: turned on ControlNet offload (controlnet_offload auto): the job needs %.2f GB free with the "
                     "ControlNet on %s, %.2f GB without it, and %.2f GB are free; each step copies the ControlNet's "
                     "weights to the device", node, needed / memory.GB, device, other_needed / memory.GB,
                     free / memory.GB)
            return int((other.peak_bytes - other.weights_bytes) * (1 + MARGIN)), levers
        est, needed = other, other_needed  # the refusal speaks of the job as auto would run it
    fits = []
    if phase in ("stage1", "stage2"):
        for label, change in TUNING_LEVERS.items():
            if all(levers.get(k) == v for k, v in change.items()):
                continue
            if "controlnet_offload" in change and (device.type == "cpu" or model.controlnet is None):
                continue  # on the CPU the host is the device: nothing leaves it
            other = estimate_for(handle, phase, latents, device, guidance=guidance, **dict(levers, **change))
            if _needed(other, device, model) <= free:
                fits.append(f"{label} ({other.peak_gb:.1f} GB)")
    n = latents.shape[0]
    for frames in sorted({max(1, n * 3 // 4), max(1, n // 2), max(1, n // 4)}, reverse=True):
        if frames >= n:
            continue
        other = estimate_for(handle, phase, latents[:frames], device, guidance=guidance, **levers)
        if _needed(other, device, model) <= free:
            fits.append(f"{'a context window of about ' if windowed else ''}{frames} frames instead of {n} "
                        f"({other.peak_gb:.1f} GB)")
            break
    hint = ("; these would fit: " + ", ".join(fits)) if fits else \
        "; none of the levers alone makes it fit here: use fewer frames or a lower resolution"
    if levers.get("controlnet_offload") and auto:
        hint = " (with the ControlNet offloaded, as controlnet_offload auto would run it)" + hint
    if guidance > 1:
        hint += "; guidance 1 halves the batch"
    h, w = latents.shape[-2] * 8, latents.shape[-1] * 8
    raise InputError(
        f"{node}: not enough memory on {device}. This job ({'one context window of ' if windowed else ''}{n} frames "
        f"at {w}x{h}) needs about "
        f"{needed / memory.GB:.1f} GB free (estimated peak {est.peak_gb:.1f} GB of tensors, weights "
        f"{est.weights_bytes / memory.GB:.1f} GB included), but only {free / memory.GB:.1f} GB are free after "
        f"ComfyUI unloaded what it could{hint}. Nothing was changed: no step ran and no file was written."
    )
