"""Model, tuning and inference nodes run standalone (the bridge falls back to plain torch) on tiny
models, with ComfyUI's value types."""

from __future__ import annotations

import pytest
import torch

from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.errors import InputError, ModelError
from edit_your_motion.motion_core.testing.values import latent
from edit_your_motion.nodes import comfy_bridge as bridge
from edit_your_motion.nodes import inference_nodes, model_nodes, tuning_nodes
from edit_your_motion.nodes.handle import MotionHandle, activated
from edit_your_motion.motion_core.method.ddim import ddim_invert
from edit_your_motion.motion_core.method.frames import poses_to_condition
from edit_your_motion.motion_core.method.sampler import SamplerConfig, two_branch_sample
from edit_your_motion.motion_core.method.stages import stage_parameter_names

pytestmark = pytest.mark.usefixtures("comfy_inference_mode")  # as ComfyUI runs nodes

SCALE = 0.18215


@pytest.fixture(scope="module")
def data(tiny_job):
    return tiny_job


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
    s1, s2 = set(stage_parameter_names(engine.model, 1)), set(stage_parameter_names(engine.model, 2))
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
    # the nodes are the engine with ComfyUI's conventions: unscaled latents, IMAGE poses, CONDITIONING. The
    # reference starts from the very tensors the nodes compute (LATENT samples * scale) and its results are
    # unscaled the same way (/ scale), so the same ops run in the same order and the results are equal exactly.
    # (Comparing against frames_to_latents() instead would add a /scale*scale round trip whose last-bit rounding
    # the DDIM steps amplify differently on different CPU kernels.)
    with activated(handle) as model:
        hint = lambda poses: poses_to_condition(poses, 64, 64)
        z_ref = ddim_invert(model, latent(data["src"].frames)["samples"] * SCALE, data["ps"][0][0],
                            hint(data["src"].poses), num_steps=4)
        ref = two_branch_sample(model, z["samples"] * SCALE, data["ps"][0][0], data["pt"][0][0], hint(data["src"].poses),
                                hint(data["ref"].poses), SamplerConfig(num_steps=4))
    exact = dict(atol=0, rtol=0)
    torch.testing.assert_close(z["samples"], z_ref / SCALE, **exact)
    torch.testing.assert_close(edited["samples"], ref.edited / SCALE, **exact)
    torch.testing.assert_close(recon["samples"], ref.reconstruction / SCALE, **exact)
    same, recon2 = inference_nodes.TwoBranchSampler().run(
        handle, z, data["ps"], data["ps"], data["src"].poses, data["src"].poses, 4, 1.0, 1.0, 0, 0.0, 0.0, 1.0,
        "down+mid+up", "balanced", True)
    torch.testing.assert_close(same["samples"], recon2["samples"], atol=1e-4, rtol=1e-4)
    with pytest.raises(InputError, match="negative"):
        inference_nodes.TwoBranchSampler().run(handle, z, data["ps"], data["pt"], data["src"].poses, data["ref"].poses,
                                               4, 1.0, 3.0, 0, 0.0, 0.0, 1.0, "up", "concat", True)
    cfg, _ = inference_nodes.TwoBranchSampler().run(handle, z, data["ps"], data["pt"], data["src"].poses, data["ref"].poses,
                                                    2, 1.0, 3.0, 0, 0.0, 0.0, 1.0, "up", "concat", True, negative=data["empty"])
    with activated(handle) as model:
        ref_cfg = two_branch_sample(model, z["samples"] * SCALE, data["ps"][0][0], data["pt"][0][0], hint(data["src"].poses),
                                    hint(data["ref"].poses), SamplerConfig(num_steps=2, guidance_scale=3.0, inject_parts=("up",)),
                                    uncond_embeddings=data["empty"][0][0])
    torch.testing.assert_close(cfg["samples"], ref_cfg.edited / SCALE, **exact)
    with pytest.raises(InputError, match="guidance > 1 needs 'negative'"):  # the node's input, not the engine's name
        inference_nodes.DDIMInversion().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses, 2, True, 1.0, 3.0)


