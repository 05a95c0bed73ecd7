"""The ``EYM_MODEL`` value passed between nodes, and conversions from ComfyUI's types.

A :class:`MotionHandle` never changes: tuning returns a new handle holding the new tensors. All
handles made from one *Load Video Model* share one :class:`MotionEngine` (the inflated UNet and the
ControlNet, loaded once); a node writes its handle's tuned tensors and attention mode into the
engine before running it. ComfyUI caches node outputs, so mutating a shared model in place would
make re-runs start from already-tuned weights: this design avoids that.
"""

from __future__ import annotations

import dataclasses
import logging
from contextlib import contextmanager

import torch

from ..motion_core.errors import InputError, check_finite, check_frame_counts
from ..motion_core.precision import dtype_of
from ..motion_core.method.frames import poses_to_condition
from ..motion_core.video_model.model import MotionModel
from . import comfy_bridge as bridge

log = logging.getLogger("edit_your_motion")

MODEL_TYPE = "EYM_MODEL"
PERMUTATION_TYPE = "EYM_PERMUTATION"
CONTEXT_TYPE = "EYM_CONTEXT"
CATEGORY = "Edit-Your-Motion"


class MotionEngine:
    """One inflated UNet + ControlNet, shared by every handle derived from it.

    It keeps no copy of the untuned tensors (#16 §3): RC-Attn's ``attn1`` is kept as the model's own
    tensors from the checkpoint (ComfyUI's memory, where the conversion shares it), which stay as they
    are because trained tensors are replaced, never written in place; the temporal layers and Motion
    Attention start from a seeded initialisation, built afresh when a handle needs them untuned.
    """

    def __init__(self, model: MotionModel, latent_scale: float, weight_dtype: torch.dtype):
        self.model = model
        self.latent_scale = float(latent_scale)
        self.weight_dtype = weight_dtype
        self.managed = bridge.Managed(model)
        parts = model.part_parameter_names()
        refs = model.state_references()
        self.base_state = {n: refs[n] for n in parts["attn1"]}  # the checkpoint's attn1 (no copy)
        self.initialised = [n for part, names in parts.items() if part != "attn1" for n in names]
        self._untuned = set(self.initialised)  # tensors the model holds with their initial values now
        self._applied: tuple | None = None

    def untuned_state(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor as the untuned model holds it (the initial values built afresh)."""
        return {**self.base_state, **self.model.initial_values(self.initialised)}

    def apply(self, handle: "MotionHandle") -> None:
        key = (id(handle.state), handle.attention_mode)
        if self._applied == key:
            return
        state = handle.state or {}
        with torch.inference_mode(False):
            self.model.set_attention_mode(handle.attention_mode)
            self.model.load_tuned_state(self.base_state)
            stale = [n for n in self.initialised if n not in state and n not in self._untuned]
            if stale:
                self.model.load_tuned_state(self.model.initial_values(stale))
            if state:
                self.model.load_tuned_state(state)
        self._untuned = {n for n in self.initialised if n not in state}
        self._applied = key

    def invalidate(self) -> None:
        """The model's trainable tensors may have changed (a stage ran, or failed): the next
        :meth:`apply` puts every one back."""
        self._applied = None
        self._untuned = set()


@dataclasses.dataclass(frozen=True)
class MotionHandle:
    engine: MotionEngine
    state: dict | None = None  # tuned tensors of the stages run (CPU, float32)
    attention_mode: str = "rc"
    stage_steps: tuple = ()  # ((stage, steps), ...)

    def replace(self, **changes) -> "MotionHandle":
        return dataclasses.replace(self, **changes)

    def with_stage(self, stage: int, steps: int, state: dict) -> "MotionHandle":
        merged = dict(self.state or {})
        merged.update(state)
        counts = dict(self.stage_steps)
        counts[stage] = counts.get(stage, 0) + steps
        return self.replace(state=merged, stage_steps=tuple(sorted(counts.items())))

    @property
    def steps(self) -> dict[int, int]:
        return dict(self.stage_steps)


def check_handle(handle, name: str = "model") -> MotionHandle:
    if not isinstance(handle, MotionHandle):
        raise InputError(f"{name} must come from the 'Load Video Model' node (EYM_MODEL); got {type(handle).__name__}")
    return handle


@contextmanager
def activated(handle: MotionHandle, memory_required: int = 0, keep_loaded: bool = False, trains: bool = False):
    """The engine on the compute device with ``handle``'s weights and attention mode.

    Loading happens outside inference mode so that module storage stays trainable. The engine
    leaves the GPU afterwards unless ``keep_loaded``. ``trains``: the caller changes the weights,
    so the engine no longer holds ``handle``'s tensors afterwards.
    """
    engine = handle.engine
    try:
        with torch.inference_mode(False):
            engine.managed.load(memory_required)
        engine.apply(handle)
        yield engine.model
    except BaseException as exc:
        engine.invalidate()
        if bridge.is_oom(exc):
            raise RuntimeError(
                "out of GPU memory. Lower the frame count or resolution, turn on gradient checkpointing, "
                "use bf16/fp16 precision, or close other models."
            ) from exc
        raise
    finally:
        if trains:
            engine.invalidate()
        if not keep_loaded:
            engine.managed.release()
        # what the node freed (a stage's optimizer state and gradients, sampling's activations) goes back
        # to the system instead of staying resident in the heap
        bridge.return_freed_host_memory()


# --------------------------------------------------------------------------- ComfyUI values
def embedding(conditioning, name: str) -> torch.Tensor:
    """``(1, tokens, dim)`` float32 text embedding from a CONDITIONING (first entry)."""
    try:
        cond = conditioning[0][0]
    except (TypeError, IndexError, KeyError):
        raise InputError(f"{name} must be a CONDITIONING from CLIP Text Encode") from None
    if not isinstance(cond, torch.Tensor) or cond.ndim != 3:
        raise InputError(f"{name} must be a CONDITIONING from CLIP Text Encode")
    if len(conditioning) > 1:
        log.warning("%s has %d entries; only the first is used", name, len(conditioning))
    check_finite(name, cond[:1], "check the CLIP Text Encode (and the CLIP model) that made it")
    return cond[:1].float()


def latents_in(latent, scale: float, name: str) -> torch.Tensor:
    """Scaled model-space latents ``(n, 4, h, w)`` from a LATENT (ComfyUI keeps them unscaled)."""
    if not isinstance(latent, dict) or "samples" not in latent:
        raise InputError(f"{name} must be a LATENT (e.g. from VAE Encode)")
    samples = latent["samples"]
    if samples.ndim != 4:
        raise InputError(f"{name} must be a batch of image latents (frames, 4, h, w); got {tuple(samples.shape)}")
    if samples.shape[1] != 4:
        raise InputError(f"{name} has {samples.shape[1]} channels; encode the frames with an SD1.5 VAE")
    check_finite(name, samples, "check the frames and the VAE Encode that made it")
    return samples.float() * scale


def latents_out(latents: torch.Tensor, scale: float, **extra) -> dict:
    out = {"samples": (latents.float() / scale).to(bridge.intermediate_device())}
    out.update(extra)
    return out


def pose_hint(poses: torch.Tensor | None, latents: torch.Tensor, name: str) -> torch.Tensor | None:
    """ControlNet hint ``(n, 3, 8h, 8w)`` from a pose IMAGE batch, checked against the latents."""
    if poses is None:
        return None
    check_frame_counts(**{"latents": latents, name: poses})
    check_finite(name, poses, "check the pose images (the node that rendered or loaded them)")
    return poses_to_condition(poses, latents.shape[-2] * 8, latents.shape[-1] * 8, name)


def device_dtype_choice(choice: str, device: torch.device) -> torch.dtype:
    """Weight storage dtype for ``choice`` in auto/fp32/fp16/bf16."""
    if choice == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if bridge.supports_bf16(device) else torch.float16
        return torch.float32
    if choice == "fp16" and device.type == "cpu":
        raise InputError("weight_dtype fp16 is for GPUs (the CPU cannot tune in fp16); choose bf16, fp32 or auto")
    return dtype_of(choice, "weight_dtype")


def training_precision(choice: str, handle: MotionHandle, device: torch.device) -> str:
    """Autocast precision for tuning: ``auto`` follows the weight storage dtype."""
    if choice != "auto":
        return choice
    wd = handle.engine.weight_dtype
    if wd == torch.float32:
        return "fp32"
    if device.type == "cpu":
        return "bf16"
    return "bf16" if bridge.supports_bf16(device) else "fp16"
