"""Beyond the paper: keeping the source background through the inversion trajectory, and ghost filling."""

import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.method import keep_background as KB
from edit_your_motion.motion_core.method.ddim import ddim_invert, ddim_invert_trajectory, ddim_schedule, ddim_step
from edit_your_motion.motion_core.method.sampler import SamplerConfig, two_branch_sample
from edit_your_motion.motion_core.method.single_branch import single_branch_sample
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.video_model.model import MotionModel

STEPS = 4


def _act(model, g):
    with torch.no_grad():  # a tuned model: temporal layers (and Motion Attention) act
        for n, p in model.unet.named_parameters():
            if "temporal_attention.attn.to_out" in n or ("motion_attention" in n and "proj_out" in n):
                p.normal_(0, 0.02, generator=g)
    return model


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    unet = tiny.build_unet()
    v2 = _act(MotionModel.from_unet(unet, tiny.build_controlnet(unet), method="eym_v2"), g)
    v1 = _act(tiny.build_motion_model(), g)
    n = 3
    s = dict(v1=v1, v2=v2, x=torch.randn(n, 4, 8, 8, generator=g), src=torch.rand(n, 3, 64, 64, generator=g),
             ref=torch.rand(n, 3, 64, 64, generator=g), ps=tiny.encode_prompt("a boy is dancing"),
             pt=tiny.encode_prompt("a boy is playing basketball"))
    for name in ("v1", "v2"):
        s[f"z_{name}"], s[f"traj_{name}"] = ddim_invert_trajectory(s[name], s["x"], s["ps"], s["src"], num_steps=STEPS)
    return s


def _v1(s, keep=None):
    return two_branch_sample(s["v1"], s["z_v1"], s["ps"], s["pt"], s["src"], s["ref"],
                             SamplerConfig(num_steps=STEPS), keep=keep)


def _v2(s, keep=None):
    return single_branch_sample(s["v2"], s["z_v2"], s["pt"], s["ref"], num_steps=STEPS, keep=keep)


def test_stored_trajectory_is_what_the_inversion_computed(setup):
    """Known answers: the first level is the input, the last is ddim_invert's z_T bit for bit, and every
    level is one DDIM step of the model's noise prediction from the level before (recomputed here)."""
    s = setup
    model, traj = s["v1"], s["traj_v1"]
    assert traj.shape == (STEPS + 1, *s["x"].shape) and traj.dtype == torch.float32
    assert torch.equal(traj[0], s["x"])
    assert torch.equal(traj[-1], ddim_invert(model, s["x"], s["ps"], s["src"], num_steps=STEPS))
    assert torch.equal(traj[-1], s["z_v1"])
    sched = ddim_schedule(model.scheduler_config, STEPS)
    for k, t in enumerate(sched.timesteps.flip(0).tolist()):
        with torch.no_grad():
            eps = model.predict(traj[k], t, s["ps"].expand(3, -1, -1), 3, poses=s["src"]).float()
        assert torch.equal(traj[k + 1], ddim_step(traj[k], eps, sched.alpha_prev(t), sched.alpha(t)))


@pytest.mark.parametrize("sampler", ["v1", "v2"])
def test_empty_region_returns_the_source_latents_exactly(setup, sampler):
    s = setup
    empty = torch.zeros(3, 8, 8)
    keep = KB.make_keeper(s[f"traj_{sampler}"], region=empty, grow=0, feather_radius=0)
    out = _v1(s, keep).edited if sampler == "v1" else _v2(s, keep)
    assert torch.equal(out, s["x"])


@pytest.mark.parametrize("sampler", ["v1", "v2"])
def test_whole_frame_region_equals_the_plain_sampler(setup, sampler):
    s = setup
    keep = KB.make_keeper(s[f"traj_{sampler}"], region=torch.ones(1, 64, 64), grow=1, feather_radius=1)
    assert torch.equal(keep.region, torch.ones(3, 1, 8, 8))
    if sampler == "v1":
        with_keep, plain = _v1(s, keep), _v1(s)
        assert torch.equal(with_keep.edited, plain.edited)
        assert torch.equal(with_keep.reconstruction, plain.reconstruction)
    else:
        assert torch.equal(_v2(s, keep), _v2(s))


def test_partial_region_keeps_outside_exactly_and_changes_inside(setup):
    s = setup
    region = torch.zeros(3, 64, 64)
    region[:, 16:40, 8:32] = 1  # latent rows 2..4, cols 1..3
    keep = KB.make_keeper(s["traj_v1"], region=region, grow=0, feather_radius=0)
    out = _v1(s, keep).edited
    inside = keep.region.expand_as(out) > 0
    assert torch.equal(out[~inside], s["x"][~inside])
    plain = _v1(s).edited
    assert (out[inside] - s["x"][inside]).abs().max() > 1e-3  # the edit acts inside
    assert not torch.equal(out, plain)  # and the kept background changes what the model sees


