"""Motion Attention (later version): identity at init, layout, deterministic init, the formula
against a per-frame reference, and where it takes the UNet feature from."""

import pytest
import torch
import torch.nn.functional as F
from diffusers import UNet2DConditionModel

from edit_your_motion.motion_core.errors import InputError, ModelError
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.video_model.attention import FrameContext
from edit_your_motion.motion_core.video_model.model import MotionModel
from edit_your_motion.motion_core.video_model.motion_attention import (
    AdaptedResidual, MotionAttention, check_consumed, residual_channels,
)
from edit_your_motion.motion_core.method.stages import stage_parameter_names


def _pair(mode="bidirectional", seed=0):
    """A first-version and a later-version model over identical base weights."""
    models = []
    for method in ("eym_v1", "eym_v2"):
        unet = tiny.build_unet("tiny", seed)
        models.append(MotionModel.from_unet(unet, tiny.build_controlnet(unet, "tiny", seed + 1),
                                            attention_mode=mode, method=method))
    return models


def _inputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g), torch.rand(n, 3, 64, 64, generator=g)


def _randomise_ma(model, std=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.unet.named_parameters():
            if n.startswith("motion_attention.") and "proj_out" in n:
                p.copy_(torch.randn(p.shape, generator=g) * std)


@pytest.mark.parametrize("n", [1, 4])
def test_fresh_motion_attention_equals_the_first_version_exactly(n):
    v1, v2 = _pair()
    assert v1.motion_attention is None and v2.motion_attention is not None
    x, emb, pose = _inputs(n)
    with torch.no_grad():
        a = v1.predict(x, 400, emb, n, poses=pose)
        b = v2.predict(x, 400, emb, n, poses=pose)
    assert torch.equal(a, b)


def test_trained_motion_attention_changes_the_output():
    v1, v2 = _pair()
    _randomise_ma(v2)
    x, emb, pose = _inputs(3)
    with torch.no_grad():
        assert (v1.predict(x, 400, emb, 3, poses=pose) - v2.predict(x, 400, emb, 3, poses=pose)).abs().max() > 1e-4
        # without ControlNet there is nothing to adapt: both versions agree again
        torch.testing.assert_close(v1.predict(x, 400, emb, 3), v2.predict(x, 400, emb, 3), atol=0, rtol=0)


def test_one_module_per_controlnet_residual():
    # SD1.5's layout, built on the meta device (no memory): 12 down residuals + the mid one
    with torch.device("meta"):
        unet = UNet2DConditionModel(**tiny.unet_config("sd15"))
    down, mid = residual_channels(unet)
    assert down == [320, 320, 320, 320, 640, 640, 640, 1280, 1280, 1280, 1280, 1280] and mid == 1280
    model = MotionModel.from_unet(tiny.build_unet(), tiny.build_controlnet(tiny.build_unet()), method="eym_v2")
    x, emb, pose = _inputs(2)
    with torch.no_grad():
        res_down, res_mid = model.controlnet_residuals(x, torch.full((2,), 400), emb.expand(2, -1, -1), pose, 1.0)
    ma = model.motion_attention
    assert len(ma.down) == len(res_down)
    assert [m.proj_out.in_features for m in ma.down] == [r.shape[1] for r in res_down]
    assert ma.mid.proj_out.in_features == res_mid.shape[1]
    assert model.attention_mode == "bidirectional" and model.method == "eym_v2"
    names = model.part_parameter_names()["motion_attention"]
    assert names and all(n.startswith("motion_attention.") for n in names)
    assert set(names) <= set(stage_parameter_names(model, 1)) & set(stage_parameter_names(model, 2))


def test_init_is_deterministic_and_independent_of_the_global_rng():
    torch.manual_seed(1)
    a = MotionModel.from_unet(tiny.build_unet(), method="eym_v2").motion_attention
    torch.manual_seed(2)
    torch.rand(100)
    b = MotionModel.from_unet(tiny.build_unet(), method="eym_v2").motion_attention
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(m.proj_out.weight.abs().max() == 0 and m.proj_out.bias.abs().max() == 0 for m in list(a.down) + [a.mid])
    # modules of the same shape still get different weights (seeded by their own names)
    assert a.down[1].self_attn.to_q.weight.shape == a.down[2].self_attn.to_q.weight.shape
    assert not torch.equal(a.down[1].self_attn.to_q.weight, a.down[2].self_attn.to_q.weight)
    assert a.down[1].self_attn.to_q.weight.std() > 0


def test_method_and_motion_attention_are_checked():
    with pytest.raises(InputError, match="method must be"):
        MotionModel.from_unet(tiny.build_unet(), method="eym_v3")
    with pytest.raises(InputError, match="eym_v2"):
        MotionModel.from_unet(tiny.build_unet(), method="eym_v1", motion_attention=True)
    model = MotionModel.from_unet(tiny.build_unet(), method="eym_v2")
    with pytest.raises(ModelError, match="already"):
        model.add_motion_attention()
    ablation = MotionModel.from_unet(tiny.build_unet(), method="eym_v2", motion_attention=False)
    assert ablation.motion_attention is None and ablation.method == "eym_v2"


def _attend(q, k, v, heads):
    """Plain multi-head softmax attention for one sequence: (t, c) queries over (s, c) keys."""
    t, c = q.shape
    d = c // heads
    out = []
    for h in range(heads):
        sl = slice(h * d, (h + 1) * d)
        w = torch.softmax(q[:, sl] @ k[:, sl].T / d**0.5, dim=-1)
        out.append(w @ v[:, sl])
    return torch.cat(out, dim=1)


def _reference_ma(m: MotionAttention, r, u, frames):
    """The module docstring's formula, frame by frame and position by position."""
    heads = m.self_attn.heads
    b, c, hh, ww = r.shape
    x = r.flatten(2).transpose(1, 2)  # (b, hw, c)
    uu = u.flatten(2).transpose(1, 2)
    h = []
    for i in range(b):
        xi = x[i]
        z = m.norm_self(xi)
        a = m.self_attn
        hi = xi + a.to_out(_attend(a.to_q(z), a.to_k(z), a.to_v(z), heads))
        q_in, kv_in = m.norm_cross(hi), m.norm_unet(uu[i])
        a = m.cross_attn
        hi = hi + a.to_out(_attend(a.to_q(q_in), a.to_k(kv_in), a.to_v(kv_in), heads))
        h.append(hi)
    h = torch.stack(h)  # (b, hw, c)
    out = h.clone()
    a = m.temporal_attn
    for g in range(b // frames):
        rows = slice(g * frames, (g + 1) * frames)
        for p in range(h.shape[1]):
            seq = h[rows, p]  # (frames, c)
            z = m.norm_temporal(seq)
            out[rows, p] = seq + a.to_out(_attend(a.to_q(z), a.to_k(z), a.to_v(z), heads))
    delta = m.proj_out(out).transpose(1, 2).reshape(b, c, hh, ww)
    return r + delta


def test_motion_attention_matches_a_per_frame_reference():
    ctx = FrameContext(num_frames=3)
    torch.manual_seed(0)
    m = MotionAttention(8, 2, ctx)
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.3)
    g = torch.Generator().manual_seed(1)
    r, u = torch.randn(6, 8, 4, 5, generator=g), torch.randn(6, 8, 4, 5, generator=g)  # 2 groups of 3 frames
    r[4] = 0  # a row without ControlNet passes through
    with torch.no_grad():
        got = m(r, u)
        want = _reference_ma(m, r, u, 3)
    want[4] = 0
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert torch.equal(got[4], r[4])
    # the temporal attention mixes frames of one group only
    r2 = r.clone()
    r2[0] += torch.randn(r[0].shape, generator=g)  # (a constant shift would vanish in the LayerNorms)
    with torch.no_grad():
        moved = m(r2, u)
    assert (moved[1] - got[1]).abs().max() > 1e-4 and torch.equal(moved[3:], got[3:])


def test_unet_feature_is_the_skip_feature_the_residual_is_added_to():
    """Hand-written reference: capture the UNet's skip features (conv_in and down-block outputs,
    mid-block output) with hooks on the first version's identical UNet, adapt the ControlNet
    residuals with MA by hand, and feed them to the first version as ordinary residuals."""
    v1, v2 = _pair(mode="rc")
    _randomise_ma(v2)
    with torch.no_grad():  # make the temporal layers act too
        for model in (v1, v2):
            for n, p in model.unet.named_parameters():
                if "temporal_attention.attn.to_out" in n:
                    p.copy_(torch.full_like(p, 0.01))
    n = 3
    x, emb, pose = _inputs(n, seed=4)
    unet = v1.unet
    skips, mid = [], []
    hooks = [unet.conv_in.register_forward_hook(lambda mod, a, out: skips.append(out))]
    hooks += [b.register_forward_hook(lambda mod, a, out: skips.extend(out[1])) for b in unet.down_blocks]
    hooks.append(unet.mid_block.register_forward_hook(lambda mod, a, out: mid.append(out)))
    with torch.no_grad():
        v1.predict(x, 400, emb, n, poses=pose)
        for h in hooks:
            h.remove()
        t = torch.full((n,), 400)
        down_r, mid_r = v1.controlnet_residuals(x, t, emb.expand(n, -1, -1), pose, 1.0)
        ma = v2.motion_attention
        v2.context.num_frames = n
        adapted_down = [m(r, u) for m, r, u in zip(ma.down, down_r, skips)]
        adapted_mid = ma.mid(mid_r, mid[0])
        v1.controlnet_residuals = lambda *a, **k: (adapted_down, adapted_mid)
        want = v1.predict(x, 400, emb, n, poses=pose)
        got = v2.predict(x, 400, emb, n, poses=pose)
    assert len(skips) == len(down_r)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-6)


