"""mediapipe poses and person masks: the 33 -> OpenPose-18 conversion against known answers, the
detector and the segmentation on real human pixels (scikit-image's astronaut photograph, public
domain, shipped inside the scikit-image wheel), and the messages when mediapipe is missing."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.pose import KEYPOINT_NAMES
from edit_your_motion.motion_core.pose import mediapipe_detector as MP

# BlazePose landmark of each OpenPose-18 point, written out by name here (independently of the module's
# table): mediapipe.solutions.pose.PoseLandmark order 0 nose, 2 left_eye, 5 right_eye, 7 left_ear,
# 8 right_ear, 11/12 shoulders, 13/14 elbows, 15/16 wrists, 23/24 hips, 25/26 knees, 27/28 ankles.
EXPECTED_SOURCES = {
    "nose": (0,), "neck": (11, 12), "right_shoulder": (12,), "right_elbow": (14,), "right_wrist": (16,),
    "left_shoulder": (11,), "left_elbow": (13,), "left_wrist": (15,), "right_hip": (24,), "right_knee": (26,),
    "right_ankle": (28,), "left_hip": (23,), "left_knee": (25,), "left_ankle": (27,), "right_eye": (5,),
    "left_eye": (2,), "right_ear": (8,), "left_ear": (7,),
}


def _ramp_landmarks(frames: int = 1) -> np.ndarray:
    """Landmark k at (0.1 + 0.02 k, 0.05 + 0.025 k), visibility 0.6 + 0.01 k: all inside the frame."""
    k = np.arange(33, dtype=np.float64)
    lm = np.stack([0.1 + 0.02 * k, 0.05 + 0.025 * k, 0.6 + 0.01 * k], axis=-1)
    return np.repeat(lm[None], frames, axis=0)


# ------------------------------------------------------------------ conversion (no mediapipe needed)

def test_conversion_known_answer():
    h, w = 100, 200
    kp = MP.landmarks_to_openpose(_ramp_landmarks(2), h, w, min_confidence=0.0)
    assert kp.shape == (2, 18, 3) and kp.dtype == np.float32
    for i, name in enumerate(KEYPOINT_NAMES):
        src = EXPECTED_SOURCES[name]
        x = np.mean([(0.1 + 0.02 * s) * w for s in src])
        y = np.mean([(0.05 + 0.025 * s) * h for s in src])
        c = min(0.6 + 0.01 * s for s in src)
        assert kp[1, i] == pytest.approx([x, y, c], abs=1e-4), name
    # the neck is the mid-shoulder point, with the weaker shoulder's confidence
    assert kp[0, 1, :2] == pytest.approx((kp[0, 2, :2] + kp[0, 5, :2]) / 2)
    assert kp[0, 1, 2] == pytest.approx(min(kp[0, 2, 2], kp[0, 5, 2]))
    # hand-computed: the right shoulder is landmark 12 -> (0.34 * 200, 0.35 * 100), visibility 0.72
    assert kp[0, 2] == pytest.approx([68.0, 35.0, 0.72], abs=1e-4)


def test_conversion_drops_hidden_outside_and_empty_frames():
    lm = _ramp_landmarks(3)
    lm[0, 16, 2] = 0.2  # right wrist barely visible
    lm[0, 27, :2] = (0.5, 1.3)  # left ankle below the frame (mediapipe guesses hidden points)
    lm[0, 12, 2] = 0.1  # right shoulder hidden: the neck goes too
    lm[1] = np.nan  # nobody
    lm[2, :, 2] = 0.0  # nothing visible
    kp = MP.landmarks_to_openpose(lm, 100, 200, min_confidence=0.5)
    names = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    for gone in ("right_wrist", "left_ankle", "right_shoulder", "neck"):
        assert tuple(kp[0, names[gone]]) == (0.0, 0.0, 0.0), gone
    assert (kp[0, :, 2] > 0).sum() == 14
    assert not kp[1].any() and not kp[2].any()
    # a lower threshold keeps the faint wrist
    assert MP.landmarks_to_openpose(lm[:1], 100, 200, min_confidence=0.1)[0, names["right_wrist"], 2] > 0


def test_conversion_errors():
    with pytest.raises(InputError, match=r"\(frames, 33, 3\)"):
        MP.landmarks_to_openpose(np.zeros((2, 18, 3)), 10, 10)
    with pytest.raises(InputError, match="positive"):
        MP.landmarks_to_openpose(_ramp_landmarks(), 0, 10)


def test_table_matches_mediapipe_landmark_names(mediapipe_solutions):
    """The index table agrees with mediapipe's own PoseLandmark names."""
    lm = mediapipe_solutions.pose.PoseLandmark
    for i, name in enumerate(KEYPOINT_NAMES):
        if name == "neck":
            assert set(MP.OPENPOSE_FROM_MEDIAPIPE[i]) == {lm.LEFT_SHOULDER, lm.RIGHT_SHOULDER}
        else:
            assert MP.OPENPOSE_FROM_MEDIAPIPE[i] == (lm[name.upper()].value,), name


