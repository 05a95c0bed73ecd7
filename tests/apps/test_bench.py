"""The benchmark counts what it claims: attention FLOPs (which FlopCounterMode misses on the CPU), each
phase's own memory, and ratios from alternating rounds. Only tiny sizes; no timing is asserted."""

from __future__ import annotations

import argparse
import time

import pytest
import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from edit_your_motion.motion_core.apps import bench
from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.testing import tiny


def _qkv(b=2, h=3, lq=5, lk=7, d=4, grad=False):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(b, h, n, d, generator=g) for n in (lq, lk, lk))
    return [t.requires_grad_(grad) for t in (q, k, v)]


def _manual_attention(q, k, v):
    return torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1) @ v


def test_sdpa_forward_flops_are_counted_on_the_cpu():
    b, h, lq, lk, d = 2, 3, 5, 7, 4
    q, k, v = _qkv(b, h, lq, lk, d)
    plain = FlopCounterMode(display=False)
    with plain:
        F.scaled_dot_product_attention(q, k, v)
    assert plain.get_total_flops() == 0  # the bug: CPU attention is invisible to FlopCounterMode
    ours = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert ours == 4 * b * h * lq * lk * d  # the independent formula
    # the same attention written as two matrix products, counted by FlopCounterMode itself
    manual = FlopCounterMode(display=False)
    with manual:
        _manual_attention(q, k, v)
    assert ours == manual.get_total_flops()


def test_sdpa_backward_flops():
    b, h, lq, lk, d = 2, 3, 5, 7, 4
    q, k, v = _qkv(b, h, lq, lk, d, grad=True)
    total = bench.count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    # forward 4 b h Lq Lk d; backward: recomputed scores + dP, dV, dQ, dK, one b h Lq Lk d product each
    assert total == 4 * b * h * lq * lk * d + 5 * 2 * b * h * lq * lk * d


def test_unet_forward_flops_match_the_math_attention_path():
    """The tiny video UNet's forward counted with the fused CPU attention (our formula) equals the
    count of the same forward with attention decomposed into matrix products (math backend)."""
    model = tiny.build_motion_model(controlnet=False)
    g = torch.Generator().manual_seed(1)
    x, emb = torch.randn(3, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g)
    run = lambda: model.predict(x, 500, emb, 3)
    with torch.no_grad():
        fused = bench.count_flops(run)
        with sdpa_kernel(SDPBackend.MATH):
            math_path = FlopCounterMode(display=False)
            with math_path:
                run()
        without_attention = FlopCounterMode(display=False)
        with without_attention:
            run()
    assert fused == math_path.get_total_flops()
    assert fused > without_attention.get_total_flops()  # what the old benchmark reported


def test_phase_memory_is_the_phase_own_growth():
    """A phase that holds 64 MB reports about 64 MB, however much the process held before; one that
    allocates nothing reports little (the old figure was the process's lifetime peak)."""
    size = 64 * 2**20
    with bench.PhaseMemory(torch.device("cpu")) as holds:
        block = torch.ones(size // 4)  # float32
        for _ in range(50):  # stay alive while the sampler thread looks (no timing is measured)
            if holds._peak - holds._start >= 0.9 * size:
                break
            time.sleep(0.01)
    del block
    with bench.PhaseMemory(torch.device("cpu")) as idle:
        torch.zeros(16).sum()
    assert holds.growth is not None and 0.9 * size <= holds.growth < 1.5 * size
    assert idle.growth < 16 * 2**20
    assert "peak - start" in holds.method


def test_interleaved_alternates_and_reports_min_and_median():
    order = []
    times = {"a": iter([1.0, 3.0, 2.0]), "b": iter([2.0, 9.0, 6.0])}

    def contender(name):
        def run():
            order.append(name)
            return next(times[name])
        return run

    res = bench.interleaved({"a": contender("a"), "b": contender("b")}, 3, "a")
    assert order == ["a", "b", "b", "a", "a", "b"]
    assert res["a"]["min"] == 1.0 and res["a"]["median"] == 2.0
    assert res["b"]["ratio_to_a"]["rounds"] == [2.0, 3.0, 3.0]
    assert res["b"]["ratio_to_a"]["min"] == 2.0 and res["b"]["ratio_to_a"]["median"] == 3.0
    with pytest.raises(InputError, match="rounds"):
        bench.interleaved({"a": contender("a")}, 0, "a")


def test_ratio_functions_run_on_tiny_sizes():
    a = bench.attention_ratio(frames=2, resolution=16, repeats=1, rounds=2)
    assert a["layers"] > 0 and set(a["speedup"]) == {"min", "median"}
    r = bench.tuning_step_ratio(frames=2, resolution=16, repeats=1, rounds=2)
    assert set(r["ratio"]) == {"min", "median"} and r["rounds"] == 2


def test_bad_arguments_are_refused():
    p = argparse.ArgumentParser()
    bench.add_arguments(p)
    for argv, match in ((["--frames", "0"], "--frames"), (["--resolution", "60"], "--resolution"),
                        (["--rounds", "0"], "--rounds")):
        with pytest.raises(InputError, match=match):
            bench.check_arguments(p.parse_args(argv))
