"""Tuning lever ``controlnet_offload``: the frozen ControlNet's weights stay on the host during a
stage and each step runs it on copies made for its forward; the results are those without it, bit
for bit, and the model is left as it was."""

import weakref

import pytest
import torch

from edit_your_motion.motion_core.method.stages import tune_stage
from edit_your_motion.motion_core.method.tuner import TuneConfig
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.testing.synthetic import make_clip
from edit_your_motion.motion_core.testing.values import engine_inputs


@pytest.fixture(scope="module")
def clip():
    return dict(engine_inputs(make_clip(3, 64, 64, "wave", seed=1)), emb=tiny.encode_prompt("a person is waving"))


def _model(method, dtype=torch.float32):
    model = tiny.build_motion_model(method=method, attention_mode=None)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # zero-initialised output projections: give every trained tensor a gradient path
        for n, p in model.unet.named_parameters():
            if "temporal_attention.attn.to_out" in n or ("motion_attention" in n and "proj_out" in n):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.to(dtype)


def _controlnet_state(model):
    return {n: (p, p.detach().clone(), p.device, p.dtype, p.requires_grad)
            for n, p in model.controlnet.named_parameters()}


def _tune(model, clip, stage, offload, precision="fp32", callback=None):
    lat = clip["masked"] if stage == 1 else clip["latents"]
    cfg = TuneConfig(steps=3, learning_rate=1e-2, precision=precision, controlnet_offload=offload)
    return tune_stage(model, stage, lat, clip["emb"], clip["poses"], cfg, callback=callback)


def _assert_same(a, b):
    assert a.losses == b.losses  # exactly: the same ops on the same values
    assert a.state.keys() == b.state.keys()
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)


@pytest.mark.parametrize("method,stage", [("eym_v1", 1), ("eym_v1", 2), ("eym_v2", 1), ("eym_v2", 2)])
def test_offloaded_controlnet_tunes_bit_for_bit_as_in_place(clip, method, stage):
    want = _tune(_model(method), clip, stage, offload=False)
    model = _model(method)
    before = _controlnet_state(model)
    got = _tune(model, clip, stage, offload=True)
    _assert_same(got, want)
    after = dict(model.controlnet.named_parameters())
    for n, (p, value, device, dtype, grad) in before.items():  # the same objects, values and places
        q = after[n]
        assert q is p and torch.equal(q, value) and (q.device, q.dtype, q.requires_grad) == (device, dtype, grad)
    assert model._controlnet_host is None


def test_bf16_storage_is_bit_for_bit_too(clip):
    want = _tune(_model("eym_v2", torch.bfloat16), clip, 2, offload=False, precision="bf16")
    model = _model("eym_v2", torch.bfloat16)
    got = _tune(model, clip, 2, offload=True, precision="bf16")
    _assert_same(got, want)
    assert all(p.dtype == torch.bfloat16 for p in model.controlnet.parameters())


def test_under_inference_mode_as_comfyui_runs_nodes(clip):
    want = _tune(_model("eym_v1"), clip, 1, offload=False)
    with torch.inference_mode():
        model = _model("eym_v1")
        lat, emb, poses = clip["masked"].clone(), clip["emb"].clone(), clip["poses"].clone()
        got = tune_stage(model, 1, lat, emb, poses, TuneConfig(steps=3, learning_rate=1e-2, controlnet_offload=True))
    _assert_same(got, want)
    assert model._controlnet_host is None


def test_the_copies_live_only_for_the_controlnet_call(clip):
    """While the UNet runs (forward and backward), no copy of the ControlNet's weights is alive and
    the ControlNet's own parameters are not the tensors it ran on."""
    model = _model("eym_v2")
    copies, seen = [], []
    own = {id(p) for p in model.controlnet.parameters()}

    def on_conv_in(module, args, out):  # the ControlNet's first convolution, inside its forward
        assert id(module.weight) not in own
        copies.append(weakref.ref(module.weight))

    def on_unet(module, args, kwargs):
        seen.append([r() is None for r in copies])

    model.controlnet.conv_in.register_forward_hook(on_conv_in)
    model.unet.register_forward_pre_hook(on_unet, with_kwargs=True)
    _tune(model, clip, 2, offload=True)
    assert len(copies) == 3 and len(seen) >= 3  # one ControlNet call per step (checkpointing may rerun the UNet)
    assert all(all(dead) for dead in seen)


def test_a_cancelled_stage_is_undone_and_the_controlnet_is_back(clip):
    model = _model("eym_v1")
    before = model.tuned_state()
    cn = _controlnet_state(model)

    class Stop(BaseException):
        pass

    def cb(step, total, loss):
        assert model._controlnet_host is not None  # offloaded while the stage runs
        if step == 2:
            raise Stop()

    with pytest.raises(Stop):
        _tune(model, clip, 1, offload=True, callback=cb)
    after = model.tuned_state()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert all(q is cn[n][0] and torch.equal(q, cn[n][1]) for n, q in model.controlnet.named_parameters())
    assert model._controlnet_host is None
    assert all(not p.requires_grad for p in model.parameters())
