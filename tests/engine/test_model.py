"""Inflation of a diffusers UNet: structure, equality with the image model, validation."""

import pytest
import torch
from diffusers import ControlNetModel, UNet2DConditionModel

from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.errors import InputError, ModelError
from edit_your_motion.motion_core.video_model.model import MotionModel
from edit_your_motion.motion_core.method.stages import stage_parameter_names


def _inputs(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g), torch.rand(n, 3, 64, 64, generator=g)


def _image_model(seed=0):
    unet = tiny.build_unet("tiny", seed)
    return unet, tiny.build_controlnet(unet, "tiny", seed + 1)


def _image_forward(unet, cn, x, emb, pose, t=400):
    e = emb.expand(x.shape[0], -1, -1)
    with torch.no_grad():
        down, mid = cn(x, t, encoder_hidden_states=e, controlnet_cond=pose, return_dict=False)
        return unet(x, t, encoder_hidden_states=e, down_block_additional_residuals=down,
                    mid_block_additional_residual=mid).sample


@pytest.mark.parametrize("n", [1, 3])
def test_inflated_self_mode_equals_image_model(n):
    x, emb, pose = _inputs(n)
    unet, cn = _image_model()
    want = _image_forward(unet, cn, x, emb, pose)
    model = MotionModel.from_unet(unet, cn, attention_mode="self")
    with torch.no_grad():
        got = model.predict(x, 400, emb, n, poses=pose)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_inflated_rc_equals_image_model_on_a_still_clip():
    """RC-Attn over [z_p(i), z_i] with identical frames is self-attention, and temporal attention
    starts at zero: a still clip gives the image model's output frame by frame."""
    x1, emb, pose1 = _inputs(1)
    n = 4
    x, pose = x1.expand(n, -1, -1, -1).contiguous(), pose1.expand(n, -1, -1, -1).contiguous()
    unet, cn = _image_model()
    want = _image_forward(unet, cn, x, emb, pose)
    model = MotionModel.from_unet(unet, cn)
    with torch.no_grad():
        got = model.predict(x, 400, emb, n, poses=pose)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_rc_differs_from_image_model_on_a_moving_clip():
    n = 3
    x, emb, pose = _inputs(n)
    unet, cn = _image_model()
    want = _image_forward(unet, cn, x, emb, pose)
    model = MotionModel.from_unet(unet, cn)
    with torch.no_grad():
        got = model.predict(x, 400, emb, n, poses=pose)
    assert (got - want).abs().max() > 1e-4


def test_temporal_layers_everywhere_and_zero_initialised():
    model = tiny.build_motion_model()
    blocks = [m for m in model.unet.modules() if m.__class__.__name__ == "BasicTransformerBlock"]
    temporal = [m for m in model.unet.modules() if m.__class__.__name__ == "TemporalAttention"]
    assert len(blocks) == len(temporal) > 0
    for t in temporal:
        assert t.attn.to_out[0].weight.abs().max() == 0 and t.attn.to_out[0].bias.abs().max() == 0
    # base weight names unchanged: a plain UNet's state dict loads into the inflated one
    plain = tiny.build_unet("tiny", 5).state_dict()
    missing, unexpected = model.unet.load_state_dict(plain, strict=False)
    assert not unexpected and all("temporal_attention" in k for k in missing)


def test_trained_temporal_layer_mixes_frames():
    n = 3
    x, emb, pose = _inputs(n)
    model = tiny.build_motion_model(attention_mode="self")
    with torch.no_grad():
        for name, p in model.unet.named_parameters():
            if "temporal_attention.attn.to_out" in name:
                p.normal_(0, 0.2)
        a = model.predict(x, 400, emb, n, poses=pose)
        x2 = x.clone()
        x2[2] += 1.0  # change only the last frame
        b = model.predict(x2, 400, emb, n, poses=pose)
    assert (a[0] - b[0]).abs().max() > 1e-4  # frame 0 now sees frame 2


def test_stage_parameter_sets_are_disjoint_and_complete():
    model = tiny.build_motion_model()
    s1, s2 = set(stage_parameter_names(model, 1)), set(stage_parameter_names(model, 2))
    assert s1 and s2 and not (s1 & s2)
    assert all(".attn1." in n and any(k in n for k in ("to_q", "to_k", "to_v", "to_out")) for n in s1)
    assert all("temporal_attention" in n for n in s2)
    state = model.tuned_state()
    assert set(state) == s1 | s2


