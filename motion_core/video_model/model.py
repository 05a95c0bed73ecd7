"""The video diffusion model: an inflated SD1.5-style diffusers UNet plus a frozen ControlNet.

Frames live on the batch axis. A batch holds ``groups * num_frames`` frames (one group per clip or
branch); the frame count is given on every call.
"""

from __future__ import annotations

import math
import weakref
from contextlib import contextmanager, nullcontext

import torch
from diffusers import ControlNetModel, UNet2DConditionModel
from diffusers.models.attention import BasicTransformerBlock
from diffusers.models.attention_processor import Attention
from diffusers.models.controlnets.controlnet import ControlNetConditioningEmbedding
from torch import nn

from ..video_model.attention import (
    ATTENTION_MODES, SPATIAL_SELF_ATTENTION_KEY, UNET_PARTS, AttentionPlan, FrameAttention, FrameAttnProcessor, FrameContext, TemporalAttention,
)
from ..video_model.motion_attention import MA_KEY, apply_motion_attention_at_skip_joins, attach_motion_attention, check_consumed
from ..errors import InputError, ModelError
from .convert import plain_alias
from .sd15 import SD15_LATENT_SCALE, SD15_SCHEDULER_CONFIG, validate_controlnet, validate_unet

TEMPORAL_KEY = "temporal_attention"

