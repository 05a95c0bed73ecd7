"""Speed and memory benchmark: ``python -m motion_core bench``.

Per phase (a stage-1 tuning step, a stage-2 tuning step, a DDIM inversion step, a two-branch
sampling step) it prints the time per step, the phase's own memory growth and the achieved
TFLOP/s, then the projected (or, with ``--full``, measured) wall time of the whole job:
``stage1_steps`` + ``stage2_steps`` tuning steps, ``ddim_steps`` inversion steps and ``ddim_steps``
sampling steps.

How it counts:

* FLOPs: ``torch.utils.flop_counter.FlopCounterMode`` with our own formula for the CPU's fused
  scaled-dot-product attention, which it counts as 0 (:func:`count_flops`): ``2 b h Lq Lk (d + dv)``
  forward (``4 b h Lq Lk d`` for equal head sizes) and ``2 b h Lq Lk (3 d + 2 dv)`` backward (the
  scores recomputed, then four products).
* Memory (:class:`PhaseMemory`): on CUDA, ``max_memory_allocated`` during the phase minus what was
  allocated when it started; on the CPU, the resident set size (``/proc/self/statm``) sampled every
  2 ms, its peak minus its value at the start (after glibc's ``malloc_trim`` returned freed memory),
  so the ~0.8 GB of imports and earlier phases are not counted.
* Ratios (CPU, ``--ratios``): the contenders run alternately, one after the other in every round
  (:func:`interleaved`); the result reports the minimum and median over rounds of each contender
  and of their per-round ratio, not one sequential single shot.

* CPU, tiny models: ``python -m motion_core bench`` (also the two ratios: batched RC-Attn vs a
  per-frame loop at 16 frames, and an inflated tuning step vs a plain diffusers UNet training step
  of the same size).
* Device memory without a GPU: ``python -m motion_core bench --estimate-memory`` (see
  ``motion_core/apps/memory.py``; ``--table`` prints the README's table).
* GPU, SD1.5-shaped random weights, the paper's job (8 frames, 512x512, 300 + 300 + 50 + 50):
  ``python -m motion_core bench --size sd15 --frames 8 --resolution 512 --full``.

``--method`` picks the first version (``eym_v1``: DPL stages, two-branch sampling), the later
version (``eym_v2``: STL stages with Motion Attention, single-branch sampling) or ``both`` (the
default). With the later version it also reports what Motion Attention costs (one UNet+ControlNet
forward with and without it, on the same base weights: time, FLOPs, extra parameters) and the
peak memory of one single-branch sampling step against one two-branch step on the same model
(GPU only: on the CPU the process's RSS high-water mark cannot separate them).
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import threading
import time
from typing import Callable

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch.utils.flop_counter import FlopCounterMode

from ..errors import InputError
from ..precision import dtype_of
from ..video_model.attention import kv_frame_indices
from ..method.ddim import ddim_invert
from ..method.windows import ContextOptions, calls_per_step
from ..method.sampler import SamplerConfig, two_branch_sample
from ..method.single_branch import single_branch_sample
from ..testing.tiny import build_motion_model, build_unet
from ..method.stages import tune_stage
from ..method.tuner import TuneConfig

aten = torch.ops.aten


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=("tiny", "small", "sd15"), default=None,
                   help="model size (sd15 = SD1.5 shapes, random weights); default tiny, sd15 with --estimate-memory")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--resolution", type=int, default=None,
                   help="frame size in pixels (latents are 1/8); default 64, 512 with --estimate-memory")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="weights and autocast: auto = bf16 on GPU, fp32 on CPU")
    p.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    p.add_argument("--steps", type=int, default=3, help="timed steps per phase (after one warm-up step)")
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds of the CPU ratios (min and median reported)")
    p.add_argument("--stage1-steps", type=int, default=300)
    p.add_argument("--stage2-steps", type=int, default=300)
    p.add_argument("--ddim-steps", type=int, default=50)
    p.add_argument("--full", action="store_true", help="run the whole job for real and time it")
    p.add_argument("--compile", action="store_true", help="torch.compile the UNet (GPU)")
    p.add_argument("--ratios", action=argparse.BooleanOptionalAction, default=None,
                   help="also measure the CPU ratios (default: on for CPU runs)")
    p.add_argument("--method", choices=("eym_v1", "eym_v2", "both"), default="both",
                   help="first version, later version (Motion Attention + STL + one branch), or both")
    p.add_argument("--json", help="also write the results to this file")
    from .memory import add_arguments as add_memory_arguments

    add_memory_arguments(p)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------- FLOPs
def _batch_heads(shape) -> int:
    out = 1
    for s in shape[:-2]:
        out *= int(s)
    return out


def attention_flops(query_shape, key_shape, value_shape) -> int:
    """Forward FLOPs of softmax(Q K^T) V: ``2 b h Lq Lk d`` for the scores and ``2 b h Lq Lk dv`` for
    the weighted sum (``4 b h Lq Lk d`` when ``dv == d``)."""
    bh, lq, d = _batch_heads(query_shape), query_shape[-2], query_shape[-1]
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * bh * lq * lk * (d + dv)


def attention_backward_flops(query_shape, key_shape, value_shape) -> int:
    """Backward FLOPs of a fused attention kernel: the scores recomputed (``2 b h Lq Lk d``), then
    dP = dO V^T and dV = P^T dO (``2 b h Lq Lk dv`` each), dQ = dS K and dK = dS^T Q (``2 b h Lq Lk d`` each)."""
    bh, lq, d = _batch_heads(query_shape), query_shape[-2], query_shape[-1]
    lk, dv = key_shape[-2], value_shape[-1]
    return 2 * bh * lq * lk * (3 * d + 2 * dv)


def _sdpa_cpu_forward(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_flops(query_shape, key_shape, value_shape)


def _sdpa_cpu_backward(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return attention_backward_flops(query_shape, key_shape, value_shape)


#: The CPU's fused attention kernels, which FlopCounterMode has no formula for (it counts them as 0).
#: (Attention that falls back to the math path reaches the counter as matrix products and is counted there.)
SDPA_FLOP_FORMULAS = {
    aten._scaled_dot_product_flash_attention_for_cpu: _sdpa_cpu_forward,
    aten._scaled_dot_product_flash_attention_for_cpu_backward: _sdpa_cpu_backward,
}


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs of one call of ``fn`` (matrix products, convolutions and attention)."""
    counter = FlopCounterMode(display=False, custom_mapping=SDPA_FLOP_FORMULAS)
    with counter:
        fn()
    return counter.get_total_flops()


