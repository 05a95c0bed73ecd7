"""Long clips in the apps: ``bench --frames N --window W`` and the memory estimate of a windowed job."""

from __future__ import annotations

import argparse

import pytest

from edit_your_motion.motion_core.apps import bench
from edit_your_motion.motion_core.apps import memory as mem
from edit_your_motion.motion_core.errors import InputError


def _args(argv):
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    args = p.parse_args(argv)
    bench.check_arguments(args)
    return args


def test_bench_measures_windowed_phases():
    args = _args(["--frames", "6", "--window", "3", "--overlap", "1", "--steps", "1", "--method", "eym_v1",
                  "--no-ratios"])
    res = bench.measure(args, "eym_v1")
    assert res["window"] == 3 and res["overlap"] == 1
    assert res["model_calls_per_ddim_step"] == 3  # windows at 0, 2, 3
    assert set(res["phases"]) == {"stage1_step", "stage2_step", "inversion_step", "sampling_step"}
    # a windowed inversion step counts every window's FLOPs: about 3 calls of 4 frames (3 + the RC neighbour)
    # against one call of 6 frames without windows
    plain = bench.measure(_args(["--frames", "6", "--steps", "1", "--method", "eym_v1", "--no-ratios"]), "eym_v1")
    ratio = res["phases"]["inversion_step"]["tflop"] / plain["phases"]["inversion_step"]["tflop"]
    assert 1.5 < ratio < 2.5  # 12 frame-passes against 6
    # a tuning step sees 3 frames instead of 6
    assert res["phases"]["stage2_step"]["tflop"] < 0.7 * plain["phases"]["stage2_step"]["tflop"]


def test_bad_windows_are_refused():
    with pytest.raises(InputError, match="overlap"):
        _args(["--frames", "16", "--window", "4", "--overlap", "4"])
    with pytest.raises(InputError, match="at least 2 frames"):
        _args(["--frames", "1", "--window", "4"])
    with pytest.raises(InputError, match="overlap"):
        mem.Job(frames=16, window=4, overlap=5).check()


def test_memory_estimate_of_a_windowed_clip_holds_one_window():
    """The same 16-frame clip: with windows of 2 (a tuning step holds 2 frames, an inference call 3) the
    phases' peaks are far below the whole clip's; what remains grows with the clip is the inputs."""
    whole = mem.estimate(mem.Job(size="tiny", frames=16, resolution=64, block=1), ("stage1", "sampling"))
    windowed = mem.estimate(mem.Job(size="tiny", frames=16, resolution=64, block=1, window=2, overlap=1),
                            ("stage1", "sampling"))
    for phase in ("stage1", "sampling"):
        above = lambda e: e.peak_bytes - e.weights_bytes
        assert above(windowed[phase]) < 0.6 * above(whole[phase]), phase


def test_quality_sample_window_sets_only_the_sampling_context():
    """``quality --sample-window``: tuning keeps --window, inversion and sampling get their own windows,
    0 the whole clip at once (no context); without it both use --window."""
    from edit_your_motion.motion_core.apps import quality
    from edit_your_motion.motion_core.method.windows import ContextOptions

    def settings(argv):
        p = argparse.ArgumentParser()
        quality.add_arguments(p)
        return quality.settings_from(p.parse_args(argv))

    plain = settings(["--frames", "32"])
    assert plain.sample_context is None and plain.sampling_context is plain.context
    assert plain.context == ContextOptions(8, 2, "pyramid")
    whole = settings(["--frames", "32", "--sample-window", "0"])
    assert whole.context == ContextOptions(8, 2, "pyramid") and whole.sampling_context is None
    longer = settings(["--frames", "32", "--sample-window", "16", "--overlap", "4"])
    assert longer.context == ContextOptions(8, 4, "pyramid") and longer.sampling_context == ContextOptions(16, 4, "pyramid")
    assert longer.as_dict()["sample_context"]["length"] == 16 and whole.as_dict()["sample_context"] == "whole"
    with pytest.raises(SystemExit, match="--sample-window"):
        settings(["--sample-window", "1"])
    # the tuning optimizer (a memory lever measured in the world): the paper's AdamW unless asked
    assert plain.optimizer == "adamw" and settings(["--optimizer", "adamw8bit"]).optimizer == "adamw8bit"
