"""STL (later version): which tensors each stage trains, frame order, loss, precision, inference
mode, the "without STL" ablation and the variants' recipe."""

import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.method import eym_v2, stl
from edit_your_motion.motion_core.method.tuner import TuneConfig, reconstruction_loss
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.testing.synthetic import make_clip
from edit_your_motion.motion_core.testing.values import engine_inputs
from edit_your_motion.motion_core.video_model.model import MotionModel
from edit_your_motion.motion_core.method.stages import stage_parameter_names


@pytest.fixture(scope="module")
def clip():
    return dict(
        engine_inputs(make_clip(3, 64, 64, "wave", seed=1)),
        ref=engine_inputs(make_clip(3, 64, 64, "walk", seed=1))["poses"],
        ps=tiny.encode_prompt("a person in a green shirt is waving"),
        pt=tiny.encode_prompt("a person in a green shirt is walking"),
    )


def v2_model(variant="eym_v2", open_outputs=True):
    unet = tiny.build_unet()
    model = eym_v2.build_v2_model(unet, tiny.build_controlnet(unet), variant)
    if open_outputs:  # zero-initialised output projections: give every tensor a gradient path
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for n, p in model.unet.named_parameters():
                if "temporal_attention.attn.to_out" in n or ("motion_attention" in n and "proj_out" in n):
                    p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model


