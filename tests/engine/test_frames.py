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


def test_mask_resized_and_broadcast(caplog):
    """An 8x8 mask whose left half is the person, on 16x16 frames: bilinear resizing (half-pixel
    centres) gives columns 1 x7, 0.75, 0.25, 0 x7 (the bilinear formula), the same for both frames."""
    frames = torch.rand(2, 16, 16, 3, generator=torch.Generator().manual_seed(0))
    half = torch.zeros(1, 8, 8)
    half[:, :, :4] = 1
    with caplog.at_level("WARNING", logger="edit_your_motion"):
        out = F.apply_background_mask(frames, half)
    assert "resizing the 8x8 mask to the 16x16 frames" in caplog.text
    column = torch.tensor([1.0] * 7 + [0.75, 0.25] + [0.0] * 7)
    torch.testing.assert_close(out, frames * column.view(1, 1, 16, 1))


def test_mask_of_another_aspect_ratio_is_refused_not_stretched():
    with pytest.raises(InputError, match=r"masks is 128x64 but the frames are 64x64.*stretched"):
        F.apply_background_mask(torch.rand(2, 64, 64, 3), torch.ones(2, 64, 128))


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
    with pytest.raises(InputError, match="IMAGE batch"):
        F.poses_to_condition(torch.rand(2, 3, 16, 16), 16, 16)


def test_pose_images_of_a_video_not_divisible_by_8_are_cropped_like_vae_encode(caplog):
    """A 60x62 video: VAE Encode keeps the centred 56x56 (offsets (60 % 8) // 2 = 2 and
    (62 % 8) // 2 = 3); the pose images must be cropped there, not squeezed, and the user told."""
    poses = torch.rand(2, 60, 62, 3, generator=torch.Generator().manual_seed(1))
    with caplog.at_level("WARNING", logger="edit_your_motion"):
        hint = F.poses_to_condition(poses, 56, 56, "source_poses")
    torch.testing.assert_close(hint, poses[:, 2:58, 3:59].permute(0, 3, 1, 2))
    assert "source_poses are 62x60" in caplog.text and "result will be 56x56" in caplog.text


def test_pose_images_resized_with_a_warning_or_refused_when_stretched(caplog):
    poses = torch.rand(2, 32, 48, 3, generator=torch.Generator().manual_seed(2))
    with caplog.at_level("WARNING", logger="edit_your_motion"):
        hint = F.poses_to_condition(poses, 16, 24)
    # an exact 2x bilinear downscale (half-pixel centres) is the mean of each 2x2 block
    torch.testing.assert_close(hint, torch.nn.functional.avg_pool2d(poses.permute(0, 3, 1, 2), 2))
    assert "resizing the 48x32 pose images to the video's 24x16" in caplog.text
    with pytest.raises(InputError, match=r"reference_poses are 48x32 but the video is 16x16.*stretched"):
        F.poses_to_condition(poses, 16, 16, "reference_poses")


def test_pixel_sizes_must_be_divisible_by_8():
    from edit_your_motion.motion_core.errors import check_pixel_size
    from edit_your_motion.motion_core.testing.synthetic import make_clip

    check_pixel_size("video", 512, 384)
    with pytest.raises(InputError, match=r"video is 510x512; .* e\.g\. 504x512"):
        check_pixel_size("video", 512, 510)
    with pytest.raises(InputError, match="divisible by 8"):
        make_clip(2, 60, 64)
