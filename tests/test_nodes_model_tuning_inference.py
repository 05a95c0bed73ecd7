"""Model, tuning and inference nodes run standalone (the bridge falls back to plain torch) on tiny
models, with ComfyUI's value types."""

from __future__ import annotations

import pytest
import torch

from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.errors import InputError, ModelError
from edit_your_motion.motion_core.testing.synthetic import frames_to_latents, make_clip
from edit_your_motion.nodes import comfy_bridge as bridge
from edit_your_motion.nodes import inference_nodes, model_nodes, tuning_nodes
from edit_your_motion.nodes.handle import MotionHandle

pytestmark = pytest.mark.usefixtures("comfy_inference_mode")  # as ComfyUI runs nodes

SCALE = 0.18215


def cond(text):
    return [[tiny.encode_prompt(text), {"pooled_output": None}]]


def latent(frames):
    return {"samples": frames_to_latents(frames) / SCALE}


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("EYM_MODELS_DIR", str(tmp_path))
    return tmp_path


@pytest.fixture(scope="module")
def data():
    src = make_clip(3, 64, 64, "wave", seed=2)
    ref = make_clip(3, 64, 64, "walk", seed=2)
    unet = tiny.build_unet("tiny", 0)
    return dict(unet=unet, cn=tiny.build_controlnet(unet, "tiny", 1), src=src, ref=ref,
                pc=cond("a person in a green shirt"), ps=cond("a person in a green shirt is waving"),
                pt=cond("a person in a green shirt is walking"), empty=cond(""))


def load(data, mode="rc"):
    return model_nodes.LoadVideoModel().run(data["unet"], data["cn"], mode, "auto")[0]


def stage1(data, handle, steps=2, **kw):
    args = dict(steps=steps, learning_rate=1e-3, seed=0, precision="auto", gradient_checkpointing=True,
                control_strength=1.0, shuffle="per_step")
    args.update(kw)
    masked = data["src"].frames * data["src"].masks[..., None]
    return tuning_nodes.TuneStage1().run(handle, latent(masked), data["pc"], data["src"].poses, **args)[0]


def stage2(data, handle, steps=2):
    return tuning_nodes.TuneStage2().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses, steps, 1e-3, 0,
                                         "auto", True, 1.0, 0.9)[0]


def test_load_video_model_does_not_touch_the_input_model(data):
    before = {k: v.clone() for k, v in data["unet"].state_dict().items()}
    handle = load(data, "bidirectional")
    assert isinstance(handle, MotionHandle) and handle.attention_mode == "bidirectional" and handle.state is None
    assert not hasattr(data["unet"], "_eym_context")
    assert all(torch.equal(before[k], v) for k, v in data["unet"].state_dict().items())


def test_load_video_model_rejects_wrong_inputs(data):
    with pytest.raises(ModelError, match="MODEL"):
        model_nodes.LoadVideoModel().run("not a model", data["cn"], "rc", "auto")
    with pytest.raises(ModelError, match="CONTROL_NET"):
        model_nodes.LoadVideoModel().run(data["unet"], object(), "rc", "auto")


def test_tuning_returns_new_handles_and_never_mutates_inputs(data):
    base = load(data)
    h1 = stage1(data, base)
    h2 = stage2(data, h1)
    assert base.state is None and set(h1.steps) == {1} and h2.steps == {1: 2, 2: 2}
    engine = base.engine
    s1, s2 = set(engine.model.stage_parameter_names(1)), set(engine.model.stage_parameter_names(2))
    assert set(h1.state) == s1 and set(h2.state) == s1 | s2
    assert all(torch.equal(h1.state[k], h2.state[k]) for k in s1)  # stage 2 leaves RC-Attn alone
    # re-running stage 1 from the same base handle starts from the base weights, not from h1
    again = stage1(data, base)
    assert all(torch.equal(again.state[k], h1.state[k]) for k in s1)
    # continuing a tuned handle accumulates steps
    more = stage1(data, h1, steps=1)
    assert more.steps == {1: 3}


def test_inversion_and_sampler_nodes(data):
    handle = stage2(data, stage1(data, load(data)))
    z = inference_nodes.DDIMInversion().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses, 4, True, 1.0, 1.0)[0]
    assert z["samples"].shape == (3, 4, 8, 8) and z[inference_nodes.INVERSION_KEY]["steps"] == 4
    edited, recon = inference_nodes.TwoBranchSampler().run(
        handle, z, data["ps"], data["pt"], data["src"].poses, data["ref"].poses, 4, 1.0, 1.0, 0, 0.0, 0.0, 1.0,
        "down+mid+up", "concat", True)
    assert edited["samples"].shape == recon["samples"].shape == (3, 4, 8, 8)
    assert torch.isfinite(edited["samples"]).all() and (edited["samples"] - recon["samples"]).abs().max() > 1e-4
    same, recon2 = inference_nodes.TwoBranchSampler().run(
        handle, z, data["ps"], data["ps"], data["src"].poses, data["src"].poses, 4, 1.0, 1.0, 0, 0.0, 0.0, 1.0,
        "down+mid+up", "balanced", True)
    torch.testing.assert_close(same["samples"], recon2["samples"], atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="negative"):
        inference_nodes.TwoBranchSampler().run(handle, z, data["ps"], data["pt"], data["src"].poses, data["ref"].poses,
                                               4, 1.0, 3.0, 0, 0.0, 0.0, 1.0, "up", "concat", True)
    cfg, _ = inference_nodes.TwoBranchSampler().run(handle, z, data["ps"], data["pt"], data["src"].poses, data["ref"].poses,
                                                    2, 1.0, 3.0, 0, 0.0, 0.0, 1.0, "up", "concat", True, negative=data["empty"])
    assert torch.isfinite(cfg["samples"]).all()


