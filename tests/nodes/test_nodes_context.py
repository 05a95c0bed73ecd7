"""Long clips in the nodes: EYM Context Options and the optional ``context`` input of the tuning,
inversion and sampler nodes of both methods (tiny models, inference mode as ComfyUI runs nodes)."""

from __future__ import annotations

import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.method.windows import ContextOptions
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.testing.synthetic import make_clip
from edit_your_motion.motion_core.testing.values import conditioning as cond, latent
from edit_your_motion.nodes import comfy_bridge as bridge
from edit_your_motion.nodes import context_nodes, inference_nodes, later_version_nodes as v2, model_nodes, tuning_nodes

pytestmark = pytest.mark.usefixtures("comfy_inference_mode")

@pytest.fixture(scope="module")
def data():
    src = make_clip(4, 64, 64, "wave", seed=2)
    ref = make_clip(4, 64, 64, "walk", seed=2)
    unet = tiny.build_unet("tiny", 0)
    return dict(unet=unet, cn=tiny.build_controlnet(unet, "tiny", 1), src=src, ref=ref,
                pc=cond("a person in a green shirt"), ps=cond("a person in a green shirt is waving"),
                pt=cond("a person in a green shirt is walking"))


def ctx(length, overlap, fuse="pyramid"):
    return context_nodes.ContextOptionsNode().run(length, overlap, fuse)[0]


def v1_chain(data, context=None, steps=2):
    handle = model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc", "auto")[0]
    kw = {} if context is None else {"context": context}
    masked = data["src"].frames * data["src"].masks[..., None]
    h = tuning_nodes.TuneStage1().run(handle, latent(masked), data["pc"], data["src"].poses, 1, 1e-3, 0, "auto", True,
                                      1.0, "per_step", **kw)[0]
    h = tuning_nodes.TuneStage2().run(h, latent(data["src"].frames), data["ps"], data["src"].poses, 1, 1e-3, 0, "auto",
                                      True, 1.0, 0.9, **kw)[0]
    z = inference_nodes.DDIMInversion().run(h, latent(data["src"].frames), data["ps"], data["src"].poses, steps, True,
                                            1.0, 1.0, **kw)[0]
    edited, recon = inference_nodes.TwoBranchSampler().run(
        h, z, data["ps"], data["pt"], data["src"].poses, data["ref"].poses, steps, 1.0, 1.0, 0, 0.0, 0.0, 1.0,
        "down+mid+up", "concat", True, **kw)
    return h, z["samples"], edited["samples"], recon["samples"]


def v2_chain(data, context=None, steps=2):
    handle = model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "bidirectional", "auto", "eym_v2")[0]
    kw = {} if context is None else {"context": context}
    masked = data["src"].frames * data["src"].masks[..., None]
    h = v2.STLStage1().run(handle, latent(masked), data["ps"], data["src"].poses, 1, 1e-3, 0, "auto", True, 1.0, **kw)[0]
    h = v2.STLStage2().run(h, latent(data["src"].frames), data["ps"], data["src"].poses, 1, 1e-3, 0, "auto", True, 1.0,
                           **kw)[0]
    z = inference_nodes.DDIMInversion().run(h, latent(data["src"].frames), data["ps"], data["src"].poses, steps, True,
                                            1.0, 1.0, **kw)[0]
    edited = v2.SingleBranchSampler().run(h, z, data["pt"], data["ref"].poses, steps, 1.0, 1.0, **kw)[0]
    return h, z["samples"], edited["samples"]


def test_context_node_makes_options_and_refuses_bad_ones():
    assert ctx(8, 2) == ContextOptions(8, 2, "pyramid")
    assert ctx(16, 4, "linear") == ContextOptions(16, 4, "linear")
    with pytest.raises(InputError, match="overlap.*smaller than the window length"):
        ctx(8, 8)