def test_balanced_injection_warns_where_it_is_not_exact(data, caplog):
    handle = model_nodes.RCAttnPatch().run(load(data), "bidirectional")[0]
    z = {"samples": torch.zeros(3, 4, 8, 8)}
    with caplog.at_level("WARNING", logger="edit_your_motion"):
        inference_nodes.TwoBranchSampler().run(handle, z, data["ps"], data["ps"], data["src"].poses, data["src"].poses,
                                               1, 1.0, 1.0, 0, 0.0, 0.0, 1.0, "down+mid+up", "balanced", True)
    assert "exactly only with attention mode rc or self; with bidirectional" in caplog.text


def test_handles_switch_cleanly_on_one_engine(data):
    """Two handles of one engine, used alternately, each sample with their own weights."""
    base = load(data)
    tuned = stage2(data, stage1(data, base, steps=3), steps=3)
    run = lambda h: inference_nodes.DDIMInversion().run(h, latent(data["src"].frames), data["ps"], data["src"].poses, 3, True, 1.0, 1.0)[0]["samples"]
    a1, b1, a2 = run(base), run(tuned), run(base)
    torch.testing.assert_close(a1, a2)
    # each equals a fresh engine holding only that handle's weights
    torch.testing.assert_close(a1, run(load(data)))
    torch.testing.assert_close(b1, run(load(data).replace(state=tuned.state, stage_steps=tuned.stage_steps)))


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


def _chain(data, handle):
    h2 = stage2(data, stage1(data, handle))
    z = inference_nodes.DDIMInversion().run(h2, latent(data["src"].frames), data["ps"], data["src"].poses, 3, True, 1.0, 1.0)[0]
    edited, recon = inference_nodes.TwoBranchSampler().run(
        h2, z, data["ps"], data["pt"], data["src"].poses, data["ref"].poses, 3, 1.0, 1.0, 0, 0.0, 0.0, 1.0,
        "down+mid+up", "concat", True)
    return h2, z["samples"], edited["samples"], recon["samples"]