#: The two methods: ``eym_v1`` (ACM MM 2024: DPL tuning, two-branch K/V-injected sampling) and
#: ``eym_v2`` (the later version: Motion Attention, STL tuning, single-branch sampling).
METHODS = ("eym_v1", "eym_v2")
#: The attention mode each method tunes and samples with unless told otherwise.
METHOD_ATTENTION = {"eym_v1": "rc", "eym_v2": "bidirectional"}


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a host tensor to ``device`` without making the host wait for the GPU's queued work
    (pinned memory + non_blocking); a no-op for tensors already there."""
    if x.device == device:
        return x
    if device.type == "cuda" and x.device.type == "cpu":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def match_token_lengths(*embeddings: torch.Tensor) -> list[torch.Tensor]:
    """Repeat each ``(b, tokens, dim)`` prompt embedding to the least common multiple of their token
    counts (as ComfyUI does for long prompts), so they can share one batch. Repeating a whole token
    sequence leaves cross-attention unchanged: every key and value just appears k times."""
    lengths = [e.shape[1] for e in embeddings]
    target = math.lcm(*lengths)
    return [e if e.shape[1] == target else e.repeat(1, target // e.shape[1], 1) for e in embeddings]


def unet_part(name: str) -> str:
    """'down', 'mid' or 'up' for a module name inside the UNet."""
    for part in UNET_PARTS:
        if name.startswith(f"{part}_block"):
            return part
    raise ValueError(f"{name} is in no UNet part")



class _PoseEmbedding(ControlNetConditioningEmbedding):
    """The ControlNet's pose-image embedding, which also passes through an input that is already
    embedded. The embedding depends only on the pose images (not on the timestep or the latents), so
    :class:`MotionModel` computes it once per clip and feeds it in; the weights and their names are
    unchanged (the instance's class is swapped, nothing is wrapped)."""

    def forward(self, conditioning):
        if conditioning.shape[1] == self.conv_in.in_channels:
            return super().forward(conditioning)
        return conditioning


def _temporal_hook(block, args, output):
    return block.temporal_attention(output)


def inflate_unet(unet: UNet2DConditionModel, context: FrameContext) -> UNet2DConditionModel:
    """Turn an image UNet into a video UNet, in place.

    Adds a zero-initialised :class:`TemporalAttention` after the feed-forward of every transformer
    block (as ``<block>.temporal_attention``; base weight names are unchanged) and installs
    :class:`FrameAttnProcessor` on every ``attn1``.
    """
    validate_unet(unet)
    if getattr(unet, "_eym_context", None) is not None:
        raise ModelError("this UNet is inflated already")
    ref = next(unet.parameters())
    for name, block in unet.named_modules():
        if isinstance(block, BasicTransformerBlock):
            attn = block.attn1
            if type(attn) is Attention:
                attn.__class__ = FrameAttention
            temporal = TemporalAttention(attn.query_dim, attn.heads, attn.inner_dim // attn.heads, context,
                                         name=f"{name}.{TEMPORAL_KEY}")
            block.temporal_attention = temporal.to(device=ref.device, dtype=ref.dtype)
            block.register_forward_hook(_temporal_hook)
    processors = {}
    for name, proc in unet.attn_processors.items():
        if name.endswith("attn1.processor") and TEMPORAL_KEY not in name:
            processors[name] = FrameAttnProcessor(context, unet_part(name))
        else:
            processors[name] = proc
    unet.set_attn_processor(processors)
    unet._eym_context = context
    return unet


class MotionModel(nn.Module):
    """Inflated UNet + frozen ControlNet + the SD1.5 noise schedule.

    Build one with :meth:`from_unet`. ``attention_mode`` is one of ``rc`` (default),
    ``bidirectional``, ``sparse_causal``, ``self``. ``method`` (``eym_v1`` or ``eym_v2``) says which
    method's stages may tune it (their recipes, in :mod:`motion_core.method`, name the parts they
    train); an ``eym_v2`` model normally carries Motion Attention (:meth:`add_motion_attention`).
    """

    def __init__(self, unet: UNet2DConditionModel, controlnet: ControlNetModel | None, context: FrameContext,
                 attention_mode: str = "rc", scheduler_config: dict | None = None, latent_scale: float = SD15_LATENT_SCALE,
                 method: str = "eym_v1"):
        super().__init__()
        self.unet = unet
        self.controlnet = controlnet
        self.context = context
        self.scheduler_config = dict(scheduler_config or SD15_SCHEDULER_CONFIG)
        self.latent_scale = float(latent_scale)
        self.attention_mode = attention_mode
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        self.method = method
        self.compute_dtype: torch.dtype | None = None  # None: the weights' storage dtype (see autocast)
        self._masters: dict[str, torch.Tensor] = {}  # float32 values of half-precision trained tensors
        self._plans: dict = {}
        self._pose_cache = None
        self._controlnet_host: dict[str, torch.Tensor] | None = None  # see controlnet_on_host
        self._controlnet_device: torch.device | None = None
        if controlnet is not None and type(controlnet.controlnet_cond_embedding) is ControlNetConditioningEmbedding:
            controlnet.controlnet_cond_embedding.__class__ = _PoseEmbedding
        self.set_attention_mode(attention_mode)

    @classmethod
    def from_unet(cls, unet: UNet2DConditionModel, controlnet: ControlNetModel | None = None,
                  attention_mode: str | None = None, method: str = "eym_v1", motion_attention: bool | None = None,
                  **kwargs) -> "MotionModel":
        """Inflate ``unet`` in place and wrap it with ``controlnet``. All weights start frozen.

        ``attention_mode`` defaults to the method's (``rc`` for eym_v1, ``bidirectional`` for
        eym_v2); ``motion_attention`` (default: True for eym_v2) adds the Motion Attention adapter.
        """
        if method not in METHODS:
            raise InputError(f"method must be one of {', '.join(METHODS)}; got {method!r}")
        if motion_attention is None:
            motion_attention = method == "eym_v2"
        if motion_attention and method != "eym_v2":
            raise InputError("Motion Attention belongs to the later version: use method='eym_v2'")
        validate_unet(unet)
        if controlnet is not None:
            validate_controlnet(controlnet, unet)
        context = FrameContext()
        inflate_unet(unet, context)
        model = cls(unet, controlnet, context, attention_mode or METHOD_ATTENTION[method], method=method, **kwargs)
        if motion_attention:
            model.add_motion_attention()
        model.requires_grad_(False)
        model.eval()
        return model

    def add_motion_attention(self) -> "MotionModel":
        """Add a fresh (identity) Motion Attention adapter on every ControlNet residual of this
        ``eym_v2`` model. See :mod:`motion_core.video_model.motion_attention`."""
        if self.method != "eym_v2":
            raise InputError(f"Motion Attention belongs to the later version, but this video model is built for "
                             f"{self.method}: build it with method='eym_v2'")
        attach_motion_attention(self.unet, self.context)
        return self

    @property
    def motion_attention(self):
        """The Motion Attention adapter, or None (first version, or the ``without MA`` ablation)."""
        return getattr(self.unet, MA_KEY, None)

    # ----------------------------------------------------------------- configuration
    def set_attention_mode(self, mode: str) -> None:
        if mode not in ATTENTION_MODES:
            raise InputError(f"attention_mode must be one of {', '.join(ATTENTION_MODES)}; got {mode!r}")
        self.attention_mode = mode
        self._plans.clear()

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    def plan(self, num_frames: int, num_groups: int = 1, inject: dict[int, int] | None = None,
             injection: str = "concat", frames=None, clip_length: int | None = None) -> AttentionPlan:
        """The attention plan of a batch of ``num_groups`` groups of ``num_frames`` frames (cached).
        ``frames``/``clip_length``: the batch holds these frames of a longer clip (a window); None:
        the whole clip."""
        frames = None if frames is None else tuple(int(f) for f in frames)
        if frames is not None and frames == tuple(range(num_frames)) and clip_length == num_frames:
            frames = clip_length = None  # the whole clip in order: the ordinary plan
        key = (num_frames, num_groups, tuple(sorted((inject or {}).items())), injection, self.device, frames, clip_length)
        plan = self._plans.get(key)
        if plan is None:
            # Built outside inference mode: the cached index tensors then also serve tuning, whose
            # backward saves them (inference tensors cannot be saved for backward).
            with torch.inference_mode(False):
                plan = AttentionPlan(num_frames, self.attention_mode, num_groups, dict(inject or {}), injection,
                                     frames, clip_length)
                plan = self._plans[key] = plan.to(self.device)
        return plan

    @property
    def storage_dtype(self) -> torch.dtype:
        """The frozen weights' storage dtype: half precision when the UNet or the ControlNet is stored
        in it (their input convolutions are never trained), else float32."""
        convs = [self.unet.conv_in] + ([self.controlnet.conv_in] if self.controlnet is not None else [])
        return next((c.weight.dtype for c in convs if c.weight.dtype != torch.float32), torch.float32)

    def autocast(self):
        """Autocast to the compute dtype when it is not float32. Outside tuning the compute dtype is
        the storage dtype, so float32 inputs (latents, poses, prompts) meet bf16/fp16 weights only
        through autocast's casts."""
        dtype = self.compute_dtype or self.storage_dtype
        if dtype == torch.float32:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    # ----------------------------------------------------------------- trainable parts
    def part_parameter_names(self) -> dict[str, list[str]]:
        """UNet parameter names of the trainable parts: ``attn1`` (spatial self-attention
        projections), ``temporal`` (temporal layers), ``motion_attention`` (empty without MA)."""
        names = [n for n, _ in self.unet.named_parameters()]
        return {
            "attn1": [n for n in names if SPATIAL_SELF_ATTENTION_KEY in n and TEMPORAL_KEY not in n],
            "temporal": [n for n in names if f".{TEMPORAL_KEY}." in n],
            MA_KEY: [n for n in names if n.startswith(MA_KEY + ".")],
        }

    def trainable_parameter_names(self) -> list[str]:
        """Every tensor of the trainable parts this model has (RC-Attn's ``attn1``, the temporal
        layers, and Motion Attention where present): what tuning may change and tuned weights hold."""
        return [n for names in self.part_parameter_names().values() for n in names]

    def tuned_state(self, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Copies of every trainable tensor, or of ``names`` (UNet-relative names, float32, CPU); for
        half-precision storage, the float32 masters where they still stand for the stored values."""
        params = dict(self.unet.named_parameters())
        if names is None:
            names = self.trainable_parameter_names()
        return {n: self.master(n, params[n]).detach().float().cpu().clone() for n in names}

    def master(self, name: str, param: torch.Tensor) -> torch.Tensor:
        """The float32 master of a trained parameter stored in half precision, if one was kept (by
        :meth:`load_tuned_state` or tuning) and still rounds to the stored value; else the parameter."""
        m = self._masters.get(name)
        if m is None or param.dtype == torch.float32 or m.shape != param.shape:
            return param
        if not torch.equal(m.to(device=param.device, dtype=param.dtype), param.detach()):
            self._masters.pop(name, None)  # the weights were changed another way since
            return param
        return m

    def keep_masters(self, state: dict[str, torch.Tensor]) -> None:
        """Remember float32 CPU ``state`` values as masters of half-precision trained parameters."""
        params = dict(self.unet.named_parameters())
        for name, value in state.items():
            p = params.get(name)
            if p is not None and p.dtype != torch.float32 and value.dtype == torch.float32:
                self._masters[name] = value.detach().cpu()

    def load_tuned_state(self, state: dict[str, torch.Tensor]) -> None:
        """Put ``state``'s values (from :meth:`tuned_state`, :meth:`state_references` or a file) in the
        UNet, keeping each parameter's dtype and device.

        The parameters take the values' own memory where no conversion is needed, nothing is written
        into the memory they held: trained tensors are replaced, never written in place (tuning trains
        fresh copies, see :func:`~motion_core.method.tuner.tune`), so a state, the untuned tensors and
        the model share memory instead of each holding a copy (#16 §3)."""
        params = dict(self.unet.named_parameters())
        allowed = set(self.trainable_parameter_names())
        unknown = [n for n in state if n not in allowed]
        if unknown:
            raise ModelError(f"tuned weights hold tensors this model does not train, e.g. {unknown[0]}")
        for name, value in state.items():
            if params[name].shape != value.shape:
                raise ModelError(f"tuned tensor {name} has shape {tuple(value.shape)}; the model has {tuple(params[name].shape)}")
        with torch.no_grad(), torch.inference_mode(False):
            for name, value in state.items():
                p = params[name]
                v = value.detach().to(device=p.device, dtype=p.dtype)
                p.data = plain_alias(v) if v.is_inference() else v
        self.keep_masters(state)

    def initial_values(self, names: list[str]) -> dict[str, torch.Tensor]:
        """The values the temporal layers and Motion Attention start from, for ``names`` among their
        tensors, built afresh (float32, on the host) from their seeded initialisation: what a freshly
        built model holds. The untuned tensors need no kept copy (#16 §3). RC-Attn's ``attn1`` comes
        from the checkpoint and has no initial values here."""
        wanted = set(names)
        base = [n for n in wanted if f".{TEMPORAL_KEY}." not in n and not n.startswith(MA_KEY + ".")]
        if base:
            raise ModelError(f"{base[0]} comes from the checkpoint, not from an initialisation")
        out: dict[str, torch.Tensor] = {}
        layers = {n.split(f".{TEMPORAL_KEY}.")[0] + f".{TEMPORAL_KEY}" for n in wanted if f".{TEMPORAL_KEY}." in n}
        for prefix in sorted(layers):
            fresh = self.unet.get_submodule(prefix).fresh(prefix)
            out.update({f"{prefix}.{k}": v for k, v in fresh.named_parameters() if f"{prefix}.{k}" in wanted})
        if any(n.startswith(MA_KEY + ".") for n in wanted):
            fresh = self.motion_attention.fresh(MA_KEY)
            out.update({f"{MA_KEY}.{k}": v for k, v in fresh.named_parameters() if f"{MA_KEY}.{k}" in wanted})
        return {n: v.detach() for n, v in out.items()}

    def state_references(self) -> dict[str, torch.Tensor]:
        """Every trainable tensor itself (no copy), to put back later with :meth:`load_tuned_state`:
        the values stay as they are because trained tensors are replaced, never written in place."""
        params = dict(self.unet.named_parameters())
        return {n: params[n].detach() for n in self.trainable_parameter_names()}

    # ----------------------------------------------------------------- ControlNet offload
    @contextmanager
    def controlnet_on_host(self):
        """Keep the frozen ControlNet's weights in host memory while inside (tuning's
        ``controlnet_offload``): every ControlNet call then runs on device copies of them, made for
        that call (from pinned memory, without making the host wait, on CUDA) and dropped right
        after it, so the UNet's forward and backward run without the ControlNet on the device. The
        results are those of the ControlNet in place (the same ops on the same values). Afterwards
        the ControlNet is back where it was, also after an exception.

        On the CPU the host is the device: the weights stay where they are and each call still runs
        on copies (what a GPU run does, so the estimate can be checked against a CPU run)."""
        cn = self.controlnet
        if cn is None or self._controlnet_host is not None:
            yield
            return
        device = self.device
        moved = {}  # module, kind, name -> the device the tensor came from, its host copy
        host = {}
        try:
            for prefix, module in cn.named_modules():
                for kind in ("_parameters", "_buffers"):
                    for name, t in getattr(module, kind).items():
                        if t is None:
                            continue
                        key = f"{prefix}.{name}" if prefix else name
                        if t.device.type != "cpu":
                            if t.device.type == "cuda":  # pinned: the per-call copies need not wait for the host
                                h = torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t.detach())
                            else:
                                h = t.detach().to("cpu")
                            moved[(module, kind, name)] = t.device, h
                            if kind == "_parameters":
                                t.data = h  # the Parameter object stays (ComfyUI and the model hold it)
                            else:
                                module._buffers[name] = h
                            t = h
                        host[key] = t
            self._controlnet_host = host
            self._controlnet_device = device
            yield
        finally:
            self._controlnet_host = None
            for (module, kind, name), (home, h) in moved.items():
                back = h.to(home, copy=True)  # from the host tensor itself (the estimate counts no alias of it)
                if kind == "_parameters":
                    getattr(module, kind)[name].data = back
                else:
                    module._buffers[name] = back

    def _controlnet_call(self, module: nn.Module, prefix: str, *args, **kwargs):
        """``module(*args, **kwargs)`` for the ControlNet or its part ``prefix`` (``""``: the whole
        ControlNet): in place, or inside :meth:`controlnet_on_host` on device copies of its weights
        that live only for this call."""
        host = self._controlnet_host
        if host is None:
            return module(*args, **kwargs)
        device = self._controlnet_device
        start = f"{prefix}." if prefix else ""
        copies = {k[len(start):]: t.to(device, non_blocking=device.type == "cuda", copy=True)
                  for k, t in host.items() if k.startswith(start)}
        out = torch.func.functional_call(module, copies, args, kwargs, strict=True)
        del copies
        return out

    # ----------------------------------------------------------------- forward
    def pose_embedding(self, poses: torch.Tensor) -> torch.Tensor:
        """The ControlNet's embedding of ``poses`` (n, 3, H, W), cached while the same tensor (same
        object, unmodified) comes back, as it does at every step of a run."""
        # Inference tensors (ComfyUI runs nodes in inference mode) keep no version counter; within
        # one run nothing writes into the pose tensor, so identity is enough for them.
        version = -1 if poses.is_inference() else poses._version
        c = self._pose_cache
        if c is not None and c[0]() is poses and c[1] == version and c[2] == self.compute_dtype:
            return c[3]
        with torch.no_grad():
            emb = self._controlnet_call(self.controlnet.controlnet_cond_embedding, "controlnet_cond_embedding",
                                        poses.to(self.controlnet.dtype))
        self._pose_cache = (weakref.ref(poses), version, self.compute_dtype, emb)
        return emb

    def controlnet_residuals(self, latents, timesteps, text_embeddings, poses, control_scale, pose_order=None):
        """ControlNet residuals for each row (frozen, no gradients). Rows with scale 0 are skipped.

        ``control_scale``: a float, or one float per row (a list or a CPU tensor); which rows run is
        decided on the host, so the GPU is never waited for. ``pose_order`` (B,) picks the pose of
        each row from ``poses`` (default: row i uses pose i).
        """
        b = latents.shape[0]
        if isinstance(control_scale, (int, float)):
            scales = [float(control_scale)] * b
        else:
            scales = [float(x) for x in torch.as_tensor(control_scale).cpu().flatten().tolist()]
        rows = [i for i, x in enumerate(scales) if x != 0]
        if not rows:
            return None, None
        cond = self.pose_embedding(poses)
        if pose_order is not None:
            cond = cond.index_select(0, pose_order)
        contiguous = rows == list(range(rows[0], rows[-1] + 1))  # all rows, or one branch
        if contiguous:
            pick = lambda x: x[rows[0]: rows[-1] + 1]
        else:
            index = to_device(torch.tensor(rows), latents.device)
            pick = lambda x: x.index_select(0, index)
        uniform = len({scales[i] for i in rows}) == 1
        with torch.no_grad():
            down, mid = self._controlnet_call(
                self.controlnet, "", pick(latents), pick(timesteps), encoder_hidden_states=pick(text_embeddings),
                controlnet_cond=pick(cond), conditioning_scale=scales[rows[0]] if uniform else 1.0, return_dict=False,
            )
        residuals = list(down) + [mid]
        if not uniform:
            s = to_device(torch.tensor([scales[i] for i in rows]), latents.device).view(-1, 1, 1, 1)
            residuals = [r * s.to(r.dtype) for r in residuals]
        if len(rows) != b:
            full = []
            for r in residuals:
                z = r.new_zeros((b,) + r.shape[1:])
                if contiguous:
                    z[rows[0]: rows[-1] + 1] = r
                else:
                    z = z.index_copy(0, index, r)
                full.append(z)
            residuals = full
        return residuals[:-1], residuals[-1]

    def predict(self, latents: torch.Tensor, timesteps, text_embeddings: torch.Tensor, num_frames: int,
                poses: torch.Tensor | None = None, control_scale=1.0, plan: AttentionPlan | None = None,
                inject_parts=(), pose_order: torch.Tensor | None = None) -> torch.Tensor:
        """Predicted noise for a batch of ``groups * num_frames`` frames.

        ``latents`` (B, 4, h, w) scaled latents; ``timesteps`` an int or (B,) tensor;
        ``text_embeddings`` (1 or B, tokens, dim); ``poses`` (B, 3, 8h, 8w) in 0..1 or None;
        ``control_scale`` a float or one per row (list or CPU tensor; 0 = no ControlNet); ``plan`` the
        attention plan (default: plain attention in this model's mode); ``inject_parts`` the UNet
        parts (down/mid/up) where the plan's K/V injection is active for this call;
        ``pose_order`` (B,) the pose of each row (for shuffled frames; default: in order).
        """
        b = latents.shape[0]
        if num_frames < 1 or b % num_frames:
            raise InputError(f"the batch has {b} frames, which is not a multiple of num_frames={num_frames}")
        groups = b // num_frames
        if isinstance(timesteps, (int, float)):
            timesteps = torch.full((b,), timesteps, device=latents.device)  # made on the device: no copy
        else:
            timesteps = to_device(torch.as_tensor(timesteps), latents.device)
            if timesteps.ndim == 0:
                timesteps = timesteps.expand(b)
        if text_embeddings.shape[0] == 1:
            text_embeddings = text_embeddings.expand(b, -1, -1)
        elif text_embeddings.shape[0] != b:
            raise InputError(f"text_embeddings has {text_embeddings.shape[0]} rows; give 1 or one per frame ({b})")
        plan = plan or self.plan(num_frames, groups)
        if plan.num_frames != num_frames or plan.num_groups != groups:
            raise InputError("the attention plan does not match the batch layout")
        self.context.num_frames = num_frames
        self.context.plan = plan
        self.context.inject_parts = frozenset(inject_parts)
        with self.autocast():
            down = mid = None
            if self.controlnet is not None and poses is not None:
                if (poses.shape[0] if pose_order is None else pose_order.shape[0]) != b:
                    raise InputError(f"poses has {poses.shape[0]} frames; the latents have {b}")
                down, mid = self.controlnet_residuals(latents, timesteps, text_embeddings, poses, control_scale, pose_order)
            wrapped = None
            if down is not None and self.motion_attention is not None:
                down, mid, wrapped = apply_motion_attention_at_skip_joins(self.motion_attention, down, mid, use_checkpoint=(
                    torch.is_grad_enabled() and self.unet.is_gradient_checkpointing))
            out = self.unet(
                latents, timesteps, encoder_hidden_states=text_embeddings,
                down_block_additional_residuals=down, mid_block_additional_residual=mid, return_dict=False,
            )[0]
            if wrapped is not None:
                check_consumed(wrapped)
        return out
