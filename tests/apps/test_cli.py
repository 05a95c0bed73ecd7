"""The command line: the self-check, the main job's fallback, filling the shipped workflow."""

from __future__ import annotations

import argparse
import json

import av
import cv2
import numpy as np
import pytest
from PIL import Image

from edit_your_motion.motion_core.__main__ import main
from edit_your_motion.motion_core.apps import edit as headless
from edit_your_motion.motion_core.apps.selfcheck import BANNER, run_selfcheck


def _args(**kw):
    p = argparse.ArgumentParser()
    headless.add_edit_arguments(p)
    args = p.parse_args([])
    args.comfyui = None
    for k, v in kw.items():
        setattr(args, k, v)
    return args


def test_selfcheck_writes_video_frames_and_report(tmp_path):
    lines = []
    report = run_selfcheck(tmp_path, frames=3, size=32, stage_steps=3, ddim_steps=3, log=lines.append)
    assert lines[0] == BANNER and "SELF-CHECK" in lines[0]
    assert report["passed"] and report["self_check"] is True
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["checks"] == report["checks"] and saved["self_check"] is True
    # the one-call edit (run_v1) and the saved, reloaded weights run step by step give the same latents
    assert saved["reload_max_abs_diff"] == 0.0 and saved["checks"]["the saved and reloaded weights reproduce the one-call edit exactly"]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    assert sorted(p.name for p in (tmp_path / "frames").iterdir()) == [f"frame_{i:03d}.png" for i in range(3)]
    assert saved["passed"] is True and saved["passed"] == all(saved["checks"].values())
    with av.open(str(tmp_path / "selfcheck.mp4")) as container:  # browser-playable H.264
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264" and stream.codec_context.pix_fmt == "yuv420p"
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
    assert len(frames) == 3 and frames[0].shape == (32, 4 * 32, 3)
    png = cv2.cvtColor(cv2.imread(str(tmp_path / "frames" / "frame_000.png")), cv2.COLOR_BGR2RGB)
    assert np.abs(frames[0].astype(int) - png.astype(int)).mean() < 8  # the video shows the frames
    with Image.open(tmp_path / "selfcheck.webp") as im:
        assert im.is_animated and im.n_frames == 3 and im.size == (4 * 32, 32)
    assert not list(tmp_path.glob(".*tmp*"))


@pytest.mark.parametrize("flags,message", [(["--size", "60"], "size must be a multiple of 8"),
                                           (["--frames", "0"], "frames must be from 2")])
