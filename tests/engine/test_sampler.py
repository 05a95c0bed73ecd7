"""Two-branch sampling with RC-Attn K/V injection."""

import pytest
import torch
from diffusers import DDIMScheduler

from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.method.ddim import ddim_sample
from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.method.sampler import SamplerConfig, injection_active, two_branch_sample
from edit_your_motion.motion_core.seeding import step_generator
from edit_your_motion.motion_core.video_model.attention import UNET_PARTS


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    model = tiny.build_motion_model()
    with torch.no_grad():  # a tuned model's temporal layers are not zero; make them act
        for n, p in model.unet.named_parameters():
            if "temporal_attention.attn.to_out" in n:
                p.normal_(0, 0.02, generator=g)
    n = 3
    return dict(
        model=model, z=torch.randn(n, 4, 8, 8, generator=g), src=torch.rand(n, 3, 64, 64, generator=g),
        ref=torch.rand(n, 3, 64, 64, generator=g), ps=tiny.encode_prompt("a boy is dancing"),
        pt=tiny.encode_prompt("a boy is playing basketball"), uncond=tiny.encode_prompt(""),
    )


def _run(s, **kw):
    same = kw.pop("same", False)
    cfg = SamplerConfig(num_steps=kw.pop("steps", 6), **kw)
    return two_branch_sample(s["model"], s["z"], s["ps"], s["ps"] if same else s["pt"], s["src"],
                             s["src"] if same else s["ref"], cfg, uncond_embeddings=s["uncond"])


@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_same_prompt_and_poses_edit_equals_reconstruction(setup, guidance):
    res = _run(setup, same=True, kv_injection="balanced", guidance_scale=guidance)
    torch.testing.assert_close(res.edited, res.reconstruction, atol=1e-4, rtol=1e-4)
    assert res.injected_steps == list(range(6))


def test_concat_injection_reweights_the_current_frame(setup):
    """Eq. 18 literally: identical branches still differ, because frame i appears twice among the
    editing branch's keys (documented in motion_core/method/sampler.py)."""
    res = _run(setup, same=True, kv_injection="concat")
    assert (res.edited - res.reconstruction).abs().max() > 1e-3


def test_reconstruction_branch_is_plain_ddim(setup):
    s = setup
    res = _run(s, kv_injection="concat")
    plain = ddim_sample(s["model"], s["z"], s["ps"], s["src"], num_steps=6)
    torch.testing.assert_close(res.reconstruction, plain, atol=1e-4, rtol=1e-4)


def _reference(s, steps=6, parts=UNET_PARTS, inject_steps=None, injection="concat"):
    """The two-branch sampler written out: ONE predict call per step on [reconstruction, edit] with
    the injection plan (editing group 1 reads group 0), diffusers' DDIMScheduler for both updates."""
    model, n = s["model"], 3
    sched = DDIMScheduler.from_config(model.scheduler_config)
    sched.set_timesteps(steps)
    plan = model.plan(n, 2, {1: 0}, injection)
    emb = torch.cat([s["ps"].expand(n, -1, -1), s["pt"].expand(n, -1, -1)])
    poses = torch.cat([s["src"], s["ref"]])
    z_r, z_e = s["z"].clone(), s["z"].clone()
    for i, t in enumerate(sched.timesteps.tolist()):
        active = parts if inject_steps is None or i in inject_steps else ()
        with torch.no_grad():
            eps = model.predict(torch.cat([z_r, z_e]), t, emb, n, poses=poses, plan=plan, inject_parts=active).float()
        z_r = sched.step(eps[:n], t, z_r).prev_sample
        z_e = sched.step(eps[n:], t, z_e).prev_sample
    return z_r, z_e


