"""The memory estimate (``bench --estimate-memory``), its validation on real CPU runs, the tuner's
memory levers and the nodes' check before their first step."""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys

import pytest
import torch

from edit_your_motion.motion_core.apps import bench, memory
from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.method.stages import stage_parameter_names, tune_stage
from edit_your_motion.motion_core.method.tuner import TuneConfig
from edit_your_motion.motion_core.testing import tiny

HAS_BNB = importlib.util.find_spec("bitsandbytes") is not None
if os.environ.get("CI") and not HAS_BNB:  # CI installs it (.ci/setup): a broken install fails, not skips
    raise RuntimeError("CI installs bitsandbytes (.ci/setup), but it is not importable")


# --------------------------------------------------------------------------- the tracker
def test_live_bytes_counts_storages_once_and_frees_them():
    tracker = memory.LiveBytes("cpu", block=1)
    with tracker:
        a = torch.zeros(100)  # 400 bytes
        view = a[10:20]  # same storage: not counted again
        b = torch.ones(50, dtype=torch.float64)  # 400 bytes
        assert tracker.live == 800
        del b
        assert tracker.live == 400 and tracker.peak == 800
        c = a * 2  # a new storage
        assert tracker.live == 800
        del a
        assert tracker.live == 800  # the view keeps a's storage alive
        del view, c
    assert tracker.live == 0 and tracker.peak == 800


def test_live_bytes_rounds_blocks_like_the_cuda_allocator():
    tracker = memory.LiveBytes("cpu", block=512)
    with tracker:
        x = torch.zeros(1)  # 4 bytes -> one 512-byte block
        y = torch.zeros(129)  # 516 bytes -> two blocks
        assert tracker.live == 512 + 1024
        del x, y


def test_autocast_follows_cuda_policy_on_the_stand_in_device():
    with memory.fake_gpu(torch.bfloat16):
        x = torch.empty(2, 8, 4, 4, device=memory.DEVICE)
        conv = torch.nn.Conv2d(8, 8, 3, padding=1, device=memory.DEVICE, dtype=torch.bfloat16)
        y = conv(x)
        assert y.dtype == torch.bfloat16  # convolutions run in bf16
        assert torch.nn.functional.group_norm(y, 2).dtype == torch.float32  # normalisations in float32
        assert torch.softmax(y, -1).dtype == torch.float32
        assert (y + 1).dtype == torch.bfloat16  # others: on what they are given
        assert not bool(torch.isnan(y).any()) and bool(torch.isfinite(y).all())  # healthy reads
        q = torch.empty(2, 4, 64, 8, device=memory.DEVICE)
        o = torch.nn.functional.scaled_dot_product_attention(q, q, q)
        assert o.shape == q.shape and o.dtype == torch.bfloat16


# --------------------------------------------------------------------------- estimate vs real runs
def _validation_job(method, **kw):
    # float32, exact bytes; on the CPU the host is the device: the rollback copy and the inputs are there
    return memory.Job(method=method, frames=4, resolution=128, size="tiny", weight_dtype=torch.float32, block=1,
                      rollback="device", inputs_on_device=True, **kw)


@pytest.mark.parametrize("method,phase", [("eym_v1", "stage1"), ("eym_v1", "sampling"), ("eym_v2", "stage2"),
                                          ("eym_v2", "inversion")])
def test_estimate_matches_a_real_cpu_run_within_10_percent(method, phase):
    job = _validation_job(method)
    est = memory.estimate(job, (phase,))[phase]
    real = memory.measure_real(job, phase)
    # the same code on real tensors: live tensor bytes at the peak
    assert est.peak_bytes == pytest.approx(real["tracker_peak_bytes"], rel=0.10)
    # independent count, torch's CPU allocator: it also holds what kernels allocate inside (workspaces)
    assert real["allocator_peak_bytes"] >= 0.97 * real["tracker_peak_bytes"]


@pytest.mark.parametrize("method,phase", [("eym_v1", "stage1"), ("eym_v2", "stage2")])
def test_controlnet_offload_estimate_matches_a_real_cpu_run_and_saves_the_controlnet(method, phase):
    """The ControlNet's weights on the host during tuning: the estimate agrees with a real CPU run
    (where the tracker leaves the weights out, as a GPU run keeps them on the host, and counts the
    copies each step makes), and it is lower than without the lever by the ControlNet's bytes."""
    job = _validation_job(method, controlnet_offload=True)
    est = memory.estimate(job, (phase,))[phase]
    real = memory.measure_real(job, phase)
    assert est.peak_bytes == pytest.approx(real["tracker_peak_bytes"], rel=0.10)
    without = memory.estimate(_validation_job(method), (phase,))[phase]
    cn = sum(p.numel() * p.element_size() for p in tiny.build_motion_model("tiny", method=method).controlnet.parameters())
    assert without.peak_bytes - est.peak_bytes == pytest.approx(cn, rel=0.05)
    assert est.weights_bytes == without.weights_bytes  # it leaves the device inside the stage