# --------------------------------------------------------------------------- memory
def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PhaseMemory:
    """The memory a phase adds on top of what was in use when it started (bytes, ``growth``).

    CUDA: ``max_memory_allocated`` during the phase minus ``memory_allocated`` at its start. CPU: the
    resident set size sampled every ``interval`` seconds by a thread, peak minus the value at the
    start (after ``malloc_trim``); ``None`` where ``/proc/self/statm`` does not exist.
    """

    def __init__(self, device: torch.device, interval: float = 0.002):
        self.device, self.interval = device, interval
        self.growth: int | None = None
        self.method = ("cuda max_memory_allocated - allocated at start" if device.type == "cuda" else
                       "cpu resident set size (/proc/self/statm, sampled every 2 ms): peak - start, after malloc_trim")

    def __enter__(self):
        if self.device.type == "cuda":
            _sync(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        _malloc_trim()
        self._start = _rss_bytes()
        self._peak = self._start
        self._stop = threading.Event()
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self._peak:
                self._peak = rss
            self._stop.wait(self.interval)

    def __exit__(self, *exc):
        _sync(self.device)
        if self.device.type == "cuda":
            self.growth = torch.cuda.max_memory_allocated(self.device) - self._start
            return False
        if self._start is None:
            return False
        self._stop.set()
        self._thread.join()
        end = _rss_bytes()
        self.growth = max(self._peak, end or 0) - self._start
        return False


# --------------------------------------------------------------------------- timing
def interleaved(contenders: dict[str, Callable[[], float]], rounds: int, baseline: str) -> dict:
    """Run every contender once per round, alternating their order from round to round (ABC, CBA,
    ...), so that a machine whose speed drifts hurts all alike. Each contender returns its own
    seconds per step. Returns per contender the rounds' values with their min and median, and for
    every other contender its per-round ratio to ``baseline`` (min and median)."""
    if rounds < 1:
        raise InputError(f"rounds must be >= 1; got {rounds}")
    names = list(contenders)
    runs = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            runs[name].append(float(contenders[name]()))
    out = {n: {"seconds": v, "min": min(v), "median": statistics.median(v)} for n, v in runs.items()}
    for name in names:
        if name != baseline:
            ratios = [a / b for a, b in zip(runs[name], runs[baseline])]
            out[name]["ratio_to_" + baseline] = {"rounds": ratios, "min": min(ratios), "median": statistics.median(ratios)}
    return out


def build(args, method: str = "eym_v1") -> tuple:
    device = torch.device(args.device)
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    with torch.device(device):  # initialise SD1.5-size random weights on the GPU directly
        model = build_motion_model(args.size, attention_mode=None, seed=0, method=method)
    if precision != "fp32":
        model.to(dtype_of(precision))
    model.compute_dtype = dtype_of(precision)
    if args.compile:
        model.unet.compile()  # in place: parameter names stay the same
    n, hw = args.frames, args.resolution // 8
    g = torch.Generator().manual_seed(0)
    dim = model.unet.config.cross_attention_dim
    data = dict(
        latents=torch.randn(n, 4, hw, hw, generator=g).to(device),
        poses=torch.rand(n, 3, hw * 8, hw * 8, generator=g).to(device),
        ref=torch.rand(n, 3, hw * 8, hw * 8, generator=g).to(device),
        emb=torch.randn(1, 77, dim, generator=g).to(device),
        emb2=torch.randn(1, 77, dim, generator=g).to(device),
    )
    return model, data, precision, device


def measure(args, method: str = "eym_v1") -> dict:
    """Per-phase time, FLOPs and peak memory of one method (its stages are the model's: DPL for
    eym_v1, STL for eym_v2; its sampler: two branches for eym_v1, one for eym_v2)."""
    model, d, precision, device = build(args, method)
    n = args.frames
    ckpt = not args.no_checkpointing
    phases = {}
    window = getattr(args, "window", 0)
    context = ContextOptions(window, getattr(args, "overlap", 2)) if window else None  # long clips

    def tune(stage, steps):
        return lambda: tune_stage(model, stage, d["latents"], d["emb"], d["poses"],
                                  TuneConfig(steps=steps, precision=precision, gradient_checkpointing=ckpt,
                                             context=context))

    def invert(steps):
        return lambda: ddim_invert(model, d["latents"], d["emb"], d["poses"], num_steps=steps, context=context)

    def sample(steps, z=None):
        z = d["latents"] if z is None else z
        if method == "eym_v2":
            return lambda: single_branch_sample(model, z, d["emb2"], d["ref"], num_steps=steps, context=context)
        return lambda: two_branch_sample(model, z, d["emb"], d["emb2"], d["poses"], d["ref"],
                                         SamplerConfig(num_steps=steps), context=context)

    plan = {"stage1_step": (tune, 1, args.stage1_steps), "stage2_step": (tune, 2, args.stage2_steps),
            "inversion_step": (invert, None, args.ddim_steps), "sampling_step": (sample, None, args.ddim_steps)}
    for name, (make, stage, count) in plan.items():
        one = make(stage, 1) if stage else make(1)
        many = make(stage, args.steps) if stage else make(args.steps)
        entry = {}
        one()  # warm-up (allocator, kernels, lazy imports), outside the memory measurement
        with PhaseMemory(device) as mem:
            _sync(device)
            t = time.perf_counter()
            many()  # one call of several steps: per-call set-up is shared, as in a real run
            _sync(device)
            entry["seconds"] = (time.perf_counter() - t) / args.steps
        entry["memory_growth_gb"] = None if mem.growth is None else mem.growth / 2**30
        entry["tflop"] = count_flops(one) / 1e12
        entry["tflops_per_s"] = entry["tflop"] / entry["seconds"]
        entry["job_steps"] = count
        phases[name] = entry
    projected = sum(p["seconds"] * p["job_steps"] for p in phases.values())
    result = {
        "method": method,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": args.size, "frames": n, "resolution": args.resolution, "precision": precision,
        "gradient_checkpointing": ckpt, "phases": phases, "projected_job_seconds": projected,
        "window": window or None, "overlap": context.overlap if context else None,
        "model_calls_per_ddim_step": calls_per_step(n, context),
        "memory_method": PhaseMemory(device).method,
        "job_tflop": sum(p["tflop"] * p["job_steps"] for p in phases.values()),
    }
    if args.full:
        entry = {}
        with PhaseMemory(device) as mem:
            _sync(device)
            t = time.perf_counter()
            tune(1, args.stage1_steps)()
            tune(2, args.stage2_steps)()
            z = ddim_invert(model, d["latents"], d["emb"], d["poses"], num_steps=args.ddim_steps, context=context)
            sample(args.ddim_steps, z)()
            _sync(device)
            entry["seconds"] = time.perf_counter() - t
        entry["memory_growth_gb"] = None if mem.growth is None else mem.growth / 2**30
        entry["tflops_per_s"] = result["job_tflop"] / entry["seconds"]
        result["full_job"] = entry
    return result


# --------------------------------------------------------------------------- later version
def later_version_costs(args) -> dict:
    """What the later version adds and saves, on one set of base weights:

    * ``motion_attention``: one UNet + ControlNet forward (``predict``) without and with Motion
      Attention (time, TFLOP) and MA's parameter count against the UNet's;
    * ``sampling_memory``: one sampling step of the single-branch sampler against one of the
      two-branch sampler on the same eym_v2 model (peak GB on a GPU; None on the CPU), with
      their TFLOP.
    """
    v1, d, precision, device = build(args, "eym_v1")
    v2, _, _, _ = build(args, "eym_v2")
    v1.set_attention_mode("bidirectional")  # same attention as v2: only Motion Attention differs
    n = args.frames
    out = {}
    with torch.no_grad():
        fwd = {name: (lambda m=m: m.predict(d["latents"], 500, d["emb"], n, poses=d["poses"])) for name, m in
               (("without", v1), ("with", v2))}
        entry = {}
        for name, fn in fwd.items():
            fn()  # warm-up
            _sync(device)
            t = time.perf_counter()
            for _ in range(args.steps):
                fn()
            _sync(device)
            entry[f"{name}_seconds"] = (time.perf_counter() - t) / args.steps
            entry[f"{name}_tflop"] = count_flops(fn) / 1e12
        ma = sum(p.numel() for p in v2.motion_attention.parameters())
        entry["ma_parameters"] = ma
        entry["unet_parameters"] = sum(p.numel() for p in v1.unet.parameters())
        entry["extra_time"] = entry["with_seconds"] / entry["without_seconds"] - 1
        entry["extra_flop"] = entry["with_tflop"] / entry["without_tflop"] - 1
        out["motion_attention"] = entry
    del v1
    mem = {}
    runs = {"single_branch": lambda: single_branch_sample(v2, d["latents"], d["emb2"], d["ref"], num_steps=1),
            "two_branch": lambda: two_branch_sample(v2, d["latents"], d["emb"], d["emb2"], d["poses"], d["ref"],
                                                    SamplerConfig(num_steps=1))}
    for name, fn in runs.items():
        fn()  # warm-up
        _sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            _sync(device)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**30
        else:
            peak = None
        mem[name] = {"step_peak_gb_above_weights": peak, "tflop": count_flops(fn) / 1e12}
    out["sampling_memory"] = mem
    return out


# --------------------------------------------------------------------------- CPU ratios
def loop_rc_attention(attn, hidden: torch.Tensor, num_frames: int, mode: str = "rc") -> torch.Tensor:
    """Per-frame reference of an RC-Attn layer, written from the formula: for frame i,
    ``Q = W_Q z_i``, ``K = W_K [z_p(i), z_i]``, ``V = W_V [z_p(i), z_i]``, attention, output projection."""
    idx = kv_frame_indices(num_frames, mode).tolist()
    heads = attn.heads
    outs = []
    for i in range(num_frames):
        zi = hidden[i:i + 1]
        kv = torch.cat([hidden[j:j + 1] for j in idx[i]], dim=1)
        q, k, v = attn.to_q(zi), attn.to_k(kv), attn.to_v(kv)
        d = q.shape[-1] // heads
        split = lambda x: x.view(1, -1, heads, d).transpose(1, 2)
        o = F.scaled_dot_product_attention(split(q), split(k), split(v)).transpose(1, 2).reshape(1, -1, heads * d)
        outs.append(attn.to_out[0](o))
    return torch.cat(outs)


def _per_step(fn, repeats: int) -> Callable[[], float]:
    """A contender for :func:`interleaved`: ``repeats`` calls of ``fn``, seconds per call."""
    def timed() -> float:
        t = time.perf_counter()
        for _ in range(repeats):
            fn()
        return (time.perf_counter() - t) / repeats
    return timed


def attention_ratio(frames: int = 16, size: str = "tiny", resolution: int = 64, repeats: int = 20,
                    rounds: int = 7) -> dict:
    """Every RC-Attn layer of the model at ``frames`` frames: batched (one projection per frame, one
    SDPA call per layer) vs the per-frame loop, on the hidden states a real forward pass feeds
    them; outputs checked equal first, then timed alternately over ``rounds`` rounds."""
    model = build_motion_model(size, seed=0, controlnet=False)
    hw = resolution // 8
    g = torch.Generator().manual_seed(0)
    captured = []
    layers = [m for n, m in model.unet.named_modules() if n.endswith(".attn1") and "temporal" not in n]
    hooks = [m.register_forward_pre_hook(lambda mod, args: captured.append((mod, args[0]))) for m in layers]
    with torch.no_grad():
        model.predict(torch.randn(frames, 4, hw, hw, generator=g), 500,
                      torch.randn(1, 77, model.unet.config.cross_attention_dim, generator=g), frames)
    for h in hooks:
        h.remove()
    batched = lambda: [attn(h) for attn, h in captured]
    loop = lambda: [loop_rc_attention(attn, h, frames) for attn, h in captured]
    with torch.no_grad():
        for attn, hidden in captured:
            torch.testing.assert_close(attn(hidden), loop_rc_attention(attn, hidden, frames), atol=1e-5, rtol=1e-5)
        batched(), loop()  # warm-up
        res = interleaved({"batched": _per_step(batched, repeats), "loop": _per_step(loop, repeats)}, rounds, "batched")
    shapes = sorted({(h.shape[1], h.shape[2]) for _, h in captured})
    return {"frames": frames, "layers": len(captured), "shapes": shapes, "rounds": rounds,
            "batched_ms": {k: res["batched"][k] * 1e3 for k in ("min", "median")},
            "loop_ms": {k: res["loop"][k] * 1e3 for k in ("min", "median")},
            "speedup": {k: res["loop"]["ratio_to_batched"][k] for k in ("min", "median")}}


def tuning_step_ratio(size: str = "tiny", frames: int = 8, resolution: int = 64, repeats: int = 5,
                      rounds: int = 7) -> dict:
    """An inflated stage-1 tuning step vs a plain diffusers UNet training step of the same size
    (same frames as batch, same trained tensors: the attn1 projections; the same AdamW settings and
    gradient clipping as diffusers' training scripts and our tuner; neither uses ControlNet), and
    the inflated step with its ControlNet: the three run alternately for ``rounds`` rounds of
    ``repeats`` steps each (a tuning call of ``repeats`` steps, as a real run shares its set-up)."""
    hw = resolution // 8
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(frames, 4, hw, hw, generator=g)

    plain = build_unet(size, 0).train()
    emb = torch.randn(1, 77, plain.config.cross_attention_dim, generator=g).expand(frames, -1, -1)
    plain.requires_grad_(False)
    trained = [p for n, p in plain.named_parameters() if ".attn1." in n]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=1e-5, weight_decay=1e-2)
    sched = DDPMScheduler(num_train_timesteps=1000)

    def plain_step():
        noise = torch.randn(lat.shape, generator=g)
        t = torch.randint(0, 1000, (1,), generator=g).expand(frames)
        pred = plain(sched.add_noise(lat, noise, t), t, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()

    def inflated(controlnet: bool) -> Callable[[], float]:
        model = build_motion_model(size, seed=0, controlnet=controlnet)
        poses = torch.rand(frames, 3, resolution, resolution, generator=g) if controlnet else None
        tune_stage(model, 1, lat, emb[:1], poses, TuneConfig(steps=1, gradient_checkpointing=False))  # warm-up
        cfg = TuneConfig(steps=repeats, gradient_checkpointing=False)

        def timed() -> float:
            t = time.perf_counter()
            tune_stage(model, 1, lat, emb[:1], poses, cfg)
            return (time.perf_counter() - t) / repeats
        return timed

    plain_step()  # warm-up
    res = interleaved({"plain": _per_step(plain_step, repeats), "inflated": inflated(False),
                       "inflated_with_controlnet": inflated(True)}, rounds, "plain")
    ms = lambda name: {k: res[name][k] * 1e3 for k in ("min", "median")}
    return {"size": size, "frames": frames, "rounds": rounds, "plain_ms": ms("plain"), "inflated_ms": ms("inflated"),
            "inflated_with_controlnet_ms": ms("inflated_with_controlnet"),
            "ratio": {k: res["inflated"]["ratio_to_plain"][k] for k in ("min", "median")}}


def check_arguments(args) -> None:
    estimating = getattr(args, "estimate_memory", False)
    if args.size is None:
        args.size = "sd15" if estimating else "tiny"
    if args.resolution is None:
        args.resolution = 512 if estimating else 64
    if args.frames < 1:
        raise InputError(f"--frames must be >= 1; got {args.frames}")
    if getattr(args, "window", 0):
        ContextOptions(args.window, getattr(args, "overlap", 2)).window(args.frames)  # refuses bad windows and 1 frame
    if args.resolution < 8 or args.resolution % 8:
        raise InputError(f"--resolution must be a positive multiple of 8; got {args.resolution}")
    if args.steps < 1 or args.rounds < 1:
        raise InputError(f"--steps and --rounds must be >= 1; got {args.steps} and {args.rounds}")


def _gb(x) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _print_method(res: dict, args) -> None:
    print(f"Edit-Your-Motion benchmark ({res['method']}) on {res['device']}: {res['size']} model, {res['frames']} frames at "
          f"{res['resolution']}x{res['resolution']}, {res['precision']}, gradient checkpointing "
          f"{'on' if res['gradient_checkpointing'] else 'off'}"
          + (f", windows of {res['window']} frames overlapping by {res['overlap']} ({res['model_calls_per_ddim_step']} "
             "model calls per inversion/sampling step)" if res.get("window") else ""))
    print(f"memory: each phase's own growth ({res['memory_method']})")
    print(f"{'phase':<16}{'s/step':>10}{'TFLOP/step':>12}{'TFLOP/s':>10}{'+GB':>10}{'job steps':>11}")
    for name, p in res["phases"].items():
        print(f"{name:<16}{p['seconds']:>10.4f}{p['tflop']:>12.4f}{p['tflops_per_s']:>10.3f}"
              f"{_gb(p['memory_growth_gb']):>10}{p['job_steps']:>11}")
    print(f"projected job: {res['projected_job_seconds']:.1f} s for {res['job_tflop']:.1f} TFLOP "
          f"({res['job_tflop'] / res['projected_job_seconds']:.2f} TFLOP/s)")
    if "full_job" in res:
        f = res["full_job"]
        print(f"measured job:  {f['seconds']:.1f} s, +{_gb(f['memory_growth_gb'])} GB, {f['tflops_per_s']:.2f} TFLOP/s")


def run(args) -> int:
    check_arguments(args)
    if getattr(args, "estimate_memory", False):
        from .memory import run as estimate_memory

        return estimate_memory(args)
    methods = ("eym_v1", "eym_v2") if args.method == "both" else (args.method,)
    results = {m: measure(args, m) for m in methods}
    res = dict(results[methods[0]])
    res["methods"] = results
    for m in methods:
        _print_method(results[m], args)
    if "eym_v2" in methods:
        costs = later_version_costs(args)
        ma, mem = costs["motion_attention"], costs["sampling_memory"]
        print(f"Motion Attention: one forward {ma['without_seconds'] * 1e3:.1f} -> {ma['with_seconds'] * 1e3:.1f} ms "
              f"({ma['extra_time']:+.0%}), {ma['without_tflop'] * 1e3:.4g} -> {ma['with_tflop'] * 1e3:.4g} GFLOP ({ma['extra_flop']:+.0%}), "
              f"{ma['ma_parameters'] / 1e6:.2f}M parameters ({ma['ma_parameters'] / ma['unet_parameters']:.1%} of the UNet)")
        one, two = mem["single_branch"], mem["two_branch"]
        if one["step_peak_gb_above_weights"] is None:
            print(f"sampling step: single branch {one['tflop'] * 1e3:.4g} GFLOP vs two branches {two['tflop'] * 1e3:.4g} GFLOP "
                  "(peak memory is measured on a GPU only)")
        else:
            print(f"sampling step: single branch {one['step_peak_gb_above_weights']:.2f} GB / {one['tflop'] * 1e3:.4g} GFLOP vs "
                  f"two branches {two['step_peak_gb_above_weights']:.2f} GB / {two['tflop'] * 1e3:.4g} GFLOP (peak above the weights)")
        res["later_version"] = costs
    ratios = args.ratios if args.ratios is not None else args.device == "cpu"
    if ratios:
        a = attention_ratio(rounds=args.rounds)
        print(f"RC-Attn, all {a['layers']} layers of the tiny UNet at {a['frames']} frames (tokens x channels "
              f"{a['shapes']}), {a['rounds']} alternating rounds: batched {a['batched_ms']['median']:.2f} ms vs per-frame "
              f"loop {a['loop_ms']['median']:.2f} ms (medians) -> {a['speedup']['median']:.1f}x faster "
              f"(min over rounds {a['speedup']['min']:.1f}x)")
        r = tuning_step_ratio(rounds=args.rounds)
        print(f"tuning step ({r['size']}, {r['frames']} frames), {r['rounds']} alternating rounds: inflated "
              f"{r['inflated_ms']['median']:.1f} ms vs plain diffusers UNet {r['plain_ms']['median']:.1f} ms (medians) -> "
              f"ratio median {r['ratio']['median']:.2f}x, min {r['ratio']['min']:.2f}x "
              f"(with ControlNet: {r['inflated_with_controlnet_ms']['median']:.1f} ms)")
        res["ratios"] = {"attention": a, "tuning_step": r}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0
