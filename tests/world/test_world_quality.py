"""The shipped world base model, the quality benchmark and the world edit (the main job's fallback)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors import safe_open

from edit_your_motion.motion_core.__main__ import main
from edit_your_motion.motion_core.apps.world_edit import run_world_edit
from edit_your_motion.motion_core.world import metrics as M
from edit_your_motion.motion_core.world import model as WM
from edit_your_motion.motion_core.world import pipeline as P
from edit_your_motion.motion_core.world import vae
from edit_your_motion.motion_core.world.scene import make_case


@pytest.fixture(scope="module")
def world():
    return WM.load()


def test_shipped_weights_are_small_half_precision_and_carry_their_card():
    path = WM.WEIGHTS
    assert path.stat().st_size <= 20 * 2**20
    with safe_open(str(path), "pt") as f:
        meta = json.loads(f.metadata()["eym_world"])
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes == {"F16"}
    assert meta["steps"] >= 500 and meta["final_loss_avg100"] < 0.1
    assert (path.parent / "MODEL_CARD.md").is_file()


def test_world_model_runs_in_the_engine_unchanged(world):
    model = world.motion_model("rc")
    case = make_case(0, 0, num_frames=3)
    lat = vae.encode(case.source.images)
    out = model.predict(lat, 500, world.text.encode(case.prompt_source), 3, poses=WM.pose_hints(case.source.keypoints))
    assert out.shape == lat.shape and torch.isfinite(out).all()
    # a fresh motion model never shares storage with the base weights (tuning must not touch them)
    p = next(model.unet.parameters())
    assert p.data_ptr() != next(world.unet.parameters()).data_ptr()


def test_base_model_denoises_world_frames_better_with_the_right_pose(world):
    """The base model has learned the world: its noise prediction on a noisy frame is better with the
    frame's own pose and prompt than with another frame's pose (the ControlNet carries the pose)."""
    case = make_case(1, 2, num_frames=4)
    lat = vae.encode(case.source.images)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(lat.shape, generator=gen)
    model = world.motion_model("self")
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(WM.SCHEDULER_CONFIG)
    t = torch.full((4,), 600)
    zt = sched.add_noise(lat, noise, t)
    emb = world.text.encode(case.prompt_source)
    right = model.predict(zt, t, emb, 4, poses=WM.pose_hints(case.source.keypoints))
    wrong = model.predict(zt, t, emb, 4, poses=WM.pose_hints(case.aligned_keypoints))
    err_right, err_wrong = (right - noise).pow(2).mean(), (wrong - noise).pow(2).mean()
    assert err_right < 0.5 * noise.pow(2).mean()  # it denoises
    assert err_right < err_wrong


def test_one_case_eym_beats_controlnet_only_on_background_psnr(world):
    """The acceptance check at reduced steps: the method keeps the source's scene, the baseline cannot;
    keeping the background through the inversion trajectory (beyond the paper) keeps it better still."""
    case = make_case(0, 0)
    inputs = P.CaseInputs.build(case, world)
    settings = P.Settings(stage_steps=30, ddim_steps=10)
    scores = {}
    for name in ("eym_v1", "eym_v1_enhanced", "controlnet_only"):
        pred = vae.decode(P.METHODS[name][1](world, inputs, settings, None))
        scores[name] = M.score(pred, inputs.truth(), inputs.truth_masks(), inputs.source_masks(), inputs.background(),
                               inputs.palette())
    assert scores["eym_v1"]["background_psnr"] > scores["controlnet_only"]["background_psnr"] + 3, scores
    # measured at these steps: 29.04 vs 34.71 dB; a 1 dB margin leaves room for CPU rounding
    assert scores["eym_v1_enhanced"]["background_psnr"] > scores["eym_v1"]["background_psnr"] + 1, scores


def test_ghost_error_known_answers():
    """Only pixels inside the source person and outside the true person count; the value is the mean
    absolute RGB difference there."""
    truth = torch.zeros(2, 4, 4, 3)
    src = torch.zeros(2, 4, 4)
    tgt = torch.zeros(2, 4, 4)
    src[:, 0, :2] = 1  # the source person: two pixels per frame ...
    tgt[:, 0, 1] = 0.25  # ... one of which the true person touches
    pred = truth.clone()
    pred[:, 1:] = 0.7  # outside the source person: ignored
    assert M.ghost_error(pred, truth, src, tgt) == 0
    pred[0, 0, 0] = torch.tensor([0.3, 0.0, 0.0])  # a ghost pixel: |diff| mean over RGB = 0.1
    pred[:, 0, 1] = 0.9  # inside the true person: ignored
    assert M.ghost_error(pred, truth, src, tgt) == pytest.approx(0.1 / 2)
    assert np.isnan(M.ghost_error(pred, truth, torch.zeros(2, 4, 4), tgt))


def test_quality_command_writes_table_json_and_grids(tmp_path, capsys):
    out = tmp_path / "q"
    code = main(["quality", "--cases", "1", "--methods", "no_tuning,controlnet_only", "--ddim-steps", "3",
                 "--output", str(out), "--json", str(tmp_path / "r.json")])
    assert code == 0
    printed = capsys.readouterr().out
    assert "| no_tuning |" in printed and "| controlnet_only |" in printed and "NOT Stable Diffusion" in printed
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["cases"] == 1 and data["seed"] == 0
    assert set(data["methods"]) == {"no_tuning", "controlnet_only"}
    for row in data["methods"].values():
        assert set(row) == set(M.METRICS) and all({"mean", "sd"} <= set(v) for v in row.values())
    assert (out / "case_00.png").is_file() and (out / "case_00.webp").is_file()
    assert not list(out.glob(".*tmp*"))


def test_quality_command_rejects_unknown_methods():
    with pytest.raises(SystemExit, match="eym_v9"):
        main(["quality", "--methods", "eym_v9"])


def test_world_edit_writes_grid_animation_and_report(tmp_path):
    lines = []
    report = run_world_edit(tmp_path, stage_steps=3, ddim_steps=3, frames=3, log=lines.append)
    assert "WORLD EDIT" in lines[0] and "not Stable Diffusion" in lines[0]
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["metrics"].keys() == {"eym_v1", "eym_v1_enhanced", "controlnet_only"} and "passed" in saved
    from PIL import Image

    grid = Image.open(tmp_path / "world_edit.png")
    assert grid.size[1] > 3 * 4 * 32  # three frames of 4x-upscaled 32x32 tiles plus labels
    anim = Image.open(tmp_path / "world_edit.webp")
    assert getattr(anim, "n_frames", 1) == 3
    assert np.isfinite(report["metrics"]["eym_v1"]["psnr"])


def test_quality_tuned_cache_and_case_list(tmp_path):
    """--case-list runs only the named cases; --tuned-cache writes each case's tuned weights once, and a
    second run that loads them scores exactly the same (tuning is skipped: the file is not rewritten)."""
    cache = tmp_path / "tuned"
    args = ["quality", "--cases", "8", "--case-list", "3", "--methods", "eym_v1_without_stage1", "--stage-steps", "1",
            "--ddim-steps", "2", "--frames", "2", "--output", "", "--tuned-cache", str(cache)]
    assert main(args + ["--json", str(tmp_path / "a.json")]) == 0
    (saved,) = cache.glob("*.pt")
    assert saved.name == "seed0_case3_frames2_steps1_lr0.0003.pt"
    stamp = saved.stat().st_mtime_ns
    assert main(args + ["--json", str(tmp_path / "b.json")]) == 0
    assert saved.stat().st_mtime_ns == stamp
    a, b = (json.loads((tmp_path / f"{x}.json").read_text()) for x in "ab")
    assert a["case_indices"] == b["case_indices"] == [3] and a["cases"] == 1
    assert a["per_case"] == b["per_case"]
