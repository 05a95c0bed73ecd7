"""Tests for motion_core.pose: rendering vs controlnet_aux, POSE_KEYPOINT interop, alignment, masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edit_your_motion.motion_core import pose as K
from edit_your_motion.motion_core.errors import InputError


def _random_skeletons(rng, n, h, w, p_missing=0.2):
    kp = np.zeros((n, 18, 3), np.float32)
    kp[..., 0] = rng.uniform(-5, w + 5, size=(n, 18))
    kp[..., 1] = rng.uniform(-5, h + 5, size=(n, 18))
    kp[..., 2] = rng.uniform(0.2, 1.0, size=(n, 18))
    miss = rng.random((n, 18)) < p_missing
    kp[miss] = 0.0
    return kp


def _standing_person(cx=50.0, top=20.0, scale=1.0):
    """A frontal person, neck at (cx, top + 20 s), mid-hip at (cx, top + 60 s)."""
    s = scale
    pts = {
        0: (cx, top + 10 * s), 1: (cx, top + 20 * s),
        2: (cx - 10 * s, top + 20 * s), 3: (cx - 14 * s, top + 35 * s), 4: (cx - 16 * s, top + 50 * s),
        5: (cx + 10 * s, top + 20 * s), 6: (cx + 14 * s, top + 35 * s), 7: (cx + 16 * s, top + 50 * s),
        8: (cx - 6 * s, top + 60 * s), 9: (cx - 7 * s, top + 80 * s), 10: (cx - 8 * s, top + 100 * s),
        11: (cx + 6 * s, top + 60 * s), 12: (cx + 7 * s, top + 80 * s), 13: (cx + 8 * s, top + 100 * s),
        14: (cx - 3 * s, top + 8 * s), 15: (cx + 3 * s, top + 8 * s),
        16: (cx - 6 * s, top + 10 * s), 17: (cx + 6 * s, top + 10 * s),
    }
    kp = np.zeros((18, 3), np.float32)
    for j, (x, y) in pts.items():
        kp[j] = (x, y, 1.0)
    return kp


# ------------------------------------------------------------------ constants / rendering

def test_constants_match_controlnet_aux():
    import inspect

    from controlnet_aux.open_pose import util

    src = inspect.getsource(util.draw_bodypose)
    assert len(K.LIMB_SEQUENCE) == 17 and len(K.COLORS) == 18 and len(K.KEYPOINT_NAMES) == 18
    one_based = ",".join(f"[{a + 1}, {b + 1}]" for a, b in K.LIMB_SEQUENCE)
    assert one_based.replace(" ", "") in src.replace(" ", "").replace("\n", "").replace("\\", "")
    for c in K.COLORS:
        assert f"[{c[0]}, {c[1]}, {c[2]}]" in src


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_render_matches_controlnet_aux_draw_bodypose(seed):
    from controlnet_aux.open_pose.body import Keypoint
    from controlnet_aux.open_pose.util import draw_bodypose

    rng = np.random.default_rng(seed)
    h, w = 72, 96
    kp = _random_skeletons(rng, 4, h, w, p_missing=0.25)
    kp[0, :] = 0.0  # a frame with nobody
    kp[1, [1, 8, 11]] = 0.0  # neck and hips missing
    ours = K.render_pose_images(torch.from_numpy(kp) if seed % 2 else kp, h, w)
    assert ours.shape == (4, h, w, 3) and ours.dtype == torch.float32
    assert float(ours.min()) >= 0.0 and float(ours.max()) <= 1.0
    for f in range(kp.shape[0]):
        pts = [
            Keypoint(float(x) / w, float(y) / h) if c > 0 else None
            for x, y, c in kp[f].astype(np.float64)
        ]
        ref = draw_bodypose(np.zeros((h, w, 3), np.uint8), pts)
        diff = np.abs(ours[f].numpy() - ref.astype(np.float32) / 255.0).max()
        assert diff <= 1.0 / 255.0 + 1e-6, f"frame {f} differs by {diff}"
    assert float(ours[0].abs().max()) == 0.0
    assert float(ours[1:].max()) > 0.0


def test_render_single_frame_and_bad_shape():
    kp = _standing_person()
    img = K.render_pose_images(kp, 128, 100)
    assert img.shape == (1, 128, 100, 3)
    # the neck point is drawn in its own colour (255, 85, 0)
    x, y = int(kp[1, 0]), int(kp[1, 1])
    assert torch.allclose(img[0, y, x], torch.tensor([1.0, 85 / 255, 0.0]))
    with pytest.raises(InputError, match="18, 3"):
        K.render_pose_images(np.zeros((2, 17, 3)), 64, 64)


# ------------------------------------------------------------------ POSE_KEYPOINT

def test_pose_keypoint_roundtrip_pixels_and_normalised():
    rng = np.random.default_rng(3)
    h, w = 120, 160
    kp = _random_skeletons(rng, 3, h, w)
    kp[..., :2] = np.clip(kp[..., :2], 2, None) * (kp[..., 2:] > 0)
    kp[2] = 0.0
    for normalized in (False, True):
        frames = K.to_pose_keypoint(kp, h, w, normalized=normalized)
        assert len(frames) == 3
        assert frames[0]["canvas_width"] == w and frames[0]["canvas_height"] == h
        person = frames[0]["people"][0]
        assert len(person["pose_keypoints_2d"]) == 54
        assert person["face_keypoints_2d"] is None and person["hand_left_keypoints_2d"] is None
        assert person["hand_right_keypoints_2d"] is None
        assert frames[2]["people"] == []
        if normalized:
            coords = np.array(person["pose_keypoints_2d"]).reshape(18, 3)[:, :2]
            assert coords.max() <= 1.0 + 0.05
        back, bh, bw = K.from_pose_keypoint(frames, allow_missing=True)
        assert (bh, bw) == (h, w)
        np.testing.assert_allclose(back, kp, atol=1e-3)


def test_from_pose_keypoint_picks_largest_person_and_index():
    small = _standing_person(cx=30, top=10, scale=0.5)
    big = _standing_person(cx=100, top=10, scale=1.0)
    frame = {
        "people": [
            {"pose_keypoints_2d": small.reshape(-1).tolist()},
            {"pose_keypoints_2d": big.reshape(-1).tolist(), "face_keypoints_2d": None},
        ],
        "canvas_width": 200,
        "canvas_height": 150,
    }
    kp, h, w = K.from_pose_keypoint([frame])
    np.testing.assert_allclose(kp[0], big)
    kp0, _, _ = K.from_pose_keypoint([frame], person=0)
    np.testing.assert_allclose(kp0[0], small)
    kp1, _, _ = K.from_pose_keypoint([frame], person="1")  # a widget's string works too
    np.testing.assert_allclose(kp1[0], big)
    with pytest.raises(InputError, match=r"frame\(s\) 0"):
        K.from_pose_keypoint([frame], person=2)
    with pytest.raises(InputError, match="person must be"):
        K.from_pose_keypoint([frame], person="biggest")


def test_from_pose_keypoint_normalised_detection_and_missing_points():
    # normalised input: x / W, y / H with one missing point
    kp = _standing_person()
    kp[4] = 0.0
    flat = kp.copy()
    flat[:, 0] /= 200.0
    flat[:, 1] /= 100.0
    frame = {"people": [{"pose_keypoints_2d": flat.reshape(-1).tolist()}], "canvas_width": 200, "canvas_height": 100}
    got, h, w = K.from_pose_keypoint([frame])
    np.testing.assert_allclose(got[0], kp, atol=1e-4)
    assert (got[0, 4] == 0).all()


def test_from_pose_keypoint_errors():
    with pytest.raises(InputError, match="empty"):
        K.from_pose_keypoint([])
    person = {"pose_keypoints_2d": _standing_person().reshape(-1).tolist()}
    frames = [
        {"people": [person], "canvas_width": 100, "canvas_height": 130},
        {"people": [], "canvas_width": 100, "canvas_height": 130},
        {"people": [person], "canvas_width": 100, "canvas_height": 130},
        {"people": [], "canvas_width": 100, "canvas_height": 130},
    ]
    with pytest.raises(InputError, match=r"frame\(s\) 1, 3 of 4.*[Tt]rim") as exc:
        K.from_pose_keypoint(frames, name="reference poses")
    assert "reference poses" in str(exc.value)
    kp, _, _ = K.from_pose_keypoint(frames, allow_missing=True)
    assert (kp[1] == 0).all() and (kp[3] == 0).all() and (kp[0, :, 2] > 0).all()
    mixed = [dict(frames[0]), dict(frames[2], canvas_width=64)]
    with pytest.raises(InputError, match="canvas sizes"):
        K.from_pose_keypoint(mixed)


# ------------------------------------------------------------------ alignment

def test_align_pure_translation_known_answer():
    ref = _standing_person(cx=50, top=20)[None]  # neck (50, 40), mid-hip (50, 80): anchor (50, 60)
    src = _standing_person(cx=150, top=70)  # neck (150, 90), mid-hip (150, 130): anchor (150, 110)
    out = K.align_skeletons(ref, src)
    expected = ref.copy()
    expected[..., 0] += 100.0
    expected[..., 1] += 50.0
    np.testing.assert_allclose(out, expected, atol=1e-4)
    params = K.alignment_parameters(ref, src)
    assert params["mode"] == "neck_hip" and params["scale"] == pytest.approx(1.0)
    np.testing.assert_allclose(params["reference_anchor"], [50, 60])
    np.testing.assert_allclose(params["source_anchor"], [150, 110])


def test_align_translation_and_scale_2x_known_answer():
    ref = _standing_person(cx=50, top=20, scale=1.0)[None]  # anchor (50, 60), torso 40
    src = _standing_person(cx=100, top=0, scale=2.0)  # neck (100, 40), mid-hip (100, 120): anchor (100, 80), torso 80
    out = K.align_skeletons(ref, src)
    # p' = 2 (p - (50, 60)) + (100, 80); e.g. nose (50, 30) -> (100, 20); R-ankle (42, 120) -> (84, 200)
    np.testing.assert_allclose(out[0, 0, :2], [100, 20], atol=1e-4)
    np.testing.assert_allclose(out[0, 10, :2], [84, 200], atol=1e-4)
    # the scaled reference is the source person itself
    np.testing.assert_allclose(out[0], src, atol=1e-4)
    # scale=False: translation only
    out1 = K.align_skeletons(ref, src, scale=False)
    np.testing.assert_allclose(out1[0, :, :2], ref[0, :, :2] + np.array([50, 20]), atol=1e-4)


def test_align_keeps_missing_points_and_confidences():
    ref = np.stack([_standing_person(cx=50), _standing_person(cx=60)])
    ref[0, [4, 17], :] = 0.0
    ref[1, 9, :] = 0.0
    ref[..., 2] = np.where(ref[..., 2] > 0, 0.7, 0.0)
    out = K.align_skeletons(ref, _standing_person(cx=200, top=50, scale=1.5))
    assert (out[0, [4, 17]] == 0).all() and (out[1, 9] == 0).all()
    np.testing.assert_array_equal(out[..., 2], ref[..., 2])


def test_align_preserves_displacement_scaled():
    rng = np.random.default_rng(5)
    base = _standing_person(cx=50, top=20)
    steps = rng.normal(0, 3, size=(6, 1, 2)).cumsum(axis=0)
    ref = np.repeat(base[None], 6, axis=0)
    ref[..., :2] += steps.astype(np.float32)
    src = _standing_person(cx=120, top=10, scale=0.5)
    out = K.align_skeletons(ref, np.stack([np.zeros((18, 3), np.float32), src]))  # source frame 0 empty
    s = 0.5
    np.testing.assert_allclose(np.diff(out[..., :2], axis=0), s * np.diff(ref[..., :2], axis=0), atol=1e-4)
    # first reference frame's anchor lands on the source anchor (from source frame 1)
    p = K.alignment_parameters(ref, src)
    assert p["scale"] == pytest.approx(0.5)
    anchor_out = 0.5 * (out[0, 1, :2] + 0.5 * (out[0, 8, :2] + out[0, 11, :2]))
    np.testing.assert_allclose(anchor_out, p["source_anchor"], atol=1e-4)


def test_align_first_valid_reference_frame_and_fallbacks():
    # reference frame 0 has no hips -> frame 1 is used for neck_hip
    ref = np.stack([_standing_person(cx=10), _standing_person(cx=50)])
    ref[0, [8, 11]] = 0.0
    src = _standing_person(cx=80)
    p = K.alignment_parameters(ref, src)
    assert p["mode"] == "neck_hip" and p["reference_frame"] == 1
    np.testing.assert_allclose(p["reference_anchor"], [50, 60])
    # source without hips anywhere -> neck + shoulders fallback for both
    src_nohip = src.copy()
    src_nohip[[8, 11]] = 0.0
    p = K.alignment_parameters(ref, src_nohip)
    assert p["mode"] == "neck_shoulders" and p["reference_frame"] == 0
    np.testing.assert_allclose(p["reference_anchor"], [10, 40])
    np.testing.assert_allclose(p["source_anchor"], [80, 40])
    assert p["scale"] == pytest.approx(1.0)
    # only legs -> bbox fallback
    legs = np.zeros((18, 3), np.float32)
    legs[[9, 10]] = [[0, 0, 1], [0, 30, 1]]
    p = K.alignment_parameters(ref, legs)
    assert p["mode"] == "bbox"
    # explicit bbox anchor: centre of bbox, size = bbox height
    p = K.alignment_parameters(ref[1:], src, anchor="bbox")
    assert p["mode"] == "bbox" and p["reference_size"] == pytest.approx(92.0)


def test_align_errors_name_the_input():
    person = _standing_person()
    with pytest.raises(InputError, match="source pose"):
        K.align_skeletons(person[None], np.zeros((3, 18, 3)))
    with pytest.raises(InputError, match="reference pose"):
        K.align_skeletons(np.zeros((2, 18, 3)), person)
    with pytest.raises(InputError, match="my ref"):
        K.align_skeletons(np.zeros((2, 18, 3)), person, reference_name="my ref")
    with pytest.raises(InputError, match="anchor"):
        K.align_skeletons(person, person, anchor="hips")


# ------------------------------------------------------------------ masks

def test_person_masks_cover_points_bounded_and_empty_frames():
    h, w = 160, 200
    a = _standing_person(cx=60, top=20)
    b = _standing_person(cx=140, top=30, scale=0.8)
    b[[8, 11]] = 0.0  # no hips: size fallback
    empty = np.zeros((18, 3), np.float32)
    kp = np.stack([a, b, empty])
    masks = K.person_masks_from_keypoints(torch.from_numpy(kp), h, w)
    assert masks.shape == (3, h, w) and masks.dtype == torch.float32
    assert set(torch.unique(masks).tolist()) <= {0.0, 1.0}
    for f in range(2):
        for x, y, c in kp[f]:
            if c > 0:
                assert masks[f, int(round(y)), int(round(x))] == 1.0
        frac = float(masks[f].mean())
        assert 0.02 < frac < 0.5, frac
        # far corner is not person
        assert masks[f, h - 1, 0] == 0.0 if f == 0 else masks[f, 0, 0] == 0.0
    assert float(masks[2].sum()) == 0.0
    # torso is filled between shoulders and hips
    assert masks[0, 50, 60] == 1.0


def test_person_masks_explicit_sizes_and_single_point():
    kp = np.zeros((1, 18, 3), np.float32)
    kp[0, 0] = (32, 32, 1)
    m = K.person_masks_from_keypoints(kp, 64, 64, limb_width=6, dilate=0)
    assert m[0, 32, 32] == 1.0 and 0 < float(m.sum()) < 64 * 64 / 4
    thin = K.person_masks_from_keypoints(_standing_person(), 128, 100, limb_width=2, dilate=0)
    thick = K.person_masks_from_keypoints(_standing_person(), 128, 100, limb_width=12, dilate=4)
    assert float(thick.sum()) > float(thin.sum())
    assert bool((thick >= thin).all())


def test_person_masks_grow_scales_automatic_sizes():
    person = _standing_person()
    tight = K.person_masks_from_keypoints(person, 128, 100, grow=0.5)
    normal = K.person_masks_from_keypoints(person, 128, 100)
    loose = K.person_masks_from_keypoints(person, 128, 100, grow=2.0)
    assert torch.equal(normal, K.person_masks_from_keypoints(person, 128, 100, grow=1.0))
    assert float(tight.sum()) < float(normal.sum()) < float(loose.sum())
    assert bool((loose >= normal).all()) and bool((normal >= tight).all())
    # explicit pixel sizes are not scaled
    fixed = K.person_masks_from_keypoints(person, 128, 100, limb_width=4, dilate=0, grow=3.0)
    assert float(fixed.sum()) < float(loose.sum())
    with pytest.raises(InputError, match="grow"):
        K.person_masks_from_keypoints(person, 128, 100, grow=0.0)


def test_resize_keypoints_scales_present_points_only():
    kp = np.zeros((2, 18, 3), np.float32)
    kp[0, 1] = (10, 20, 0.7)
    kp[1, 4] = (50, 5, 1.0)
    out = K.resize_keypoints(kp, 100, 200, 50, 400)  # 200x100 -> 400x50
    assert out[0, 1].tolist() == pytest.approx([20, 10, 0.7])
    assert out[1, 4].tolist() == pytest.approx([100, 2.5, 1.0])
    assert float(np.abs(out[0, 2]).sum()) == 0.0
    assert kp[0, 1, 0] == 10  # input untouched
    with pytest.raises(InputError):
        K.resize_keypoints(kp, 0, 10, 10, 10)
    assert K.ANCHOR_MODES[0] == "neck_hip" and "bbox" in K.ANCHOR_MODES