def test_selfcheck_bad_settings_fail_cleanly_before_writing(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    assert main(["selfcheck", "--output", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not out.exists()


def test_edit_with_explicit_real_edit_options_fails_listing_what_is_missing(tmp_path, monkeypatch, capsys):
    """Asked for a real edit that cannot run: exit 2 with the list, never the self-check."""
    fallbacks = []
    monkeypatch.setattr(headless, "run_fallback", lambda args, log=print: fallbacks.append(args) or 0)
    monkeypatch.delenv("EYM_COMFYUI_DIR", raising=False)
    assert main(["edit", "--comfyui", str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    out = capsys.readouterr().out
    assert "Cannot run the edit asked for (--comfyui)" in out and "no ComfyUI folder" in out
    # a mistyped --reference with a ComfyUI from the environment: the typo is named
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    monkeypatch.setenv("EYM_COMFYUI_DIR", str(comfy))
    assert main(["edit", "--reference", str(tmp_path / "typo.mp4"), "--output", str(tmp_path / "o")]) == 2
    assert "typo.mp4 does not exist" in capsys.readouterr().out
    assert fallbacks == [] and not (tmp_path / "o").exists()
    # the bare command keeps its fallback, through run_fallback
    monkeypatch.delenv("EYM_COMFYUI_DIR")
    assert main(["edit", "--output", str(tmp_path / "o")]) == 0 and len(fallbacks) == 1
    assert main(["edit", "--size", "60"]) == 2 and "--size 60 must be a positive multiple of 8" in capsys.readouterr().out


def test_edit_falls_back_to_the_world_edit_and_says_why(tmp_path, monkeypatch):
    """Dispatch only: the world edit itself is tested in tests/world/test_world_quality.py."""
    calls, lines = [], []
    monkeypatch.setattr("edit_your_motion.motion_core.apps.world_edit.run_world_edit",
                        lambda output, log=print: calls.append(output) or {"passed": True})
    monkeypatch.delenv("EYM_COMFYUI_DIR", raising=False)
    assert headless.run_edit(_args(output=str(tmp_path)), log=lines.append) == 0
    assert calls == [str(tmp_path)]
    assert any("no ComfyUI folder" in line for line in lines)


def test_missing_pieces_are_listed(tmp_path):
    comfy = tmp_path / "ComfyUI"
    (comfy / "custom_nodes").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    (comfy / "models" / "checkpoints").mkdir(parents=True)
    (comfy / "models" / "checkpoints" / "sd15.safetensors").write_bytes(b"x")
    graph = headless.load_workflow()
    reasons = headless.missing_for_real_run(_args(comfyui=str(comfy), checkpoint="sd15.safetensors", detector="openpose",
                                                  source=str(tmp_path / "nope.mp4")), graph)
    text = "\n".join(reasons)
    assert "not installed" in text and "control_v11p_sd15_openpose" in text and "body_pose_model.pth" in text
    assert "nope.mp4 does not exist" in text and "no --reference video" in text
    assert "sd15.safetensors" not in text


def test_pose_detector_needs_the_openpose_file_or_mediapipe(tmp_path, monkeypatch):
    comfy = tmp_path / "ComfyUI"
    (comfy / "models" / "openpose").mkdir(parents=True)
    asked = []
    have_mediapipe = {"value": False}
    monkeypatch.setattr(headless, "_mediapipe_in", lambda python: asked.append(python) or have_mediapipe["value"])
    missing = lambda **kw: headless._pose_detector_missing(_args(comfyui=str(comfy), python="py", **kw), comfy)
    (reason,) = missing()  # auto, neither
    assert "no pose detector" in reason and "body_pose_model.pth" in reason and "pip install --no-deps mediapipe" in reason
    assert missing(detector="openpose") == [f"no body_pose_model.pth in {comfy / 'models' / 'openpose'}"]
    assert "mediapipe is not installed" in missing(detector="mediapipe")[0]
    assert "use auto, openpose or mediapipe" in missing(detector="dwpose")[0]
    have_mediapipe["value"] = True
    assert missing() == [] and missing(detector="mediapipe") == [] and asked[-1] == "py"
    # with the file, auto needs nothing else; an old-style --detector FILE means openpose with that file
    (comfy / "models" / "openpose" / "body_pose_model.pth").write_bytes(b"x")
    have_mediapipe["value"] = False
    assert missing() == [] and missing(detector="openpose") == [] and missing(detector="body_pose_model.pth") == []
    assert missing(detector="other.pth") == [f"no other.pth in {comfy / 'models' / 'openpose'}"]


def test_fill_workflow_puts_every_setting_in_its_node():
    graph = headless.load_workflow()
    args = _args(checkpoint="my.safetensors", controlnet="cn.safetensors", content_prompt="a girl",
                 source_prompt="a girl is running", target_prompt="a girl is jumping", frames=6, size=256,
                 stage1_steps=11, stage2_steps=12, ddim_steps=13, seed=7, fps=8.0)
    g = headless.fill_workflow(graph, args, "s.mp4", "r.mp4")
    node = lambda name: g[headless.NODES[name][0]]["inputs"]
    assert node("checkpoint")["ckpt_name"] == "my.safetensors" and node("controlnet")["control_net_name"] == "cn.safetensors"
    assert node("source_video")["file"] == "s.mp4" and node("reference_video")["file"] == "r.mp4"
    assert node("source_frames")["frames"] == node("reference_frames")["frames"] == 6
    assert node("source_frames")["target_fps"] == node("reference_frames")["target_fps"] == 8.0
    assert node("source_size")["width"] == node("reference_size")["height"] == 256
    assert [node(n)["text"] for n in ("content_prompt", "source_prompt", "target_prompt")] == \
        ["a girl", "a girl is running", "a girl is jumping"]
    assert (node("stage1")["steps"], node("stage2")["steps"], node("inversion")["steps"], node("sampler")["steps"]) == (11, 12, 13, 13)
    assert node("stage1")["seed"] == node("sampler")["seed"] == 7
    assert node("source_pose")["detector"] == node("reference_pose")["detector"] == "auto"
    assert node("source_pose")["openpose_model"] == "body_pose_model.pth"
    assert graph[headless.NODES["stage1"][0]]["inputs"]["steps"] == 300  # the shipped graph is untouched
    # by default the shipped long-clip settings: 48 frames at about 12 fps, in context windows of 8
    d = headless.fill_workflow(graph, _args(), "s.mp4", "r.mp4")
    assert (d["6"]["inputs"]["frames"], d["6"]["inputs"]["target_fps"]) == (48, 12.0)
    assert d["22"]["inputs"]["context"] == d["26"]["inputs"]["context"] == [headless.NODES["context"][0], 0]
    with pytest.raises(SystemExit, match="divisible by 8"):
        headless.fill_workflow(graph, _args(size=250), "s.mp4", "r.mp4")


def test_workflow_ids_are_checked(tmp_path):
    graph = headless.load_workflow()
    graph["22"]["class_type"] = "KSampler"
    path = tmp_path / "wf.json"
    path.write_text(json.dumps(graph))
    with pytest.raises(RuntimeError, match="node 22"):
        headless.load_workflow(path)