def test_region_grow_and_feather_known_answers():
    m = torch.zeros(1, 1, 9, 9, dtype=torch.bool)
    m[0, 0, 4, 4] = True
    assert KB.dilate(m, 1)[0, 0].sum() == 9 and KB.dilate(m, 2)[0, 0].sum() == 25
    soft = KB.feather(m, 1)[0, 0]
    assert soft[4, 4] == 1.0  # exactly 1 on the mask
    # a 3x3 box average of the mask grown to 3x3: the share of each box that the grown mask covers
    assert soft[4, 5] == pytest.approx(6 / 9) and soft[3, 3] == pytest.approx(4 / 9)
    assert soft[4, 6] == pytest.approx(3 / 9) and soft[2, 2] == pytest.approx(1 / 9)
    assert (soft[:, :2] == 0).all() and (soft[:2] == 0).all()  # exactly 0 beyond 2 * radius
    # any covered image pixel marks its latent pixel; sizes that are not the video's are refused
    img = torch.zeros(2, 16, 16)
    img[1, 9, 2] = 1
    lat = KB.latent_masks(img, 2, 2)
    assert lat.shape == (2, 1, 2, 2) and lat.sum() == 1 and lat[1, 0, 1, 0]
    with pytest.raises(InputError, match="resize the mask"):
        KB.latent_masks(torch.zeros(1, 15, 16), 2, 2)


def test_nearest_uncovered_frame_known_answer():
    covered = torch.tensor([1, 1, 0, 1, 0], dtype=torch.bool).view(5, 1, 1, 1)
    best, found = KB.nearest_uncovered_frame(covered)
    assert best.flatten().tolist() == [2, 2, 2, 2, 4] and found.all()
    best, found = KB.nearest_uncovered_frame(torch.ones(3, 1, 1, 1, dtype=torch.bool))
    assert not found.any()


def test_ghost_fill_takes_the_background_from_the_nearest_free_frame(setup):
    """A source person who moves: frame 0 covers latent column 1, frames 1-2 column 5; the target person
    sits at column 3. With an empty source person elsewhere the ghost pixels of frame 0 (column 1) take
    frame 1's trajectory, so the edit ends there on frame 1's source latents exactly."""
    s = setup
    src = torch.zeros(3, 8, 8)
    src[0, :, 1] = 1
    src[1:, :, 5] = 1
    tgt = torch.zeros(3, 8, 8)
    tgt[:, :, 3] = 1
    keep = KB.make_keeper(s["traj_v1"], source_masks=src, target_masks=tgt, grow=0, feather_radius=0,
                          ghost_fill="other_frames")
    assert torch.equal(keep.region[:, 0, 0], tgt[:, 0])  # ghosts filled: only the target person is free
    out = _v1(s, keep).edited
    assert torch.equal(out[0, :, :, 1], s["x"][1, :, :, 1])
    assert torch.equal(out[1, :, :, 5], s["x"][0, :, :, 5])
    assert torch.equal(out[:, :, :, 0], s["x"][:, :, :, 0])
    # without filling the ghost is part of the change region
    plain = KB.make_keeper(s["traj_v1"], source_masks=src, target_masks=tgt, grow=0, feather_radius=0)
    assert torch.equal(plain.region[:, 0, 0], torch.maximum(src, tgt)[:, 0])


def test_renoise_ghost_changes_only_the_start_of_the_ghost(setup):
    s = setup
    src = torch.zeros(3, 8, 8)
    src[:, :, 1] = 1
    tgt = torch.zeros(3, 8, 8)
    tgt[:, :, 3] = 1
    keep = KB.make_keeper(s["traj_v1"], source_masks=src, target_masks=tgt, grow=0, feather_radius=0,
                          renoise_ghost=True, seed=5)
    start = keep.start(s["z_v1"])
    assert torch.equal(start[:, :, :, 2:], s["z_v1"][:, :, :, 2:]) and torch.equal(start[:, :, :, 0], s["z_v1"][:, :, :, 0])
    assert (start[:, :, :, 1] - s["z_v1"][:, :, :, 1]).abs().min() > 0
    assert torch.equal(start, keep.start(s["z_v1"]))  # seeded


