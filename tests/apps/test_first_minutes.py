"""The first five minutes in ComfyUI, checked without ComfyUI: what the shipped files and the bridge do
for a new user (issue 17). The real frontend is checked by the opt-in browser test in
tests/nodes/test_comfyui_integration.py.

* every workflow has its own thumbnail, and opens with sample inputs that ship with the pack (and that
  the pack copies into ComfyUI's input folder);
* the saved view opens at a zoom where the frontend draws titles and widgets, with the models group and
  the "Read me first" note on the first screen; titles fit their nodes and group bars, notes hold no
  table wider than the note;
* warnings reach the browser (one message per text and prompt), progress bars show from a node's first
  second, and errors read well (a still image, the exception's module).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_spec = importlib.util.spec_from_file_location("eym_test_workflows_helpers", Path(__file__).resolve().parents[1] / "nodes" / "test_workflows.py")
tw = sys.modules.setdefault(_spec.name, importlib.util.module_from_spec(_spec))
if not hasattr(tw, "validate_ui"):
    _spec.loader.exec_module(tw)

SAMPLES = tw.WORKFLOWS / "input"
UI_FILES = tw.UI_FILES

# What the frontend (1.43) draws: node titles at 14 px, group titles at 24 px; below a zoom of
# MinFontSizeForLOD (8 px) / 14 px = 0.57 it draws nodes as blank boxes (on a display with devicePixelRatio 1).
NODE_TITLE_PX, GROUP_TITLE_PX, MIN_FONT_PX = 14, 24, 8
# A small laptop's browser window, less the frontend's tab bar with the floating Graph button (90 px) and side bar.
SCREEN_W, SCREEN_H, TOP_BAR, SIDE_BAR = 1280, 720, 90, 60


def _text_width(text: str, px: int) -> float:
    """A generous estimate of the width of ``text`` in the frontend's sans-serif font at ``px`` pixels:
    0.58 em a character (Inter and Arial average about 0.52 em on such titles)."""
    return len(text) * px * 0.58


# ============================================================================ thumbnails
def test_every_workflow_has_its_own_thumbnail():
    """The template browser shows X.jpg for X.json (frontend: <name>.jpg, media type image/jpg): a small real
    JPEG for each workflow, each a different picture."""
    import cv2

    digests = set()
    for path in UI_FILES:
        thumb = path.with_suffix(".jpg")
        assert thumb.is_file(), f"{path.name} has no thumbnail {thumb.name}"
        data = thumb.read_bytes()
        assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9" and len(data) < 150_000
        image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
        assert image is not None and 150 <= image.shape[0] <= 600 and 1.0 <= image.shape[1] / image.shape[0] <= 4.0
        assert float(image.std()) > 20  # a picture, not a blank
        digests.add(hashlib.sha256(data).hexdigest())
    assert len(digests) == len(UI_FILES)
    assert sorted(p.stem for p in tw.WORKFLOWS.glob("*.jpg")) == sorted(p.stem for p in UI_FILES)


def test_template_names_are_readable_titles():
    """Frontend 1.43 titles a custom node's template with its file name and describes it with the same name,
    dashes and underscores turned into spaces: the names read as titles."""
    for path in UI_FILES:
        name = path.stem
        assert name.startswith("Edit-Your-Motion") and "_" not in name and 20 <= len(name) <= 60, name
    assert all(p.name.endswith("_api.json") for p in tw.API_FILES)


# ============================================================================ sample inputs
def _input_files(ui: dict) -> dict[str, str]:
    """{file name: node type} of the Load Video / Load Image nodes of a UI workflow."""
    return {n["widgets_values"][0]: n["type"] for n in ui["nodes"] if n["type"] in ("LoadVideo", "LoadImage")}


def _decode(path: Path) -> tuple[np.ndarray, float]:
    import av

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
        return frames, float(stream.average_rate)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_workflow_opens_with_shipped_sample_inputs(path, defs):
    """Every file a workflow's loaders name ships in example_workflows/input/, in the UI and the API file, and
    is what the graph needs: videos with at least the frames EYM Select Frames takes at its rate, an image."""
    ui = tw._load(path)
    files = _input_files(ui)
    assert files and all((SAMPLES / name).is_file() for name in files), files
    api = tw._load(tw._twin(path))
    assert {n["inputs"].get("file") or n["inputs"].get("image") for n in api.values()
            if n["class_type"] in ("LoadVideo", "LoadImage")} == set(files)
    from edit_your_motion.motion_core.method.frames import frame_stride

    selects = [tw.ui_widget_values(n, defs["EYM_SelectFrames"]) for n in ui["nodes"] if n["type"] == "EYM_SelectFrames"]
    assert selects
    for name, node_type in files.items():
        if node_type == "LoadVideo":
            frames, fps = _decode(SAMPLES / name)
            assert frames.shape[1:] == (512, 512, 3) and fps == 24.0
            for sel in selects:  # every Select Frames node gets all the frames it asks for, at its rate
                every = frame_stride(fps, sel["target_fps"])
                assert frames.shape[0] >= sel["start_frame"] + (sel["frames"] - 1) * every + 1, (name, sel, every)
            assert frames.std() > 20 and np.abs(np.diff(frames.astype(np.int16), axis=0)).mean() > 0.5  # it moves
        else:
            import cv2

            image = cv2.imread(str(SAMPLES / name))
            assert image is not None and image.shape == (512, 512, 3)


def test_sample_inputs_are_small_and_few():
    files = sorted(p for p in SAMPLES.iterdir() if not p.name.startswith("."))
    assert [p.name for p in files] == ["eym_sample_astronaut.jpg", "eym_sample_astronaut.mp4",
                                       "eym_sample_astronaut_sway.mp4"]
    assert all(p.stat().st_size < 200_000 for p in files) and sum(p.stat().st_size for p in files) < 400_000


def test_sample_inputs_are_copied_into_the_input_folder_once(tmp_path):
    from edit_your_motion.nodes import comfy_bridge as bridge

    target = tmp_path / "input"
    copied = bridge.install_sample_inputs(SAMPLES, target)
    assert sorted(copied) == sorted(p.name for p in SAMPLES.iterdir() if not p.name.startswith("."))
    assert all((target / n).read_bytes() == (SAMPLES / n).read_bytes() for n in copied)
    assert sorted(p.name for p in target.iterdir()) == sorted(copied)  # no temporary file left
    # a user's file of the same name is never replaced, and nothing is copied twice
    (target / "eym_sample_astronaut.jpg").write_bytes(b"mine")
    assert bridge.install_sample_inputs(SAMPLES, target) == []
    assert (target / "eym_sample_astronaut.jpg").read_bytes() == b"mine"
    # outside ComfyUI without EYM_INPUT_DIR there is no input folder: nothing happens
    assert bridge.install_sample_inputs(SAMPLES) == [] or bridge.input_folder() is not None


def test_sample_reference_and_source_show_a_person_to_mediapipe(mediapipe_solutions):
    """The workflows fall back to mediapipe without the OpenPose file: it finds the person in every frame
    of both sample clips and in the image, so the graph runs as opened."""
    import cv2

    from edit_your_motion.motion_core.pose import mediapipe_detector

    for name in ("eym_sample_astronaut.mp4", "eym_sample_astronaut_sway.mp4"):
        frames, _ = _decode(SAMPLES / name)
        found = mediapipe_detector.detect_poses(frames[:8], video=True, segmentation=False)
        assert found.found.all(), name
    image = cv2.cvtColor(cv2.imread(str(SAMPLES / "eym_sample_astronaut.jpg")), cv2.COLOR_BGR2RGB)
    assert mediapipe_detector.detect_poses(image[None], video=False, segmentation=False).found.all()


# ============================================================================ first screen
def _visible(ds: dict) -> tuple[float, float, float, float]:
    """The graph rectangle (x0, y0, x1, y1) in the canvas area at the saved view: screen = (graph + offset) * scale."""
    scale, (ox, oy) = ds["scale"], ds["offset"]
    return (SIDE_BAR / scale - ox, TOP_BAR / scale - oy, SCREEN_W / scale - ox, SCREEN_H / scale - oy)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_saved_view_is_readable_with_models_and_read_me_in_view(path):
    ui = tw._load(path)
    ds = ui["extra"]["ds"]
    assert MIN_FONT_PX / NODE_TITLE_PX + 0.1 <= ds["scale"] <= 1.0, "titles and widgets must render at the saved zoom"
    x0, y0, x1, y1 = _visible(ds)
    (models,) = [g for g in ui["groups"] if g["title"] == "1. Models"]
    gx, gy, gw, gh = models["bounding"]
    assert x0 <= gx and y0 <= gy and gx + gw <= x1 and gy + gh <= y1, "the models group must be on the first screen"
    (note,) = [n for n in ui["nodes"] if n.get("title") == "Read me first"]
    nx, ny = note["pos"]
    assert x0 <= nx and nx + note["size"][0] <= x1 and y0 <= ny - 30
    assert y1 - ny >= 200, "the note's first lines must be on the first screen"


def test_first_screen_check_finds_a_group_out_of_view():
    ui = tw._load(UI_FILES[0])
    (models,) = [g for g in ui["groups"] if g["title"] == "1. Models"]
    models["bounding"][1] += 1000
    x0, y0, x1, y1 = _visible(ui["extra"]["ds"])
    assert models["bounding"][1] + models["bounding"][3] > y1


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_titles_fit_their_nodes_and_groups(path):
    ui = tw._load(path)
    for node in ui["nodes"]:
        title = node.get("title") or ""
        # the title bar: a 10 px margin and the collapse dot (about 30 px) before the text, 10 px after
        assert 40 + _text_width(title, NODE_TITLE_PX) <= node["size"][0], f"title {title!r} is cut off"
    for group in ui["groups"]:
        assert 20 + _text_width(group["title"], GROUP_TITLE_PX) <= group["bounding"][2], group["title"]


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_notes_hold_no_table_wider_than_the_note(path):
    """A markdown table does not wrap: its widest row must fit the note (13 px text, 16 px padding)."""
    ui = tw._load(path)
    for node in ui["nodes"]:
        if node["type"] not in tw.FRONTEND_ONLY:
            continue
        for line in node["widgets_values"][0].splitlines():
            if line.startswith("|"):
                visible = line.replace("`", "").replace("**", "")
                assert 32 + _text_width(visible, 13) * 0.9 <= node["size"][0], f"table row too wide: {line[:60]}"


def test_title_check_finds_a_long_title():
    ui = tw._load(UI_FILES[0])
    node = next(n for n in ui["nodes"] if n["type"] == "EYM_TuneStage1" or n["type"] == "EYM_STLStage1")
    node["title"] = "Stage 1 tuning: content (shuffled, masked, P_c) with a longer title"
    assert 40 + _text_width(node["title"], NODE_TITLE_PX) > node["size"][0]


# ============================================================================ warnings in the browser
@pytest.fixture
def browser_messages(monkeypatch):
    """The bridge's warning handler with a stand-in for the server's send_sync; yields the messages sent."""
    from edit_your_motion.nodes import comfy_bridge as bridge

    sent = []
    context = {"prompt": "p1", "node": "12"}
    monkeypatch.setattr(bridge, "_executing", lambda: (context["prompt"], context["node"]))
    handler = bridge.BrowserWarnings(send=lambda event, data, client: sent.append((event, data)))
    bridge.log.addHandler(handler)
    try:
        yield sent, context
    finally:
        bridge.log.removeHandler(handler)


def test_warnings_reach_the_browser_once_per_prompt(browser_messages):
    from edit_your_motion.nodes import comfy_bridge as bridge

    sent, context = browser_messages
    bridge.warn_user("sizes cropped")
    bridge.warn_user("sizes cropped")  # the same text from another node of the same prompt: no second toast
    context["node"] = "25"
    bridge.warn_user("sizes cropped")
    logging.getLogger("edit_your_motion").info("an info line stays in the console")
    assert sent == [(bridge.WARNING_EVENT, {"message": "sizes cropped", "node": "12", "prompt_id": "p1", "level": "warning"})]
    context["prompt"] = "p2"  # queued again: shown again
    bridge.warn_user("sizes cropped")
    assert len(sent) == 2 and sent[1][1]["prompt_id"] == "p2" and sent[1][1]["node"] == "25"


def test_engine_crop_warning_reaches_the_browser(browser_messages):
    """A 60x60 video: VAE Encode crops it to 56x56, and the pose images are cropped the same way; the user
    must see that the result is smaller."""
    from edit_your_motion.motion_core.method.frames import poses_to_condition

    sent, _ = browser_messages
    hint = poses_to_condition(torch.zeros(2, 60, 60, 3), 56, 56, "reference_poses")
    assert hint.shape == (2, 3, 56, 56)
    (message,) = [data["message"] for _, data in sent]
    assert "56x56" in message and "cropped" in message


def test_detector_and_mask_fallbacks_reach_the_browser(browser_messages, tmp_path, monkeypatch):
    from edit_your_motion.motion_core.pose import mediapipe_detector as MP
    from edit_your_motion.nodes import detectors

    sent, _ = browser_messages
    monkeypatch.setenv("EYM_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(MP, "mediapipe_problem", lambda: None)
    assert detectors.choose_pose_detector("auto", "auto") == ("mediapipe", "")
    monkeypatch.setattr(MP, "mediapipe_available", lambda: False)
    assert detectors.choose_mask_method("auto") == "keypoints"
    messages = [data["message"] for _, data in sent]
    assert len(messages) == 2 and "mediapipe finds the poses" in messages[0] and "rough one" in messages[1]


def test_a_failing_send_never_breaks_a_node(monkeypatch):
    from edit_your_motion.nodes import comfy_bridge as bridge

    def broken(*args):
        raise RuntimeError("socket closed")

    handler = bridge.BrowserWarnings(send=broken)
    bridge.log.addHandler(handler)
    try:
        bridge.warn_user("still fine")
    finally:
        bridge.log.removeHandler(handler)


def test_web_extension_shows_the_warning_event():
    """ComfyUI serves WEB_DIRECTORY's .js to the browser; the extension listens for the bridge's event
    (the frontend drops server messages of types no extension registered) and shows a toast."""
    from edit_your_motion.nodes import comfy_bridge as bridge

    root = tw.ROOT
    init = (root / "__init__.py").read_text()
    assert 'WEB_DIRECTORY = "./web"' in init and '"WEB_DIRECTORY"' in init
    js = (root / "web" / "edit_your_motion.js").read_text()
    assert f'"{bridge.WARNING_EVENT}"' in js and "api.addEventListener(EVENT" in js and "toast.add" in js


# ============================================================================ progress from the first second
class _FakeBar:
    made: list = []

    def __init__(self, total, node_id=None):
        self.total, self.values = total, []
        _FakeBar.made.append(self)

    def update_absolute(self, value, total=None, preview=None):
        self.values.append(value)

    def update(self, n):
        raise AssertionError("Progress sends absolute values")


@pytest.fixture
def fake_progress_bar(monkeypatch):
    from types import SimpleNamespace

    from edit_your_motion.nodes import comfy_bridge as bridge

    _FakeBar.made = []
    monkeypatch.setattr(bridge, "HAS_COMFY", True)
    monkeypatch.setattr(bridge, "_cu", SimpleNamespace(ProgressBar=_FakeBar))
    monkeypatch.setattr(bridge, "_mm", SimpleNamespace(throw_exception_if_processing_interrupted=lambda: None))
    return _FakeBar.made


def test_progress_shows_at_once_and_moves_during_set_up(fake_progress_bar):
    from edit_your_motion.nodes import comfy_bridge as bridge

    progress = bridge.Progress(4, "test", prepare=2)
    (bar,) = fake_progress_bar
    assert bar.total == 6 and bar.values == [0]  # shown at 0 the moment the node starts
    progress.phase("loading")
    assert bar.values == [0, 1]
    progress.step()  # the first step: set-up is over whatever phases were skipped
    progress.step(loss=0.5)
    assert bar.values == [0, 1, 3, 4]


def test_nodes_show_progress_before_their_slow_set_up(fake_progress_bar, monkeypatch, tmp_path):
    """EYM Extract Poses makes its bar before it chooses and loads a detector."""
    from edit_your_motion.nodes import detectors, pose_nodes

    def choose(detector, model):
        assert fake_progress_bar and fake_progress_bar[0].values == [0], "no bar before the detector is chosen"
        raise RuntimeError("stop here")

    monkeypatch.setattr(detectors, "choose_pose_detector", choose)
    with pytest.raises(RuntimeError, match="stop here"):
        pose_nodes.ExtractPoses().run(torch.zeros(2, 64, 64, 3), "auto")


# ============================================================================ errors that read well
def test_no_person_in_a_single_image_speaks_of_the_image():
    from edit_your_motion.motion_core.errors import InputError
    from edit_your_motion.motion_core.pose import openpose

    for found, still in ((np.zeros(1, bool), False), (np.zeros(3, bool), True)):
        with pytest.raises(InputError) as err:
            openpose.require_people(found, "images", detector="mediapipe", still=still)
        assert "no person in the image images" in str(err.value) and "frame(s)" not in str(err.value)
    with pytest.raises(InputError, match=r"frame\(s\) 0, 1, 2 of 3"):
        openpose.require_people(np.zeros(3, bool), "images")


def test_still_clip_is_recognised():
    from edit_your_motion.nodes import pose_nodes

    image = torch.rand(1, 8, 8, 3)
    assert pose_nodes._is_still(image) and pose_nodes._is_still(image.expand(4, -1, -1, -1))
    assert not pose_nodes._is_still(torch.rand(3, 8, 8, 3))


def test_error_types_do_not_show_the_install_path():
    """ComfyUI shows an error as ``<class module>.<class name>``; the pack's module names are the install path."""
    from edit_your_motion.motion_core.errors import InputError, ModelError
    from edit_your_motion.motion_core.pose.mediapipe_detector import MediapipeUnavailable

    for cls in (InputError, ModelError, MediapipeUnavailable):
        assert f"{cls.__module__}.{cls.__qualname__}" == f"edit_your_motion.{cls.__name__}"


