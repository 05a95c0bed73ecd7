"""NaN and infinity never become a result: inputs are refused with their name, a diverging stage
stops at the first non-finite loss with its weights restored, non-finite outputs are refused, and
tuned-weight files are neither written nor read with non-finite tensors."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from edit_your_motion.motion_core.errors import InputError, ModelError
from edit_your_motion.motion_core.method.ddim import ddim_invert, ddim_sample
from edit_your_motion.motion_core.method.sampler import SamplerConfig, two_branch_sample
from edit_your_motion.motion_core.method.dpl import tune_stage1, tune_stage2
from edit_your_motion.motion_core.method.tuner import TuneConfig
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.video_model import weights
from edit_your_motion.motion_core.method.stages import stage_parameter_names


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(0)
    return dict(lat=torch.randn(3, 4, 8, 8, generator=g), poses=torch.rand(3, 3, 64, 64, generator=g),
                emb=tiny.encode_prompt("a person"), other=tiny.encode_prompt("a person walking"))


def _nan_at(t, index):
    t = t.clone()
    t[index] = float("nan")
    return t


@pytest.mark.parametrize("which,match", [("lat", r"latents contains NaN.*frame\(s\) \[1\]"),
                                         ("poses", r"poses contains NaN.*frame\(s\) \[2\]"),
                                         ("emb", "text_embeddings contains NaN")])
def test_tuning_refuses_nonfinite_inputs_before_any_step(inputs, which, match):
    model = tiny.build_motion_model()
    before = model.tuned_state()
    bad = dict(inputs)
    bad[which] = _nan_at(inputs[which], (1, 0, 0, 0) if which == "lat" else (2, 0, 0, 0) if which == "poses" else (0, 3, 0))
    steps = []
    with pytest.raises(InputError, match=match):
        tune_stage1(model, bad["lat"], bad["emb"], bad["poses"], TuneConfig(steps=3),
                    callback=lambda s, t, loss: steps.append(s))
    assert steps == []
    assert all(torch.equal(before[k], v) for k, v in model.tuned_state().items())


def test_diverging_stage_stops_at_the_first_nonfinite_loss_and_restores_weights(inputs):
    """A weight turned NaN after step 2 (what divergence does) makes step 3's loss NaN: the stage
    stops there (read one step late, at step 4) with an error naming the learning rate, and every
    trained tensor is put back as it was before the stage."""
    model = tiny.build_motion_model()
    before = model.tuned_state()
    name = stage_parameter_names(model, 2)[0]
    param = dict(model.unet.named_parameters())[name]
    seen = []

    def diverge(step, total, loss):
        seen.append((step, loss))
        if step == 2:
            with torch.no_grad():
                param.fill_(float("nan"))

    with pytest.raises(InputError, match=r"stage 2 diverged: the loss became nan at step 3.*lower learning_rate"):
        tune_stage2(model, inputs["lat"], inputs["emb"], inputs["poses"], TuneConfig(steps=10), callback=diverge)
    assert [s for s, _ in seen] == [1, 2, 3]  # stopped while reading step 3's loss
    assert all(torch.equal(before[k], v) for k, v in model.tuned_state().items())
    assert not any(p.requires_grad for p in model.parameters())


def test_nonfinite_frozen_weights_are_named(inputs):
    model = tiny.build_motion_model()
    with torch.no_grad():
        model.unet.conv_in.weight[0, 0, 0, 0] = float("inf")
    with pytest.raises(ModelError, match="unet.conv_in.weight"):
        tune_stage1(model, inputs["lat"], inputs["emb"], inputs["poses"], TuneConfig(steps=1))
    with pytest.raises(ModelError, match="weights hold them.*unet.conv_in.weight"):
        ddim_invert(model, inputs["lat"], inputs["emb"], inputs["poses"], num_steps=2)


def test_inversion_and_sampling_refuse_nonfinite_inputs(inputs):
    model = tiny.build_motion_model()
    bad_lat = _nan_at(inputs["lat"], (0, 1, 2, 3))
    with pytest.raises(InputError, match=r"latents contains NaN.*frame\(s\) \[0\]"):
        ddim_invert(model, bad_lat, inputs["emb"], inputs["poses"], num_steps=2)
    with pytest.raises(InputError, match="poses contains NaN"):
        ddim_sample(model, inputs["lat"], inputs["emb"], _nan_at(inputs["poses"], (1, 0, 5, 5)), num_steps=2)
    with pytest.raises(InputError, match="uncond_embeddings contains NaN"):
        ddim_invert(model, inputs["lat"], inputs["emb"], None, num_steps=2, guidance=2.0,
                    uncond_embeddings=_nan_at(inputs["emb"], (0, 0, 0)))
    with pytest.raises(InputError, match="reference_poses contains NaN"):
        two_branch_sample(model, inputs["lat"], inputs["emb"], inputs["other"], inputs["poses"],
                          _nan_at(inputs["poses"], (2, 1, 0, 0)), SamplerConfig(num_steps=2))
    with pytest.raises(InputError, match="edit_embeddings contains NaN"):
        two_branch_sample(model, inputs["lat"], inputs["emb"], _nan_at(inputs["other"], (0, 5, 1)), inputs["poses"],
                          inputs["poses"], SamplerConfig(num_steps=2))


def test_overflowing_output_is_refused(inputs):
    """Finite but absurd inputs that overflow: the result is refused, not returned."""
    model = tiny.build_motion_model()
    with pytest.raises(ModelError, match="inputs and the model's weights are finite"):
        two_branch_sample(model, inputs["lat"] * 1e30, inputs["emb"], inputs["other"], inputs["poses"], inputs["poses"],
                          SamplerConfig(num_steps=2))


def test_save_refuses_and_load_refuses_nonfinite_tensors(tmp_path):
    model = tiny.build_motion_model()
    state = model.tuned_state(stage_parameter_names(model, 1))
    name = next(iter(state))
    bad = dict(state)
    bad[name] = _nan_at(state[name], (0, 0))
    with pytest.raises(InputError, match=f"tuned tensor {name} holds NaN"):
        weights.save_tuned_weights(tmp_path / "bad.safetensors", model, bad, {1: 1})
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary file
    # a damaged file (written by hand, with valid metadata) is refused on load
    good = weights.save_tuned_weights(tmp_path / "good.safetensors", model, state, {1: 1})
    tensors, meta = weights.read_tuned_weights(good)
    raw = {k: v for k, v in meta.items()}
    raw["stages"], raw["base_fingerprint"] = json.dumps({"1": 1}), json.dumps(meta["base_fingerprint"])
    save_file({k: v.contiguous() for k, v in bad.items()}, str(tmp_path / "damaged.safetensors"), metadata=raw)
    with pytest.raises(InputError, match=f"damaged.safetensors holds NaN or infinite values \\(tensor {name}\\)"):
        weights.load_tuned_weights(tmp_path / "damaged.safetensors", model)
