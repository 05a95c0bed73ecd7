"""The shared input guards in motion_core/errors.py: one check per guard, used by every entry point."""

import pytest
import torch

from motion_core.errors import InputError, check_guidance, check_inputs_finite, check_poses


def test_guidance_needs_the_negative_named_as_the_caller_names_it():
    check_guidance(1.0, None)                      # no guidance: nothing needed
    check_guidance(3.0, torch.zeros(1, 77, 8))     # guidance with the negative
    with pytest.raises(InputError, match="guidance must be >= 1"):
        check_guidance(0.5, None)
    with pytest.raises(InputError, match="guidance > 1 needs 'negative'"):   # a node names its socket
        check_guidance(1.5, None, "negative")
    with pytest.raises(InputError, match="guidance > 1 needs 'uncond_embeddings'"):  # the engine its argument
        check_guidance(1.5, None)


def test_poses_must_match_the_video_size_and_need_a_controlnet():
    latents = torch.zeros(2, 4, 4, 6)
    check_poses("poses", None, latents, has_controlnet=False)            # no poses: nothing to check
    check_poses("poses", torch.zeros(2, 3, 32, 48), latents, True)
    with pytest.raises(InputError, match=r"reference poses are 40x32 pixels but the latents are for 48x32"):
        check_poses("reference poses", torch.zeros(2, 3, 32, 40), latents, True)
    with pytest.raises(InputError, match="source poses were given but the model has no ControlNet"):
        check_poses("source poses", torch.zeros(2, 3, 32, 48), latents, False)


def test_inputs_finite_names_the_input_and_frame():
    check_inputs_finite(a=torch.zeros(3), b=None)
    bad = torch.zeros(3, 4, 2, 2)
    bad[1, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match=r"latents contains NaN.*frame\(s\) \[1\]"):
        check_inputs_finite(ok=torch.zeros(2), latents=bad)


def test_one_precision_map_round_trips_and_names_the_bad_input():
    from motion_core.precision import DTYPES, dtype_of, name_of

    for name, dtype in DTYPES.items():
        assert dtype_of(name) is dtype and name_of(dtype) == name
    assert set(DTYPES) == {"fp32", "bf16", "fp16"}
    with pytest.raises(InputError, match="weight_dtype must be one of fp32, bf16, fp16; got 'int8'"):
        dtype_of("int8", "weight_dtype")
    with pytest.raises(InputError, match="no precision name for torch.float64"):
        name_of(torch.float64)