@pytest.fixture(scope="module")
def defs():
    return tw.load_definitions()


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_workflow_asks_to_open_at_its_saved_view(path):
    """The frontend fits a template's whole graph into the window (27% for these graphs: blank boxes);
    web/edit_your_motion.js restores the saved view of workflows that ask for it."""
    ui = tw._load(path)
    assert ui["extra"]["edit_your_motion"] == {"open_at_saved_view": True}
    js = (tw.ROOT / "web" / "edit_your_motion.js").read_text()
    assert "afterConfigureGraph" in js and "open_at_saved_view" in js and "extra?.ds" in js


def test_frames_left_empty_reach_the_browser(browser_messages):
    """allow_missing keeps going without the person in some frames: the user is told which."""
    from edit_your_motion.motion_core.pose import to_pose_keypoint
    from edit_your_motion.nodes import pose_nodes

    sent, _ = browser_messages
    kp = np.zeros((3, 18, 3), np.float32)
    kp[0, :, :2], kp[0, :, 2] = 10.0, 1.0
    kp[2, :, :2], kp[2, :, 2] = 20.0, 1.0
    frames = to_pose_keypoint(kp, 64, 64)
    (images,) = pose_nodes.RenderPoses().run(frames, allow_missing=True)
    assert images.shape == (3, 64, 64, 3) and float(images[1].max()) == 0.0
    (message,) = [data["message"] for _, data in sent]
    assert "frame(s) 1 of 3" in message and "allow_missing" in message
    assert pose_nodes.warn_empty_frames(kp[[0, 2]], "x") == []
