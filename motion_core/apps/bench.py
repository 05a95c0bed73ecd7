"""Speed and memory benchmark: ``python -m motion_core bench``.

Per phase (a stage-1 tuning step, a stage-2 tuning step, a DDIM inversion step, a two-branch
sampling step) it prints the time per step, the peak memory and the achieved TFLOP/s (FLOPs counted
once with ``torch.utils.flop_counter.FlopCounterMode``, divided by the measured time), then the
projected (or, with ``--full``, measured) wall time of the whole job: ``stage1_steps`` +
``stage2_steps`` tuning steps, ``ddim_steps`` inversion steps and ``ddim_steps`` sampling steps.

* CPU, tiny models: ``python -m motion_core bench`` (also prints two ratios CI-class machines can
  show: batched RC-Attn vs a per-frame loop at 16 frames, and an inflated tuning step vs a plain
  diffusers UNet training step of the same size).
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
import json
import resource
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler
from torch.utils.flop_counter import FlopCounterMode

from ..video_model.attention import kv_frame_indices
from ..method.ddim import ddim_invert
from ..method.sampler import SamplerConfig, two_branch_sample
from ..method.single_branch import single_branch_sample
from ..testing.tiny import build_motion_model, build_unet
from ..method.tuner import TuneConfig, tune_stage


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--size", choices=("tiny", "small", "sd15"), default="tiny", help="model size (sd15 = SD1.5 shapes, random weights)")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--resolution", type=int, default=64, help="frame size in pixels (latents are 1/8)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="weights and autocast: auto = bf16 on GPU, fp32 on CPU")
    p.add_argument("--no-checkpointing", action="store_true", help="turn gradient checkpointing off")
    p.add_argument("--steps", type=int, default=3, help="timed steps per phase (after one warm-up step)")
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


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def _peak(device: torch.device, out: dict):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    yield
    _sync(device)
    if device.type == "cuda":
        out["peak_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    else:
        out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # process RSS high-water mark


def _timed(fn, device, repeats: int) -> float:
    fn()  # warm-up
    _sync(device)
    t = time.perf_counter()
    for _ in range(repeats):
        fn()
    _sync(device)
    return (time.perf_counter() - t) / repeats


def _flops(fn) -> int:
    counter = FlopCounterMode(display=False)
    with counter:
        fn()
    return counter.get_total_flops()


def build(args, method: str = "eym_v1") -> tuple:
    device = torch.device(args.device)
    precision = args.precision
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    with torch.device(device):  # initialise SD1.5-size random weights on the GPU directly
        model = build_motion_model(args.size, seed=0)
        if method == "eym_v2":
            model.add_motion_attention()
            model.set_attention_mode("bidirectional")
    if precision != "fp32":
        model.to({"bf16": torch.bfloat16, "fp16": torch.float16}[precision])
    model.compute_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
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

    def tune(stage, steps):
        return lambda: tune_stage(model, stage, d["latents"], d["emb"], d["poses"],
                                  TuneConfig(steps=steps, precision=precision, gradient_checkpointing=ckpt))

    def invert(steps):
        return lambda: ddim_invert(model, d["latents"], d["emb"], d["poses"], num_steps=steps)

    def sample(steps, z=None):
        z = d["latents"] if z is None else z
        if method == "eym_v2":
            return lambda: single_branch_sample(model, z, d["emb2"], d["ref"], num_steps=steps)
        return lambda: two_branch_sample(model, z, d["emb"], d["emb2"], d["poses"], d["ref"],
                                         SamplerConfig(num_steps=steps))

    plan = {"stage1_step": (tune, 1, args.stage1_steps), "stage2_step": (tune, 2, args.stage2_steps),
            "inversion_step": (invert, None, args.ddim_steps), "sampling_step": (sample, None, args.ddim_steps)}
    for name, (make, stage, count) in plan.items():
        one = make(stage, 1) if stage else make(1)
        many = make(stage, args.steps) if stage else make(args.steps)
        entry = {}
        with _peak(device, entry):
            one()  # warm-up (allocator, kernels, lazy imports)
            _sync(device)
            t = time.perf_counter()
            many()  # one call of several steps: per-call set-up is shared, as in a real run
            _sync(device)
            entry["seconds"] = (time.perf_counter() - t) / args.steps
        entry["tflop"] = _flops(one) / 1e12
        entry["tflops_per_s"] = entry["tflop"] / entry["seconds"]
        entry["job_steps"] = count
        phases[name] = entry
    projected = sum(p["seconds"] * p["job_steps"] for p in phases.values())
    result = {
        "method": method,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "size": args.size, "frames": n, "resolution": args.resolution, "precision": precision,
        "gradient_checkpointing": ckpt, "phases": phases, "projected_job_seconds": projected,
        "job_tflop": sum(p["tflop"] * p["job_steps"] for p in phases.values()),
    }
    if args.full:
        entry = {}
        with _peak(device, entry):
            _sync(device)
            t = time.perf_counter()
            tune(1, args.stage1_steps)()
            tune(2, args.stage2_steps)()
            z = ddim_invert(model, d["latents"], d["emb"], d["poses"], num_steps=args.ddim_steps)
            sample(args.ddim_steps, z)()
            _sync(device)
            entry["seconds"] = time.perf_counter() - t
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
            entry[f"{name}_seconds"] = _timed(fn, device, args.steps)
            entry[f"{name}_tflop"] = _flops(fn) / 1e12
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
        mem[name] = {"step_peak_gb_above_weights": peak, "tflop": _flops(fn) / 1e12}
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


def attention_ratio(frames: int = 16, size: str = "tiny", resolution: int = 64, repeats: int = 20) -> dict:
    """Every RC-Attn layer of the model at ``frames`` frames: batched (one projection per frame, one
    SDPA call per layer) vs the per-frame loop, on the hidden states a real forward pass feeds
    them; outputs checked equal first."""
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
    cpu = torch.device("cpu")
    with torch.no_grad():
        for attn, hidden in captured:
            torch.testing.assert_close(attn(hidden), loop_rc_attention(attn, hidden, frames), atol=1e-5, rtol=1e-5)
        batched = _timed(lambda: [attn(h) for attn, h in captured], cpu, repeats)
        loop = _timed(lambda: [loop_rc_attention(attn, h, frames) for attn, h in captured], cpu, repeats)
    shapes = sorted({(h.shape[1], h.shape[2]) for _, h in captured})
    return {"frames": frames, "layers": len(captured), "shapes": shapes, "batched_ms": batched * 1e3,
            "loop_ms": loop * 1e3, "speedup": loop / batched}


def tuning_step_ratio(size: str = "tiny", frames: int = 8, resolution: int = 64, repeats: int = 5) -> dict:
    """An inflated stage-1 tuning step vs a plain diffusers UNet training step of the same size
    (same frames as batch, same trained tensors: the attn1 projections; the same AdamW settings and
    gradient clipping as diffusers' training scripts and our tuner; neither uses ControlNet).
    Also reports the inflated step with its ControlNet."""
    hw = resolution // 8
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(frames, 4, hw, hw, generator=g)
    cpu = torch.device("cpu")

    plain = build_unet(size, 0).train()
    emb = torch.randn(1, 77, plain.config.cross_attention_dim, generator=g).expand(frames, -1, -1)
    plain.requires_grad_(False)
    trained = [p for n, p in plain.named_parameters() if ".attn1." in n]
    for p in trained:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(trained, lr=1e-5, weight_decay=1e-2)
    sched = DDPMScheduler(num_train_timesteps=1000)

    def plain_step():
        noise = torch.randn_like(lat)
        t = torch.randint(0, 1000, (1,)).expand(frames)
        pred = plain(sched.add_noise(lat, noise, t), t, encoder_hidden_states=emb).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trained, 1.0)
        opt.step()

    def inflated_step(controlnet: bool):
        model = build_motion_model(size, seed=0, controlnet=controlnet)
        poses = torch.rand(frames, 3, resolution, resolution, generator=g) if controlnet else None
        cfg = TuneConfig(steps=repeats, gradient_checkpointing=False)
        tune_stage(model, 1, lat, emb[:1], poses, TuneConfig(steps=1, gradient_checkpointing=False))  # warm-up
        t = time.perf_counter()
        tune_stage(model, 1, lat, emb[:1], poses, cfg)
        return (time.perf_counter() - t) / repeats

    t_plain = _timed(plain_step, cpu, repeats)
    t_inflated = inflated_step(False)
    t_with_cn = inflated_step(True)
    return {"size": size, "frames": frames, "plain_ms": t_plain * 1e3, "inflated_ms": t_inflated * 1e3,
            "ratio": t_inflated / t_plain, "inflated_with_controlnet_ms": t_with_cn * 1e3}


def _print_method(res: dict, args) -> None:
    print(f"Edit-Your-Motion benchmark ({res['method']}) on {res['device']}: {res['size']} model, {res['frames']} frames at "
          f"{res['resolution']}x{res['resolution']}, {res['precision']}, gradient checkpointing "
          f"{'on' if res['gradient_checkpointing'] else 'off'}")
    peak = "peak GB" if args.device != "cpu" else "RSS GB"  # CPU: the process's memory high-water mark
    print(f"{'phase':<16}{'s/step':>10}{'TFLOP/step':>12}{'TFLOP/s':>10}{peak:>10}{'job steps':>11}")
    for name, p in res["phases"].items():
        print(f"{name:<16}{p['seconds']:>10.4f}{p['tflop']:>12.4f}{p['tflops_per_s']:>10.3f}{p['peak_gb']:>10.2f}{p['job_steps']:>11}")
    print(f"projected job: {res['projected_job_seconds']:.1f} s for {res['job_tflop']:.1f} TFLOP "
          f"({res['job_tflop'] / res['projected_job_seconds']:.2f} TFLOP/s)")
    if "full_job" in res:
        f = res["full_job"]
        print(f"measured job:  {f['seconds']:.1f} s, peak {f['peak_gb']:.2f} GB, {f['tflops_per_s']:.2f} TFLOP/s")


def run(args) -> int:
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
        a = attention_ratio()
        print(f"RC-Attn, all {a['layers']} layers of the tiny UNet at {a['frames']} frames (tokens x channels "
              f"{a['shapes']}): batched {a['batched_ms']:.2f} ms vs per-frame loop {a['loop_ms']:.2f} ms -> {a['speedup']:.1f}x faster")
        r = tuning_step_ratio()
        print(f"tuning step ({r['size']}, {r['frames']} frames): inflated {r['inflated_ms']:.1f} ms vs plain diffusers "
              f"UNet {r['plain_ms']:.1f} ms -> {r['ratio']:.2f}x (with ControlNet: {r['inflated_with_controlnet_ms']:.1f} ms)")
        res["ratios"] = {"attention": a, "tuning_step": r}
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(res, fh, indent=2)
    return 0