def test_validation_errors():
    unet = tiny.build_unet()
    cfg = dict(tiny.unet_config("tiny"), in_channels=9)
    with pytest.raises(ModelError, match="input channels"):
        MotionModel.from_unet(UNet2DConditionModel(**cfg))
    with pytest.raises(ModelError, match="UNet2DConditionModel"):
        MotionModel.from_unet(torch.nn.Linear(2, 2))
    sdxl_like = dict(tiny.unet_config("tiny"), use_linear_projection=True)
    with pytest.raises(ModelError, match="SD2"):
        MotionModel.from_unet(UNet2DConditionModel(**sdxl_like))
    depth_cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 8, 16, 16), conditioning_channels=1)
    with pytest.raises(ModelError, match="RGB pose"):
        MotionModel.from_unet(unet, depth_cn)
    model = tiny.build_motion_model()
    with pytest.raises(InputError, match="multiple of num_frames"):
        model.predict(torch.randn(5, 4, 8, 8), 10, torch.randn(1, 77, 32), 2)
    with pytest.raises(InputError, match="attention_mode"):
        model.set_attention_mode("full")


def test_pose_embedding_is_computed_once_per_clip_and_never_stale():
    n = 3
    x, emb, pose = _inputs(n)
    model = tiny.build_motion_model()
    calls = []
    model.controlnet.controlnet_cond_embedding.register_forward_hook(
        lambda m, args, out: calls.append(args[0].shape[1] == 3))
    with torch.no_grad():
        a = model.predict(x, 400, emb, n, poses=pose)
        b = model.predict(x, 700, emb, n, poses=pose)
        assert sum(calls) == 1  # embedded once, passed through afterwards
        pose.mul_(0.5)  # an in-place change must not hit the cache
        c = model.predict(x, 400, emb, n, poses=pose)
        assert sum(calls) == 2 and (a - c).abs().max() > 1e-6
        # a permuted clip uses the cached embedding rows: same as permuting the poses themselves
        order = torch.tensor([2, 0, 1])
        d = model.predict(x, 400, emb, n, poses=pose, pose_order=order)
        e = model.predict(x, 400, emb, n, poses=pose[order].clone())
    torch.testing.assert_close(d, e, atol=1e-5, rtol=1e-5)
    assert (a - b).abs().max() > 0


@pytest.mark.parametrize("scales", [[1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [0.5, 0.0, 1.5, 0.0], [0.0] * 4])
def test_controlnet_rows_and_strengths_match_a_per_row_reference(scales):
    """Rows with strength 0 get no residuals, the others their own strength: the batched call
    (contiguous rows sliced, scattered rows gathered) equals running each row alone."""
    model = tiny.build_motion_model()
    g = torch.Generator().manual_seed(3)
    x, emb, pose = torch.randn(4, 4, 8, 8, generator=g), torch.randn(1, 77, 32, generator=g), torch.rand(4, 3, 64, 64, generator=g)
    t = torch.full((4,), 300)
    with torch.no_grad():
        down, mid = model.controlnet_residuals(x, t, emb.expand(4, -1, -1), pose, scales)
        if not any(scales):
            assert down is None and mid is None
            return
        cn = model.controlnet
        for i, s in enumerate(scales):
            ref_down, ref_mid = cn(x[i:i + 1], t[i:i + 1], encoder_hidden_states=emb, controlnet_cond=pose[i:i + 1],
                                   return_dict=False)
            for d, r in zip(down, ref_down):
                torch.testing.assert_close(d[i:i + 1], r * s, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(mid[i:i + 1], ref_mid * s, atol=1e-5, rtol=1e-5)


def test_temporal_layers_are_initialised_independently_of_the_global_rng():
    """Two loads of the same checkpoint give the same video model whatever torch's global random
    state is (it was used for the temporal projections, so a restarted ComfyUI tuned differently)."""
    import copy

    unet, cn = tiny.build_unet("tiny", 0), None
    models = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        models.append(MotionModel.from_unet(copy.deepcopy(unet), cn))
    a, b = (dict(m.unet.named_parameters()) for m in models)
    temporal = [k for k in a if "temporal_attention" in k]
    assert temporal and all(torch.equal(a[k], b[k]) for k in a)
    # nn.Linear's default distribution (uniform, bound 1/sqrt(fan_in)), a different draw per layer
    qs = [k for k in temporal if k.endswith("to_q.weight")]
    for k in qs:
        bound = a[k].shape[1] ** -0.5
        assert a[k].abs().max() <= bound and a[k].std() > 0.45 * bound  # uniform: std = bound / sqrt(3)
    assert not torch.equal(a[qs[0]], a[qs[0].replace("to_q", "to_k")])
    same_shape = [k for k in qs if a[k].shape == a[qs[0]].shape]
    assert len(same_shape) > 1 and not torch.equal(a[same_shape[0]], a[same_shape[1]])