def test_edit_branch_matches_the_written_out_sampler(setup):
    on = _run(setup)
    ref_r, ref_e = _reference(setup)
    torch.testing.assert_close(on.edited, ref_e, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(on.reconstruction, ref_r, atol=1e-4, rtol=1e-4)


def test_without_injection_the_edit_is_plain_ddim_of_its_own_prompt_and_poses(setup):
    """Known answer: with injection off, nothing links the branches, so the edit is single-branch
    DDIM with P_t and the reference poses; the injection never touches the reconstruction."""
    s = setup
    off = _run(s, inject_start=0.0, inject_end=0.0)
    none = _run(s, inject_parts=())
    assert off.injected_steps == []
    plain = ddim_sample(s["model"], s["z"], s["pt"], s["ref"], num_steps=6)
    torch.testing.assert_close(off.edited, plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(none.edited, plain, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(_run(s).reconstruction, off.reconstruction)


def test_injection_range_and_parts(setup):
    res = _run(setup, steps=10, inject_start=0.2, inject_end=0.5)
    assert res.injected_steps == [2, 3, 4]
    assert [injection_active(i, 10, 0.0, 1.0) for i in range(10)] == [True] * 10
    torch.testing.assert_close(res.edited, _reference(setup, steps=10, inject_steps={2, 3, 4})[1], atol=1e-4, rtol=1e-4)
    up_only = _run(setup, inject_parts=("up",))
    torch.testing.assert_close(up_only.edited, _reference(setup, parts=("up",))[1], atol=1e-4, rtol=1e-4)


def test_seeded_runs_are_deterministic(setup):
    a, b = _run(setup, eta=0.5, seed=3), _run(setup, eta=0.5, seed=3)
    c = _run(setup, eta=0.5, seed=4)
    assert torch.equal(a.edited, b.edited)
    assert (a.edited - c.edited).abs().max() > 1e-4


def test_every_seed_the_node_allows_works(setup):
    """seed * 1_000_003 + step overflowed torch's seed above about 1.8e13; ComfyUI allows 2**64 - 1."""
    top = _run(setup, eta=0.5, seed=2**64 - 1, steps=2)
    below = _run(setup, eta=0.5, seed=2**64 - 2, steps=2)
    assert torch.isfinite(top.edited).all() and not torch.equal(top.edited, below.edited)
    # the noise of each step comes from its own generator
    n1 = torch.randn(4, generator=step_generator(2**64 - 1, 0))
    assert not torch.equal(n1, torch.randn(4, generator=step_generator(2**64 - 1, 1)))
    assert torch.equal(n1, torch.randn(4, generator=step_generator(2**64 - 1, 0)))


def test_recon_branch_without_controlnet_is_plain_ddim_without_poses(setup):
    s = setup
    without = _run(s, recon_controlnet=False)
    torch.testing.assert_close(without.reconstruction, ddim_sample(s["model"], s["z"], s["ps"], None, num_steps=6),
                               atol=1e-4, rtol=1e-4)


def test_bad_inputs(setup):
    s = setup
    with pytest.raises(InputError, match="source_poses has 2"):
        two_branch_sample(s["model"], s["z"], s["ps"], s["pt"], s["src"][:2], s["ref"])
    with pytest.raises(InputError, match="uncond"):
        two_branch_sample(s["model"], s["z"], s["ps"], s["pt"], s["src"], s["ref"], SamplerConfig(guidance_scale=2))
    with pytest.raises(InputError, match="injection range"):
        _run(s, inject_start=0.8, inject_end=0.2)
    with pytest.raises(InputError, match="inject_parts"):
        _run(s, inject_parts=("middle",))
    with pytest.raises(InputError, match="resize the pose images to the video size"):
        two_branch_sample(s["model"], s["z"], s["ps"], s["pt"], s["src"], s["ref"][..., :32, :32])


def test_prompts_of_different_token_lengths(setup):
    """A 154-token prompt (two CLIP chunks) next to a 77-token one: repeated to a common length,
    which leaves cross-attention unchanged."""
    from edit_your_motion.motion_core.video_model.model import match_token_lengths

    s = setup
    a, b = match_token_lengths(s["ps"], torch.cat([s["pt"], s["pt"]], dim=1))
    assert a.shape == b.shape == (1, 154, 32)
    with torch.no_grad():
        x = s["z"]
        one = s["model"].predict(x, 500, s["ps"], 3, poses=s["src"])
        two = s["model"].predict(x, 500, a, 3, poses=s["src"])
    torch.testing.assert_close(one, two, atol=1e-5, rtol=1e-5)
    long_t = torch.cat([s["pt"], s["pt"]], dim=1)
    res = two_branch_sample(s["model"], s["z"], s["ps"], long_t, s["src"], s["ref"], SamplerConfig(num_steps=2))
    ref = two_branch_sample(s["model"], s["z"], s["ps"], s["pt"], s["src"], s["ref"], SamplerConfig(num_steps=2))
    torch.testing.assert_close(res.edited, ref.edited, atol=1e-4, rtol=1e-4)
