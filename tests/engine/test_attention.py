"""RC-Attn modes and K/V injection against a per-frame loop written here, independently."""

import math

import pytest
import torch

from edit_your_motion.motion_core.video_model import attention as A
from edit_your_motion.motion_core.errors import InputError


def reference_kv_frames(i: int, n: int, mode: str) -> list[int]:
    """The table of METHOD.md, one frame at a time."""
    if n == 1 or mode == "self":
        return [i]
    if mode == "rc":
        return [n - 1 if i == 0 else i - 1, i]
    if mode == "sparse_causal":
        return [0, 0] if i == 0 else [0, i - 1]
    if mode == "bidirectional":
        if i == 0:
            return [0, 1]
        if i == n - 1:
            return [n - 2, n - 1]
        return [i - 1, i + 1]
    raise AssertionError(mode)


def loop_attention(q, k, v, heads, frames_for_row, bias_for_row=None):
    """softmax(QK^T/sqrt(d) + bias) V for every row separately, with K/V concatenated per row."""
    rows, tokens, channels = q.shape
    d = channels // heads
    out = torch.empty_like(q)
    for r in range(rows):
        src = frames_for_row(r)
        kk = torch.cat([k[j] for j in src])  # (m*L, C)
        vv = torch.cat([v[j] for j in src])
        for h in range(heads):
            sl = slice(h * d, (h + 1) * d)
            s = q[r][:, sl] @ kk[:, sl].T / math.sqrt(d)
            if bias_for_row is not None:
                s = s + torch.tensor(bias_for_row(r)).repeat_interleave(k.shape[1])[None]
            out[r][:, sl] = s.softmax(-1) @ vv[:, sl]
    return out


@pytest.mark.parametrize("mode", A.ATTENTION_MODES)
@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_kv_indices_match_table(mode, n):
    idx = A.kv_frame_indices(n, mode)
    for i in range(n):
        expected = reference_kv_frames(i, n, mode)
        got = idx[i].tolist()
        if n == 1 or mode == "self":
            assert got == [i]
        else:
            assert got == expected


