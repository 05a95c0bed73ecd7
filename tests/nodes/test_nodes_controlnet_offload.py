"""The tuning nodes' optional ``controlnet_offload`` input (auto / on / off): ``auto`` keeps the
ControlNet on the device unless the stage only fits with it on the host, on a GPU; the memory check
suggests it (tiny models, a faked free-memory figure, inference mode as ComfyUI runs nodes)."""

from __future__ import annotations

import types

import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.testing.synthetic import make_clip
from edit_your_motion.motion_core.testing.values import conditioning as cond, latent
from edit_your_motion.nodes import later_version_nodes as v2, memory_guard, model_nodes, tuning_nodes
from edit_your_motion.nodes.handle import latents_in

pytestmark = pytest.mark.usefixtures("comfy_inference_mode")
GPU = torch.device("cuda")


@pytest.fixture(scope="module")
def data():
    src = make_clip(2, 64, 64, "wave", seed=2)
    unet = tiny.build_unet("tiny", 0)
    return dict(unet=unet, cn=tiny.build_controlnet(unet, "tiny", 1), src=src, ps=cond("a person is waving"))


def _handle(data, method="eym_v1"):
    return model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc" if method == "eym_v1" else "bidirectional",
                                            "auto", method)[0]


def _fake_gpu(monkeypatch, free):
    """The memory check sees a GPU with ``free`` bytes free; the model itself stays on the CPU."""
    asked = []
    fake = types.SimpleNamespace(torch_device=lambda: GPU,
                                 free_memory=lambda required, device: asked.append(required) or free)
    monkeypatch.setattr(memory_guard, "bridge", fake)
    return asked


def _needs(handle, lat):
    """Bytes stage 1 needs free on a GPU (engine not loaded), without and with ControlNet offload."""
    model = handle.engine.model
    return [memory_guard._needed(memory_guard.estimate_for(handle, "stage1", lat, GPU, controlnet_offload=on), GPU, model)
            for on in (False, True)]


def test_auto_turns_the_offload_on_only_when_the_stage_needs_it(data, monkeypatch):
    handle = _handle(data)
    lat = latents_in(latent(data["src"].frames), handle.engine.latent_scale, "latent")
    without, with_offload = _needs(handle, lat)
    assert with_offload < without
    fit = lambda choice: memory_guard.ensure_tuning_fits("EYM Stage 1 Tuning", handle, "stage1", lat,
                                                         controlnet_offload=choice)["controlnet_offload"]
    _fake_gpu(monkeypatch, without)  # room enough: the ControlNet stays on the device
    assert fit("auto") is False
    asked = _fake_gpu(monkeypatch, (without + with_offload) // 2)  # fits only with the ControlNet on the host
    assert fit("auto") is True
    assert asked == [without]  # ComfyUI was asked for the room of the job as it is first estimated
    with pytest.raises(InputError) as err:
        fit(False)
    assert "controlnet_offload on" in str(err.value)  # ... but the refusal suggests it
    assert fit(True) is True
    _fake_gpu(monkeypatch, with_offload - 1)  # not even with it: refused, and the message says auto tried it
    with pytest.raises(InputError, match="with the ControlNet offloaded, as controlnet_offload auto would run it"):
        fit("auto")


def test_auto_is_off_on_the_cpu(data, monkeypatch):
    handle = _handle(data)
    lat = latents_in(latent(data["src"].frames), handle.engine.latent_scale, "latent")
    asked = []
    fake = types.SimpleNamespace(torch_device=lambda: torch.device("cpu"),
                                 free_memory=lambda required, device: asked.append(required) or 1000)
    monkeypatch.setattr(memory_guard, "bridge", fake)
    with pytest.raises(InputError) as err:  # no room: auto does not offload on the CPU, nor suggests it
        memory_guard.ensure_tuning_fits("EYM Stage 1 Tuning", handle, "stage1", lat, controlnet_offload="auto")
    assert "controlnet" not in str(err.value).lower()
    fake.free_memory = lambda required, device: None  # unknown: runs, ControlNet in place
    assert memory_guard.ensure_tuning_fits("EYM Stage 1 Tuning", handle, "stage1", lat,
                                           controlnet_offload="auto")["controlnet_offload"] is False


@pytest.mark.parametrize("method", ["eym_v1", "eym_v2"])
def test_the_nodes_pass_the_choice_to_the_engine(data, monkeypatch, method):
    """The node's choice reaches the tuner: auto on when it must, on and off as told; the tuned
    weights are the same either way."""
    seen = []
    real = tuning_nodes.tune_stage
    monkeypatch.setattr(tuning_nodes, "tune_stage",
                        lambda model, stage, *a, **kw: seen.append(a[3].controlnet_offload) or real(model, stage, *a, **kw))
    handle = _handle(data, method)
    lat = latents_in(latent(data["src"].frames), handle.engine.latent_scale, "latent")
    without, with_offload = _needs(handle, lat)
    _fake_gpu(monkeypatch, (without + with_offload) // 2)
    node = tuning_nodes.TuneStage1() if method == "eym_v1" else v2.STLStage1()
    extra = ("per_step",) if method == "eym_v1" else ()
    run = lambda **kw: node.run(_handle(data, method), latent(data["src"].frames), data["ps"], data["src"].poses, 2,
                                1e-3, 0, "auto", True, 1.0, *extra, **kw)[0]
    auto = run()  # the default
    on = run(controlnet_offload="on")
    _fake_gpu(monkeypatch, without)
    off = run(controlnet_offload="off")
    assert seen == [True, True, False]
    for h in (on, off):
        assert all(torch.equal(auto.state[k], h.state[k]) for k in auto.state)
    with pytest.raises(InputError, match="controlnet_offload must be one of auto, on, off"):
        run(controlnet_offload="sometimes")


def test_every_tuning_node_offers_it_last_with_auto_by_default():
    for cls in (tuning_nodes.TuneStage1, tuning_nodes.TuneStage2, v2.STLStage1, v2.STLStage2):
        optional = cls.INPUT_TYPES()["optional"]
        assert list(optional)[-1] == "controlnet_offload"
        choices, opts = optional["controlnet_offload"]
        assert choices == ["auto", "on", "off"] and opts["default"] == "auto"
        assert "0.7 GB" in opts["tooltip"] and "same" in opts["tooltip"]
    assert "controlnet_offload on" in memory_guard.TUNING_LEVERS
