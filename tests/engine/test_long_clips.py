"""Long clips: tuning, inversion and sampling on windows (motion_core/method/windows.py)."""


import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.method import keep_background as KB
from edit_your_motion.motion_core.method.ddim import ddim_invert, ddim_invert_trajectory, ddim_sample
from edit_your_motion.motion_core.method.sampler import SamplerConfig, two_branch_sample
from edit_your_motion.motion_core.method.single_branch import single_branch_sample
from edit_your_motion.motion_core.method.stages import tune_stage
from edit_your_motion.motion_core.method.tuner import TuneConfig
from edit_your_motion.motion_core.method.windows import (
    ContextOptions, tuning_window, window_batches, window_layout,
)
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.video_model.attention import AttentionPlan, window_kv_frames, window_kv_indices


# ---------------------------------------------------------------- layout (known answers)

def test_window_layout_starts_borders_and_pyramid_weights():
    ctx = ContextOptions(8, 2, "pyramid")
    layout = window_layout(20, ctx)
    assert [w.start for w in layout] == [0, 6, 12]
    assert [w.length for w in layout] == [8, 8, 8]
    assert ctx.borders(20) == [6, 12]
    # frame 6: window 0 at position 6 (pyramid 2), window 1 at position 0 (pyramid 1)
    assert layout[0].weights[6].item() == pytest.approx(2 / 3)
    assert layout[1].weights[0].item() == pytest.approx(1 / 3)
    assert layout[0].weights[0].item() == 1.0  # only window 0 covers frame 0
    # the last window is flush with the clip's end
    assert [w.start for w in window_layout(22, ctx)] == [0, 6, 12, 14]


@pytest.mark.parametrize("fuse", ["pyramid", "linear"])
@pytest.mark.parametrize("n,length,overlap", [(20, 8, 2), (22, 8, 2), (9, 8, 0), (33, 8, 4), (64, 16, 4), (5, 2, 1)])
def test_weights_sum_to_one_and_cover_every_frame(fuse, n, length, overlap):
    total = torch.zeros(n, dtype=torch.float64)
    covered = torch.zeros(n, dtype=torch.long)
    for w in window_layout(n, ContextOptions(length, overlap, fuse)):
        assert w.length == length and 0 <= w.start and w.start + w.length <= n
        total[w.start: w.start + w.length] += w.weights
        covered[w.start: w.start + w.length] += 1
    assert bool((covered >= 1).all())
    torch.testing.assert_close(total, torch.ones(n, dtype=torch.float64), rtol=0, atol=1e-12)


def test_linear_weights_are_one_inside_and_ramp_across_the_overlap():
    layout = window_layout(14, ContextOptions(8, 2, "linear"))
    assert [w.start for w in layout] == [0, 6]
    # frames 6, 7 are covered by both: raw ramps (2/3, 1/3) from window 0 and (1/3, 2/3) from window 1
    torch.testing.assert_close(layout[0].weights, torch.tensor([1, 1, 1, 1, 1, 1, 2 / 3, 1 / 3], dtype=torch.float64))
    torch.testing.assert_close(layout[1].weights, torch.tensor([1 / 3, 2 / 3, 1, 1, 1, 1, 1, 1], dtype=torch.float64))


def test_window_longer_than_the_clip_is_the_whole_clip():
    for ctx in (ContextOptions(8, 2), ContextOptions(100, 50)):
        layout = window_layout(8, ctx)
        assert len(layout) == 1 and layout[0].start == 0 and layout[0].length == 8
        assert bool((layout[0].weights == 1).all())
    assert window_batches(8, ContextOptions(8, 2), "rc")[0].frames == list(range(8))


def test_bad_context_is_refused_with_a_fix():
    with pytest.raises(InputError, match="overlap.*smaller than the window length"):
        window_layout(20, ContextOptions(8, 8))
    with pytest.raises(InputError, match="overlap"):
        ContextOptions(4, -1).validate()
    with pytest.raises(InputError, match="window length must be >= 2"):
        ContextOptions(1, 0).validate()
    with pytest.raises(InputError, match="1 frame.*at least 2 frames"):
        window_layout(1, ContextOptions(8, 2))
    with pytest.raises(InputError, match="fuse"):
        ContextOptions(8, 2, "cosine").validate()
    with pytest.raises(InputError, match="overlap"):
        TuneConfig(context=ContextOptions(8, 9)).validate()


# ---------------------------------------------------------------- RC-Attn in clip coordinates

