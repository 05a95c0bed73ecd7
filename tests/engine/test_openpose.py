"""Tests for motion_core.pose.openpose with randomly initialised weights (no real weights, no downloads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edit_your_motion.motion_core.pose import openpose as OP
from edit_your_motion.motion_core.errors import InputError


class _NotATensor:
    """A pickled Python object: weights_only loading must refuse it."""

    def __init__(self):
        self.payload = "anything"


@pytest.fixture(scope="module")
def random_net():
    from controlnet_aux.open_pose.model import bodypose_model

    torch.manual_seed(0)
    net = bodypose_model().eval()
    return net


def _original_layout(net):
    """The layout of the published body_pose_model.pth: keys without the 'model0.'/'model1_1.' prefix."""
    return {k.split(".", 1)[1]: v.clone() for k, v in net.state_dict().items()}


def test_load_body_model_pth_both_layouts_and_weights_only(tmp_path, random_net, monkeypatch):
    p_orig = tmp_path / "body_pose_model.pth"
    torch.save(_original_layout(random_net), p_orig)
    p_full = tmp_path / "full_layout.pth"
    torch.save(random_net.state_dict(), p_full)

    calls = []
    real_load = torch.load

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    for path in (p_orig, p_full):
        net = OP.load_body_model(path)
        assert not net.training
        for k, v in random_net.state_dict().items():
            assert torch.equal(net.state_dict()[k], v), k
    assert calls and all(c.get("weights_only") is True and c.get("map_location") == "cpu" for c in calls)
    # a directory containing body_pose_model.pth resolves to that file
    assert OP._resolve_path(tmp_path, None) == str(p_orig)


def test_load_body_model_safetensors(tmp_path, random_net):
    from safetensors.torch import save_file

    p = tmp_path / "body_pose_model.safetensors"
    save_file({k: v.contiguous() for k, v in _original_layout(random_net).items()}, str(p))
    net = OP.load_body_model(p)
    k = "model0.conv1_1.weight"
    assert torch.equal(net.state_dict()[k], random_net.state_dict()[k])


def test_load_body_model_refuses_pickled_objects(tmp_path, random_net):
    sd = _original_layout(random_net)
    sd["evil"] = _NotATensor()
    p = tmp_path / "body_pose_model.pth"
    torch.save(sd, p)
    with pytest.raises(InputError, match="weights_only"):
        OP.load_body_model(p)


def test_load_body_model_wrong_file(tmp_path):
    p = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(2)}, p)
    with pytest.raises(InputError, match="not an OpenPose body model"):
        OP.load_body_model(p)


def test_load_body_model_missing_file_message(tmp_path):
    with pytest.raises(InputError) as exc:
        OP.load_body_model(tmp_path / "nope" / "body_pose_model.pth", where_hint="ComfyUI/models/openpose")
    msg = str(exc.value)
    assert "body_pose_model.pth" in msg and "ComfyUI/models/openpose" in msg
    with pytest.raises(InputError, match="body_pose_model.pth"):
        OP.load_body_model(tmp_path)  # empty directory
    with pytest.raises(InputError, match="body_pose_model.pth"):
        OP.load_body_model(None)


def test_candidate_subset_conversion_known_answer():
    # candidate rows: x, y, score, id
    candidate = np.array([
        [10, 10, 0.9, 0],  # person A nose
        [10, 20, 0.8, 1],  # person A neck
        [12, 40, 0.7, 2],  # person A R-hip
        [50, 5, 0.95, 3],  # person B nose
        [50, 30, 0.85, 4],  # person B neck
        [40, 90, 0.6, 5],  # person B R-ankle
        [62, 88, 0.5, 6],  # person B L-ankle
    ], dtype=np.float64)
    subset = -np.ones((2, 20))
    subset[0, [0, 1, 8]] = [0, 1, 2]
    subset[0, 18:] = [5.0, 3]
    subset[1, [0, 1, 10, 13]] = [3, 4, 5, 6]
    subset[1, 18:] = [4.0, 4]
    kp, ok = OP.candidate_subset_to_keypoints(candidate, subset)
    assert ok
    expected = np.zeros((18, 3), np.float32)
    expected[0] = (50, 5, 0.95)
    expected[1] = (50, 30, 0.85)
    expected[10] = (40, 90, 0.6)
    expected[13] = (62, 88, 0.5)
    np.testing.assert_allclose(kp, expected, atol=1e-6)
    kp_a, ok_a = OP.candidate_subset_to_keypoints(candidate, subset, person=0)
    assert ok_a and kp_a[8].tolist() == pytest.approx([12, 40, 0.7])
    assert (kp_a[[2, 3, 4, 5, 13]] == 0).all()
    people = OP.subset_to_people(candidate, subset)
    assert people.shape == (2, 18, 3)
    # nobody: controlnet_aux returns an empty candidate list when no peak is found
    kp0, ok0 = OP.candidate_subset_to_keypoints(np.array([]), np.zeros((0, 20)))
    assert not ok0 and kp0.shape == (18, 3) and (kp0 == 0).all()
    assert not OP.candidate_subset_to_keypoints(candidate, subset, person=5)[1]


def test_detect_keypoints_random_weights_shapes_and_require_people(random_net):
    import copy

    net = copy.deepcopy(random_net)
    with torch.no_grad():  # heatmap head at zero: no peak anywhere -> deterministic "nobody"
        net.model6_2.Mconv7_stage6_L2.weight.zero_()
        net.model6_2.Mconv7_stage6_L2.bias.zero_()
    images = torch.rand(2, 64, 64, 3)
    seen = []
    kp, found = OP.detect_keypoints(images, net, detect_resolution=None, callback=lambda i, n: seen.append((i, n)))
    assert kp.shape == (2, 18, 3) and kp.dtype == np.float32
    assert found.shape == (2,) and found.dtype == bool and not found.any()
    assert (kp == 0).all() and seen == [(0, 2), (1, 2)]
    with pytest.raises(InputError, match=r"source video frame\(s\) 0, 1 of 2.*POSE_KEYPOINT"):
        OP.require_people(found, "source video")
    OP.require_people(np.array([True, True]), "source video")  # no error


def test_detect_keypoints_resizes_like_controlnet_aux_and_maps_back_to_input_pixels():
    """A 48x64 uint8 frame is detected at 512 on the short side (sides rounded to multiples of 64:
    512x704), in BGR as controlnet_aux's OpenposeDetector feeds its Body; the keypoints found there
    come back in pixels of the input frame (x * 64/704, y * 48/512)."""
    body_mod, _, _ = OP._import_open_pose()
    seen = []

    class KnownBody(body_mod.Body):
        def __init__(self):  # no weights: answers with a known person
            pass

        def __call__(self, bgr):
            seen.append(bgr.copy())
            candidate = np.array([[352.0, 256.0, 0.9, 0], [352.0, 128.0, 0.8, 1], [176.0, 384.0, 0.7, 2]])
            subset = -np.ones((1, 20))
            subset[0, [0, 1, 8]] = [0, 1, 2]
            subset[0, 18:] = [2.4, 3]
            return candidate, subset

    images = np.zeros((1, 48, 64, 3), np.uint8)
    images[..., 0] = 255  # pure red
    kp, found = OP.detect_keypoints(images, KnownBody())
    assert found.tolist() == [True] and kp.shape == (1, 18, 3)
    assert seen[0].shape == (512, 704, 3)
    assert (seen[0][..., 2] == 255).all() and (seen[0][..., :2] == 0).all()  # red arrives as BGR
    expected = np.zeros((18, 3), np.float32)
    expected[0], expected[1], expected[8] = (32, 24, 0.9), (32, 12, 0.8), (16, 36, 0.7)
    np.testing.assert_allclose(kp[0], expected, atol=1e-4)


def test_detect_keypoints_uint8_numpy_default_resolution(random_net):
    images = (np.random.default_rng(0).random((1, 48, 64, 3)) * 255).astype(np.uint8)
    kp, found = OP.detect_keypoints(images, random_net)  # the real network runs at 512x704
    assert kp.shape == (1, 18, 3) and kp.dtype == np.float32 and found.shape == (1,)
    rgba = np.concatenate([images, np.full((1, 48, 64, 1), 7, np.uint8)], axis=-1)  # alpha is dropped, as mediapipe does
    kp_rgba, found_rgba = OP.detect_keypoints(rgba, random_net)
    assert np.array_equal(kp_rgba, kp) and np.array_equal(found_rgba, found)
    with pytest.raises(InputError, match="RGB"):
        OP.detect_keypoints(np.zeros((1, 8, 8, 2), np.uint8), random_net)
