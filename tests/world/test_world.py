"""The small world: scenes, motions, ground truth, the fixed VAE, the text encoder and the metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.pose import align_skeletons
from edit_your_motion.motion_core.world import metrics as M
from edit_your_motion.motion_core.world import scene as S
from edit_your_motion.motion_core.world import text as T
from edit_your_motion.motion_core.world import vae


def test_cases_are_deterministic_and_differ_by_seed():
    a, b = S.make_case(3, 1), S.make_case(3, 1)
    assert np.array_equal(a.source.images, b.source.images) and np.array_equal(a.truth_images, b.truth_images)
    c = S.make_case(4, 1)
    assert not np.array_equal(a.source.images, c.source.images)


def test_case_source_and_reference_differ_in_everything_the_edit_must_undo():
    for i in range(4):
        case = S.make_case(0, i)
        assert case.source.motion.name != case.reference.motion.name
        assert case.source.scene.seed != case.reference.scene.seed
        assert case.prompt_source != case.prompt_target
        assert case.prompt_source.startswith(case.prompt_content)


def test_rendering_the_source_keypoints_reproduces_the_source_clip():
    """The ground truth is the same renderer with other keypoints: with the source's own skeletons it
    must give the source frames exactly."""
    case = S.make_case(1, 0)
    src = case.source
    images, masks = S.render_frames(src.scene, src.person, src.keypoints)
    assert np.array_equal(images, src.images) and np.array_equal(masks, src.masks)


def test_ground_truth_is_the_source_scene_and_person_in_the_aligned_reference_pose():
    case = S.make_case(2, 3)
    expected = align_skeletons(case.reference.keypoints, case.source.keypoints)
    assert np.allclose(case.aligned_keypoints, expected)
    # outside the (slightly grown) person mask the truth IS the source background
    import cv2

    grown = np.stack([cv2.dilate(m, np.ones((5, 5), np.uint8)) for m in case.truth_masks])
    bg = case.source.scene.image
    assert np.array_equal(case.truth_images[grown == 0], np.broadcast_to(bg, case.truth_images.shape)[grown == 0])
    # the aligned person stands where the source person stands (neck and mid-hip of frame 0)
    anchor = lambda kp: (kp[0, 1, :2] + (kp[0, 8, :2] + kp[0, 11, :2]) / 2) / 2
    assert np.allclose(anchor(case.aligned_keypoints), anchor(case.source.keypoints), atol=1.0)
    assert not np.allclose(anchor(case.reference.keypoints), anchor(case.source.keypoints), atol=5.0)


@pytest.mark.parametrize("name", S.MOTIONS)
def test_motions_move_and_keep_bone_lengths(name):
    phase = np.linspace(0, 2 * np.pi, 9)[:-1]
    pts = S.body_motion(name, phase)
    assert np.abs(pts - pts[:1]).max() > 0.05, f"{name} does not move"
    for a, b in [(2, 3), (3, 4), (5, 6), (6, 7), (8, 9), (11, 12)]:
        length = np.linalg.norm(pts[:, a] - pts[:, b], axis=-1)
        if name == "squat" and (a, b) in [(8, 9), (11, 12)]:
            continue  # the squat bends the knees by moving them, which shortens the drawn thigh
        assert np.allclose(length, length[0], rtol=1e-6), f"{name} stretches bone {a}-{b}"


def test_motions_are_distinct():
    phase = np.linspace(0, 2 * np.pi, 9)[:-1]
    seqs = {m: S.body_motion(m, phase) for m in S.MOTIONS}
    for i, a in enumerate(S.MOTIONS):
        for b in S.MOTIONS[i + 1:]:
            assert np.abs(seqs[a] - seqs[b]).max() > 0.1, (a, b)


def test_vae_encodes_by_8x8_means_and_decodes_block_images_exactly():
    rng = np.random.default_rng(0)
    blocks = rng.uniform(0, 1, (2, 4, 4, 3)).astype(np.float32)
    images = blocks.repeat(8, 1).repeat(8, 2)  # piecewise constant on 8x8 blocks
    lat = vae.encode(images)
    assert lat.shape == (2, 4, 4, 4)
    assert torch.allclose(lat[:, :3], torch.from_numpy(blocks).permute(0, 3, 1, 2) * 2 - 1, atol=1e-6)
    assert torch.allclose(vae.decode(lat), torch.from_numpy(blocks), atol=1e-6)


def test_tokenizer_known_ids_and_errors():
    ids = T.tokenize("a person is waving")
    words = [T.VOCAB[i] for i in ids[0].tolist() if i]
    assert words == ["<bos>", "a", "person", "is", "waving", "<eos>"]
    assert T.tokenize("")[0, :2].tolist() == [T.VOCAB.index("<bos>"), T.VOCAB.index("<eos>")]
    with pytest.raises(InputError, match="dancing"):
        T.tokenize("a person is dancing")
    # every prompt the world writes is encodable
    for i in range(6):
        case = S.make_case(5, i)
        T.tokenize([case.prompt_content, case.prompt_source, case.prompt_target])


# ----------------------------------------------------------------------------------------- metrics

def _reference_ssim(x: np.ndarray, y: np.ndarray, size=7, sigma=1.5) -> float:
    """SSIM written from the paper's formula with explicit windows (independent of the conv version)."""
    ax = np.arange(size) - (size - 1) / 2
    g = np.exp(-ax**2 / (2 * sigma**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = 0.01**2, 0.03**2
    vals = []
    for n in range(x.shape[0]):
        for ch in range(x.shape[3]):
            for i in range(x.shape[1] - size + 1):
                for j in range(x.shape[2] - size + 1):
                    a, b = x[n, i:i + size, j:j + size, ch], y[n, i:i + size, j:j + size, ch]
                    ma, mb = (w * a).sum(), (w * b).sum()
                    va, vb = (w * a * a).sum() - ma**2, (w * b * b).sum() - mb**2
                    cov = (w * a * b).sum() - ma * mb
                    vals.append(((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma**2 + mb**2 + c1) * (va + vb + c2)))
    return float(np.mean(vals))


def test_psnr_and_ssim_known_answers():
    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (2, 12, 12, 3))
    assert M.psnr(x, x) == math.inf and M.ssim(x, x) == pytest.approx(1.0)
    assert M.psnr(np.clip(x, 0, 0.9), np.clip(x, 0, 0.9) + 0.1) == pytest.approx(20.0)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1)
    assert M.ssim(x, y) == pytest.approx(_reference_ssim(x, y), abs=1e-9)