def test_adapted_residual_checks():
    ctx = FrameContext(num_frames=1)
    m = MotionAttention(4, 2, ctx)
    r = torch.randn(1, 4, 2, 2)
    wrapped = [AdaptedResidual(m, r)]
    with pytest.raises(ModelError, match="not applied"):
        check_consumed(wrapped)
    u = torch.randn(1, 4, 2, 2)
    torch.testing.assert_close(u + wrapped[0], u + r, atol=0, rtol=0)  # fresh MA: identity
    torch.testing.assert_close(wrapped[0] + u, u + r, atol=0, rtol=0)
    check_consumed(wrapped)
    with pytest.raises(ModelError, match="does not match"):
        torch.randn(1, 4, 3, 3) + AdaptedResidual(m, r)


def test_half_precision_and_inference_mode():
    v1, v2 = _pair()
    _randomise_ma(v2)
    x, emb, pose = _inputs(2)
    v2.to(torch.bfloat16)
    v2.compute_dtype = torch.bfloat16
    with torch.inference_mode():
        out = v2.predict(x, 400, emb, 2, poses=pose)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    with torch.no_grad():
        ref = _pair()[1]
        _randomise_ma(ref)
        want = ref.predict(x, 400, emb, 2, poses=pose)
    torch.testing.assert_close(out.float(), want, atol=0.1, rtol=0.1)