@pytest.mark.parametrize("chain", [v1_chain, v2_chain])
def test_window_at_least_the_clip_is_exactly_the_chain_without_context(data, chain):
    plain = chain(data)
    for context in (ctx(4, 2),):  # W == n, the border case (W > n takes the same path: test_long_clips.py)
        windowed = chain(data, context)
        for name in plain[0].state:
            assert torch.equal(plain[0].state[name], windowed[0].state[name]), name
        for a, b in zip(plain[1:], windowed[1:]):
            assert torch.equal(a, b)


@pytest.mark.parametrize("chain", [v1_chain, v2_chain])
def test_windowed_chain_runs_and_progress_counts_every_window(data, chain, monkeypatch):
    totals = []
    init = bridge.Progress.__init__

    def spy(self, total, label="", prepare=0):
        totals.append((label, total))
        init(self, total, label, prepare)

    monkeypatch.setattr(bridge.Progress, "__init__", spy)
    out = chain(data, ctx(2, 1), steps=2)  # 4 frames: windows at 0, 1, 2
    assert all(bool(torch.isfinite(x).all()) for x in out[1:])
    inference = [t for label, t in totals if "inversion" in label or "sampling" in label]
    assert inference == [2 * 3, 2 * 3]
    tuning = [t for label, t in totals if "stage" in label]
    assert tuning == [1, 1]  # a tuning step is one window


def test_interrupt_inside_a_windowed_inversion_step(data, monkeypatch):
    handle = model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc", "auto")[0]
    done = []
    step = bridge.Progress.step

    def spy(self, n=1, loss=None):
        done.append(self.done)
        if self.done == 0:
            bridge.request_interrupt()
        step(self, n, loss)

    monkeypatch.setattr(bridge.Progress, "step", spy)
    with pytest.raises(bridge.Interrupted):
        inference_nodes.DDIMInversion().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses, 5, True,
                                            1.0, 1.0, context=ctx(2, 1))
    assert done == [0]  # stopped after the first window of the first step


def test_bad_context_inputs_are_refused_by_name(data):
    handle = model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc", "auto")[0]
    with pytest.raises(InputError, match="context must come from EYM Context Options"):
        inference_nodes.DDIMInversion().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses, 2, True,
                                            1.0, 1.0, context=(8, 2))
    one = data["src"].frames[:1]
    with pytest.raises(InputError, match="1 frame.*at least 2 frames"):
        inference_nodes.DDIMInversion().run(handle, latent(one), data["ps"], data["src"].poses[:1], 2, True, 1.0, 1.0,
                                            context=ctx(8, 2))
    with pytest.raises(InputError, match="1 frame.*at least 2 frames"):
        tuning_nodes.TuneStage2().run(handle, latent(one), data["ps"], data["src"].poses[:1], 1, 1e-3, 0, "auto", True,
                                      1.0, 0.9, context=ctx(8, 2))
    # source and reference of different lengths: refused before anything runs, as without a context
    z = {"samples": torch.zeros(4, 4, 8, 8)}
    with pytest.raises(InputError, match="reference_poses"):
        inference_nodes.TwoBranchSampler().run(handle, z, data["ps"], data["pt"], data["src"].poses,
                                               data["ref"].poses[:3], 1, 1.0, 1.0, 0, 0.0, 0.0, 1.0, "down+mid+up",
                                               "concat", True, context=ctx(2, 1))


def test_memory_check_speaks_of_the_window(data, monkeypatch):
    """With a context the memory check sizes one model call (the window and its RC neighbour) and says so."""
    handle = model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc", "auto")[0]
    seen = []
    monkeypatch.setattr(bridge, "free_memory", lambda required, device: seen.append(required) or 1000)
    with pytest.raises(InputError, match="one context window of 3 frames"):
        inference_nodes.DDIMInversion().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses, 2, True,
                                            1.0, 1.0, context=ctx(2, 1))
    with pytest.raises(InputError, match=r"This job \(4 frames"):
        inference_nodes.DDIMInversion().run(handle, latent(data["src"].frames), data["ps"], data["src"].poses, 2, True,
                                            1.0, 1.0)
    assert seen[0] < seen[1]  # one window of 3 frames needs less than the whole clip of 4