def test_handles_switch_cleanly_on_one_engine(data):
    """Two handles of one engine, used alternately, each sample with their own weights."""
    base = load(data)
    tuned = stage2(data, stage1(data, base, steps=3), steps=3)
    run = lambda h: inference_nodes.DDIMInversion().run(h, latent(data["src"].frames), data["ps"], data["src"].poses, 3, True, 1.0, 1.0)[0]["samples"]
    a1, b1, a2 = run(base), run(tuned), run(base)
    torch.testing.assert_close(a1, a2)
    assert (a1 - b1).abs().max() > 1e-5


def test_frame_count_mismatch_is_named(data):
    handle = load(data)
    with pytest.raises(InputError, match="latents has 3, source_poses has 2"):
        tuning_nodes.TuneStage2().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses[:2], 1, 1e-3, 0,
                                      "auto", True, 1.0, 0.9)
    with pytest.raises(InputError, match="CONDITIONING"):
        tuning_nodes.TuneStage2().run(handle, latent(data["src"].frames), "a prompt", data["src"].poses, 1, 1e-3, 0,
                                      "auto", True, 1.0, 0.9)
    with pytest.raises(InputError, match="Load Video Model"):
        tuning_nodes.TuneStage2().run("model", latent(data["src"].frames), data["ps"], data["src"].poses, 1, 1e-3, 0,
                                      "auto", True, 1.0, 0.9)


def test_interrupt_stops_tuning_within_a_step_and_keeps_the_handle_intact(data):
    base = load(data)
    calls = []
    original = bridge.Progress.step

    def spy(self, n=1, loss=None):
        calls.append(self.done)
        if self.done == 1:
            bridge.request_interrupt()
        original(self, n, loss)

    bridge.Progress.step = spy
    try:
        with pytest.raises(bridge.Interrupted):
            stage1(data, base, steps=10)
    finally:
        bridge.Progress.step = original
    assert calls == [0, 1]  # stopped at the check right after the interrupt
    fresh = stage1(data, base, steps=2)
    ref = stage1(data, load(data), steps=2)
    assert all(torch.equal(fresh.state[k], ref.state[k]) for k in ref.state)


def test_save_and_load_tuned_weights_nodes(data, models_dir):
    tuned = stage2(data, stage1(data, load(data, "sparse_causal")))
    out = model_nodes.SaveTunedWeights().run(tuned, "dancer")
    assert out["ui"]["text"] == ["dancer_00001.safetensors"]
    assert model_nodes.SaveTunedWeights().run(tuned, "dancer")["ui"]["text"] == ["dancer_00002.safetensors"]
    files = sorted(p.name for p in (models_dir / "edit_your_motion").iterdir())
    assert files == ["dancer_00001.safetensors", "dancer_00002.safetensors"]  # no temporary files left
    assert "dancer_00001.safetensors" in model_nodes.LoadTunedWeights.INPUT_TYPES()["required"]["tuned_weights"][0]
    fresh = load(data)  # another engine of the same base checkpoint
    loaded = model_nodes.LoadTunedWeights().run(fresh, "dancer_00001.safetensors")[0]
    assert loaded.attention_mode == "sparse_causal" and loaded.steps == {1: 2, 2: 2}
    assert all(torch.equal(loaded.state[k], tuned.state[k]) for k in tuned.state)
    other = model_nodes.LoadVideoModel().run(tiny.build_unet("tiny", 9), data["cn"], "rc", "auto")[0]
    with pytest.raises(ModelError, match="different base checkpoint"):
        model_nodes.LoadTunedWeights().run(other, "dancer_00001.safetensors")
    with pytest.raises(InputError, match="not been tuned"):
        model_nodes.SaveTunedWeights().run(load(data), "x")
    with pytest.raises(InputError, match="was not found"):
        model_nodes.LoadTunedWeights().run(fresh, "missing.safetensors")
    with pytest.raises(InputError, match="plain name"):
        model_nodes.SaveTunedWeights().run(tuned, "../escape")


def test_rc_attn_patch_node(data):
    h = load(data)
    p = model_nodes.RCAttnPatch().run(h, "self")[0]
    assert p.attention_mode == "self" and h.attention_mode == "rc" and p.engine is h.engine