# ------------------------------------------------------------------ missing mediapipe

@pytest.fixture
def no_mediapipe(monkeypatch):
    """Behave as if mediapipe could not be imported."""
    monkeypatch.setattr(MP, "_IMPORTED", {})
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "mediapipe" or name.startswith("mediapipe."):
            raise ModuleNotFoundError("No module named 'mediapipe'", name="mediapipe")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    yield


def test_missing_mediapipe_message_gives_the_install_line(no_mediapipe, monkeypatch):
    monkeypatch.setattr(MP, "_python_version", lambda: (3, 12))
    assert not MP.mediapipe_available()
    with pytest.raises(MP.MediapipeUnavailable) as err:
        MP.detect_poses(np.zeros((1, 8, 8, 3), np.uint8))
    msg = str(err.value)
    assert "pip install --no-deps mediapipe==0.10.14" in msg and '"protobuf<5"' in msg and "matplotlib" in msg
    assert "body_pose_model.pth" in msg  # the other way
    assert isinstance(err.value, ImportError)


def test_missing_mediapipe_on_python_313_says_no_wheel(no_mediapipe, monkeypatch):
    monkeypatch.setattr(MP, "_python_version", lambda: (3, 13))
    msg = MP.mediapipe_problem()
    assert "no wheel for Python 3.13" in msg and "3.12" in msg
    assert "OpenPose" in msg and "body_pose_model.pth" in msg and "lllyasviel/Annotators" in msg
    assert "pip install" not in msg


