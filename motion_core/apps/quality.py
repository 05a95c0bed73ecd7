"""Quality benchmark in the small world: ``python -m motion_core quality``.

Edits a fixed set of world cases (source clip + another person's motion) with the method, its
ablations and baselines, and scores every result against the ground-truth edit (see
``motion_core/world/metrics.py`` for the metrics and ``motion_core/world/pipeline.py`` for the
variants and the rule that scales the paper's settings to the world). Prints a markdown table
(mean +- sd over cases), writes a JSON and, per case, a picture grid (PNG) and an animated WebP.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..method.windows import DEFAULT_LENGTH, DEFAULT_OVERLAP, FUSE_MODES, ContextOptions
from ..world import metrics as M
from .media import write_animation, write_png
from ..world import pipeline as P
from ..world import vae
from ..world.model import load as load_world
from ..world.scene import make_case

DEFAULT_METHODS = tuple(P.METHODS)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--cases", type=int, default=8, help="number of edit cases drawn from the world")
    p.add_argument("--seed", type=int, default=0, help="which set of cases (and the tuning seed)")
    p.add_argument("--methods", default="all", help=f"comma-separated subset of: {', '.join(DEFAULT_METHODS)}")
    p.add_argument("--quick", action="store_true", help="reduced steps (30 + 30 tuning, 10 DDIM): a smoke run")
    p.add_argument("--stage-steps", type=int, default=None, help="tuning steps per stage (default 100; quick 30)")
    p.add_argument("--ddim-steps", type=int, default=None, help="inversion and sampling steps (default 25; quick 10)")
    p.add_argument("--frames", type=int, default=8, help="frames per clip (more than --window: the long-clip path)")
    p.add_argument("--window", type=int, default=DEFAULT_LENGTH,
                   help="long clips: frames per tuning step and per sampling window (default 8, the paper's clip)")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="long clips: frames shared by sampling windows")
    p.add_argument("--fuse", default="pyramid", choices=FUSE_MODES, help="long clips: how overlapping windows are fused")
    p.add_argument("--optimizer", default="adamw", choices=("adamw", "adamw8bit"),
                   help="tuning optimizer: adamw (the paper's) or adamw8bit (bitsandbytes' 8-bit AdamW, a memory lever)")
    p.add_argument("--sample-window", type=int, default=None,
                   help="long clips: inversion and sampling windows of this length instead of --window (0: the whole "
                        "clip in one model call, the temporal layers over all frames), tuning still in --window; the overlap is "
                        "--overlap, at most the window minus one")
    p.add_argument("--json", default=None, help="write the results as JSON here")
    p.add_argument("--output", default="quality_output", help="folder for the per-case grids and animations")
    p.add_argument("--weights", default=None, help="world base model file (default: the shipped one)")
    p.add_argument("--jobs", type=int, default=1, help="cases run in parallel processes (one torch thread each)")
    p.add_argument("--case-list", default=None,
                   help="comma-separated case indices to run instead of 0..cases-1 (e.g. 0,1)")
    p.add_argument("--tuned-cache", default=None,
                   help="folder that keeps each case's tuned weights between runs (per seed, case, frames, tuning "
                        "steps and lr): a later run of sampling-only rows skips the tuning")


def settings_from(args) -> P.Settings:
    s = P.Settings(seed=args.seed)
    if args.quick:
        s.stage_steps, s.ddim_steps = 30, 10
    if args.stage_steps is not None:
        s.stage_steps = args.stage_steps
    if args.ddim_steps is not None:
        s.ddim_steps = args.ddim_steps
    if s.stage_steps < 1 or s.ddim_steps < 1:
        raise SystemExit("--stage-steps and --ddim-steps must be >= 1")
    s.optimizer = getattr(args, "optimizer", "adamw")
    window = getattr(args, "window", DEFAULT_LENGTH)
    overlap = getattr(args, "overlap", DEFAULT_OVERLAP)
    s.context = ContextOptions(window, overlap, getattr(args, "fuse", "pyramid"))
    try:
        s.context.validate()
    except InputError as exc:
        raise SystemExit(f"--window/--overlap: {exc}") from None
    sample_window = getattr(args, "sample_window", None)
    if sample_window is not None:
        if sample_window == 0:
            s.sample_context = "whole"
        else:
            s.sample_context = ContextOptions(sample_window, min(overlap, sample_window - 1), s.context.fuse)
            try:
                s.sample_context.validate()
            except InputError as exc:
                raise SystemExit(f"--sample-window: {exc}") from None
    return s


def parse_methods(spec: str) -> list[str]:
    if spec in ("all", ""):
        return list(DEFAULT_METHODS)
    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in P.METHODS]
    if unknown:
        raise SystemExit(f"unknown method(s) {unknown}; choose from: {', '.join(DEFAULT_METHODS)}")
    return names


def summarise(per_case: dict[str, list[dict]]) -> dict:
    out = {}
    for name, rows in per_case.items():
        out[name] = {}
        for metric in M.METRICS:
            vals = np.array([r[metric] for r in rows], dtype=np.float64)
            finite = vals[np.isfinite(vals)]
            out[name][metric] = {
                "mean": float(finite.mean()) if finite.size else float("nan"),
                "sd": float(finite.std(ddof=1)) if finite.size > 1 else 0.0,
            }
    return out


def markdown_table(summary: dict, cases: int) -> str:
    arrows = {m: ("↑" if M.HIGHER_IS_BETTER[m] else "↓") for m in M.METRICS}
    head = "| method | " + " | ".join(f"{m} {arrows[m]}" for m in M.METRICS) + " |"
    sep = "|---|" + "---:|" * len(M.METRICS)
    lines = [head, sep]
    for name, row in summary.items():
        cells = [f"{row[m]['mean']:.3f} ± {row[m]['sd']:.3f}" if m in ("ssim", "pose_error", "appearance_error", "ghost_error")
                 else f"{row[m]['mean']:.2f} ± {row[m]['sd']:.2f}" for m in M.METRICS]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append(f"\nmean ± sd over {cases} cases; psnr/background_psnr in dB, flicker and seam_flicker in 8-bit levels "
                 "(seam_flicker: only the frame pairs across a sampling window's border; nan with one window).")
    return "\n".join(lines)


def _label(img: np.ndarray, text: str) -> np.ndarray:
    import cv2

    bar = np.full((18, img.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, text[:24], (3, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (0, 0, 0), 1, cv2.LINE_AA)
    return np.concatenate([bar, img], 0)


def case_grid(columns: dict[str, torch.Tensor], scale: int = 4) -> np.ndarray:
    """Frames (rows) x columns of world images ``(n, h, w, 3)`` -> labelled uint8 grid."""
    cols = []
    for name, frames in columns.items():
        up = vae.upscale(frames.float().clamp(0, 1), scale)
        col = (np.concatenate(list(up.numpy()), 0) * 255).round().astype(np.uint8)
        cols.append(_label(np.pad(col, ((0, 0), (1, 1), (0, 0)), constant_values=255), name))
    return np.concatenate(cols, 1)


def case_strips(columns: dict[str, torch.Tensor], scale: int = 4) -> np.ndarray:
    """One labelled strip of all columns per frame ``(n, H, W, 3)`` uint8, for an animation."""
    n = next(iter(columns.values())).shape[0]
    strips = []
    for i in range(n):
        tiles = [_label(np.pad((vae.upscale(f[i:i + 1].float().clamp(0, 1), scale)[0].numpy() * 255).round().astype(np.uint8),
                               ((0, 0), (1, 1), (0, 0)), constant_values=255), name) for name, f in columns.items()]
        strips.append(np.concatenate(tiles, 1))
    return np.stack(strips)


def pose_columns(inputs: P.CaseInputs) -> dict[str, torch.Tensor]:
    """The fixed columns: source, aligned reference pose (at world resolution), ground truth."""
    ref = inputs.reference_hints.permute(0, 2, 3, 1)
    ref_small = torch.nn.functional.max_pool2d(ref.permute(0, 3, 1, 2), 8).permute(0, 2, 3, 1)
    return {"source": inputs.source_frames(), "reference pose": ref_small, "ground truth": inputs.truth()}


def _run_case(job) -> tuple[int, dict, dict]:
    """One case, all methods: (case index, {method: scores}, {method: seconds}); writes its grid."""
    c, seed, methods, settings, frames, output, weights, threads, tick, *rest = job
    tuned_cache = rest[0] if rest else None
    if threads:
        torch.set_num_threads(threads)
    models = _models(weights)
    # Each case starts from the same global RNG state, so a case scores the same alone or in a set
    # (the engine's own seeds make tuning and sampling deterministic; this covers anything else).
    torch.manual_seed(seed * 100_003 + c)
    case = make_case(seed, c, frames)
    # long clips: the sampling windows' borders, where seam_flicker looks
    sampling = settings.sampling_context
    borders = sampling.borders(frames) if sampling is not None else None
    inputs = P.CaseInputs.build(case, models)
    cache_file = None
    if tuned_cache:
        # tuned in windows shorter than the clip: the window is part of what was tuned
        tuned_window = settings.context.window(frames) if settings.context is not None else frames
        window_tag = f"_window{tuned_window}" if tuned_window < frames else ""
        window_tag += "" if settings.optimizer == "adamw" else f"_{settings.optimizer}"
        cache_file = Path(tuned_cache) / (f"seed{seed}_case{c}_frames{frames}{window_tag}_steps{settings.stage_steps}"
                                          f"_lr{settings.learning_rate:g}.pt")
        if cache_file.exists():
            inputs.cache.update(torch.load(cache_file, map_location="cpu"))
    cached = set(inputs.cache)
    columns = pose_columns(inputs)
    scores, seconds = {}, {}
    for name in methods:
        t0 = time.perf_counter()
        edited = P.METHODS[name][1](models, inputs, settings, tick)
        seconds[name] = time.perf_counter() - t0
        pred = vae.decode(edited)
        scores[name] = M.score(pred, inputs.truth(), inputs.truth_masks(), inputs.source_masks(), inputs.background(),
                               inputs.palette(), borders)
        columns[name] = pred
    if cache_file is not None and set(inputs.cache) != cached:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_name(f".{cache_file.name}.tmp")
        torch.save(inputs.cache, tmp)
        os.replace(tmp, cache_file)
    if output:
        out = Path(output)
        write_png(out / f"case_{c:02d}.png", case_grid(columns))
        write_animation(out / f"case_{c:02d}.webp", case_strips(columns), fps=4)
    return c, scores, seconds


_MODELS: dict = {}


def _models(weights):
    key = str(weights)
    if key not in _MODELS:
        _MODELS[key] = load_world(weights)
    return _MODELS[key]


def run_benchmark(cases: int = 8, seed: int = 0, methods: list[str] | None = None, settings: P.Settings | None = None,
                  frames: int = 8, output: str | os.PathLike | None = "quality_output", weights=None,
                  progress: bool = True, jobs: int = 1, log=print, tuned_cache=None,
                  case_indices: list[int] | None = None) -> dict:
    """Run ``methods`` on ``cases`` world cases; returns ``{"cases", "seed", "methods": {name: {metric:
    {"mean", "sd"}}}, "per_case", "seconds", "settings"}``. ``jobs > 1`` runs cases in that many
    processes (one torch thread each)."""
    methods = methods or list(DEFAULT_METHODS)
    settings = settings or P.Settings(seed=seed)
    indices = list(range(cases)) if case_indices is None else [int(c) for c in case_indices]
    cases = len(indices)
    if output:
        Path(output).mkdir(parents=True, exist_ok=True)
    t_all = time.perf_counter()
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cases * len(methods), desc="quality (method runs)", file=sys.stderr, dynamic_ncols=True)
    results = {}
    if jobs <= 1:
        for k, c in enumerate(indices):
            if bar is not None:
                bar.set_postfix_str(f"case {k + 1}/{cases}")
            c, scores, secs = _run_case((c, seed, methods, settings, frames, output, weights, 0, None, tuned_cache))
            results[c] = (scores, secs)
            if bar is not None:
                bar.update(len(methods))
    else:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(jobs) as pool:
            work = [(c, seed, methods, settings, frames, output, weights, 1, None, tuned_cache) for c in indices]
            for c, scores, secs in pool.imap_unordered(_run_case, work):
                results[c] = (scores, secs)
                if bar is not None:
                    bar.update(len(methods))
    if bar is not None:
        bar.close()
    per_case = {m: [results[c][0][m] for c in indices] for m in methods}
    seconds = {m: round(sum(results[c][1][m] for c in indices), 1) for m in methods}
    return {"cases": cases, "case_indices": indices, "seed": seed, "methods": summarise(per_case), "per_case": per_case,
            "seconds": round(time.perf_counter() - t_all, 1), "method_seconds": seconds,
            "settings": settings.as_dict(), "frames": frames}


def run(args) -> int:
    if args.cases < 1:
        raise SystemExit("--cases must be >= 1")
    if args.frames < 2:
        raise SystemExit("--frames must be >= 2 (the method edits motion across frames)")
    settings = settings_from(args)
    methods = parse_methods(args.methods)
    print("Quality benchmark in the small world (a toy world with ground truth, NOT Stable Diffusion 1.5): "
          f"{args.cases} cases, seed {args.seed}, {len(methods)} methods, tuning {settings.stage_steps} steps/stage "
          f"at lr {settings.learning_rate:g}, {settings.ddim_steps} DDIM steps.", flush=True)
    case_indices = None if not args.case_list else [int(c) for c in args.case_list.split(",") if c.strip()]
    result = run_benchmark(args.cases, args.seed, methods, settings, args.frames, args.output, args.weights,
                           jobs=args.jobs, tuned_cache=args.tuned_cache, case_indices=case_indices)
    print(markdown_table(result["methods"], result["cases"]))
    print(f"\nruntime: {result['seconds']:.0f} s on this machine ({args.jobs} process(es)); "
          f"grids in {args.output}/")
    if args.json:
        path = Path(args.json)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        payload = {k: result[k] for k in ("cases", "case_indices", "seed", "methods", "seconds", "method_seconds", "settings", "frames")}
        payload["per_case"] = result["per_case"]
        tmp.write_text(json.dumps(payload, indent=1, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
        os.replace(tmp, path)
        print(f"wrote {path}")
    return 0
