"""The later version's shipped workflows (video and single-image source): paper settings, and an
end-to-end run of each API twin in-process on tiny models (the validators and stand-ins of
tests/nodes/test_workflows.py; its file-level checks already cover every workflow file)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

_spec = importlib.util.spec_from_file_location("eym_test_workflows_helpers", Path(__file__).resolve().parents[1] / "nodes" / "test_workflows.py")
tw = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(tw, "validate_ui"):
    _spec.loader.exec_module(tw)

V2_FILES = ("edit_your_motion_v2", "edit_your_motion_v2_image")


def test_v2_workflows_are_shipped():
    names = {p.name for p in tw.UI_FILES + tw.API_FILES}
    for stem in V2_FILES:
        assert {f"{tw.WORKFLOW_NAMES[stem]}.json", f"{stem}_api.json"} <= names


@pytest.mark.parametrize("stem", V2_FILES)
def test_v2_workflow_uses_the_later_version_with_paper_settings(stem):
    prompt = tw._load(tw._file(f"{stem}_api.json"))
    by_type: dict = {}
    for nid, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append(node["inputs"])
    ((load,),) = [by_type["EYM_LoadVideoModel"]]
    assert load["method"] == "eym_v2" and load["attention_mode"] == "bidirectional"
    for ctype in ("EYM_STLStage1", "EYM_STLStage2"):
        ((inputs,),) = [by_type[ctype]]
        assert inputs["steps"] == 300 and inputs["learning_rate"] == 3e-5
    assert not {"EYM_TuneStage1", "EYM_TuneStage2", "EYM_TwoBranchSampler"} & set(by_type)
    ((inv,),), ((smp,),) = [by_type["EYM_DDIMInversion"]], [by_type["EYM_SingleBranchSampler"]]
    assert inv["steps"] == smp["steps"] == 50 and inv["guidance"] == smp["guidance"] == 1.0
    assert len(by_type["CLIPTextEncode"]) == 2
    # STL stage 1 reads the masked latents, stage 2 and the inversion the unmasked ones
    (s1,), (s2,) = by_type["EYM_STLStage1"], by_type["EYM_STLStage2"]
    assert prompt[prompt[s1["masked_latent"][0]]["inputs"]["pixels"][0]]["class_type"] == "EYM_MaskFrames"
    assert s2["latent"] == inv["latent"] and prompt[s2["latent"][0]]["inputs"]["pixels"][0] != \
        prompt[s1["masked_latent"][0]]["inputs"]["pixels"][0]
    if stem.endswith("_image"):
        assert "LoadImage" in by_type and len(by_type["LoadVideo"]) == 1
        ((rep,),) = [by_type["EYM_RepeatImageToClip"]]
        assert prompt[rep["like"][0]]["class_type"] == "ImageScale"


@pytest.mark.parametrize("stem", V2_FILES)
def test_v2_api_workflow_runs_end_to_end(stem, tmp_path, monkeypatch):
    """auto with the OpenPose file present and no mediapipe (the synthetic stick figure is no human
    for mediapipe): OpenPose poses, the keypoint mask."""
    from edit_your_motion.motion_core.pose import mediapipe_detector, openpose
    from edit_your_motion.motion_core.testing.synthetic import make_clip
    from edit_your_motion.nodes import pose_nodes

    monkeypatch.setenv("EYM_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(mediapipe_detector, "mediapipe_available", lambda: False)
    pose_nodes._DETECTORS.clear()
    tw._write_body_model(tmp_path)

    prompt = tw._load(tw._file(f"{stem}_api.json"))
    overrides = {"EYM_SelectFrames": {"frames": 3}, "ImageScale": {"width": 64, "height": 64},
                 "EYM_ExtractPoses": {"detect_resolution": 64}, "EYM_STLStage1": {"steps": 2},
                 "EYM_STLStage2": {"steps": 2}, "EYM_DDIMInversion": {"steps": 3}, "EYM_SingleBranchSampler": {"steps": 3}}
    for node in prompt.values():
        node["inputs"].update(overrides.get(node["class_type"], {}))

    image_source = stem.endswith("_image")
    source = make_clip(1 if image_source else 5, 64, 80, "wave", seed=2)  # wider than tall: cropped
    reference = make_clip(6, 64, 64, "walk", seed=3)  # 24 fps: every 2nd frame at the workflow's 12 fps
    videos = {n["inputs"]["file"]: n for n in prompt.values() if n["class_type"] == "LoadVideo"}
    clips, images = {}, {}
    sampler = next(n for n, v in prompt.items() if v["class_type"] == "EYM_SingleBranchSampler")
    align = tw._upstream(prompt, sampler, "EYM_AlignSkeleton", "reference_poses")
    ref_video = tw._upstream(prompt, align, "LoadVideo", "reference")
    clips[prompt[ref_video]["inputs"]["file"]] = (reference, 24.0)
    if image_source:
        assert len(videos) == 1
        load_image = next(v for v in prompt.values() if v["class_type"] == "LoadImage")
        images[load_image["inputs"]["image"]] = source.frames
    else:
        src_video = tw._upstream(prompt, sampler, "LoadVideo", "inverted_latent")
        assert src_video != ref_video
        clips[prompt[src_video]["inputs"]["file"]] = (source, 12.5)

    candidates = []
    for clip in (source, reference):
        _, h, w, _ = clip.frames.shape
        y0, x0, ch, cw = tw._crop_box(h, w, 64, 64, "center")
        kp = clip.keypoints.copy()
        kp[..., 0] = (kp[..., 0] - x0) * 64 / cw
        kp[..., 1] = (kp[..., 1] - y0) * 64 / ch
        candidates += list(zip(tw.image_scale(clip.frames, "lanczos", 64, 64, "center"), kp))

    def fake_detect(images_, body_model, person="largest", detect_resolution=512, callback=None):
        out = []
        for i, frame in enumerate(images_):
            errs = [float((frame - f).abs().mean()) for f, _ in candidates]
            assert min(errs) < 1e-4
            out.append(candidates[int(np.argmin(errs))][1])
            if callback:
                callback(i + 1, images_.shape[0])
        return np.stack(out).astype(np.float32), np.ones(images_.shape[0], bool)

    monkeypatch.setattr(openpose, "detect_keypoints", fake_detect)
    saved: list = []
    classes = dict(tw.pack_classes())
    classes.update(tw._stand_ins(clips, saved))
    classes["LoadImage"] = tw._node(lambda image: (images[image], torch.zeros(images[image].shape[:3])),
                                    ("IMAGE", "MASK"))
    try:
        outputs = tw.execute(prompt, classes)
    finally:
        pose_nodes._DETECTORS.clear()

    ((video, prefix),) = saved
    # saved at the rate of the frames taken: the source's (every frame of 12.5 fps), or with an image the
    # reference's (every 2nd frame of 24 fps)
    assert tuple(video.frames.shape) == (3, 64, 64, 3) and video.fps == (12.0 if image_source else 12.5)
    assert torch.isfinite(video.frames).all() and video.frames.std() > 0
    (tuned,) = sorted((tmp_path / "edit_your_motion").rglob("*.safetensors"))
    with safe_open(str(tuned), framework="pt") as f:
        assert f.metadata()["method"] == "eym_v2" and f.metadata()["attention_mode"] == "bidirectional"
        assert any(k.startswith("motion_attention.") for k in f.keys())

    load_model = next(n for n, v in prompt.items() if v["class_type"] == "EYM_LoadVideoModel")
    save_node = next(n for n, v in prompt.items() if v["class_type"] == "EYM_SaveTunedWeights")
    (reloaded,) = classes["EYM_LoadTunedWeights"]().run(outputs[load_model][0], tuned.name)
    state = outputs[save_node][0].state
    assert reloaded.steps == {1: 2, 2: 2} and set(reloaded.state) == set(state)
    assert all(torch.equal(reloaded.state[k].float(), state[k].float()) for k in state)
