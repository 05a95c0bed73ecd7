"""Half-precision storage (what ComfyUI's ``auto`` picks on every GPU): bf16/fp16 weights must run
the whole chain (tuning, inversion, two-branch sampling), on the engine and through the nodes under
inference mode, and tuning must keep float32 master copies of the trained tensors."""

from __future__ import annotations

import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.method.ddim import ddim_invert
from edit_your_motion.motion_core.method.frames import apply_background_mask, poses_to_condition
from edit_your_motion.motion_core.method.sampler import SamplerConfig, two_branch_sample
from edit_your_motion.motion_core.method.dpl import tune_stage1, tune_stage2
from edit_your_motion.motion_core.method.tuner import TuneConfig
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.testing.synthetic import frames_to_latents, make_clip
from edit_your_motion.motion_core.video_model import weights
from edit_your_motion.motion_core.method.stages import stage_parameter_names


@pytest.fixture(scope="module")
def clip():
    c = make_clip(3, 64, 64, "wave", seed=1)
    r = make_clip(3, 64, 64, "walk", seed=1)
    return dict(
        latents=frames_to_latents(c.frames), masked=frames_to_latents(apply_background_mask(c.frames, c.masks)),
        poses=poses_to_condition(c.poses, 64, 64), ref=poses_to_condition(r.poses, 64, 64),
        pc=tiny.encode_prompt("a person in a green shirt"), ps=tiny.encode_prompt("a person in a green shirt is waving"),
        pt=tiny.encode_prompt("a person in a green shirt is walking"),
    )


def _chain(model, clip, precision):
    cfg = dict(steps=2, learning_rate=1e-3, seed=0, precision=precision)
    r1 = tune_stage1(model, clip["masked"], clip["pc"], clip["poses"], TuneConfig(**cfg))
    r2 = tune_stage2(model, clip["latents"], clip["ps"], clip["poses"], TuneConfig(**cfg))
    z_t = ddim_invert(model, clip["latents"], clip["ps"], clip["poses"], num_steps=3)
    res = two_branch_sample(model, z_t, clip["ps"], clip["pt"], clip["poses"], clip["ref"], SamplerConfig(num_steps=3))
    return r1, r2, z_t, res


def _rel_rms(a, b):
    return ((a.float() - b.float()).pow(2).mean().sqrt() / b.float().pow(2).mean().sqrt()).item()


def test_bf16_storage_runs_the_whole_chain_and_follows_float32(clip):
    """bf16 storage: stage 1 -> stage 2 -> inversion -> two-branch sampling runs (the bug: float32
    latents met bf16 weights in the inversion), and the results stay close to the same chain in
    float32 (the independent reference)."""
    *_, z_ref, res_ref = _chain(tiny.build_motion_model(), clip, "fp32")
    model = tiny.build_motion_model().to(torch.bfloat16)
    r1, r2, z_t, res = _chain(model, clip, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())  # storage is back to bf16
    for t in (z_t, res.edited, res.reconstruction):
        assert t.dtype == torch.float32 and torch.isfinite(t).all()
    # measured: about 0.01 relative rms; a chain that lost the tuning or the poses is off by far more
    assert _rel_rms(z_t, z_ref) < 0.08
    assert _rel_rms(res.edited, res_ref.edited) < 0.08
    assert _rel_rms(res.reconstruction, res_ref.reconstruction) < 0.08


def test_fp16_storage_inverts_and_samples(clip):
    """fp16 storage (GPUs without bf16): inference runs in fp16 and follows float32. (fp16 tuning is
    GPU-only: on the CPU the tuner refuses it, and a precision that is not the storage dtype.)"""
    model = tiny.build_motion_model()
    tune_stage1(model, clip["masked"], clip["pc"], clip["poses"], TuneConfig(steps=2, learning_rate=1e-3))
    z_ref = ddim_invert(model, clip["latents"], clip["ps"], clip["poses"], num_steps=3)
    res_ref = two_branch_sample(model, z_ref, clip["ps"], clip["pt"], clip["poses"], clip["ref"], SamplerConfig(num_steps=3))
    model.to(torch.float16)
    z_t = ddim_invert(model, clip["latents"], clip["ps"], clip["poses"], num_steps=3)
    res = two_branch_sample(model, z_t, clip["ps"], clip["pt"], clip["poses"], clip["ref"], SamplerConfig(num_steps=3))
    assert _rel_rms(z_t, z_ref) < 0.05 and _rel_rms(res.edited, res_ref.edited) < 0.05
    with pytest.raises(InputError, match="precision bf16 does not match the model's fp16 weights"):
        tune_stage1(model, clip["masked"], clip["pc"], clip["poses"], TuneConfig(steps=1, precision="bf16"))