def test_window_needs_the_clip_neighbour_of_its_first_frame():
    assert window_kv_frames(range(6, 14), 20, "rc") == list(range(6, 14)) + [5]
    assert window_kv_frames(range(0, 8), 20, "rc") == list(range(0, 8)) + [19]  # frame 0 reads the last frame
    assert window_kv_frames(range(12, 20), 20, "rc") == list(range(12, 20)) + [11]
    assert window_kv_frames(range(6, 14), 20, "bidirectional") == list(range(6, 14)) + [5, 14]
    assert window_kv_frames(range(6, 14), 20, "sparse_causal") == list(range(6, 14)) + [0, 5]
    assert window_kv_frames(range(6, 14), 20, "self") == list(range(6, 14))
    assert window_kv_frames(range(20), 20, "rc") == list(range(20))


def test_window_kv_indices_follow_clip_coordinates():
    frames = list(range(0, 4)) + [9]  # window [0, 4) of a 10-frame clip + the last frame
    idx = window_kv_indices(frames, 10, "rc")
    # clip frame 0 reads clip frame 9 (batch position 4); 1 reads 0; ...; the extra frame 9 lacks its
    # neighbour 8 and reads itself
    assert idx.tolist() == [[4, 0], [0, 1], [1, 2], [2, 3], [4, 4]]
    frames = [5, 6, 7, 4]
    assert window_kv_indices(frames, 10, "rc").tolist() == [[3, 0], [0, 1], [1, 2], [3, 3]]
    # the whole clip in order is kv_frame_indices itself
    assert window_kv_indices(range(6), 6, "rc").tolist() == [[5, 0], [0, 1], [1, 2], [2, 3], [3, 4], [4, 5]]
    with pytest.raises(InputError, match="distinct"):
        window_kv_indices([1, 1], 4)


def test_windowed_plan_with_injection_reads_the_same_clip_frame():
    frames = [5, 6, 7, 4]
    plan = AttentionPlan(4, "rc", num_groups=2, inject={1: 0}, frames=tuple(frames), clip_length=10)
    assert plan.base[0].kv_rows.tolist() == [[3, 0], [0, 1], [1, 2], [3, 3], [7, 4], [4, 5], [5, 6], [7, 7]]
    edit = plan.injected[-1]
    assert (edit.start, edit.stop) == (4, 8)
    assert edit.kv_rows.tolist() == [[7, 4, 0], [4, 5, 1], [5, 6, 2], [7, 7, 3]]  # + recon's same frame


# ---------------------------------------------------------------- tuning windows

def test_tuning_window_draws():
    a = tuning_window(20, 8, 3, seed=7, shuffled=True)
    assert torch.equal(a, tuning_window(20, 8, 3, seed=7, shuffled=True))  # deterministic per step
    assert len(set(a.tolist())) == 8 and int(a.max()) < 20
    draws = {tuple(tuning_window(20, 8, k, 7, True).tolist()) for k in range(20)}
    assert len(draws) > 15 and len({f for d in draws for f in d}) == 20  # frames from the whole clip
    assert any(list(d) != sorted(d) for d in draws)  # shuffled
    for k in range(20):
        c = tuning_window(20, 8, k, 7, False).tolist()
        assert c == list(range(c[0], c[0] + 8)) and 0 <= c[0] <= 12
    assert len({tuning_window(20, 8, k, 7, False)[0].item() for k in range(30)}) > 5
    perm = torch.randperm(20, generator=torch.Generator().manual_seed(1))
    f = tuning_window(20, 8, 0, 7, True, perm).tolist()
    s = next(i for i in range(13) if perm[i: i + 8].tolist() == f)  # a contiguous run of the fixed order
    assert perm[s: s + 8].tolist() == f


def _clip_inputs(n: int, seed: int) -> dict:
    """Latents, pose images, reference poses and masks of an ``n``-frame clip drawn from ``seed``, and the prompts."""
    g = torch.Generator().manual_seed(seed)
    return dict(n=n, lat=torch.randn(n, 4, 8, 8, generator=g), poses=torch.rand(n, 3, 64, 64, generator=g),
                ref=torch.rand(n, 3, 64, 64, generator=g), masks=(torch.rand(n, 64, 64, generator=g) > 0.5).float(),
                pc=tiny.encode_prompt("a boy"), ps=tiny.encode_prompt("a boy is dancing"),
                pt=tiny.encode_prompt("a boy is jumping"), uncond=tiny.encode_prompt(""))


