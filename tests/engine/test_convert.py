"""Offline conversion of LDM-layout (ComfyUI / original checkpoint) weights into diffusers modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from edit_your_motion.motion_core.video_model import convert
from edit_your_motion.motion_core.video_model.convert import _materialise, controlnet_from_ldm, own_copy, unet_from_ldm
from edit_your_motion.motion_core.errors import ModelError
from edit_your_motion.motion_core.video_model.model import MotionModel
from edit_your_motion.motion_core.method.stages import stage_parameter_names

_spec = importlib.util.spec_from_file_location("comfyui_harness", Path(__file__).resolve().parents[1] / "comfyui_harness.py")
harness = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(harness)


def _meta(shapes):
    return {k: torch.empty(s, device="meta", dtype=torch.float16) for k, s in shapes}


def test_every_sd15_key_maps_onto_the_diffusers_modules():
    """The full SD1.5 UNet (686 LDM keys) and ControlNet (340 keys) convert with nothing missing or
    misshapen; meta tensors keep this free of memory."""
    unet = unet_from_ldm(_meta(harness.sd15_unet_shapes()), device="meta")
    assert sum(p.numel() for p in unet.parameters()) == 859_520_964
    cn = controlnet_from_ldm(_meta(harness.sd15_controlnet_shapes()), dict(unet.config), device="meta")
    assert sum(p.numel() for p in cn.parameters()) == 361_279_120
    model = MotionModel.from_unet(unet, cn)
    params = dict(model.unet.named_parameters())
    assert sum(params[n].numel() for n in stage_parameter_names(model, 1)) == 49_574_080
    assert sum(params[n].numel() for n in stage_parameter_names(model, 2)) == 49_599_040


def test_wrong_models_are_refused_with_the_fix():
    unet_sd = _meta(harness.sd15_unet_shapes(prefix=""))
    with pytest.raises(ModelError, match="SDXL"):
        unet_from_ldm({**unet_sd, "label_emb.0.0.weight": torch.empty(1280, 2816, device="meta")}, device="meta")
    wide = dict(unet_sd)
    for k in [k for k in wide if k.endswith("attn2.to_k.weight")]:
        wide[k] = torch.empty(wide[k].shape[0], 1024, device="meta")
    with pytest.raises(ModelError, match="1024-wide"):
        unet_from_ldm(wide, device="meta")
    with pytest.raises(ModelError, match="not an SD1.5 UNet: 1 missing"):
        unet_from_ldm({k: v for k, v in unet_sd.items() if k != "out.2.weight"}, device="meta")
    with pytest.raises(ModelError, match="no input_blocks"):
        unet_from_ldm({"foo": torch.zeros(1)})
    cn_sd = _meta(harness.sd15_controlnet_shapes())
    with pytest.raises(ModelError, match="1-channel hints"):
        controlnet_from_ldm({**cn_sd, "input_hint_block.0.weight": torch.empty(16, 1, 3, 3, device="meta")}, device="meta")
    with pytest.raises(ModelError, match="T2I-Adapters"):
        controlnet_from_ldm({"body.0.weight": torch.zeros(1)})


class LazyParam(torch.nn.Parameter):
    """Like ComfyUI's LazyCastingParam: ``.to()`` ignores its arguments, applies a patch and hands
    back storage created under inference mode (ComfyUI loads weights inside inference mode)."""

    def __new__(cls, data, patch=0.0):
        p = super().__new__(cls, data, requires_grad=False)
        p.patch = patch
        return p

    def to(self, *args, **kwargs):
        with torch.inference_mode():
            self.data.add_(self.patch)  # patched in place, as ComfyUI does on load
            self.patch = 0.0
            return self.data


def test_conversion_owns_plain_copies_even_of_lazy_inference_parameters():
    with torch.inference_mode():
        w, b = torch.randn(3, 2), torch.randn(3)
    state = {"weight": LazyParam(w, patch=1.0), "bias": LazyParam(b)}
    expected_w = w + 1.0
    module = _materialise(torch.nn.Linear, {"in_features": 2, "out_features": 3}, state, "test", torch.float64, "cpu")
    for p, src in ((module.weight, w), (module.bias, b)):
        assert not p.is_inference() and p.dtype == torch.float64 and p.data_ptr() != src.data_ptr()
    torch.testing.assert_close(module.weight.float(), expected_w)  # the patch was applied
    with torch.no_grad():
        module.weight.zero_()
    assert w.abs().sum() > 0  # training our copy never writes into the caller's model
    plain = torch.randn(4)
    assert own_copy(plain, "cpu", torch.float32).data_ptr() != plain.data_ptr()


class _Block(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.attn1 = torch.nn.Linear(2, 3)
        self.ff = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.ff(self.attn1(x))


class _Holder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _Block()


def test_weights_share_the_callers_memory_where_no_conversion_is_needed():
    """#16 §3: the host keeps one copy of the checkpoint. Weights loaded under inference mode (as ComfyUI loads
    them) become plain tensors over the same memory when no conversion is needed, so backward can save them."""
    with torch.inference_mode():
        state = {k: torch.randn(s) for k, s in [("block.attn1.weight", (3, 2)), ("block.attn1.bias", (3,)),
                                                ("block.ff.weight", (3, 3)), ("block.ff.bias", (3,))]}
    module = _materialise(_Holder, {}, state, "test", torch.float32, "cpu")
    for k, p in module.named_parameters():
        assert not p.is_inference() and torch.equal(p, state[k]) and p.data_ptr() == state[k].data_ptr(), k
    x = torch.randn(4, 2, requires_grad=True)
    module.block(x).square().sum().backward()  # the shared frozen weights are saved for backward
    assert x.grad is not None and torch.isfinite(x.grad).all()
    # another dtype is a conversion: nothing is shared
    halves = _materialise(_Holder, {}, state, "test", torch.bfloat16, "cpu")
    assert not any(p.data_ptr() == state[k].data_ptr() for k, p in halves.named_parameters())
    # a view into a larger storage is shared too (the storage, not the first element, decides)
    with torch.inference_mode():
        flat = torch.randn(20)
    view = flat[5:14].view(3, 3)
    alias = convert.converted(view, "cpu", torch.float32, share=True)
    assert alias.data_ptr() == view.data_ptr() and torch.equal(alias, view) and not alias.is_inference()
    assert convert.converted(view, "cpu", torch.float32, share=False).untyped_storage().data_ptr() \
        != flat.untyped_storage().data_ptr()


def test_converted_unet_shares_its_weights_and_tuning_leaves_the_source_unchanged():
    """A tiny UNet of SD1.5's LDM layout, loaded under inference mode as ComfyUI loads it: every tensor of the
    diffusers UNet is the source's memory, and a stage-1 tuning step (which trains RC-Attn's attn1, in that
    memory before the stage) and a stage-2 step (the temporal layers) change nothing in the source: a stage
    trains fresh copies."""
    from edit_your_motion.motion_core.method.stages import tune_stage
    from edit_your_motion.motion_core.method.tuner import TuneConfig
    from edit_your_motion.motion_core.video_model.sd15 import unet_config

    tiny = dict(model_channels=16, channel_mult=(1, 2, 2, 2), num_res_blocks=1, context_dim=32, time_dim=64)
    shapes = harness.sd15_unet_shapes(prefix="", cfg=tiny)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        state = {k: torch.randn(s, generator=gen) * 0.1 for k, s in shapes}
    before = {k: v.clone() for k, v in state.items()}
    source_memory = {v.untyped_storage().data_ptr() for v in state.values()}
    with torch.inference_mode():  # ComfyUI runs nodes in inference mode
        unet = unet_from_ldm(state, config=unet_config("tiny"))
    params = dict(unet.named_parameters())
    assert len(params) == len(state)
    assert all(p.untyped_storage().data_ptr() in source_memory for p in params.values())
    model = MotionModel.from_unet(unet, None)
    latents = torch.randn(2, 4, 8, 8, generator=gen)
    text = torch.randn(1, 77, 32, generator=gen)
    for stage, rollback in ((1, "host"), (2, "host"), (1, "none")):
        untuned = model.tuned_state()
        result = tune_stage(model, stage, latents, text, None, TuneConfig(steps=1, learning_rate=1e-2, rollback=rollback))
        assert any(not torch.equal(v, untuned[n]) for n, v in result.state.items())  # the step trained something
    for k in state:
        assert torch.equal(state[k], before[k]), k