def test_model_computes_in_its_storage_dtype_outside_tuning(clip):
    model = tiny.build_motion_model().to(torch.bfloat16)
    seen = []
    hook = model.unet.conv_out.register_forward_hook(lambda m, a, out: seen.append(out.dtype))
    with torch.no_grad():
        model.predict(clip["latents"], 500, clip["ps"], 3, poses=clip["poses"])
    hook.remove()
    assert seen == [torch.bfloat16]
    fp32 = tiny.build_motion_model()
    with torch.no_grad():
        assert fp32.predict(clip["latents"], 500, clip["ps"], 3, poses=clip["poses"]).dtype == torch.float32


def _not_bf16_representable(state):
    return sum(int((v != v.bfloat16().float()).sum()) for v in state.values())


def test_tuned_state_keeps_the_float32_masters(clip):
    """The state is read while the float32 masters exist, before storage goes back to bf16: a
    small learning rate moves the weights by less than bf16's resolution, which only the masters keep."""
    model = tiny.build_motion_model().to(torch.bfloat16)
    base = model.tuned_state(stage_parameter_names(model, 1))
    res = tune_stage1(model, clip["masked"], clip["pc"], clip["poses"],
                      TuneConfig(steps=2, learning_rate=1e-5, precision="bf16"))
    assert all(v.dtype == torch.float32 for v in res.state.values())
    assert _not_bf16_representable(res.state) > 0.5 * sum(v.numel() for v in res.state.values())
    moved = max((res.state[k] - base[k]).abs().max().item() for k in base)
    assert 0 < moved < 1e-3


def test_resumed_tuning_starts_from_the_masters(clip, tmp_path):
    """Continuing tuning (on the same model, or after save + load) starts from the float32 masters,
    not from their bf16 rounding: with a negligible learning rate the state does not move."""
    model = tiny.build_motion_model().to(torch.bfloat16)
    first = tune_stage1(model, clip["masked"], clip["pc"], clip["poses"],
                        TuneConfig(steps=1, learning_rate=1e-4, precision="bf16")).state
    again = tune_stage1(model, clip["masked"], clip["pc"], clip["poses"],
                        TuneConfig(steps=1, learning_rate=1e-12, precision="bf16", start_step=1)).state
    assert max((again[k] - first[k]).abs().max().item() for k in first) < 1e-7
    path = weights.save_tuned_weights(tmp_path / "t.safetensors", model, first, {1: 1})
    fresh = tiny.build_motion_model().to(torch.bfloat16)
    weights.load_tuned_weights(path, fresh)
    resumed = tune_stage1(fresh, clip["masked"], clip["pc"], clip["poses"],
                          TuneConfig(steps=1, learning_rate=1e-12, precision="bf16", start_step=1)).state
    assert max((resumed[k] - first[k]).abs().max().item() for k in first) < 1e-7


def test_stale_masters_are_not_used(clip):
    """Masters only stand for the values they round to: once the weights are changed another way,
    tuning starts from the new values."""
    model = tiny.build_motion_model().to(torch.bfloat16)
    tune_stage1(model, clip["masked"], clip["pc"], clip["poses"], TuneConfig(steps=1, learning_rate=1e-4, precision="bf16"))
    params = dict(model.unet.named_parameters())
    name = stage_parameter_names(model, 1)[0]
    with torch.no_grad():
        params[name].fill_(0.5)
    state = tune_stage1(model, clip["masked"], clip["pc"], clip["poses"],
                        TuneConfig(steps=1, learning_rate=1e-12, precision="bf16", start_step=1)).state
    assert torch.all(state[name] == 0.5)
