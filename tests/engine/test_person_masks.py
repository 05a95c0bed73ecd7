"""Person masks and detector choice: grow/shrink and temporal smoothing on synthetic masks with known
answers, EYM Person Mask's methods (mediapipe on the astronaut photograph, keypoints on the synthetic
clip), and the auto fallbacks of Extract Poses and Person Mask with mediapipe and the OpenPose file
present or absent (availability monkeypatched)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edit_your_motion.motion_core import pose as K
from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.pose import mediapipe_detector as MP
from edit_your_motion.motion_core.pose.mask_refine import grow_masks, refine_masks, smooth_masks_over_time
from edit_your_motion.motion_core.testing.synthetic import make_clip
from edit_your_motion.nodes import detectors, mask_nodes, pose_nodes

pytestmark = pytest.mark.usefixtures("comfy_inference_mode")


def _square(n=1, size=64, lo=20, hi=40):
    m = torch.zeros(n, size, size)
    m[:, lo:hi, lo:hi] = 1
    return m


def _disk(radius, size=101):
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    c = size // 2
    return (((yy - c) ** 2 + (xx - c) ** 2) <= radius ** 2).float()[None]


# ------------------------------------------------------------------ grow / shrink

def test_grow_square_by_pixels_known_extent():
    grown = grow_masks(_square(), 3)[0]
    rows, cols = torch.nonzero(grown.amax(1)).flatten(), torch.nonzero(grown.amax(0)).flatten()
    assert (int(rows.min()), int(rows.max())) == (17, 42) and (int(cols.min()), int(cols.max())) == (17, 42)
    # a disk-shaped element: the straight edges move 3 px, the corners are rounded off
    assert grown[17, 30] == 1 and grown[30, 42] == 1 and grown[17, 17] == 0 and grown[18, 18] == 1
    assert torch.equal(grow_masks(_square(), 0), _square())


def test_shrink_disk_by_pixels_known_radius():
    shrunk = grow_masks(_disk(20), -6)[0]
    assert float(shrunk.sum()) == pytest.approx(np.pi * 14 ** 2, rel=0.06)
    assert shrunk[50, 50 + 13] == 1 and shrunk[50, 50 + 15] == 0
    # growing back does not restore what shrinking removed from a thin part, but a disk comes back
    assert float(grow_masks(shrunk[None], 6).sum()) == pytest.approx(float(_disk(20).sum()), rel=0.06)
    # shrinking by more than the radius empties it
    assert float(grow_masks(_disk(5), -6).sum()) == 0.0


def test_shrink_keeps_a_person_cut_by_the_frame_edge():
    m = torch.zeros(1, 40, 40)
    m[:, 20:, 10:30] = 1  # legs leave the frame at the bottom
    shrunk = grow_masks(m, -3)[0]
    assert shrunk[39, 20] == 1 and shrunk[21, 20] == 0 and shrunk[23, 20] == 1


# ------------------------------------------------------------------ temporal smoothing

def test_smoothing_radius_zero_and_constant_clip_are_unchanged():
    soft = torch.rand(5, 8, 8)
    assert torch.equal(smooth_masks_over_time(soft, 0), soft)
    const = soft[:1].expand(5, 8, 8)
    assert torch.allclose(smooth_masks_over_time(const, 2), const, atol=1e-6)


def test_smoothing_known_window_averages():
    values = torch.tensor([0.0, 1.0, 0.0, 0.0, 1.0, 1.0]).view(6, 1, 1)
    got = smooth_masks_over_time(values, 1).flatten()
    # windows cut at the ends: (0+1)/2, (0+1+0)/3, (1+0+0)/3, (0+0+1)/3, (0+1+1)/3, (1+1)/2
    assert torch.allclose(got, torch.tensor([0.5, 1 / 3, 1 / 3, 1 / 3, 2 / 3, 1.0]))


def test_smoothing_fills_dropout_and_removes_one_frame_blob():
    masks = _square(7)
    masks[2] = 0  # the person vanishes for one frame
    masks[4, 0:5, 0:5] = 1  # a one-frame blob in the corner
    out = refine_masks(masks, smoothing=1)
    assert torch.equal(out, _square(7))
    # without smoothing both stay
    raw = refine_masks(masks, smoothing=0)
    assert float(raw[2].sum()) == 0 and float(raw[4, :5, :5].sum()) == 25
    # at the clip's ends the window is cut to two frames: a blob in the last frame is a tie (1/2) and stays
    masks[6, 0:5, 0:5] = 1
    assert float(refine_masks(masks, smoothing=1)[6, :5, :5].sum()) == 25


def test_refine_errors():
    with pytest.raises(InputError, match="threshold"):
        refine_masks(_square(), threshold=1.0)
    with pytest.raises(InputError, match="radius"):
        smooth_masks_over_time(_square(), -1)
    with pytest.raises(InputError, match=r"\(frames, height, width\)"):
        grow_masks(torch.zeros(2, 3, 4, 5), 1)


# ------------------------------------------------------------------ availability switches

@pytest.fixture
def mediapipe_missing(monkeypatch):
    message = "mediapipe is not available. Install it with: pip install --no-deps mediapipe==0.10.14 (test)"

    def unavailable():
        raise MP.MediapipeUnavailable(message)

    monkeypatch.setattr(MP, "import_mediapipe", unavailable)
    monkeypatch.setattr(MP, "mediapipe_problem", lambda: message)
    monkeypatch.setattr(MP, "mediapipe_available", lambda: False)
    return message


@pytest.fixture
def mediapipe_present(monkeypatch):
    monkeypatch.setattr(MP, "import_mediapipe", lambda: object())
    monkeypatch.setattr(MP, "mediapipe_problem", lambda: None)
    monkeypatch.setattr(MP, "mediapipe_available", lambda: True)


def _openpose_file(models_dir, name="body_pose_model.pth"):
    folder = models_dir / "openpose"
    folder.mkdir(exist_ok=True)
    (folder / name).write_bytes(b"weights")


def test_auto_prefers_openpose_when_its_file_is_there(models_dir, mediapipe_present):
    _openpose_file(models_dir)
    assert detectors.choose_pose_detector("auto", "body_pose_model.pth") == ("openpose", "body_pose_model.pth")
    # the placeholder shown when the folder was empty at start-up still finds the file added since
    assert detectors.choose_pose_detector("auto", detectors.NO_OPENPOSE_FILE) == ("openpose", "body_pose_model.pth")
    # openpose_model auto (what the shipped workflows hold) is the body model
    assert detectors.choose_pose_detector("auto", "auto") == ("openpose", "body_pose_model.pth")


def test_openpose_model_lists_auto_first_whatever_the_folder_holds(models_dir):
    assert detectors.openpose_model_choices() == ["auto"]
    _openpose_file(models_dir, "hand_pose_model.pth")
    _openpose_file(models_dir)
    assert detectors.openpose_model_choices() == ["auto", "body_pose_model.pth", "hand_pose_model.pth"]
    spec = pose_nodes.ExtractPoses.INPUT_TYPES()["optional"]["openpose_model"]
    assert spec[0][0] == "auto" and spec[1]["default"] == "auto"


def test_openpose_file_found_in_controlnet_aux_downloads(models_dir, tmp_path, monkeypatch, mediapipe_present):
    """comfyui_controlnet_aux keeps body_pose_model.pth in <its folder>/ckpts/lllyasviel/Annotators: auto uses
    that copy (no second download), and the file loads from there."""
    custom_nodes = tmp_path / "custom_nodes"
    annotators = custom_nodes / "comfyui_controlnet_aux" / "ckpts" / "lllyasviel" / "Annotators"
    annotators.mkdir(parents=True)
    monkeypatch.setenv("EYM_CUSTOM_NODES_DIR", str(custom_nodes))
    monkeypatch.delenv("AUX_ANNOTATOR_CKPTS_PATH", raising=False)
    assert detectors.find_openpose_file("body_pose_model.pth") is None
    assert detectors.choose_pose_detector("auto", "auto") == ("mediapipe", "")
    (annotators / "body_pose_model.pth").write_bytes(b"weights")
    assert detectors.find_openpose_file("body_pose_model.pth") == str(annotators / "body_pose_model.pth")
    assert detectors.choose_pose_detector("auto", "auto") == ("openpose", "body_pose_model.pth")
    # the pack's own folder wins over controlnet_aux's copy
    _openpose_file(models_dir)
    assert detectors.find_openpose_file("body_pose_model.pth") == str(models_dir / "openpose" / "body_pose_model.pth")
    # controlnet_aux's own override of its download folder
    other = tmp_path / "aux_ckpts"
    (other / "lllyasviel" / "Annotators").mkdir(parents=True)
    (other / "lllyasviel" / "Annotators" / "x.pth").write_bytes(b"w")
    monkeypatch.setenv("AUX_ANNOTATOR_CKPTS_PATH", str(other))
    assert detectors.find_openpose_file("x.pth") == str(other / "lllyasviel" / "Annotators" / "x.pth")
    assert detectors.find_openpose_file("sub/x.pth") is None  # only plain names are looked up there


def test_auto_falls_back_to_mediapipe(models_dir, mediapipe_present, caplog):
    with caplog.at_level("INFO", logger="edit_your_motion"):
        assert detectors.choose_pose_detector("auto", "body_pose_model.pth") == ("mediapipe", "")
    # a warning (it reaches the browser), saying what to do for OpenPose
    (record,) = [r for r in caplog.records if "mediapipe finds the poses" in r.getMessage()]
    assert record.levelname == "WARNING" and "ComfyUI/models/openpose" in record.getMessage()
    _openpose_file(models_dir, "other_pose.pth")  # another file does not count for the chosen one
    assert detectors.choose_pose_detector("auto", "body_pose_model.pth") == ("mediapipe", "")


def test_auto_without_either_names_both_ways(models_dir, mediapipe_missing):
    with pytest.raises(InputError) as err:
        detectors.choose_pose_detector("auto", "body_pose_model.pth")
    msg = str(err.value)
    assert "body_pose_model.pth" in msg and "lllyasviel/Annotators" in msg and str(models_dir / "openpose") in msg
    assert mediapipe_missing in msg
    # the node raises the same single error, before touching any model
    with pytest.raises(InputError, match="found no pose detector"):
        pose_nodes.ExtractPoses().run(make_clip(2, 64, 64).frames, "auto", openpose_model="body_pose_model.pth")


def test_explicit_choices_and_old_graphs(models_dir, mediapipe_missing):
    assert detectors.choose_pose_detector("openpose", "my_body.safetensors") == ("openpose", "my_body.safetensors")
    assert detectors.choose_pose_detector("openpose", detectors.NO_OPENPOSE_FILE) == ("openpose", "body_pose_model.pth")
    # graphs saved before the detector choice hold the OpenPose file name in 'detector'
    assert detectors.choose_pose_detector("body_pose_model.pth", None) == ("openpose", "body_pose_model.pth")
    assert pose_nodes.ExtractPoses.VALIDATE_INPUTS("body_pose_model.pth") is True
    assert pose_nodes.ExtractPoses.VALIDATE_INPUTS("auto", openpose_model="absent.pth") is True
    assert "auto, openpose, mediapipe" in pose_nodes.ExtractPoses.VALIDATE_INPUTS("dwpose")
    with pytest.raises(MP.MediapipeUnavailable, match="pip install"):
        detectors.choose_pose_detector("mediapipe", "body_pose_model.pth")
    with pytest.raises(InputError, match="detector must be one of"):
        detectors.choose_pose_detector("dwpose", None)


def test_extract_poses_auto_runs_mediapipe_without_openpose_file(models_dir, mediapipe_present, monkeypatch):
    clip = make_clip(3, 64, 64, "walk")
    calls = []

    def fake_detect(images, video=True, segmentation=True, min_confidence=0.5, min_detection_confidence=0.5,
                    callback=None):
        calls.append((tuple(images.shape), video, segmentation))
        for i in range(images.shape[0]):
            callback(i, images.shape[0])
        return MP.MediapipePose(clip.keypoints.copy(), np.zeros((3, 33, 3), np.float32), np.ones(3, bool), None)

    monkeypatch.setattr(MP, "detect_poses", fake_detect)
    images, pk = pose_nodes.ExtractPoses().run(clip.frames, "auto", openpose_model="body_pose_model.pth", stick_width=2)
    assert calls == [((3, 64, 64, 3), True, False)]
    assert torch.equal(images, K.render_pose_images(clip.keypoints, 64, 64, stick_width=2))
    got, h, w = K.from_pose_keypoint(pk)
    assert (h, w) == (64, 64) and np.allclose(got, clip.keypoints)
    with pytest.raises(InputError, match="mediapipe finds one person"):
        pose_nodes.ExtractPoses().run(clip.frames, "mediapipe", person="1")


def test_extract_poses_mediapipe_nobody_names_frames(models_dir, mediapipe_present, monkeypatch):
    def fake_detect(images, callback=None, **kw):
        n = images.shape[0]
        return MP.MediapipePose(np.zeros((n, 18, 3), np.float32), np.zeros((n, 33, 3), np.float32),
                                np.array([True, False, True]), None)

    monkeypatch.setattr(MP, "detect_poses", fake_detect)
    with pytest.raises(InputError, match=r"mediapipe found no person in images frame\(s\) 1 of 3"):
        pose_nodes.ExtractPoses().run(make_clip(3, 64, 64).frames, "mediapipe")


def test_mask_auto_uses_keypoints_without_mediapipe(mediapipe_missing):
    clip = make_clip(4, 64, 64, "wave")
    pk = K.to_pose_keypoint(clip.keypoints, 64, 64)
    (mask,) = mask_nodes.PersonMask().run(clip.frames, "auto", pose_keypoint=pk)
    assert torch.equal(mask, K.person_masks_from_keypoints(clip.keypoints, 64, 64))
    (grown,) = mask_nodes.PersonMask().run(clip.frames, "auto", grow_pixels=2, pose_keypoint=pk)
    assert float(grown.sum()) > float(mask.sum()) and torch.all(grown >= mask)
    # keypoints of another canvas size are rescaled to the frames
    (same,) = mask_nodes.PersonMask().run(clip.frames, "keypoints",
                                          pose_keypoint=K.to_pose_keypoint(clip.keypoints * [2, 2, 1], 128, 128))
    assert float((same != mask).float().mean()) < 0.02
    with pytest.raises(InputError, match="connect pose_keypoint.*pip install"):
        mask_nodes.PersonMask().run(clip.frames, "auto")
    with pytest.raises(MP.MediapipeUnavailable):
        mask_nodes.PersonMask().run(clip.frames, "mediapipe")


def test_mask_auto_uses_mediapipe_when_installed(mediapipe_present, monkeypatch):
    soft = torch.zeros(3, 32, 32)
    soft[:, 8:24, 10:20] = 0.8
    soft[1, 8:24, 10:20] = 0.3  # one weak frame: below the threshold unless smoothed
    seen = []

    def fake_segment(images, model="pose", video=True, callback=None):
        seen.append((model, tuple(images.shape)))
        return soft.clone()

    monkeypatch.setattr(MP, "segment_people", fake_segment)
    frames = torch.rand(3, 32, 32, 4)  # an alpha channel is dropped
    with pytest.raises(InputError, match=r"empty in images frame\(s\) 1 of 3"):
        mask_nodes.PersonMask().run(frames, "auto")
    (mask,) = mask_nodes.PersonMask().run(frames, "auto", allow_missing=True)
    assert float(mask[1].sum()) == 0 and float(mask[0].sum()) == 16 * 10
    (smoothed,) = mask_nodes.PersonMask().run(frames, "auto", temporal_smoothing=1)  # (0.8 + 0.3 + 0.8) / 3
    assert torch.equal(smoothed, (soft > 0.5).float().amax(0, keepdim=True).expand(3, 32, 32))
    (low,) = mask_nodes.PersonMask().run(frames, "mediapipe_selfie", threshold=0.25)
    assert float(low[1].sum()) == 160
    assert seen == [("pose", (3, 32, 32, 3))] * 3 + [("selfie", (3, 32, 32, 3))]


def test_mask_bad_method_and_images():
    with pytest.raises(InputError, match="method must be one of"):
        mask_nodes.PersonMask().run(torch.rand(1, 8, 8, 3), "sam")
    with pytest.raises(InputError, match="IMAGE batch"):
        mask_nodes.PersonMask().run(torch.rand(8, 8), "keypoints")


# ------------------------------------------------------------------ real mediapipe on the astronaut

def test_person_mask_node_on_astronaut(mediapipe_solutions):
    skimage_data = pytest.importorskip("skimage.data")
    frame = torch.from_numpy(skimage_data.astronaut()).float()[None] / 255
    frames = frame.expand(2, -1, -1, -1).contiguous()
    (mask,) = mask_nodes.PersonMask().run(frames, "auto")
    assert mask.shape == (2, 512, 512) and set(mask.unique().tolist()) == {0.0, 1.0}
    face, corner = mask[:, 75:165, 195:250], mask[:, :60, :60]
    assert float(face.mean()) > 0.97 and float(corner.sum()) == 0
    (grown,) = mask_nodes.PersonMask().run(frames, "auto", grow_pixels=8)
    (shrunk,) = mask_nodes.PersonMask().run(frames, "auto", grow_pixels=-8)
    assert torch.all(grown >= mask) and torch.all(shrunk <= mask)
    assert float(shrunk.sum()) < float(mask.sum()) < float(grown.sum())
    # the pose node finds her with the same detector
    _, pk = pose_nodes.ExtractPoses().run(frame, "mediapipe")
    assert len(pk[0]["people"]) == 1


# ------------------------------------------------------------------ the fitted (tight) target person

def test_fit_mask_grow_recovers_the_size_a_mask_was_drawn_with():
    """Known answer: masks drawn from a clip's skeletons at grow 0.5 are fitted back with IoU 1, to the
    smallest tried grow that draws the same masks (sizes round to whole pixels); the same skeletons moved by whole pixels and drawn at the fitted size give the moved
    masks exactly (the target person gets the source person's measured thickness); the default mask
    is larger than the fitted one and contains it."""
    clip = make_clip(num_frames=3, height=128, width=128)
    kp = np.asarray(clip.keypoints, np.float64)
    truth = K.person_masks_from_keypoints(kp, 128, 128, grow=0.5)
    grow, iou = K.fit_mask_grow(kp, truth)
    assert iou == 1.0 and 0.4 <= grow <= 0.5
    assert torch.equal(K.person_masks_from_keypoints(kp, 128, 128, grow=grow), truth)
    moved = kp.copy()
    moved[..., 0] += 7
    drawn = K.person_masks_from_keypoints(moved, 128, 128, grow=grow)
    assert torch.equal(drawn[:, :, 7:], truth[:, :, :-7])
    rough = K.person_masks_from_keypoints(kp, 128, 128)
    assert rough.sum() > 1.5 * truth.sum() and bool((rough >= truth).all())


def test_fit_mask_grow_skips_frames_without_keypoints_and_names_bad_inputs():
    clip = make_clip(num_frames=2, height=64, width=64)
    kp = np.asarray(clip.keypoints, np.float64).copy()
    truth = K.person_masks_from_keypoints(kp, 64, 64, grow=0.8)
    kp[1, :, 2] = 0  # frame 1: nobody
    grow, iou = K.fit_mask_grow(kp, truth)
    assert iou == 1.0 and 0.7 <= grow <= 0.8
    assert torch.equal(K.person_masks_from_keypoints(kp[:1], 64, 64, grow=grow), truth[:1])
    with pytest.raises(InputError, match="one per keypoint frame"):
        K.fit_mask_grow(kp, truth[:1])
    kp[0, :, 2] = 0
    with pytest.raises(InputError, match="keypoints in at least one frame"):
        K.fit_mask_grow(kp, truth)