@pytest.mark.parametrize("mode", A.ATTENTION_MODES)
@pytest.mark.parametrize("n,groups", [(1, 1), (2, 1), (5, 1), (4, 2)])
def test_planned_attention_matches_loop(mode, n, groups):
    heads, tokens, channels = 2, 6, 8
    rows = n * groups
    q, k, v = (torch.randn(rows, tokens, channels, dtype=torch.float64) for _ in range(3))
    plan = A.AttentionPlan(n, mode, groups)
    got = A.planned_attention(q, k, v, heads, plan.base, plan.is_self)
    want = loop_attention(q, k, v, heads, lambda r: [(r // n) * n + j for j in reference_kv_frames(r % n, n, mode)])
    torch.testing.assert_close(got, want)


@pytest.mark.parametrize("mode", A.ATTENTION_MODES)
@pytest.mark.parametrize("injection", A.INJECTION_MODES)
@pytest.mark.parametrize("n", [1, 2, 4])
def test_injected_attention_matches_loop(mode, injection, n):
    """Groups [recon_uncond, recon_cond, edit_uncond, edit_cond]: edit frame i reads its own K/V
    frames plus frame i of its paired reconstruction group."""
    heads, tokens, channels = 2, 5, 8
    groups, pairs = 4, {2: 0, 3: 1}
    q, k, v = (torch.randn(groups * n, tokens, channels, dtype=torch.float64) for _ in range(3))
    plan = A.AttentionPlan(n, mode, groups, pairs, injection)
    got = A.planned_attention(q, k, v, heads, plan.injected, False)

    def frames(r):
        g, i = divmod(r, n)
        own = [g * n + j for j in reference_kv_frames(i, n, mode)]
        return own + [pairs[g] * n + i] if g in pairs else own

    def bias(r):
        g, i = divmod(r, n)
        own = reference_kv_frames(i, n, mode)
        if g not in pairs:
            return [0.0] * len(own)
        if injection == "concat":
            return [0.0] * (len(own) + 1)
        c = sum(j == i for j in own)
        share = math.log(c / (c + 1)) if c else 0.0
        return [share if j == i else 0.0 for j in own] + [share]

    want = loop_attention(q, k, v, heads, frames, bias)
    torch.testing.assert_close(got, want)


def test_balanced_injection_with_identical_branches_equals_plain():
    n, tokens, channels = 4, 5, 8
    base = torch.randn(n, tokens, channels, dtype=torch.float64)
    q = k = v = torch.cat([base, base])  # recon group then an identical edit group
    plan = A.AttentionPlan(n, "rc", 2, {1: 0}, "balanced")
    out = A.planned_attention(q, k, v, 2, plan.injected, False)
    torch.testing.assert_close(out[n:], out[:n])
    concat = A.AttentionPlan(n, "rc", 2, {1: 0}, "concat")
    out_c = A.planned_attention(q, k, v, 2, concat.injected, False)
    assert (out_c[n:] - out_c[:n]).abs().max() > 1e-3  # the duplicated frame-i key reweights


def test_bad_mode_and_frames():
    with pytest.raises(InputError, match="attention mode"):
        A.kv_frame_indices(4, "causal")
    with pytest.raises(InputError, match="num_frames"):
        A.kv_frame_indices(0, "rc")
    with pytest.raises(InputError, match="kv_injection"):
        A.AttentionPlan(4, "rc", 2, {1: 0}, "sum")


@pytest.mark.parametrize("mode,exact", [("rc", True), ("self", True), ("bidirectional", False), ("sparse_causal", False)])
def test_balanced_injection_is_exact_only_for_frames_that_read_themselves(mode, exact):
    """Identical branches give identical outputs under balanced injection exactly for the frames
    whose own K/V include themselves: every frame in rc and self mode, only some in bidirectional
    (first and last) and sparse_causal (frame 0). The docs claim exactness for rc/self only."""
    n, tokens, channels = 5, 3, 8
    base = torch.randn(n, tokens, channels, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    q = k = v = torch.cat([base, base])
    plan = A.AttentionPlan(n, mode, 2, {1: 0}, "balanced")
    out = A.planned_attention(q, k, v, 2, plan.injected, False)
    diff = (out[n:] - out[:n]).abs().amax(dim=(1, 2))
    reads_itself = (A.kv_frame_indices(n, mode) == torch.arange(n)[:, None]).any(dim=1)
    assert torch.all(diff[reads_itself] < 1e-8)  # the log(1/2) bias is a float32 number
    assert torch.all(diff[~reads_itself] > 1e-3)
    assert bool(reads_itself.all()) == exact


@pytest.mark.parametrize("injection", A.INJECTION_MODES)
def test_mask_split_injection_drops_exactly_the_excluded_tokens(injection):
    """Mask-split injection (beyond the paper): edit frame i reads its own frames plus the
    reconstruction's frame i WITHOUT the excluded tokens; the loop here simply leaves those keys out.
    Nothing excluded: the same plan object, so the paper's injection bit for bit."""
    heads, channels, n = 2, 8, 3
    h, w = 4, 4  # latent grid; layers at 4x4 (16 tokens) and 2x2 (4 tokens)
    groups, pairs = 2, {1: 0}
    plan = A.AttentionPlan(n, "rc", groups, pairs, injection)
    assert plan.with_injection_excluded(torch.zeros(n, h, w, dtype=torch.bool)) is plan
    exclude = torch.zeros(n, h, w, dtype=torch.bool)
    exclude[0, :, :2] = True  # frame 0: left half
    exclude[2, 0, 0] = True  # frame 2: one latent pixel (a quarter of a 2x2 token: not excluded there)
    split = plan.with_injection_excluded(exclude)
    assert split is not plan and plan.injected[-1].exclude_last is None  # the cached plan is untouched
    for tokens, side in ((16, 4), (4, 2)):
        q, k, v = (torch.randn(groups * n, tokens, channels, dtype=torch.float64) for _ in range(3))
        got = A.planned_attention(q, k, v, heads, split.injected, False)
        pooled = torch.nn.functional.adaptive_avg_pool2d(exclude.double()[:, None], (side, side)).flatten(1) >= 0.5
        for r in range(groups * n):
            g, i = divmod(r, n)
            own = [g * n + j for j in reference_kv_frames(i, n, "rc")]
            kk = [k[j] for j in own]
            vv = [v[j] for j in own]
            logit_bias = [0.0] * len(own)
            if g in pairs:
                keep = ~pooled[i]
                kk.append(k[pairs[g] * n + i][keep])
                vv.append(v[pairs[g] * n + i][keep])
                logit_bias.append(0.0)
                if injection == "balanced":
                    c = sum(j == i for j in reference_kv_frames(i, n, "rc"))
                    share = math.log(c / (c + 1))
                    logit_bias = [share if j == i else 0.0 for j in reference_kv_frames(i, n, "rc")] + [share]
            d = channels // heads
            for hd in range(heads):
                sl = slice(hd * d, (hd + 1) * d)
                s = torch.cat([q[r][:, sl] @ kb[:, sl].T / math.sqrt(d) + b for kb, b in zip(kk, logit_bias)], dim=1)
                want = s.softmax(-1) @ torch.cat(vv)[:, sl]
                torch.testing.assert_close(got[r][:, sl], want)
        if tokens == 4:
            assert not pooled[2].any() and pooled[0].tolist() == [True, False, True, False]