def test_bf16_weights_run_the_whole_node_chain(data, models_dir):
    """Load Video Model with bf16 storage (what 'auto' picks on GPUs) -> Stage 1 -> Stage 2 -> DDIM
    Inversion -> Two-Branch Sampler under inference mode, close to the same graph in fp32."""
    _, z32, e32, r32 = _chain(data, model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc", "fp32")[0])
    base = model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc", "bf16")[0]
    assert base.engine.weight_dtype == torch.bfloat16
    h2, z, edited, recon = _chain(data, base)
    rel = lambda a, b: ((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()).item()
    assert torch.isfinite(edited).all() and rel(z, z32) < 0.08 and rel(edited, e32) < 0.08 and rel(recon, r32) < 0.08
    assert all(v.dtype == torch.float32 for v in h2.state.values())
    # the handle keeps float32 masters: continuing stage 1 at the smallest learning rate moves them by
    # about 1e-7, far less than their bf16 rounding (up to 1e-3 here)
    s1 = stage_parameter_names(base.engine.model, 1)
    more = stage1(data, h2, steps=1, learning_rate=1e-7)
    assert max((more.state[k] - h2.state[k]).abs().max().item() for k in s1) < 1e-5
    # saved and loaded as float32 masters
    name = model_nodes.SaveTunedWeights().run(h2, "bf16")["ui"]["text"][0]
    loaded = model_nodes.LoadTunedWeights().run(base, name)[0]
    assert all(torch.equal(loaded.state[k], h2.state[k]) for k in h2.state)


def test_fp16_weights_are_refused_on_the_cpu(data):
    with pytest.raises(InputError, match="fp16 is for GPUs"):
        model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc", "fp16")


def test_same_graph_same_seeds_same_result_after_a_restart(data):
    """Load Video Model + Stage 1 twice, with torch's global random state changed in between (as a
    restarted ComfyUI has it): the same tuned weights, bit for bit."""
    runs = []
    for global_seed in (11, 12):
        torch.manual_seed(global_seed)
        handle = load(data)
        runs.append((handle.engine.untuned_state(), stage1(data, handle).state))
    (base_a, tuned_a), (base_b, tuned_b) = runs
    assert all(torch.equal(base_a[k], base_b[k]) for k in base_a)  # the untuned temporal layers too
    assert all(torch.equal(tuned_a[k], tuned_b[k]) for k in tuned_a)


def test_nonfinite_inputs_are_named_by_their_node_input(data, models_dir):
    """NaN in a LATENT, CONDITIONING or pose IMAGE stops the node before any work, naming the input;
    a handle with NaN tensors is never saved; a damaged file is never loaded."""
    handle = load(data)
    bad_latent = latent(data["src"].frames)
    bad_latent["samples"][1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"masked_latent contains NaN.*frame\(s\) \[1\].*VAE Encode"):
        tuning_nodes.TuneStage1().run(handle, bad_latent, data["pc"], data["src"].poses, steps=1, learning_rate=1e-3,
                                      seed=0, precision="auto", gradient_checkpointing=True, control_strength=1.0,
                                      shuffle="per_step")
    bad_poses = data["src"].poses.clone()
    bad_poses[2, 5, 5, 0] = float("inf")
    with pytest.raises(InputError, match=r"source_poses contains NaN or infinite values.*frame\(s\) \[2\]"):
        tuning_nodes.TuneStage2().run(handle, latent(data["src"].frames), data["ps"], bad_poses, 1, 1e-3, 0, "auto", True, 1.0, 0.9)
    bad_cond = [[data["ps"][0][0].clone(), {}]]
    bad_cond[0][0][0, 3, 0] = float("nan")
    with pytest.raises(InputError, match="source_conditioning contains NaN.*CLIP Text Encode"):
        inference_nodes.DDIMInversion().run(handle, latent(data["src"].frames), bad_cond, data["src"].poses, 2, True, 1.0, 1.0)
    state = dict(handle.engine.base_state)
    name = next(iter(state))
    state[name] = torch.full_like(state[name], float("nan"))
    with pytest.raises(InputError, match=f"tuned tensor {name} holds NaN"):
        model_nodes.SaveTunedWeights().run(handle.replace(state=state, stage_steps=((1, 1),)), "nan")
    assert not list((models_dir / "edit_your_motion").glob("*"))


def test_permutation_with_shuffle_none_is_refused(data):
    perm = torch.tensor([2, 0, 1])
    with pytest.raises(InputError, match="shuffle is 'none'"):
        stage1(data, load(data), shuffle="none", permutation=perm)


def test_the_engine_keeps_no_copy_and_puts_the_untuned_model_back_after_a_failed_stage(data):
    """#16 §3: the engine holds the checkpoint's attn1 as the model's own tensors and rebuilds the temporal
    layers' initial values instead of keeping a copy; the tuning nodes keep no rollback tensors. After a
    stage 2 interrupted half-way (the temporal layers half-trained), the untuned and stage-1 handles still
    give exactly what a fresh load gives."""
    base = load(data)
    engine = base.engine
    untuned = engine.untuned_state()
    params = dict(engine.model.unet.named_parameters())
    assert set(untuned) == set(engine.model.trainable_parameter_names())
    assert all(params[n].data_ptr() == v.data_ptr() for n, v in engine.base_state.items())  # no copy
    assert all(torch.equal(params[n], v) for n, v in untuned.items())
    tuned1 = stage1(data, base, steps=1)
    original = bridge.Progress.step

    def interrupt(self, n=1, loss=None):
        if self.done == 1:
            bridge.request_interrupt()
        original(self, n, loss)

    bridge.Progress.step = interrupt
    try:
        with pytest.raises(bridge.Interrupted):
            stage2(data, tuned1, steps=5)
    finally:
        bridge.Progress.step = original
    with activated(base) as model:
        now = dict(model.unet.named_parameters())
        assert all(torch.equal(now[n], v) for n, v in untuned.items())
    again = stage2(data, tuned1, steps=2)
    reference = stage2(data, stage1(data, load(data), steps=1), steps=2)
    assert all(torch.equal(again.state[k], reference.state[k]) for k in reference.state)


def test_the_nodes_give_freed_host_memory_back(data, monkeypatch, models_dir):
    """After every use of the video model (a stage, inversion, sampling) and after saving weights, the host
    memory freed there goes back to the system (glibc keeps freed blocks resident otherwise); on Linux
    with glibc the call runs."""
    calls = []
    real = bridge.return_freed_host_memory
    monkeypatch.setattr(bridge, "return_freed_host_memory", lambda: calls.append(real()) or True)
    handle = load(data)
    assert calls == []
    tuned = stage1(data, handle, steps=1)
    assert calls == [True]
    with activated(tuned):
        pass
    assert calls == [True, True]
    model_nodes.SaveTunedWeights().run(tuned, "trim")
    assert calls == [True, True, True]