def test_pose_error_and_appearance_are_exact_on_the_truth_and_catch_a_wrong_pose():
    case = S.make_case(0, 2)
    truth = vae.downsample(case.truth_images)
    masks = vae.downsample_masks(case.truth_masks)
    bg = vae.downsample(case.source.scene.image[None])[0]
    p = case.source.person
    palette = np.stack([p.shirt, p.trousers, p.pattern_colour, S.SKIN])
    assert M.pose_error(truth, masks, bg, palette) < 0.15  # only anti-aliased edge pixels disagree
    assert M.appearance_error(truth, truth, masks, bg, palette) < 0.03
    source = vae.downsample(case.source.images)  # the right person in the source's (wrong) pose
    assert M.pose_error(source, masks, bg, palette) > M.pose_error(truth, masks, bg, palette) + 0.2
    empty = bg[None].expand_as(truth)  # nobody there at all
    assert M.pose_error(empty, masks, bg, palette) > 0.95


def test_background_psnr_and_flicker():
    case = S.make_case(0, 1)
    truth = vae.downsample(case.truth_images)
    tm, sm = vae.downsample_masks(case.truth_masks), vae.downsample_masks(case.source.masks)
    bg = vae.downsample(case.source.scene.image[None])[0]
    palette = np.stack([case.source.person.shirt, case.source.person.trousers])
    s = M.score(truth, truth, tm, sm, bg, palette)
    assert s["background_psnr"] == math.inf and s["flicker"] == 0.0 and s["psnr"] == math.inf
    noisy = truth.clone()
    noisy[1::2] += 0.05  # every other frame brighter: flicker of 0.05 * 255 on the background
    s = M.score(noisy.clamp(0, 1), truth, tm, sm, bg, palette)
    static = ((tm <= 0) & (sm <= 0)).all(0)
    expected = float((noisy.clamp(0, 1)[1:] - noisy.clamp(0, 1)[:-1]).abs().mean(-1)[:, static].mean() * 255)
    assert s["flicker"] == pytest.approx(expected) and 8 < s["flicker"] < 13
    assert s["background_psnr"] < 30