def test_broken_mediapipe_reports_the_import_error(monkeypatch):
    monkeypatch.setattr(MP, "_IMPORTED", {})
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name.startswith("mediapipe"):
            raise ImportError("cannot import name 'builder' from 'google.protobuf.internal'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.setattr(MP, "_python_version", lambda: (3, 11))
    msg = MP.mediapipe_problem()
    assert "google.protobuf.internal" in msg and "pip install --no-deps mediapipe==0.10.14" in msg


# ------------------------------------------------------------------ the astronaut (real pixels)

# Regions hand-checked on skimage.data.astronaut() (512x512; the person faces the camera, so her right
# side is on the image's left): (x0, y0, x1, y1) in pixels.
ASTRONAUT_POINTS = {
    "nose": (208, 112, 240, 142),
    "right_eye": (194, 92, 216, 114),
    "left_eye": (236, 94, 258, 120),
    "right_shoulder": (75, 210, 150, 285),
    "left_shoulder": (275, 220, 345, 290),
    "neck": (180, 220, 240, 280),
}
ASTRONAUT_FACE = (195, 75, 250, 165)  # forehead to chin, cheek to cheek: skin and hair only
ASTRONAUT_SUIT = (100, 320, 260, 420)  # the suit's chest, with the mission patch
ASTRONAUT_BACKGROUND = [  # flag, sky and the shuttle model: no person
    (0, 0, 60, 60), (452, 0, 512, 60), (360, 0, 470, 200), (0, 60, 40, 160),
]


@pytest.fixture(scope="module")
def astronaut():
    skimage_data = pytest.importorskip("skimage.data", reason="scikit-image ships the astronaut photograph")
    return skimage_data.astronaut()


@pytest.fixture(scope="module")
def astronaut_pose(astronaut, mediapipe_solutions):
    return MP.detect_poses(astronaut[None], video=False, segmentation=True)


def _inside(pt, box):
    x0, y0, x1, y1 = box
    return x0 <= pt[0] <= x1 and y0 <= pt[1] <= y1


def test_astronaut_face_and_shoulders_where_they_are(astronaut_pose):
    assert astronaut_pose.found.tolist() == [True]
    kp = astronaut_pose.keypoints[0]
    names = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    for name, box in ASTRONAUT_POINTS.items():
        x, y, c = kp[names[name]]
        assert c >= 0.5 and _inside((x, y), box), (name, (x, y, c), box)
    # her right side is on the image's left: no left/right swap
    assert kp[names["right_shoulder"], 0] < kp[names["neck"], 0] < kp[names["left_shoulder"], 0]
    assert kp[names["right_eye"], 0] < kp[names["nose"], 0] < kp[names["left_eye"], 0]
    # hips, knees and ankles are below the frame: missing, not guessed
    for name in ("right_knee", "left_knee", "right_ankle", "left_ankle"):
        assert kp[names[name], 2] == 0.0, name


def test_astronaut_mirrored_swaps_sides(astronaut, astronaut_pose, mediapipe_solutions):
    """In the mirror image the person's right shoulder is where the left one was, mirrored."""
    mirrored = MP.detect_poses(astronaut[None, :, ::-1], video=False, segmentation=False)
    names = {n: i for i, n in enumerate(KEYPOINT_NAMES)}
    a, b = astronaut_pose.keypoints[0], mirrored.keypoints[0]
    for left, right in (("left_shoulder", "right_shoulder"), ("left_eye", "right_eye")):
        expected = np.array([511 - a[names[left], 0], a[names[left], 1]])
        assert np.linalg.norm(b[names[right], :2] - expected) < 15, (right, b[names[right]], expected)


def _coverage(mask: torch.Tensor, box) -> float:
    x0, y0, x1, y1 = box
    return float(mask[y0:y1, x0:x1].float().mean())


def test_astronaut_pose_segmentation_covers_person_not_background(astronaut_pose):
    soft = astronaut_pose.masks[0]
    assert soft.shape == (512, 512) and 0.0 <= float(soft.min()) and float(soft.max()) <= 1.0
    mask = soft >= 0.5
    assert _coverage(mask, ASTRONAUT_FACE) > 0.97
    assert _coverage(mask, ASTRONAUT_SUIT) > 0.97
    for box in ASTRONAUT_BACKGROUND:
        assert _coverage(mask, box) < 0.02, box
    assert 0.3 < float(mask.float().mean()) < 0.6  # the person fills about 40% of the photograph


def test_astronaut_selfie_segmentation(astronaut, mediapipe_solutions):
    soft = MP.segment_people(torch.from_numpy(astronaut).float()[None] / 255, model="selfie")
    mask = soft[0] >= 0.5
    assert soft.shape == (1, 512, 512)
    assert _coverage(mask, ASTRONAUT_FACE) > 0.95 and _coverage(mask, ASTRONAUT_SUIT) > 0.95
    assert _coverage(mask, ASTRONAUT_BACKGROUND[0]) < 0.05 and _coverage(mask, ASTRONAUT_BACKGROUND[2]) < 0.05


def test_video_mode_on_a_moving_crop_and_nobody_frames(astronaut, mediapipe_solutions):
    """A clip: the photograph panned by a few pixels per frame, then a frame of noise. The person is
    tracked (the nose moves with the pan) and the noise frame has nobody and an empty mask."""
    frames = [astronaut[16:400, 16 + 8 * i:400 + 8 * i] for i in range(3)]
    noise = np.random.default_rng(0).integers(0, 256, size=frames[0].shape, dtype=np.uint8)
    out = MP.detect_poses(np.stack(frames + [noise]), video=True)
    assert out.found.tolist() == [True, True, True, False]
    # the nose of the full photograph (about 223, 128: see ASTRONAUT_POINTS), moved by each crop
    truth = np.array([(223.0 - 16 - 8 * i, 128.0 - 16) for i in range(3)])
    assert np.abs(out.keypoints[:3, 0, :2] - truth).max() < 10, out.keypoints[:3, 0, :2]
    assert float(out.masks[3].sum()) == 0.0 and not out.keypoints[3].any()
    assert float((out.masks[:3] >= 0.5).float().mean()) > 0.3


def test_segment_people_rejects_unknown_model():
    with pytest.raises(InputError, match="pose, selfie"):
        MP.segment_people(np.zeros((1, 8, 8, 3), np.uint8), model="sam")
