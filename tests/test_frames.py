"""Seeded shuffling, its inverse, consistent permutation, masking and pose layout."""

import pytest
import torch

from edit_your_motion.motion_core.method import frames as F
from edit_your_motion.motion_core.errors import InputError


def test_shuffle_is_seeded_and_inverse_restores():
    a, b, c = F.shuffle_permutation(16, 3), F.shuffle_permutation(16, 3), F.shuffle_permutation(16, 4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert sorted(a.tolist()) == list(range(16))
    x = torch.randn(16, 5)
    torch.testing.assert_close(x[a][F.inverse_permutation(a)], x)


def test_permutation_applies_consistently_to_frames_poses_masks():
    n = 6
    # tag every frame with its index in each tensor
    frames = torch.arange(n).float().view(n, 1, 1, 1).expand(n, 4, 4, 3)
    poses = frames.clone() * 10
    masks = torch.arange(n).float().view(n, 1, 1).expand(n, 4, 4)
    perm = F.shuffle_permutation(n, 7)
    out = F.permute_frames(perm, frames=frames, poses=poses, masks=masks, latents=None)
    assert out["latents"] is None
    assert out["frames"][:, 0, 0, 0].tolist() == perm.float().tolist()
    assert out["poses"][:, 0, 0, 0].tolist() == (perm.float() * 10).tolist()
    assert out["masks"][:, 0, 0].tolist() == perm.float().tolist()


def test_permutation_errors():
    with pytest.raises(InputError, match="frame counts disagree"):
        F.permute_frames(torch.arange(3), frames=torch.zeros(3, 2, 2, 3), masks=torch.zeros(4, 2, 2))
    with pytest.raises(InputError, match="not a permutation"):
        F.permute_frames(torch.tensor([0, 0, 1]), frames=torch.zeros(3, 2, 2, 3))
    with pytest.raises(InputError, match="orders 2 frames"):
        F.permute_frames(torch.tensor([1, 0]), frames=torch.zeros(3, 2, 2, 3))


def test_background_mask_is_U_times_M():
    frames = torch.rand(3, 8, 8, 3)
    masks = (torch.rand(3, 8, 8) > 0.5).float()
    masks[:, 0, 0] = 1
    out = F.apply_background_mask(frames, masks)
    torch.testing.assert_close(out, frames * masks[..., None])
    grey = F.apply_background_mask(frames, masks, background=0.5)
    assert torch.all(grey[masks == 0] == 0.5)


def test_mask_resized_and_broadcast():
    frames = torch.rand(2, 16, 16, 3)
    one = torch.ones(1, 8, 8)
    torch.testing.assert_close(F.apply_background_mask(frames, one), frames)


def test_empty_mask_names_the_frame():
    masks = torch.ones(3, 8, 8)
    masks[1] = 0
    with pytest.raises(InputError, match=r"frame\(s\) \[1\]"):
        F.apply_background_mask(torch.rand(3, 8, 8, 3), masks)


def test_mask_frame_count_mismatch():
    with pytest.raises(InputError, match="frames has 3, masks has 2"):
        F.apply_background_mask(torch.rand(3, 8, 8, 3), torch.ones(2, 8, 8))


def test_poses_to_condition_layout_and_resize():
    poses = torch.rand(2, 16, 24, 3)
    hint = F.poses_to_condition(poses, 16, 24)
    assert hint.shape == (2, 3, 16, 24)
    torch.testing.assert_close(hint, poses.permute(0, 3, 1, 2))
    assert F.poses_to_condition(poses, 32, 48).shape == (2, 3, 32, 48)
    with pytest.raises(InputError, match="IMAGE batch"):
        F.poses_to_condition(torch.rand(2, 3, 16, 16), 16, 16)


def test_pixel_sizes_must_be_divisible_by_8():
    from edit_your_motion.motion_core.errors import check_pixel_size
    from edit_your_motion.motion_core.testing.synthetic import make_clip

    check_pixel_size("video", 512, 384)
    with pytest.raises(InputError, match=r"video is 510x512; .* e\.g\. 504x512"):
        check_pixel_size("video", 512, 510)
    with pytest.raises(InputError, match="divisible by 8"):
        make_clip(2, 60, 64)
