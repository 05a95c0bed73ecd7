"""Offline conversion of LDM-layout (ComfyUI / original checkpoint) weights into diffusers modules."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

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
