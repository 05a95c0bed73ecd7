"""Device memory estimate: ``python -m motion_core bench --estimate-memory``.

The pack's own code (tuning steps, DDIM inversion, sampling) runs on a model of the real shape made
of *fake* tensors (``torch._subclasses.fake_tensor.FakeTensorMode``): every op computes its output's
shape, dtype and device but no data, so the SD1.5-sized job runs in seconds on any CPU, without a
GPU and without weights. :class:`LiveBytes`, a ``TorchDispatchMode``, registers the storage of
every tensor an op returns and drops it when the storage is freed (a weak reference to the
storage's Python object, which lives exactly as long as the storage itself); the estimate is the
peak of the live bytes on the device.

What it emulates of a GPU run (``device="cuda"``, the default):

* weights stored in bf16 and autocast to bf16, as ComfyUI and the nodes do on a GPU (trained tensors
  as float32 masters during tuning, fused AdamW);
* CUDA's attention kernels: flash attention for half-precision inputs (memory linear in tokens),
  the math path's ``L x L`` scores never materialise;
* the caching allocator's rounding of every block up to 512 bytes.

What it does not see: kernel workspaces (cuBLAS, cuDNN), the allocator's fragmentation and the CUDA
context. :func:`device_total` adds them as a band: +10-20 % of the peak and 0.5 GB of context.

:func:`measure_real` runs the same phase on real tensors (CPU), with the same tracker; the tests
compare both with torch's own CPU allocator statistics (the profiler's memory events).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import weakref
from typing import Callable
from unittest import mock

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.weak import WeakTensorKeyDictionary
from torch.utils._pytree import tree_flatten, tree_map

from ..errors import InputError
from ..precision import dtype_of, name_of
from ..method.tuner import OPTIMIZERS, ROLLBACKS

aten = torch.ops.aten
GB = 2**30
CUDA_BLOCK = 512  # the CUDA caching allocator rounds every block up to this many bytes
CONTEXT_GB = 0.5  # CUDA context, cuBLAS/cuDNN handles: not tensors
OVERHEAD = (0.10, 0.20)  # workspaces and fragmentation on top of the live tensors' peak

#: levers the estimate knows, with the value of each in a default run
DEFAULT_LEVERS = dict(gradient_checkpointing=True, optimizer="adamw", rollback="host", activation_offload=False,
                      controlnet_offload=False)
PHASES = ("stage1", "stage2", "inversion", "sampling")  # sampling: the method's sampler
SAMPLERS = ("two_branch", "single_branch")  # either sampler, whatever the method


# --------------------------------------------------------------------------- live storage tracker
class LiveBytes(TorchDispatchMode):
    """Live tensor bytes on one device type, and their peak.

    Every op's outputs are registered by storage; a storage stops counting when it is freed. Bytes
    on ``device_type`` are rounded up to ``block`` (CUDA's allocator granularity). Tensors that
    exist before the mode starts are counted with :meth:`track`.

    Under fake tensors, ``.item()`` (a loss read for logging, a step count) returns 1 and pinning host memory
    is a no-op: neither changes device memory.
    """

    def __init__(self, device_type: str = "cuda", block: int = 1, skip=None):
        super().__init__()
        self.device_type, self.block = device_type, max(1, int(block))
        self.skip = skip if skip is not None else {}  # tensors that stand for host memory
        self.live = 0
        self.peak = 0
        self._refs: dict[int, tuple[weakref.ref, int]] = {}

    # ---- bookkeeping
    def _size(self, st: torch.UntypedStorage) -> int:
        n = st.nbytes()
        return -(-n // self.block) * self.block if n else 0

    def track(self, *objects) -> None:
        """Count the storages of these tensors (or of the parameters and buffers of these modules)."""
        for obj in objects:
            if isinstance(obj, torch.nn.Module):
                self.track(*obj.parameters(), *obj.buffers())
            elif isinstance(obj, (list, tuple)):
                self.track(*obj)
            elif isinstance(obj, dict):
                self.track(*obj.values())
            elif isinstance(obj, torch.Tensor):
                self._add(obj)
        self.peak = max(self.peak, self.live)

    def _add(self, t: torch.Tensor) -> None:
        if t.device.type != self.device_type or t in self.skip:
            return
        try:
            st = t.untyped_storage()
        except (RuntimeError, NotImplementedError):  # sparse or otherwise storage-less
            return
        key = id(st)
        entry = self._refs.get(key)
        if entry is not None and entry[0]() is st:
            # the same storage may have grown (resize_); count its new size
            size = self._size(st)
            if size != entry[1]:
                self.live += size - entry[1]
                self._refs[key] = (entry[0], size)
            return
        size = self._size(st)
        self._refs[key] = (weakref.ref(st, functools.partial(self._freed, key)), size)
        self.live += size

    def _freed(self, key: int, ref) -> None:
        entry = self._refs.get(key)
        if entry is not None and entry[0] is ref:
            del self._refs[key]
            self.live -= entry[1]

    def reset_peak(self) -> None:
        self.peak = self.live

    # ---- dispatch
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._add(t)
        if self.live > self.peak:
            self.peak = self.live
        return out


# --------------------------------------------------------------------------- fake device
DEVICE = "meta"  # the stand-in for the GPU: tensors with shapes, dtypes and storage sizes, no data

#: CUDA autocast's op lists (torch's AMP docs, "CUDA Ops that can autocast to float16/float32"):
#: run in the lower precision, or in float32.
AUTOCAST_LOWER = {"linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
                  "matmul", "__matmul__", "__rmatmul__", "mm", "bmm", "baddbmm", "addmm", "addbmm", "addmv", "addr",
                  "mv", "einsum", "prelu", "chain_matmul", "multi_dot", "scaled_dot_product_attention"}
AUTOCAST_FP32 = {"__pow__", "__rpow__", "__rdiv__", "__rtruediv__", "acos", "asin", "binary_cross_entropy_with_logits",
                 "cosh", "cosine_embedding_loss", "cdist", "cosine_similarity", "cross_entropy", "cumprod", "cumsum",
                 "dist", "erfinv", "exp", "expm1", "group_norm", "hinge_embedding_loss", "kl_div", "l1_loss",
                 "layer_norm", "log", "log_softmax", "log10", "log1p", "log2", "margin_ranking_loss", "mse_loss",
                 "multilabel_margin_loss", "multi_margin_loss", "nll_loss", "norm", "normalize", "pdist",
                 "poisson_nll_loss", "pow", "prod", "reciprocal", "rsqrt", "sinh", "smooth_l1_loss",
                 "soft_margin_loss", "softmax", "softmin", "softplus", "sum", "renorm", "tan", "triplet_margin_loss"}


class _Autocast(TorchFunctionMode):
    """CUDA's autocast policy, applied to the functions the code calls: matrix products,
    convolutions and attention take ``dtype`` inputs, normalisations, softmax, losses and
    reductions float32; everything else runs on what it is given. Casts happen at the function
    level, so autograd records them (and saves what a GPU run saves). Active for a whole phase:
    the backward pass only sees the recomputed forward of gradient checkpointing, which a GPU
    runs under autocast too."""

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name == "scaled_dot_product_attention":
            return self._attention(*args, **kwargs)
        if self.dtype == torch.float32:
            return func(*args, **kwargs)
        if name in AUTOCAST_LOWER:
            cast = lambda t: t.to(self.dtype) if t.is_floating_point() and t.dtype != self.dtype else t
        elif name in AUTOCAST_FP32:
            cast = lambda t: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
        else:
            return func(*args, **kwargs)
        args, kwargs = tree_map(lambda x: cast(x) if isinstance(x, torch.Tensor) else x, (args, kwargs))
        return func(*args, **kwargs)


    def _attention(self, query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None, enable_gqa=False):
        """What CUDA runs for ``scaled_dot_product_attention`` (the meta device would take the
        math path and hold the ``L x L`` scores): flash attention for half-precision inputs without
        a mask, else memory-efficient attention; both keep only the output and a log-sum-exp."""
        if self.dtype != torch.float32:
            query, key, value = (t.to(self.dtype) for t in (query, key, value))
        if attn_mask is None and query.dtype in (torch.float16, torch.bfloat16):
            return aten._scaled_dot_product_flash_attention(query, key, value, dropout_p, is_causal, scale=scale)[0]
        if attn_mask is not None:
            attn_mask = attn_mask.to(query.dtype).expand(query.shape[0], query.shape[1], query.shape[2], key.shape[2])
        return aten._scaled_dot_product_efficient_attention(query, key, value, attn_mask, True, dropout_p, is_causal,
                                                           scale=scale)[0]


class _FakeDevice(TorchDispatchMode):
    """What a run on the stand-in device needs to behave like one on a GPU.

    * A value read from a device tensor on the host (``.item()``, ``bool()``) is what a healthy run
      reads: ``any`` is False (no NaN found), ``all`` and ``equal`` are True, other numbers 1 (a
      finite loss, a step count).
    * A copy to the host (rollback copy, tuned state, activation offload, the ControlNet's weights
      under ControlNet offload) becomes a data-less tensor that :class:`LiveBytes` does not count on
      the device; pinning is a no-op. A copy of it back to the device is counted again.
    """

    def __init__(self):
        super().__init__()
        self._reads = WeakTensorKeyDictionary()
        self.host = WeakTensorKeyDictionary()  # device-typed tensors that stand for host copies

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (aten._pin_memory.default, aten.pin_memory.default):
            return args[0]
        if func is aten.is_pinned.default:
            return True
        meta = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor) and t.device.type == DEVICE]
        if not meta:
            return func(*args, **kwargs)
        if func is aten._local_scalar_dense.default:
            t = args[0]
            if t in self._reads:
                return self._reads[t]
            return False if t.dtype == torch.bool else (1 if not t.dtype.is_floating_point else 1.0)
        if func is aten.equal.default:
            return True
        if func in (aten._to_copy.default, aten.copy_.default) and "device" in kwargs \
                and torch.device(kwargs["device"]).type == "cpu":
            out = func(*args, **dict(kwargs, device=DEVICE))
            self.host[out] = True
            return out
        out = func(*args, **kwargs)
        if func.overloadpacket in (aten.any, aten.all) and isinstance(out, torch.Tensor):
            self._reads[out] = func.overloadpacket is aten.all
        return out


class _SaveOnHost(torch.autograd.graph.saved_tensors_hooks):
    """``torch.autograd.graph.save_on_cpu`` on the stand-in device: a saved tensor leaves the
    device when saved (its host copy is not counted) and comes back as a new device tensor when
    the backward pass needs it."""

    def __init__(self, pin_memory: bool = False, device_type: str = "cuda"):
        super().__init__(lambda t: (t.device, t.to("cpu")), lambda packed: packed[1].clone())


def _meta_autocast(original, dtype: torch.dtype):
    """``torch.autocast`` for the stand-in device: a no-op there (:class:`_Autocast` casts instead,
    for the whole phase). Gradient checkpointing recomputes the forward in the backward pass, on
    autograd's worker thread, under the CPU autocast state it saw in the forward: :func:`fake_gpu`
    turns that state on, so the recompute enters :class:`_Autocast` here."""

    def autocast(device_type, *args, **kwargs):
        if device_type == DEVICE:
            return contextlib.nullcontext()
        if device_type == "cpu":
            return _Autocast(dtype)
        return original(device_type, *args, **kwargs)

    return autocast


@contextlib.contextmanager
def fake_gpu(dtype: torch.dtype):
    """The stand-in GPU: meta tensors (what FakeTensorMode stores underneath; a fake CUDA device
    cannot run backward without a CUDA driver, since autograd's engine initialises the device) with
    CUDA's autocast policy for ``dtype`` and its attention kernels (:class:`_FakeDevice`)."""
    prev = torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu")
    with contextlib.ExitStack() as stack:
        patched = _meta_autocast(torch.amp.autocast, dtype)
        stack.enter_context(mock.patch("torch.autocast", patched))
        stack.enter_context(mock.patch("torch.amp.autocast", patched))
        stack.enter_context(mock.patch("torch.autograd.graph.save_on_cpu", _SaveOnHost))
        fake = _FakeDevice()
        stack.enter_context(fake)
        stack.enter_context(_Autocast(dtype))
        if dtype != torch.float32:
            # seen by checkpointing, which restores it for the recompute (see _meta_autocast)
            torch.set_autocast_dtype("cpu", dtype)
            torch.set_autocast_enabled("cpu", True)
            stack.callback(torch.set_autocast_dtype, "cpu", prev[1])
            stack.callback(torch.set_autocast_enabled, "cpu", prev[0])
        yield fake


# --------------------------------------------------------------------------- the job
@dataclasses.dataclass(frozen=True)
class Job:
    """What is estimated: one method's phases at a size, with levers."""

    method: str = "eym_v1"
    frames: int = 8
    resolution: int = 512  # frame height in pixels (and width, unless ``width`` is given)
    width: int | None = None
    size: str = "sd15"  # model shape: sd15, small or tiny (testing/tiny.py)
    gradient_checkpointing: bool = True
    optimizer: str = "adamw"
    rollback: str = "host"
    activation_offload: bool = False
    controlnet_offload: bool = False  # tuning: the ControlNet's weights on the host, copied per call
    weight_dtype: torch.dtype = torch.bfloat16  # storage (and autocast) dtype of the weights
    guidance: float = 1.0
    block: int = CUDA_BLOCK  # allocator granularity (1 to count exact bytes)
    inputs_on_device: bool = False  # inputs made on the device (as on the CPU) instead of copied from the host
    window: int = 0  # long clips: frames per tuning step and sampling window (0: the whole clip at once)
    overlap: int = 2  # long clips: frames shared by neighbouring sampling windows

    @property
    def context(self):
        """The job's :class:`~motion_core.method.windows.ContextOptions` (None without a window)."""
        from ..method.windows import ContextOptions

        return ContextOptions(self.window, self.overlap) if self.window else None

    def check(self) -> None:
        if self.method not in ("eym_v1", "eym_v2"):
            raise InputError(f"method must be eym_v1 or eym_v2; got {self.method!r}")
        if self.frames < 1:
            raise InputError(f"frames must be >= 1; got {self.frames}")
        for name, v in (("resolution", self.resolution), ("width", self.width or self.resolution)):
            if v < 8 or v % 8:
                raise InputError(f"{name} must be a positive multiple of 8; got {v}")
        if self.optimizer not in OPTIMIZERS:
            raise InputError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {self.optimizer!r}")
        if self.rollback not in ROLLBACKS:
            raise InputError(f"rollback must be one of {', '.join(ROLLBACKS)}; got {self.rollback!r}")
        if self.window:
            self.context.validate()

    @property
    def precision(self) -> str:
        return name_of(self.weight_dtype)


def _build(job: Job, device: str, unet_config: dict | None = None, controlnet_config: dict | None = None,
           motion_attention: bool | None = None, attention_mode: str | None = None):
    """Model and inputs of ``job`` (model on ``device``, inputs on the host, as the nodes pass them)."""
    from diffusers import ControlNetModel, UNet2DConditionModel

    from ..testing.tiny import build_motion_model
    from ..video_model.model import MotionModel

    with torch.device(device):
        if unet_config is not None:
            unet = UNet2DConditionModel.from_config(unet_config)
            cn = ControlNetModel.from_config(controlnet_config) if controlnet_config is not None else None
            model = MotionModel.from_unet(unet, cn, attention_mode=attention_mode, method=job.method,
                                          motion_attention=motion_attention)
        else:
            model = build_motion_model(job.size, attention_mode=None, seed=0, method=job.method)
    if job.weight_dtype != torch.float32:
        model.to(job.weight_dtype)
    n, h, w = job.frames, job.resolution // 8, (job.width or job.resolution) // 8
    dim = model.unet.config.cross_attention_dim
    g = torch.Generator().manual_seed(0)
    data = dict(latents=torch.randn(n, 4, h, w, generator=g), poses=torch.rand(n, 3, h * 8, w * 8, generator=g),
                ref=torch.rand(n, 3, h * 8, w * 8, generator=g), emb=torch.randn(1, 77, dim, generator=g),
                emb2=torch.randn(1, 77, dim, generator=g))
    return model, data


def _inputs_of(job: Job, phase: str) -> tuple[str, ...]:
    """The inputs a phase uses (see :func:`_phase_runner`)."""
    if phase == "sampling":
        phase = "single_branch" if job.method == "eym_v2" else "two_branch"
    guided = ("emb2",) if job.guidance > 1 else ()
    return {"single_branch": ("latents", "emb2", "ref"), "two_branch": ("latents", "emb", "emb2", "poses", "ref")
            }.get(phase, ("latents", "emb", "poses") + (guided if phase == "inversion" else ()))


def _phase_runner(job: Job, model, d: dict, phase: str) -> Callable[[], object]:
    from ..method.ddim import ddim_invert
    from ..method.sampler import SamplerConfig, two_branch_sample
    from ..method.single_branch import single_branch_sample
    from ..method.stages import tune_stage
    from ..method.tuner import TuneConfig

    if phase in ("stage1", "stage2"):
        # two steps: the second runs with the optimizer's state allocated
        cfg = TuneConfig(steps=2, precision=job.precision, gradient_checkpointing=job.gradient_checkpointing,
                         optimizer=job.optimizer, rollback=job.rollback, activation_offload=job.activation_offload,
                         controlnet_offload=job.controlnet_offload, context=job.context)
        return lambda: tune_stage(model, int(phase[-1]), d["latents"], d["emb"], d["poses"], cfg)
    uncond = d["emb2"] if job.guidance > 1 else None
    if phase == "inversion":
        return lambda: ddim_invert(model, d["latents"], d["emb"], d["poses"], num_steps=2, guidance=job.guidance,
                                   uncond_embeddings=uncond, context=job.context)
    if phase == "sampling":  # the method's sampler
        phase = "single_branch" if job.method == "eym_v2" else "two_branch"
    if phase in ("single_branch", "two_branch"):
        if phase == "single_branch":
            return lambda: single_branch_sample(model, d["latents"], d["emb2"], d["ref"], num_steps=2,
                                                guidance=job.guidance, uncond_embeddings=uncond, context=job.context)
        return lambda: two_branch_sample(model, d["latents"], d["emb"], d["emb2"], d["poses"], d["ref"],
                                         SamplerConfig(num_steps=2, guidance_scale=job.guidance),
                                         uncond_embeddings=uncond, context=job.context)
    raise InputError(f"phase must be one of {', '.join(PHASES + SAMPLERS)}; got {phase!r}")


@dataclasses.dataclass
class PhaseEstimate:
    phase: str
    peak_bytes: int  # live tensor bytes at the phase's peak, weights included
    weights_bytes: int  # what the model (UNet, ControlNet, MA) holds before the phase

    @property
    def peak_gb(self) -> float:
        return self.peak_bytes / GB

    def device_total_gb(self) -> tuple[float, float]:
        return device_total(self.peak_bytes)


def device_total(peak_bytes: int) -> tuple[float, float]:
    """Low and high device total (GB) for a live-tensor peak: workspaces and fragmentation (+10-20 %)
    and the CUDA context (0.5 GB)."""
    return tuple(peak_bytes / GB * (1 + o) + CONTEXT_GB for o in OVERHEAD)


def estimate(job: Job, phases=PHASES, unet_config: dict | None = None, controlnet_config: dict | None = None,
             motion_attention: bool | None = None, attention_mode: str | None = None) -> dict[str, PhaseEstimate]:
    """Peak live device bytes of each phase of ``job``, from the pack's code on the stand-in GPU.

    ``unet_config`` / ``controlnet_config``: diffusers configs of the models to estimate (default:
    ``job.size``'s shapes from :mod:`motion_core.testing.tiny`), with ``motion_attention`` and
    ``attention_mode`` as in :meth:`MotionModel.from_unet` (default: the method's).
    """
    job.check()
    out = {}
    # ComfyUI runs nodes in inference mode; the model is built and tuned outside it, as the nodes do
    with torch.inference_mode(False), fake_gpu(job.weight_dtype) as fake:
        tracker = LiveBytes(DEVICE, job.block, skip=fake.host)
        with tracker:
            model, d = _build(job, DEVICE, unet_config, controlnet_config, motion_attention, attention_mode)
            if job.inputs_on_device:  # the inputs of the (first) phase
                d.update({k: d[k].to(DEVICE) for k in _inputs_of(job, phases[0])})
        for phase in phases:
            run = _phase_runner(job, model, d, phase)
            with tracker:
                weights = tracker.live
                tracker.reset_peak()
                run()
            out[phase] = PhaseEstimate(phase, tracker.peak, weights)
    return out


def measure_real(job: Job, phase: str) -> dict:
    """The same phase on real CPU tensors (a small model): the peak of the same tracker, and the
    peak of torch's CPU allocator from the profiler's memory events (an independent count; it also
    sees host-side tensors such as random numbers and rollback copies, which the tracker of a
    device leaves out), both with the weights included.

    With ``job.controlnet_offload`` (a tuning phase) the ControlNet's weights stand for the host copy
    a GPU run keeps (on the CPU they stay in place): the tracker leaves them out, and counts the
    copies each step makes of them for the ControlNet's forward."""
    job.check()
    model, d = _build(job, "cpu")
    run = _phase_runner(job, model, d, phase)
    skip = WeakTensorKeyDictionary()
    if job.controlnet_offload and phase in ("stage1", "stage2") and model.controlnet is not None:
        for t in (*model.controlnet.parameters(), *model.controlnet.buffers()):
            skip[t] = True
    tracker = LiveBytes("cpu", job.block, skip=skip)
    tracker.track(model)
    weights = tracker.live
    # The inputs: a GPU run copies them to the device (the estimate counts those copies); on the CPU
    # they are used in place, so they count from the start.
    used = _inputs_of(job, phase)
    tracker.track([d[k] for k in used])
    with tracker:  # a first run, as the estimate's: attention plans and pose embeddings are made inside
        tracker.reset_peak()
        run()
    model._pose_cache = None  # the same again for the allocator's count
    model._plans.clear()
    inputs = sum(d[k].untyped_storage().nbytes() for k in used)
    return {"tracker_peak_bytes": tracker.peak, "weights_bytes": weights,
            "allocator_peak_bytes": weights + inputs + _profiled_growth(run)}


def _profiled_growth(fn: Callable[[], object]) -> int:
    """Peak growth of torch's CPU allocator while ``fn`` runs, from the profiler's allocation events
    (``total_allocated`` after each allocation or free)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=False) as prof:
        fn()
    stack = list(prof.profiler.kineto_results.experimental_event_tree())
    events = []
    while stack:
        node = stack.pop()
        extra = node.extra_fields
        if type(extra).__name__ == "_ExtraFields_Allocation" and extra.device.type == "cpu":
            events.append((node.start_time_ns, extra.total_allocated, extra.alloc_size))
        stack.extend(node.children)
    if not events:
        return 0
    events.sort(key=lambda e: e[0])
    before = events[0][1] - events[0][2]  # allocated before the first event
    return max(e[1] for e in events) - before


def levers_text() -> str:
    return ("fewer frames, a lower resolution, gradient checkpointing on, 8-bit AdamW (optimizer adamw8bit), "
            "activation offload to the host, ControlNet offload")


# --------------------------------------------------------------------------- command line
LEVER_SETS = {
    "default": {},
    "adamw8bit": dict(optimizer="adamw8bit"),
    "offload": dict(activation_offload=True),
    "adamw8bit+offload": dict(optimizer="adamw8bit", activation_offload=True),
    "controlnet offload": dict(controlnet_offload=True),
    "controlnet offload+adamw8bit": dict(controlnet_offload=True, optimizer="adamw8bit"),
    "controlnet offload+offload": dict(controlnet_offload=True, activation_offload=True),
    "no checkpointing": dict(gradient_checkpointing=False),
    "rollback on device": dict(rollback="device"),
}


def add_arguments(p) -> None:
    """Options of ``bench --estimate-memory`` (the others are the benchmark's)."""
    p.add_argument("--estimate-memory", action="store_true",
                   help="estimate device memory instead of benchmarking: the pack's code on data-less tensors "
                        "(default SD1.5 shapes, 8 frames at 512x512, bf16 weights); no GPU needed")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default="adamw",
                   help="tuning optimizer: adamw (torch) or adamw8bit (bitsandbytes, optional library)")
    p.add_argument("--rollback", choices=ROLLBACKS, default="host",
                   help="where tuning keeps the copy that undoes a failed stage (device = the old behaviour)")
    p.add_argument("--activation-offload", action="store_true",
                   help="keep activations saved for the backward pass on the host (torch save_on_cpu)")
    p.add_argument("--controlnet-offload", action="store_true",
                   help="tuning: keep the frozen ControlNet's weights on the host, copied to the device for its "
                        "forward in each step only")
    p.add_argument("--window", type=int, default=0,
                   help="long clips: frames per tuning step and per inversion/sampling window (0: the whole clip at "
                        "once); with --estimate-memory, estimates a clip of --frames frames of any length")
    p.add_argument("--overlap", type=int, default=2, help="long clips: frames shared by neighbouring sampling windows")
    p.add_argument("--table", action="store_true",
                   help="with --estimate-memory: the README table (both methods, 8/16/24/48 frames x 512/768, "
                        "with and without each lever); takes minutes")


def job_from_args(args, method: str) -> Job:
    dtype = dtype_of("bf16" if args.precision == "auto" else args.precision)  # auto: what a GPU stores
    return Job(method=method, frames=args.frames, resolution=args.resolution, size=args.size,
               gradient_checkpointing=not args.no_checkpointing, optimizer=args.optimizer, rollback=args.rollback,
               activation_offload=args.activation_offload,
               controlnet_offload=getattr(args, "controlnet_offload", False), weight_dtype=dtype, window=getattr(args, "window", 0),
               overlap=getattr(args, "overlap", 2))


def _band(peak: int) -> str:
    lo, hi = device_total(peak)
    return f"{lo:.1f}-{hi:.1f}"


def print_estimate(job: Job, result: dict[str, PhaseEstimate]) -> None:
    print(f"Memory estimate ({job.method}): {job.size} model, {job.frames} frames at {job.resolution}x{job.resolution}, "
          f"{job.precision} weights, checkpointing {'on' if job.gradient_checkpointing else 'off'}, optimizer "
          f"{job.optimizer}, rollback copy on the {job.rollback}, activation offload "
          f"{'on' if job.activation_offload else 'off'}, ControlNet offload {'on' if job.controlnet_offload else 'off'}"
          + (f", windows of {job.window} frames overlapping by {job.overlap}" if job.window else ""))
    print(f"{'phase':<12}{'weights GB':>12}{'peak live GB':>14}{'device total GB':>18}")
    for name, e in result.items():
        print(f"{name:<12}{e.weights_bytes / GB:>12.2f}{e.peak_gb:>14.2f}{_band(e.peak_bytes):>18}")
    worst = max(result.values(), key=lambda e: e.peak_bytes)
    print(f"job peak: {worst.peak_gb:.2f} GB of live tensors in {worst.phase}; device total {_band(worst.peak_bytes)} GB "
          f"(+{OVERHEAD[0]:.0%}-{OVERHEAD[1]:.0%} workspaces and fragmentation, +{CONTEXT_GB} GB CUDA context)")
    print("(a GPU estimate from data-less tensors, not a measurement)")


PEAK_STAGE = {"eym_v1": "stage1", "eym_v2": "stage2"}


def table(methods=("eym_v1", "eym_v2"), frames=(8, 16, 24, 48), resolutions=(512, 768), progress=None) -> list[dict]:
    """Rows of the README table: per method, frame count and resolution, the peak live bytes of
    tuning (the larger stage), inversion and sampling with the defaults, and of tuning with each lever.

    Activation offload and ControlNet offload are estimated for every row. 8-bit AdamW changes only the
    optimizer's state, which is the same at every size: its saving is estimated once per method (at the
    first size) and subtracted from the other levers' estimates ("adamw8bit+...").
    """
    rows, saving = [], {}
    for method in methods:
        stage = PEAK_STAGE[method]
        for res in resolutions:
            for n in frames:
                est = estimate(Job(method=method, frames=n, resolution=res))
                row = {"method": method, "frames": n, "resolution": res,
                       "default": max(est["stage1"].peak_bytes, est["stage2"].peak_bytes),
                       "inversion": est["inversion"].peak_bytes, "sampling": est["sampling"].peak_bytes}
                if method not in saving:
                    eight = estimate(Job(method=method, frames=n, resolution=res, optimizer="adamw8bit"), (stage,))
                    saving[method] = est[stage].peak_bytes - eight[stage].peak_bytes
                row["adamw8bit"] = row["default"] - saving[method]
                off = estimate(Job(method=method, frames=n, resolution=res, activation_offload=True), (stage,))
                row["offload"] = off[stage].peak_bytes
                row["adamw8bit+offload"] = row["offload"] - saving[method]
                cn = estimate(Job(method=method, frames=n, resolution=res, controlnet_offload=True), (stage,))
                row["controlnet_offload"] = cn[stage].peak_bytes
                row["controlnet_offload+adamw8bit"] = row["controlnet_offload"] - saving[method]
                ckpt = None
                if n == frames[0] and res == resolutions[0]:
                    ckpt = estimate(Job(method=method, frames=n, resolution=res, gradient_checkpointing=False), (stage,))
                    row["no checkpointing"] = ckpt[stage].peak_bytes
                    dev = estimate(Job(method=method, frames=n, resolution=res, rollback="device"), (stage,))
                    row["rollback on device"] = dev[stage].peak_bytes
                if progress:
                    progress(row)
                rows.append(row)
    return rows


def format_table(rows: list[dict], levers) -> str:
    head = ["method", "frames x size"] + [f"tuning, {lv}" for lv in levers] + ["inversion", "sampling"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["method"], f"{r['frames']} x {r['resolution']}²"]
        cells += [_band(r[lv]) for lv in levers] + [_band(r["inversion"]), _band(r["sampling"])]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(args) -> int:
    import json

    methods = ("eym_v1", "eym_v2") if args.method == "both" else (args.method,)
    if args.table:
        levers = ("default", "adamw8bit", "offload", "adamw8bit+offload", "controlnet_offload",
                  "controlnet_offload+adamw8bit")
        rows = table(methods, progress=lambda r: print(
            f"{r['method']} {r['frames']} x {r['resolution']}: " + ", ".join(
                f"{k} {_band(v)}" for k, v in r.items() if isinstance(v, int) and k not in ("frames", "resolution")),
            flush=True))
        print(format_table(rows, levers))
        if args.json:
            with open(args.json, "w") as fh:
                json.dump(rows, fh, indent=2)
        return 0
    out = {}
    for method in methods:
        job = job_from_args(args, method)
        result = estimate(job)
        print_estimate(job, result)
        out[method] = {k: dataclasses.asdict(v) for k, v in result.items()}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=2)
    return 0
