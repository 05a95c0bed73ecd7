"""Nodes of the later version (method eym_v2) run standalone on tiny models, under inference mode
as ComfyUI runs them."""

from __future__ import annotations

import pytest
import torch

from edit_your_motion.motion_core.errors import InputError, ModelError
from edit_your_motion.motion_core.testing.values import latent
from edit_your_motion.nodes import inference_nodes, later_version_nodes as v2, model_nodes, tuning_nodes
from edit_your_motion.motion_core.method.stages import stage_parameter_names

pytestmark = pytest.mark.usefixtures("comfy_inference_mode")

SCALE = 0.18215


@pytest.fixture(scope="module")
def data(tiny_job):
    return tiny_job


def load(data, method="eym_v2", mode="bidirectional"):
    return model_nodes.LoadVideoModel().run(data["unet"], data["cn"], mode, "auto", method)[0]


def stl1(data, handle, steps=2):
    masked = data["src"].frames * data["src"].masks[..., None]
    return v2.STLStage1().run(handle, latent(masked), data["ps"], data["src"].poses, steps, 1e-3, 0, "auto", True, 1.0)[0]


def stl2(data, handle, steps=2):
    return v2.STLStage2().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses, steps, 1e-3, 0, "auto",
                              True, 1.0)[0]


def test_load_video_model_method(data):
    h1 = model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc", "auto")[0]  # the default: first version
    assert h1.engine.model.method == "eym_v1" and h1.engine.model.motion_attention is None
    h2 = load(data)
    assert h2.engine.model.method == "eym_v2" and h2.engine.model.motion_attention is not None
    assert not hasattr(data["unet"], "motion_attention")  # the input model is untouched


def test_stl_nodes_train_their_tensors_and_never_mutate_inputs(data):
    base = load(data)
    model = base.engine.model
    h1 = stl1(data, base)
    h2 = stl2(data, h1)
    s1, s2 = set(stage_parameter_names(model, 1)), set(stage_parameter_names(model, 2))
    assert set(h1.state) == s1 and set(h2.state) == s1 | s2 and h2.steps == {1: 2, 2: 2}
    ma = {k for k in s1 if k.startswith("motion_attention.")}
    assert ma and ma <= s2
    temporal = s1 - ma
    assert all(torch.equal(h1.state[k], h2.state[k]) for k in temporal)  # stage 2 leaves temporal layers alone
    assert any(not torch.equal(h1.state[k], h2.state[k]) for k in ma)  # and tunes MA further
    again = stl1(data, base)
    assert all(torch.equal(again.state[k], h1.state[k]) for k in s1)


def test_stage_nodes_refuse_the_other_method(data):
    masked = latent(data["src"].frames * data["src"].masks[..., None])
    with pytest.raises(InputError, match="built for eym_v2 .* EYM STL Stage 1"):
        tuning_nodes.TuneStage1().run(load(data), masked, data["ps"], data["src"].poses, 1, 1e-3, 0, "auto", True, 1.0,
                                      "per_step")
    with pytest.raises(InputError, match="built for eym_v1 .* EYM Stage 1 / Stage 2 Tuning"):
        stl1(data, load(data, "eym_v1", "rc"))


def test_inversion_and_single_branch_sampler(data):
    handle = stl2(data, stl1(data, load(data)))
    z = inference_nodes.DDIMInversion().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses, 3, True,
                                            1.0, 1.0)[0]
    (edited,) = v2.SingleBranchSampler().run(handle, z, data["pt"], data["ref"].poses, 3, 1.0, 1.0)
    assert edited["samples"].shape == (3, 4, 8, 8) and torch.isfinite(edited["samples"]).all()
    (back,) = v2.SingleBranchSampler().run(handle, z, data["ps"], data["src"].poses, 3, 1.0, 1.0)
    assert (edited["samples"] - back["samples"]).abs().max() > 1e-4
    with pytest.raises(InputError, match="negative"):
        v2.SingleBranchSampler().run(handle, z, data["pt"], data["ref"].poses, 3, 1.0, 2.0)
    (cfg,) = v2.SingleBranchSampler().run(handle, z, data["pt"], data["ref"].poses, 2, 1.0, 2.0, negative=data["empty"])
    assert torch.isfinite(cfg["samples"]).all()
    with pytest.raises(InputError, match="reference_poses has 2"):
        v2.SingleBranchSampler().run(handle, z, data["pt"], data["ref"].poses[:2], 3, 1.0, 1.0)


def test_save_and_load_v2_weights(data, models_dir):
    tuned = stl2(data, stl1(data, load(data)))
    out = model_nodes.SaveTunedWeights().run(tuned, "dancer_v2")
    name = out["ui"]["text"][0]
    loaded = model_nodes.LoadTunedWeights().run(load(data), name)[0]
    assert loaded.attention_mode == "bidirectional" and loaded.steps == {1: 2, 2: 2}
    assert any(k.startswith("motion_attention.") for k in loaded.state)
    assert all(torch.equal(loaded.state[k], tuned.state[k]) for k in tuned.state)
    with pytest.raises(ModelError, match="method eym_v2"):
        model_nodes.LoadTunedWeights().run(load(data, "eym_v1", "rc"), name)


def test_repeat_image_to_clip():
    image, ref = torch.rand(1, 16, 16, 3), torch.rand(5, 16, 16, 3)
    (clip,) = v2.RepeatImageToClip().run(image, ref)
    assert clip.shape == (5, 16, 16, 3) and all(torch.equal(f, image[0]) for f in clip)
    with pytest.raises(InputError, match="image has 2 frames but the reference motion has 5"):
        v2.RepeatImageToClip().run(torch.rand(2, 16, 16, 3), ref)