def test_rollback_on_the_host_saves_exactly_the_trained_tensors():
    base = dict(method="eym_v1", frames=2, resolution=64, size="tiny")
    host = memory.estimate(memory.Job(**base), ("stage1",))["stage1"]
    device = memory.estimate(memory.Job(rollback="device", **base), ("stage1",))["stage1"]
    model = tiny.build_motion_model("tiny")
    params = dict(model.unet.named_parameters())
    block = memory.CUDA_BLOCK
    # bf16 copies, each rounded to the allocator's 512-byte blocks
    expected = sum(-(-params[n].numel() * 2 // block) * block for n in stage_parameter_names(model, 1))
    assert device.peak_bytes - host.peak_bytes == expected


def test_levers_lower_the_sd15_estimate():
    base = dict(method="eym_v1", frames=2, resolution=64, size="small")
    est = lambda **kw: memory.estimate(memory.Job(**base, **kw), ("stage2",))["stage2"].peak_bytes
    default = est()
    assert est(gradient_checkpointing=False) > default
    assert est(activation_offload=True) < default
    assert est(optimizer="adamw8bit") < default if HAS_BNB else True
    assert est(controlnet_offload=True) < default


def test_estimate_memory_command_line(capsys):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(["--estimate-memory", "--size", "tiny", "--frames", "2", "--resolution", "64",
                         "--method", "eym_v2"])
    assert bench.run(args) == 0
    out = capsys.readouterr().out
    for word in ("stage1", "stage2", "inversion", "sampling", "job peak", "device total"):
        assert word in out
    args = p.parse_args(["--estimate-memory", "--size", "tiny", "--frames", "2", "--resolution", "64",
                         "--method", "eym_v1", "--controlnet-offload"])
    assert memory.job_from_args(args, "eym_v1").controlnet_offload
    assert bench.run(args) == 0
    assert "ControlNet offload on" in capsys.readouterr().out
    args = p.parse_args(["--estimate-memory"])
    bench.check_arguments(args)
    assert not memory.job_from_args(args, "eym_v2").controlnet_offload  # off unless asked for
    assert (args.size, args.resolution) == ("sd15", 512)  # the paper's job by default
    with pytest.raises(InputError, match="width"):
        memory.Job(width=60).check()


# --------------------------------------------------------------------------- 8-bit AdamW
def test_adamw8bit_without_bitsandbytes_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import fails as when not installed
    with pytest.raises(InputError, match="pip install bitsandbytes"):
        TuneConfig(optimizer="adamw8bit").validate()
    with pytest.raises(InputError, match="optimizer must be one of"):
        TuneConfig(optimizer="sgd").validate()


@pytest.mark.skipif(not HAS_BNB, reason="bitsandbytes is not installed")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_adamw8bit_tunes_only_the_stage_tensors(dtype):
    model = tiny.build_motion_model("tiny")
    model.to(dtype)
    g = torch.Generator().manual_seed(0)
    lat = torch.randn(2, 4, 8, 8, generator=g)
    emb = torch.randn(1, 77, 32, generator=g)
    poses = torch.rand(2, 3, 64, 64, generator=g)
    before = {n: p.detach().clone() for n, p in model.unet.named_parameters()}
    cfg = TuneConfig(steps=3, learning_rate=1e-2, optimizer="adamw8bit",
                     precision="bf16" if dtype == torch.bfloat16 else "fp32")
    with torch.inference_mode():  # as ComfyUI runs nodes
        result = tune_stage(model, 1, lat, emb, poses, cfg)
    trained = set(stage_parameter_names(model, 1))
    for n, p in model.unet.named_parameters():
        assert torch.equal(p, before[n]) == (n not in trained), n
        assert p.dtype == dtype
    assert all(torch.isfinite(torch.tensor(result.losses)))


# --------------------------------------------------------------------------- the nodes' check
def _node_data():
    from edit_your_motion.motion_core.testing.synthetic import frames_to_latents, make_clip

    src = make_clip(2, 64, 64, "wave", seed=2)
    unet = tiny.build_unet("tiny", 0)
    cond = [[tiny.encode_prompt("a person"), {"pooled_output": None}]]
    return dict(unet=unet, cn=tiny.build_controlnet(unet, "tiny", 1), src=src, cond=cond,
                latent={"samples": frames_to_latents(src.frames) / 0.18215})


def test_bridge_reports_free_memory_outside_comfyui():
    from edit_your_motion.nodes import comfy_bridge as bridge

    free = bridge.free_memory(1, torch.device("cpu"))
    assert free is None or free > 0


def test_nodes_stop_before_their_first_step_when_the_job_cannot_fit(monkeypatch, tmp_path, comfy_inference_mode):
    from edit_your_motion.nodes import comfy_bridge as bridge
    from edit_your_motion.nodes import inference_nodes, model_nodes, tuning_nodes

    d = _node_data()
    handle = model_nodes.LoadVideoModel().run(d["unet"], d["cn"], "rc", "auto")[0]
    before = {n: p.detach().clone() for n, p in handle.engine.model.named_parameters()}
    asked = []
    monkeypatch.setattr(bridge, "free_memory", lambda required, device: asked.append(required) or 1000)
    monkeypatch.setenv("EYM_MODELS_DIR", str(tmp_path))
    steps = []
    monkeypatch.setattr(bridge.Progress, "step", lambda self, n=1, loss=None: steps.append(n))
    with pytest.raises(InputError) as err:
        tuning_nodes.TuneStage1().run(handle, d["latent"], d["cond"], d["src"].poses, 2, 1e-3, 0, "auto", True, 1.0,
                                      "per_step")
    msg = str(err.value)
    assert "EYM Stage 1 Tuning" in msg and "not enough memory" in msg and "GB free" in msg
    assert "0.0 GB are free" in msg and "Nothing was changed" in msg
    assert asked and asked[0] > 0 and not steps  # asked ComfyUI for room, then stopped before any step
    est = memory.estimate(memory.Job(method="eym_v1", frames=2, resolution=64, size="tiny",
                                     weight_dtype=torch.float32, block=1), ("stage1",))["stage1"]
    # on the CPU the weights are in place already: the need is the rest of the peak, with the margin
    assert asked[0] == int((est.peak_bytes - est.weights_bytes) * 1.10)
    with pytest.raises(InputError, match="EYM Two-Branch Sampler: not enough memory"):
        inference_nodes.TwoBranchSampler().run(handle, d["latent"], d["cond"], d["cond"], d["src"].poses,
                                               d["src"].poses, 2, 1.0, 1.0, 0, 0.0, 0.0, 1.0, "down+mid+up", "concat",
                                               True)
    after = dict(handle.engine.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # no model left changed
    assert not any(tmp_path.iterdir())  # no file written


def test_tuning_node_names_the_missing_library(monkeypatch, comfy_inference_mode):
    from edit_your_motion.nodes import model_nodes, tuning_nodes

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)
    d = _node_data()
    handle = model_nodes.LoadVideoModel().run(d["unet"], d["cn"], "rc", "auto")[0]
    with pytest.raises(InputError, match="pip install bitsandbytes"):
        tuning_nodes.TuneStage2().run(handle, d["latent"], d["cond"], d["src"].poses, 2, 1e-3, 0, "auto", True, 1.0,
                                      0.9, optimizer="adamw8bit")


def test_table_rows_combine_the_levers_as_documented(monkeypatch):
    """``bench --estimate-memory --table``: each lever column comes from its own estimate of the method's
    larger stage, except 8-bit AdamW, whose saving (estimated once per method) is subtracted."""
    from edit_your_motion.motion_core.apps import memory

    seen = []

    def fake(job, phases=memory.PHASES, **kw):
        seen.append((job, tuple(phases)))
        base = 1000 * job.frames + (300 if job.method == "eym_v2" else 0)
        peak = (base - 70 * (job.optimizer == "adamw8bit") - 200 * job.activation_offload
                - 50 * job.controlnet_offload + 900 * (not job.gradient_checkpointing) + 5 * (job.rollback == "device"))
        return {p: memory.PhaseEstimate(p, peak + (1 if p == "stage2" else 0), 10) for p in phases}

    monkeypatch.setattr(memory, "estimate", fake)
    rows = memory.table(("eym_v2",), frames=(8, 16), resolutions=(512,))
    first, second = rows
    assert first["default"] == 8301 and first["adamw8bit"] == 8301 - 70
    assert first["offload"] == 8101 and first["adamw8bit+offload"] == 8101 - 70
    assert first["controlnet_offload"] == 8251 and first["controlnet_offload+adamw8bit"] == 8251 - 70
    assert first["no checkpointing"] == 9201 and first["rollback on device"] == 8306
    assert second["controlnet_offload+adamw8bit"] == 16251 - 70 and "no checkpointing" not in second
    # the 8-bit saving is estimated once (first size), every lever on the larger stage (stage 2 for v2)
    assert sum(j.optimizer == "adamw8bit" for j, _ in seen) == 1
    assert all(p == ("stage2",) for j, p in seen if j.activation_offload or j.controlnet_offload)
