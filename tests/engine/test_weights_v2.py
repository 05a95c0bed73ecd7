"""Tuned-weight files of the later version: Motion Attention tensors, the method in the metadata,
and loading refused across methods."""

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from edit_your_motion.motion_core.errors import ModelError
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.video_model import weights
from edit_your_motion.motion_core.video_model.model import MotionModel


def _model(method="eym_v2", seed=0, **kw):
    unet = tiny.build_unet("tiny", seed)
    return MotionModel.from_unet(unet, tiny.build_controlnet(unet, "tiny", seed + 1), method=method, **kw)


def _tuned(model):
    with torch.no_grad():
        params = dict(model.unet.named_parameters())
        for n in model.trainable_parameter_names():
            params[n].add_(0.01)
    return model


def test_v2_round_trip_holds_motion_attention(tmp_path):
    model = _tuned(_model())
    state = model.tuned_state()
    ma = [k for k in state if k.startswith("motion_attention.")]
    assert ma and set(state) == set(model.trainable_parameter_names())
    path = weights.save_tuned_weights(tmp_path / "v2.safetensors", model, state, {1: 300, 2: 300})
    with safe_open(str(path), framework="pt") as f:
        assert f.metadata()["method"] == "eym_v2" and set(f.keys()) == set(state)
    fresh = _model()
    meta = weights.load_tuned_weights(path, fresh)
    assert meta["method"] == "eym_v2" and fresh.attention_mode == "bidirectional"
    after = fresh.tuned_state()
    assert all(torch.equal(after[k], state[k]) for k in state)


def test_loading_across_methods_is_refused(tmp_path):
    v2 = _tuned(_model())
    p2 = weights.save_tuned_weights(tmp_path / "v2.safetensors", v2, v2.tuned_state(), {1: 3, 2: 3})
    v1 = _tuned(_model("eym_v1"))
    p1 = weights.save_tuned_weights(tmp_path / "v1.safetensors", v1, v1.tuned_state(), {1: 3, 2: 3})
    with pytest.raises(ModelError, match="tuned with method eym_v2 but the video model is built for eym_v1"):
        weights.load_tuned_weights(p2, _model("eym_v1"))
    with pytest.raises(ModelError, match="tuned with method eym_v1 but the video model is built for eym_v2"):
        weights.load_tuned_weights(p1, _model())
    # the base-model check still applies to the later version
    with pytest.raises(ModelError, match="different base checkpoint"):
        weights.load_tuned_weights(p2, _model(seed=7))
    # an ablation without Motion Attention does not load onto a model that has it, and back
    no_ma = _tuned(_model(motion_attention=False))
    p3 = weights.save_tuned_weights(tmp_path / "no_ma.safetensors", no_ma, no_ma.tuned_state(), {1: 3, 2: 3})
    with pytest.raises(ModelError, match="without Motion Attention"):
        weights.load_tuned_weights(p3, _model())
    weights.load_tuned_weights(p3, _model(motion_attention=False))
    with pytest.raises(ModelError, match="holds Motion Attention weights"):
        weights.load_tuned_weights(p2, _model(motion_attention=False))


def test_files_without_a_method_are_first_version_files(tmp_path):
    v1 = _tuned(_model("eym_v1"))
    path = weights.save_tuned_weights(tmp_path / "new.safetensors", v1, v1.tuned_state(), {1: 3})
    with safe_open(str(path), framework="pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "method"}
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    old = tmp_path / "old.safetensors"
    save_file(tensors, str(old), metadata=meta)
    _, parsed = weights.read_tuned_weights(old)
    assert parsed["method"] == "eym_v1"
    weights.load_tuned_weights(old, _model("eym_v1"))
    with pytest.raises(ModelError, match="eym_v1"):
        weights.load_tuned_weights(old, _model())


def test_fingerprint_is_the_same_for_both_methods():
    """Motion Attention is tuned, not base weight: one base checkpoint, one fingerprint."""
    a, b = weights.fingerprint(_model("eym_v1")), weights.fingerprint(_tuned(_model()))
    assert weights.fingerprint_distance(a, b) == 0