def test_bad_inputs_are_named(setup):
    s = setup
    with pytest.raises(InputError, match="change region"):
        KB.make_keeper(s["traj_v1"])
    with pytest.raises(InputError, match="ghost_fill"):
        KB.make_keeper(s["traj_v1"], source_masks=torch.zeros(3, 8, 8), ghost_fill="magic")
    with pytest.raises(InputError, match="need both"):
        KB.make_keeper(s["traj_v1"], source_masks=torch.zeros(3, 8, 8), ghost_fill="other_frames")
    with pytest.raises(InputError, match="2 frames but the clip has 3"):
        KB.make_keeper(s["traj_v1"], source_masks=torch.zeros(2, 8, 8))
    keep = KB.make_keeper(s["traj_v1"], region=torch.ones(3, 8, 8))
    with pytest.raises(InputError, match="same number of steps"):
        two_branch_sample(s["v1"], s["z_v1"], s["ps"], s["pt"], s["src"], s["ref"], SamplerConfig(num_steps=STEPS + 1),
                          keep=keep)


def test_bf16_storage_and_inference_mode_run_the_new_paths(setup):
    """bf16 weights (what ComfyUI's auto picks on GPUs) under inference mode: inversion with its
    trajectory and both samplers with the keeper run, stay finite, and keep outside the region exactly."""
    s = setup
    model = tiny.build_motion_model()
    model.to(torch.bfloat16)
    region = torch.zeros(3, 8, 8)
    region[:, 2:6, 2:6] = 1
    with torch.inference_mode():
        z, traj = ddim_invert_trajectory(model, s["x"], s["ps"], s["src"], num_steps=2)
        keep = KB.make_keeper(traj, region=region, grow=0, feather_radius=0)
        out = two_branch_sample(model, z, s["ps"], s["pt"], s["src"], s["ref"], SamplerConfig(num_steps=2), keep=keep)
        one = single_branch_sample(model, z, s["pt"], s["ref"], num_steps=2, keep=keep)
    assert traj.dtype == torch.float32 and torch.equal(traj[-1], z)
    outside = keep.region.expand_as(out.edited) == 0
    for edited in (out.edited, one):
        assert torch.isfinite(edited).all()
        assert torch.equal(edited[outside], s["x"][outside])


# ----------------------------------------------------------------------------- ghost mechanisms (measured options)
def _ghost_masks():
    """Source person in latent column 1, target person in column 3: column 1 is the ghost."""
    src = torch.zeros(3, 8, 8)
    src[:, :, 1] = 1
    tgt = torch.zeros(3, 8, 8)
    tgt[:, :, 3] = 1
    return src, tgt


def _v1_cfg(s, keep, **cfg):
    return two_branch_sample(s["v1"], s["z_v1"], s["ps"], s["pt"], s["src"], s["ref"],
                             SamplerConfig(num_steps=STEPS, **cfg), keep=keep)


def test_keeper_records_the_ghost_left_and_all_of_it(setup):
    s = setup
    src, tgt = _ghost_masks()
    keep = KB.make_keeper(s["traj_v1"], source_masks=src, target_masks=tgt, grow=0, feather_radius=0)
    assert torch.equal(keep.ghost[:, 0], src) and torch.equal(keep.ghost_all[:, 0], src.bool())
    # every frame covers column 1: other_frames fills nothing, so the ghost stays in the region
    filled = KB.make_keeper(s["traj_v1"], source_masks=src, target_masks=tgt, grow=0, feather_radius=0,
                            ghost_fill="other_frames")
    assert torch.equal(filled.ghost, keep.ghost)
    moving = src.clone()
    moving[1:] = 0  # frames 1-2 free column 1: frame 0's ghost is filled, so none is left, but it was a ghost
    filled = KB.make_keeper(s["traj_v1"], source_masks=moving, target_masks=tgt, grow=0, feather_radius=0,
                            ghost_fill="other_frames")
    assert not filled.ghost.any() and torch.equal(filled.ghost_all[:, 0], moving.bool())


@pytest.mark.parametrize("option", [dict(mask_split_kv=True), dict(ghost_guidance=2.0)])
def test_ghost_options_without_a_ghost_equal_the_keeper_sampler(setup, option):
    """Target person covering the source person: no ghost, so mask-split injection and ghost guidance
    leave the two-branch sampler bit for bit as it was."""
    s = setup
    src, _ = _ghost_masks()
    keep = KB.make_keeper(s["traj_v1"], source_masks=src, target_masks=src, grow=0, feather_radius=0)
    assert not keep.ghost_all.any()
    a, b = _v1_cfg(s, keep, **option), _v1_cfg(s, keep)
    assert torch.equal(a.edited, b.edited) and torch.equal(a.reconstruction, b.reconstruction)


