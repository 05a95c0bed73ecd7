"""The frames both pose detectors read (motion_core/pose/images.py): known conversions and bad input."""

import numpy as np
import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.pose.images import to_uint8_frames


def test_known_conversions():
    image = torch.tensor([0.0, 0.5, 1.0, 1.5, -0.2, 0.25]).reshape(1, 1, 2, 3)
    out = to_uint8_frames(image)
    assert out.dtype == np.uint8 and out.tolist() == [[[[0, 128, 255], [255, 0, 64]]]]  # rounded, clamped
    assert np.array_equal(to_uint8_frames(image.numpy()), out)                         # arrays as tensors
    raw = np.arange(24, dtype=np.uint8).reshape(2, 4, 3)
    assert np.array_equal(to_uint8_frames(raw), raw[None])                              # one frame, unchanged
    rgba = np.arange(32, dtype=np.uint8).reshape(1, 2, 4, 4)
    assert np.array_equal(to_uint8_frames(rgba), rgba[..., :3]) and to_uint8_frames(rgba).flags.c_contiguous


def test_bad_frames_are_named():
    with pytest.raises(InputError, match=r"images must be RGB frames .* got \(1, 4, 4, 2\)"):
        to_uint8_frames(np.zeros((1, 4, 4, 2), np.uint8))
    with pytest.raises(InputError, match="images has no frames"):
        to_uint8_frames(torch.zeros(0, 4, 4, 3))
