"""Single-branch sampling (later version) and single-image sources."""

import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.method.sampler import SamplerConfig, two_branch_sample
from edit_your_motion.motion_core.method.single_branch import repeat_to_frames, single_branch_sample
from edit_your_motion.motion_core.testing import tiny
from edit_your_motion.motion_core.video_model.model import MotionModel


@pytest.fixture(scope="module")
def setup():
    g = torch.Generator().manual_seed(0)
    unet = tiny.build_unet()
    model = MotionModel.from_unet(unet, tiny.build_controlnet(unet), method="eym_v2")
    with torch.no_grad():  # a tuned model: temporal layers and Motion Attention act
        for n, p in model.unet.named_parameters():
            if "temporal_attention.attn.to_out" in n or ("motion_attention" in n and "proj_out" in n):
                p.normal_(0, 0.02, generator=g)
    n = 3
    return dict(model=model, z=torch.randn(n, 4, 8, 8, generator=g), src=torch.rand(n, 3, 64, 64, generator=g),
                ref=torch.rand(n, 3, 64, 64, generator=g), ps=tiny.encode_prompt("a boy is dancing"),
                pt=tiny.encode_prompt("a boy is playing basketball"), uncond=tiny.encode_prompt(""))


@pytest.mark.parametrize("guidance", [1.0, 2.5])
def test_single_branch_equals_the_uninjected_editing_branch(setup, guidance):
    """An independent path: the two-branch sampler's editing branch with injection switched off is
    the same computation, batched next to a reconstruction branch (so Motion Attention's temporal
    attention must keep the branches apart)."""
    s = setup
    one = single_branch_sample(s["model"], s["z"], s["pt"], s["ref"], num_steps=4, guidance=guidance,
                               uncond_embeddings=s["uncond"])
    two = two_branch_sample(s["model"], s["z"], s["ps"], s["pt"], s["src"], s["ref"],
                            SamplerConfig(num_steps=4, inject_parts=(), guidance_scale=guidance),
                            uncond_embeddings=s["uncond"])
    torch.testing.assert_close(one, two.edited, atol=1e-4, rtol=1e-4)
    assert (one - two.reconstruction).abs().max() > 1e-3


def test_bf16_storage_and_inference_mode(setup):
    s = setup
    unet = tiny.build_unet()
    model = MotionModel.from_unet(unet, tiny.build_controlnet(unet), method="eym_v2")
    model.load_state_dict(s["model"].state_dict())
    model.to(torch.bfloat16)
    model.compute_dtype = torch.bfloat16
    with torch.inference_mode():
        out = single_branch_sample(model, s["z"].clone(), s["pt"].clone(), s["ref"].clone(), num_steps=2)
    want = single_branch_sample(s["model"], s["z"], s["pt"], s["ref"], num_steps=2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    torch.testing.assert_close(out, want, atol=0.15, rtol=0.1)


def test_bad_inputs(setup):
    s = setup
    with pytest.raises(InputError, match="reference_poses has 2"):
        single_branch_sample(s["model"], s["z"], s["pt"], s["ref"][:2])
    with pytest.raises(InputError, match="resize the pose images to the video size"):
        single_branch_sample(s["model"], s["z"], s["pt"], s["ref"][..., :32, :32])
    with pytest.raises(InputError, match="uncond"):
        single_branch_sample(s["model"], s["z"], s["pt"], s["ref"], guidance=2.0)
    with pytest.raises(InputError, match="strength"):
        single_branch_sample(s["model"], s["z"], s["pt"], s["ref"], control_scale=-1.0)


def test_repeat_to_frames():
    img = torch.rand(1, 16, 12, 3)
    clip = repeat_to_frames(img, 5)
    assert clip.shape == (5, 16, 12, 3) and all(torch.equal(f, img[0]) for f in clip)
    clip[0, 0, 0, 0] = 7.0  # a real copy, not a view of one frame
    assert clip[1, 0, 0, 0] != 7.0 and img[0, 0, 0, 0] != 7.0
    already = torch.rand(4, 8, 8, 3)
    assert repeat_to_frames(already, 4) is already
    assert repeat_to_frames(torch.rand(1, 4, 8, 8), 3).shape == (3, 4, 8, 8)
    with pytest.raises(InputError, match="image has 3 frames but the reference motion has 5"):
        repeat_to_frames(torch.rand(3, 8, 8, 3), 5, "image")
    with pytest.raises(InputError, match="at least one frame"):
        repeat_to_frames(img, 0)
