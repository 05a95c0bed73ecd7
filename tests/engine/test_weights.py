"""Tuned weights: safetensors round trip, metadata, atomic writes, base-model fingerprint."""

import json

import pytest
import torch
from safetensors import safe_open

from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.video_model import weights
from edit_your_motion.motion_core.errors import InputError, ModelError
from edit_your_motion.motion_core.method.stages import stage_parameter_names


def _tuned_model(seed=0, mode="rc"):
    model = tiny.build_motion_model(seed=seed, attention_mode=mode)
    with torch.no_grad():
        for n in stage_parameter_names(model, 1) + stage_parameter_names(model, 2):
            dict(model.unet.named_parameters())[n].add_(0.01)
    return model


def test_round_trip_with_metadata(tmp_path):
    model = _tuned_model(mode="bidirectional")
    state = model.tuned_state()
    path = weights.save_tuned_weights(tmp_path / "clip.safetensors", model, state, {1: 300, 2: 120})
    assert [p.name for p in tmp_path.iterdir()] == ["clip.safetensors"]
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
        assert set(f.keys()) == set(state)
    assert meta["attention_mode"] == "bidirectional" and json.loads(meta["stages"]) == {"1": 300, "2": 120}

    fresh = tiny.build_motion_model(seed=0)  # same base, untuned, other mode
    loaded = weights.load_tuned_weights(path, fresh)
    assert fresh.attention_mode == "bidirectional" and loaded["stages"] == {1: 300, 2: 120}
    after = fresh.tuned_state()
    assert all(torch.equal(after[k], state[k]) for k in state)


def test_refuses_another_base_model(tmp_path):
    model = _tuned_model(seed=0)
    path = weights.save_tuned_weights(tmp_path / "a.safetensors", model, model.tuned_state(stage_parameter_names(model, 1)), {1: 10})
    with pytest.raises(ModelError, match="different base checkpoint"):
        weights.load_tuned_weights(path, tiny.build_motion_model(seed=7))


def test_fingerprint_ignores_storage_dtype_but_not_weights():
    model = tiny.build_motion_model(seed=0)
    fp = weights.fingerprint(model)
    for dtype in (torch.float16, torch.bfloat16):
        half = tiny.build_motion_model(seed=0).to(dtype)
        assert weights.fingerprint_distance(fp, weights.fingerprint(half)) < weights.FINGERPRINT_TOLERANCE
    other = tiny.build_motion_model(seed=3)
    assert weights.fingerprint_distance(fp, weights.fingerprint(other)) > 10 * weights.FINGERPRINT_TOLERANCE
    tweaked = tiny.build_motion_model(seed=0)
    with torch.no_grad():
        for p in tweaked.unet.parameters():
            p.add_(torch.randn_like(p) * 0.1 * p.std())
    assert weights.fingerprint_distance(fp, weights.fingerprint(tweaked)) > weights.FINGERPRINT_TOLERANCE
    # training the tuned tensors does not change the fingerprint
    assert weights.fingerprint_distance(fp, weights.fingerprint(_tuned_model(seed=0))) == 0


def test_failed_write_leaves_nothing(tmp_path, monkeypatch):
    model = _tuned_model()

    def boom(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(weights, "save_file", boom)
    with pytest.raises(OSError, match="disk full"):
        weights.save_tuned_weights(tmp_path / "x.safetensors", model, model.tuned_state(), {1: 1})
    assert list(tmp_path.iterdir()) == []


def test_overwrite_is_atomic(tmp_path, monkeypatch):
    model = _tuned_model()
    path = weights.save_tuned_weights(tmp_path / "x.safetensors", model, model.tuned_state(stage_parameter_names(model, 1)), {1: 1})
    old = path.read_bytes()
    monkeypatch.setattr(weights, "save_file", lambda *a, **k: (_ for _ in ()).throw(OSError("no space")))
    with pytest.raises(OSError):
        weights.save_tuned_weights(path, model, model.tuned_state(), {1: 1, 2: 1})
    assert path.read_bytes() == old


def test_bad_files(tmp_path):
    model = tiny.build_motion_model()
    with pytest.raises(InputError, match="does not exist"):
        weights.load_tuned_weights(tmp_path / "missing.safetensors", model)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(InputError, match="not a readable safetensors"):
        weights.load_tuned_weights(junk, model)
    from safetensors.torch import save_file
    save_file({"a": torch.zeros(1)}, str(tmp_path / "other.safetensors"))
    with pytest.raises(InputError, match="not an Edit-Your-Motion"):
        weights.load_tuned_weights(tmp_path / "other.safetensors", model)
    with pytest.raises(InputError, match=".safetensors"):
        weights.save_tuned_weights(tmp_path / "x.pt", model, model.tuned_state(), {1: 1})
    with pytest.raises(InputError, match="no tuned tensors"):
        weights.save_tuned_weights(tmp_path / "x.safetensors", model, {}, {1: 1})


def test_saved_file_has_ordinary_permissions(tmp_path):
    import os

    model = _tuned_model()
    path = weights.save_tuned_weights(tmp_path / "p.safetensors", model, model.tuned_state(stage_parameter_names(model, 1)), {1: 1})
    umask = os.umask(0)
    os.umask(umask)
    assert (path.stat().st_mode & 0o777) == (0o666 & ~umask)