@pytest.fixture(scope="module")
def clip():
    return _clip_inputs(12, 0)


def _act(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a tuned model's temporal layers are not zero; make them act
        for name, p in model.unet.named_parameters():
            if "temporal_attention.attn.to_out" in name:
                p.normal_(0, 0.02, generator=g)
    return model


@pytest.mark.parametrize("stage", [1, 2])
@pytest.mark.parametrize("method", ["eym_v1", "eym_v2"])
def test_tuning_steps_see_the_drawn_window(clip, stage, method):
    model = tiny.build_motion_model(method=method)
    seen = []
    predict = model.predict

    def spy(latents, t, emb, num_frames, **kw):
        assert kw["pose_order"] is None  # the window's own poses are given (the ControlNet embeds only those)
        seen.append((latents.shape[0], num_frames, kw["poses"].clone()))
        return predict(latents, t, emb, num_frames, **kw)

    model.predict = spy
    cfg = TuneConfig(steps=3, seed=5, gradient_checkpointing=False, context=ContextOptions(4, 1))
    tune_stage(model, stage, clip["lat"], clip["ps"], clip["poses"], cfg)
    shuffled = method == "eym_v1" and stage == 1
    assert len(seen) == 3
    for k, (rows, frames, poses) in enumerate(seen):
        assert rows == 4 and frames == 4
        assert torch.equal(poses, clip["poses"][tuning_window(12, 4, k, 5, shuffled)])


# ---------------------------------------------------------------- W >= n: exactly as before (atol=0)

def _equal(a, b):
    assert a.dtype == b.dtype and torch.equal(a, b)


@pytest.fixture(scope="module")
def short():
    return _clip_inputs(3, 3)


@pytest.mark.parametrize("method,stage", [("eym_v1", 1), ("eym_v1", 2), ("eym_v2", 1), ("eym_v2", 2)])
def test_window_at_least_the_clip_tunes_exactly_as_before(short, method, stage):
    states = []
    for ctx in (None, ContextOptions(3, 1), ContextOptions(8, 2)):
        model = tiny.build_motion_model(method=method)
        cfg = TuneConfig(steps=2, seed=4, gradient_checkpointing=False, context=ctx)
        states.append(tune_stage(model, stage, short["lat"], short["ps"], short["poses"], cfg))
    for other in states[1:]:
        assert other.losses == states[0].losses
        for name, v in states[0].state.items():
            _equal(other.state[name], v)


def test_window_at_least_the_clip_infers_exactly_as_before(short):
    model = _act(tiny.build_motion_model())
    s = short
    outs = []
    for ctx in (None, ContextOptions(3, 2), ContextOptions(16, 4)):
        z_t, traj = ddim_invert_trajectory(model, s["lat"], s["ps"], s["poses"], num_steps=3, context=ctx)
        z_g = ddim_invert(model, s["lat"], s["ps"], s["poses"], num_steps=2, guidance=2.0,
                          uncond_embeddings=s["uncond"], context=ctx)
        keep = KB.make_keeper(traj, s["masks"], s["masks"].flip(0), grow=0)
        cfg = SamplerConfig(num_steps=3, guidance_scale=2.0, eta=0.5, seed=9)
        two = two_branch_sample(model, z_t, s["ps"], s["pt"], s["poses"], s["ref"], cfg, s["uncond"], keep=keep,
                                context=ctx)
        one = single_branch_sample(model, z_t, s["pt"], s["ref"], num_steps=3, keep=keep, context=ctx)
        plain = ddim_sample(model, z_t, s["pt"], None, num_steps=2, context=ctx)
        outs.append([z_t, traj, z_g, two.edited, two.reconstruction, one, plain])
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            _equal(a, b)


# ---------------------------------------------------------------- windowed inference

def test_per_frame_model_gives_the_whole_clip_result_through_windows(clip):
    """With attention mode ``self`` and zero temporal layers every frame is computed on its own, so
    fusing windows (weights summing to 1) must give the whole-clip prediction: equal up to the
    rounding of the weighted sum and of the batch size."""
    model = tiny.build_motion_model(attention_mode="self")
    c = clip
    base = ddim_invert(model, c["lat"], c["ps"], c["poses"], num_steps=3)
    for ctx in (ContextOptions(4, 1), ContextOptions(5, 2, "linear"), ContextOptions(2, 0)):
        win = ddim_invert(model, c["lat"], c["ps"], c["poses"], num_steps=3, context=ctx)
        torch.testing.assert_close(win, base, rtol=1e-5, atol=1e-5)
        res = two_branch_sample(model, base, c["ps"], c["pt"], c["poses"], c["ref"], SamplerConfig(num_steps=3),
                                context=ctx)
        ref = two_branch_sample(model, base, c["ps"], c["pt"], c["poses"], c["ref"], SamplerConfig(num_steps=3))
        torch.testing.assert_close(res.edited, ref.edited, rtol=1e-5, atol=1e-5)


def test_control_boost_acts_in_every_window(clip):
    """The early-step ControlNet boost (beyond the paper) reaches the windows: with a per-frame model the
    windowed boosted edit is the whole-clip boosted edit (same tolerance as above), and differs from the
    unboosted one."""
    model = tiny.build_motion_model(attention_mode="self")
    c = clip
    cfg = SamplerConfig(num_steps=3, control_boost=2.0, control_boost_until=0.5)
    whole = two_branch_sample(model, c["lat"], c["ps"], c["pt"], c["poses"], c["ref"], cfg)
    win = two_branch_sample(model, c["lat"], c["ps"], c["pt"], c["poses"], c["ref"], cfg, context=ContextOptions(4, 1))
    plain = two_branch_sample(model, c["lat"], c["ps"], c["pt"], c["poses"], c["ref"], SamplerConfig(num_steps=3),
                              context=ContextOptions(4, 1))
    torch.testing.assert_close(win.edited, whole.edited, rtol=1e-5, atol=1e-5)
    assert (win.edited - plain.edited).abs().max() > 1e-3


def test_mask_split_injection_is_refused_with_windows(clip):
    model = tiny.build_motion_model()
    c = clip
    traj = torch.stack([c["lat"]] * 3)
    keep = KB.make_keeper(traj, c["masks"], c["masks"].flip(0), grow=0)
    with pytest.raises(InputError, match="mask-split injection works on the whole clip only"):
        two_branch_sample(model, c["lat"], c["ps"], c["pt"], c["poses"], c["ref"],
                          SamplerConfig(num_steps=2, mask_split_kv=True), keep=keep, context=ContextOptions(4, 1))


def test_windowed_batches_hold_the_clip_neighbour_and_progress_counts_windows(clip):
    model = _act(tiny.build_motion_model())
    c = clip
    batches = []
    predict = model.predict

    def spy(latents, t, emb, num_frames, plan=None, **kw):
        batches.append((num_frames, plan.frames))
        return predict(latents, t, emb, num_frames, plan=plan, **kw)

    model.predict = spy
    ticks = []
    ctx = ContextOptions(4, 1)  # 12 frames: windows at 0, 3, 6, 8
    two_branch_sample(model, c["lat"], c["ps"], c["pt"], c["poses"], c["ref"], SamplerConfig(num_steps=2),
                      callback=lambda i, total: ticks.append((i, total)), context=ctx)
    assert batches[:4] == [(5, (0, 1, 2, 3, 11)), (5, (3, 4, 5, 6, 2)), (5, (6, 7, 8, 9, 5)), (5, (8, 9, 10, 11, 7))]
    assert len(batches) == 8
    assert ticks == [(i, 8) for i in range(1, 9)]


def test_cancel_inside_a_windowed_step(clip):
    model = _act(tiny.build_motion_model())
    c = clip
    calls = []
    predict = model.predict
    model.predict = lambda *a, **kw: calls.append(1) or predict(*a, **kw)

    def cancel(i, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        ddim_invert(model, c["lat"], c["ps"], c["poses"], num_steps=5, callback=cancel, context=ContextOptions(4, 1))
    assert len(calls) == 1  # stopped after the first window of the first step


def test_windowed_paths_with_bf16_storage_under_inference_mode(clip):
    """ComfyUI: bf16 weights, nodes run in torch.inference_mode(). Tuning (windows), inversion and both
    samplers (windows) run, stay finite and follow the float32 model."""
    c = clip
    ctx = ContextOptions(5, 2)
    out = {}
    for dtype in (torch.float32, torch.bfloat16):
        model = _act(tiny.build_motion_model()).to(dtype)
        with torch.inference_mode():
            cfg = TuneConfig(steps=2, seed=1, gradient_checkpointing=True, context=ctx,
                             precision="bf16" if dtype == torch.bfloat16 else "fp32")
            tune_stage(model, 1, c["lat"], c["pc"], c["poses"], cfg)
            tune_stage(model, 2, c["lat"], c["ps"], c["poses"], cfg)
            z_t, traj = ddim_invert_trajectory(model, c["lat"], c["ps"], c["poses"], num_steps=3, context=ctx)
            keep = KB.make_keeper(traj, c["masks"], c["masks"].flip(0), grow=0)
            two = two_branch_sample(model, z_t, c["ps"], c["pt"], c["poses"], c["ref"], SamplerConfig(num_steps=3),
                                    keep=keep, context=ctx)
            one = single_branch_sample(model, z_t, c["pt"], c["ref"], num_steps=3, context=ctx)
        assert all(p.dtype == dtype for p in model.parameters())
        out[dtype] = torch.stack([z_t, two.edited, one])
        assert bool(torch.isfinite(out[dtype]).all())
    # bf16 has 8 bits of mantissa: relative error of a few 1e-3 per op, over a few steps
    err = (out[torch.bfloat16] - out[torch.float32]).abs().max() / out[torch.float32].abs().max()
    assert err < 0.05


def test_clip_of_one_frame_with_a_context_is_refused(clip):
    model = tiny.build_motion_model()
    with pytest.raises(InputError, match="at least 2 frames"):
        ddim_invert(model, clip["lat"][:1], clip["ps"], clip["poses"][:1], num_steps=2, context=ContextOptions())
    with pytest.raises(InputError, match="at least 2 frames"):
        tune_stage(model, 1, clip["lat"][:1], clip["ps"], clip["poses"][:1],
                   TuneConfig(steps=1, context=ContextOptions()))


@pytest.mark.parametrize("method", ["eym_v1", "eym_v2"])
def test_one_call_edits_refuse_different_lengths_before_tuning(clip, method):
    from edit_your_motion.motion_core.method.dpl import run_v1
    from edit_your_motion.motion_core.method.eym_v2 import run_v2

    model = tiny.build_motion_model(method=method)
    calls = []
    model.predict = lambda *a, **kw: calls.append(1)
    c = clip
    cfg = TuneConfig(steps=1, context=ContextOptions(4, 1))
    with pytest.raises(InputError, match="reference_poses"):
        if method == "eym_v1":
            run_v1(model, c["lat"], c["lat"], c["poses"], c["ref"][:5], c["pc"], c["ps"], c["pt"], cfg, (1, 1))
        else:
            run_v2(model, c["lat"], c["lat"], c["poses"], c["ref"][:5], c["ps"], c["pt"], config=cfg, stage_steps=(1, 1))
    assert calls == []  # nothing ran


def test_one_call_edit_with_a_context_windows_every_phase(clip):
    from edit_your_motion.motion_core.method.dpl import run_v1

    model = _act(tiny.build_motion_model())
    sizes = []
    predict = model.predict
    model.predict = lambda latents, *a, **kw: sizes.append(latents.shape[0]) or predict(latents, *a, **kw)
    c = clip
    res = run_v1(model, c["lat"], c["lat"], c["poses"], c["ref"], c["pc"], c["ps"], c["pt"],
                 TuneConfig(steps=1, gradient_checkpointing=False, context=ContextOptions(4, 1)), (1, 1),
                 SamplerConfig(num_steps=1))
    assert res.edited.shape == c["lat"].shape
    # 2 tuning steps of 4 frames; inversion: 4 windows of 4 + 1 frames; sampling: the same for 2 branches
    assert sizes == [4, 4] + [5] * 4 + [10] * 4


def test_pyramid_and_linear_coincide_where_windows_overlap_by_the_overlap():
    """Where neighbouring windows share exactly O <= W / 2 frames, the normalised pyramid is a linear
    ramp across the overlap (W 8, O 2: 2/3 and 1/3), so both fusions give the same weights (measured in
    the world: the same edits bit for bit at 32 frames); they differ where the last window, flush with
    the clip's end, overlaps more, or with O > W / 2."""
    same = lambda n, o: all(torch.equal(x.weights, y.weights) for x, y in zip(
        window_layout(n, ContextOptions(8, o, "pyramid")), window_layout(n, ContextOptions(8, o, "linear"))))
    assert same(32, 2) and same(20, 2) and same(32, 4)
    assert not same(22, 2)  # windows at 0, 6, 12, 14: the last two share 6 frames
    assert not same(32, 6)