@pytest.mark.parametrize("option", [dict(mask_split_kv=True), dict(ghost_guidance=2.0)])
def test_ghost_options_act_only_inside_the_region(setup, option):
    s = setup
    src, tgt = _ghost_masks()
    keep = KB.make_keeper(s["traj_v1"], source_masks=src, target_masks=tgt, grow=0, feather_radius=0)
    a, b = _v1_cfg(s, keep, **option), _v1_cfg(s, keep)
    assert torch.equal(a.reconstruction, b.reconstruction)  # the reconstruction branch is untouched
    outside = keep.region.expand_as(a.edited) == 0
    assert torch.equal(a.edited[outside], s["x"][outside])
    assert (a.edited - b.edited).abs().max() > 1e-4


def test_ghost_guidance_is_the_guidance_formula_on_one_step(setup):
    """One DDIM step is linear in the noise prediction and both branches start from z_T, so inside the
    region (exactly 1 here) the guided edit is edit + w * ghost * (edit - reconstruction) of the
    unguided run: eps_e + w * (eps_e - eps_r) on the ghost pixels, eps_e elsewhere."""
    s = setup
    src, tgt = _ghost_masks()
    traj = s["traj_v1"]
    keep = KB.make_keeper(torch.stack([traj[0], traj[-1]]), source_masks=src, target_masks=tgt, grow=0,
                          feather_radius=0)  # a one-step trajectory: the source, then z_T
    w = 1.5

    def run(**cfg):
        return two_branch_sample(s["v1"], s["z_v1"], s["ps"], s["pt"], s["src"], s["ref"],
                                 SamplerConfig(num_steps=1, **cfg), keep=keep)

    got, plain = run(ghost_guidance=w).edited, run()
    want = plain.edited + w * keep.ghost * (plain.edited - plain.reconstruction)
    inside = keep.region.expand_as(got) > 0
    assert torch.allclose(got[inside], want[inside], atol=1e-5, rtol=1e-5)
    assert (got[inside] - plain.edited[inside]).abs().max() > 1e-3
    assert torch.equal(got[~inside], plain.edited[~inside])


def test_control_boost_known_answers(setup):
    """boost 1 or an empty window: the plain sampler bit for bit; boost b over all steps with no
    ControlNet on the reconstruction equals ControlNet strength b."""
    s = setup

    def run(poses_r, **cfg):
        return two_branch_sample(s["v1"], s["z_v1"], s["ps"], s["pt"], poses_r, s["ref"],
                                 SamplerConfig(num_steps=STEPS, **cfg))

    base = run(s["src"])
    for cfg in (dict(control_boost=1.0, control_boost_until=1.0), dict(control_boost=3.0, control_boost_until=0.0)):
        assert torch.equal(run(s["src"], **cfg).edited, base.edited)
    assert torch.equal(run(None, control_boost=2.0, control_boost_until=1.0).edited,
                       run(None, control_scale=2.0).edited)
    early = run(s["src"], control_boost=2.0, control_boost_until=0.5)
    assert not torch.equal(early.edited, base.edited) and torch.equal(early.reconstruction, base.reconstruction)


def test_bf16_storage_and_inference_mode_run_the_ghost_options(setup):
    s = setup
    model = tiny.build_motion_model()
    model.to(torch.bfloat16)
    src, tgt = _ghost_masks()
    with torch.inference_mode():
        z, traj = ddim_invert_trajectory(model, s["x"], s["ps"], s["src"], num_steps=2)
        keep = KB.make_keeper(traj, source_masks=src, target_masks=tgt, grow=0, feather_radius=0)
        out = two_branch_sample(model, z, s["ps"], s["pt"], s["src"], s["ref"],
                                SamplerConfig(num_steps=2, mask_split_kv=True, ghost_guidance=1.0, control_boost=2.0,
                                              control_boost_until=0.5), keep=keep)
    outside = keep.region.expand_as(out.edited) == 0
    assert torch.isfinite(out.edited).all() and torch.equal(out.edited[outside], s["x"][outside])


def test_ghost_options_need_the_person_masks(setup):
    s = setup
    keep = KB.make_keeper(s["traj_v1"], region=torch.ones(3, 8, 8))
    for option in (dict(mask_split_kv=True), dict(ghost_guidance=1.0)):
        with pytest.raises(InputError, match="source person mask"):
            _v1_cfg(s, keep, **option)
    with pytest.raises(InputError, match="ghost guidance"):
        SamplerConfig(ghost_guidance=-1).validate()