def _snapshot(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def _changed(model, before):
    return {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}


@pytest.mark.parametrize("stage", [1, 2])
def test_stl_stages_train_exactly_their_tensors(clip, stage):
    model = v2_model()
    parts = model.part_parameter_names()
    want = (parts["temporal"] if stage == 1 else parts["attn1"]) + parts["motion_attention"]
    assert sorted(stage_parameter_names(model, stage)) == sorted(want)
    before = _snapshot(model)
    run = stl.tune_stl_stage1 if stage == 1 else stl.tune_stl_stage2
    res = run(model, clip["masked"] if stage == 1 else clip["latents"], clip["ps"], clip["poses"],
              TuneConfig(steps=2, learning_rate=1e-2))
    intended = {"unet." + n for n in want}
    changed = _changed(model, before)
    assert changed <= intended and len(changed) >= 0.9 * len(intended)
    assert any("motion_attention" in n for n in changed)
    assert set(res.state) == set(want) and res.stage == stage
    assert all(not p.requires_grad and p.grad is None for p in model.parameters())


def test_stl_keeps_frames_in_order_and_uses_the_plain_loss(clip, monkeypatch):
    """Both stages: no shuffling even if asked (per_step), no noise constraint loss (Eq. 16)."""
    from edit_your_motion.motion_core.method import dpl, tuner

    model = v2_model()
    orders, rec = [], []
    real_predict = model.predict

    def spy(*args, **kw):
        orders.append(kw.get("pose_order"))
        return real_predict(*args, **kw)

    monkeypatch.setattr(model, "predict", spy)
    monkeypatch.setattr(dpl, "noise_constraint_loss", lambda p: pytest.fail("STL has no noise constraint loss"))
    monkeypatch.setattr(tuner, "reconstruction_loss", lambda p, e: rec.append(reconstruction_loss(p, e)) or rec[-1])
    cfg = TuneConfig(steps=2, shuffle="per_step", lam=0.3)
    r1 = stl.tune_stl_stage1(model, clip["masked"], clip["ps"], clip["poses"], cfg)
    r2 = stl.tune_stl_stage2(model, clip["latents"], clip["ps"], clip["poses"], cfg)
    assert orders == [None] * 4
    assert r1.losses + r2.losses == pytest.approx([x.item() for x in rec], rel=1e-6)


def test_stl_refuses_a_first_version_model(clip):
    model = tiny.build_motion_model()
    with pytest.raises(InputError, match="eym_v2"):
        stl.tune_stl_stage1(model, clip["masked"], clip["ps"], clip["poses"], TuneConfig(steps=1))


def test_without_stl_trains_everything_in_one_stage(clip):
    model = v2_model("eym_v2_without_stl")
    before = _snapshot(model)
    (res,) = eym_v2.tune_v2(model, clip["latents"], clip["masked"], clip["poses"], clip["ps"], "eym_v2_without_stl",
                            TuneConfig(learning_rate=1e-2), stage_steps=(1, 1))
    intended = {"unet." + n for n in model.trainable_parameter_names()}
    changed = _changed(model, before)
    parts = model.part_parameter_names()
    assert len(res.losses) == 2 and set(res.state) == set(model.trainable_parameter_names())
    assert changed <= intended and len(changed) >= 0.9 * len(intended)
    for part in ("attn1", "temporal", "motion_attention"):
        assert any(n[len("unet."):] in parts[part] for n in changed), part


def test_variants_build_the_right_models():
    for name, variant in eym_v2.V2_VARIANTS.items():
        model = v2_model(name, open_outputs=False)
        assert model.method == "eym_v2" and model.attention_mode == variant.attention_mode
        assert (model.motion_attention is not None) == variant.motion_attention
        eym_v2.check_model(model, name)
    no_ma = v2_model("eym_v2_without_ma", open_outputs=False)
    assert not no_ma.part_parameter_names()["motion_attention"]
    assert sorted(stage_parameter_names(no_ma, 1)) == sorted(no_ma.part_parameter_names()["temporal"])
    with pytest.raises(InputError, match="build_v2_model"):
        eym_v2.check_model(no_ma, "eym_v2")
    with pytest.raises(InputError, match="variant must be"):
        eym_v2.get_variant("eym_v2_without_everything")


def test_run_v2_end_to_end(clip):
    model = v2_model(open_outputs=False)
    res = eym_v2.run_v2(model, clip["latents"], clip["masked"], clip["poses"], clip["ref"], clip["ps"], clip["pt"],
                        config=TuneConfig(learning_rate=1e-3), stage_steps=(1, 1), num_steps=2)
    assert res.edited.shape == clip["latents"].shape and torch.isfinite(res.edited).all()
    assert [r.stage for r in res.stages] == [1, 2]
    assert (res.edited - res.inverted).abs().max() > 1e-3


def test_gradient_checkpointing_gives_the_same_training_with_motion_attention(clip):
    states = []
    for ckpt in (False, True):
        model = v2_model()
        res = stl.tune_stl_stage2(model, clip["latents"], clip["ps"], clip["poses"],
                                  TuneConfig(steps=2, learning_rate=1e-2, gradient_checkpointing=ckpt))
        states.append(res.state)
    for k in states[0]:
        torch.testing.assert_close(states[0][k], states[1][k], atol=1e-6, rtol=1e-5)


def test_bf16_storage_on_cpu(clip):
    """A model stored in bf16 tunes with float32 masters and returns to bf16."""
    model = v2_model().to(torch.bfloat16)
    res = stl.tune_stl_stage1(model, clip["masked"], clip["ps"], clip["poses"], TuneConfig(steps=2, precision="bf16"))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    assert all(v.dtype == torch.float32 for v in res.state.values())
    assert all(torch.isfinite(torch.tensor(res.losses)))


def test_trains_when_inputs_and_storage_come_from_inference_mode(clip):
    model = v2_model()
    with torch.inference_mode():
        lat, emb, poses = clip["latents"].clone(), clip["ps"].clone(), clip["poses"].clone()
        for p in model.parameters():
            p.data = p.data.clone()
    assert any(p.is_inference() for p in model.parameters())
    with torch.inference_mode():
        res = stl.tune_stl_stage2(model, lat, emb, poses, TuneConfig(steps=2, learning_rate=1e-3))
    assert len(res.losses) == 2 and all(torch.isfinite(torch.tensor(res.losses)))


def test_parameters_must_be_tunable(clip):
    from edit_your_motion.motion_core.method.stages import tune_stage

    model = v2_model(open_outputs=False)
    with pytest.raises(InputError, match="parameters"):
        tune_stage(model, 2, clip["latents"], clip["ps"], clip["poses"], TuneConfig(steps=1),
                   parameters=["conv_in.weight"])


def test_first_version_stages_are_unchanged():
    model = tiny.build_motion_model()
    parts = model.part_parameter_names()
    assert model.method == "eym_v1" and not parts["motion_attention"]
    assert stage_parameter_names(model, 1) == parts["attn1"] and stage_parameter_names(model, 2) == parts["temporal"]
    assert MotionModel.from_unet(tiny.build_unet()).attention_mode == "rc"
