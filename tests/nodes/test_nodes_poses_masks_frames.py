"""Pose, mask and frame nodes run standalone (no ComfyUI): declarations, results on a synthetic clip,
errors, OpenPose with random weights, interruption."""

from __future__ import annotations

import inspect
import logging

import numpy as np
import pytest
import torch

from edit_your_motion.motion_core import pose as K
from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.testing.synthetic import make_clip
from edit_your_motion.nodes import comfy_bridge as bridge
from edit_your_motion.nodes import frame_nodes, mask_nodes, pose_nodes

pytestmark = pytest.mark.usefixtures("comfy_inference_mode")  # as ComfyUI runs nodes

MODULES = (pose_nodes, mask_nodes, frame_nodes)
ALL_NODES = [(mid, cls) for m in MODULES for mid, cls in m.NODE_CLASS_MAPPINGS.items()]


@pytest.fixture(scope="module")
def clip():
    return make_clip(4, 64, 64, "wave")


def _pk(clip, normalized=False):
    return K.to_pose_keypoint(clip.keypoints, 64, 64, normalized=normalized)


# ------------------------------------------------------------------ declarations

def test_mappings_agree_and_are_prefixed():
    for m in MODULES:
        assert set(m.NODE_CLASS_MAPPINGS) == set(m.NODE_DISPLAY_NAME_MAPPINGS)
        for mid in m.NODE_CLASS_MAPPINGS:
            assert mid.startswith("EYM_") and m.NODE_DISPLAY_NAME_MAPPINGS[mid].startswith("EYM ")
    assert {mid for mid, _ in ALL_NODES} == {
        "EYM_ExtractPoses", "EYM_RenderPoses", "EYM_AlignSkeleton", "EYM_MaskFrames", "EYM_KeypointMask",
        "EYM_PersonMask", "EYM_SelectFrames", "EYM_ShuffleFrames", "EYM_UnshuffleFrames",
    }


@pytest.mark.parametrize("mid,cls", ALL_NODES, ids=[mid for mid, _ in ALL_NODES])
def test_node_declaration_well_formed(mid, cls, models_dir):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and isinstance(spec["required"], dict)
    names = []
    for section in ("required", "optional"):
        for name, decl in spec.get(section, {}).items():
            assert isinstance(decl, tuple) and 1 <= len(decl) <= 2, (mid, name)
            assert isinstance(decl[0], (str, list)) and decl[0], (mid, name)
            opts = decl[1] if len(decl) == 2 else {}
            assert isinstance(opts.get("tooltip"), str) and len(opts["tooltip"]) > 10, (mid, name)
            if "default" in opts and isinstance(decl[0], list):
                assert opts["default"] in decl[0], (mid, name)
            names.append(name)
    assert isinstance(cls.RETURN_TYPES, tuple) and len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES)
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        assert len(cls.OUTPUT_TOOLTIPS) == len(cls.RETURN_TYPES)
    assert cls.CATEGORY.startswith("Edit-Your-Motion/")
    assert isinstance(cls.DESCRIPTION, str) and cls.DESCRIPTION
    fn = getattr(cls(), cls.FUNCTION)
    params = inspect.signature(fn).parameters
    for name in names:
        assert name in params and params[name].kind in (
            inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY), (mid, name)
    for name, p in params.items():  # nothing required that the node does not declare
        assert p.default is not inspect.Parameter.empty or name in spec["required"], (mid, name)


def test_detector_choices(models_dir):
    spec = pose_nodes.ExtractPoses.INPUT_TYPES()
    assert spec["required"]["detector"][0] == ["auto", "openpose", "mediapipe"]
    assert spec["required"]["detector"][1]["default"] == "auto"
    # no file: only auto, which a saved workflow can hold without the frontend flagging it as missing
    choices = spec["optional"]["openpose_model"][0]
    assert choices == ["auto"]
    folder = models_dir / "openpose"
    folder.mkdir()
    for name in ("hand_pose_model.pth", "body_pose_model.pth", "notes.txt"):
        (folder / name).write_bytes(b"x")
    choices = pose_nodes.ExtractPoses.INPUT_TYPES()["optional"]["openpose_model"][0]
    assert choices == ["auto", "body_pose_model.pth", "hand_pose_model.pth"]
    anchors = pose_nodes.AlignSkeleton.INPUT_TYPES()["required"]["anchor"]
    assert list(anchors[0]) == list(K.ANCHOR_MODES) and anchors[1]["default"] == "neck_hip"


# ------------------------------------------------------------------ render / align

@pytest.mark.parametrize("normalized", [False, True])
def test_render_poses_matches_engine(clip, normalized):
    (images,) = pose_nodes.RenderPoses().run(_pk(clip, normalized), stick_width=3)
    expected = K.render_pose_images(clip.keypoints, 64, 64, stick_width=3)
    assert images.shape == (4, 64, 64, 3) and images.dtype == torch.float32
    assert torch.allclose(images, expected)


def test_render_poses_resize_and_missing(clip):
    pk = _pk(clip)
    (big,) = pose_nodes.RenderPoses().run(pk, width=128, height=96)
    expected = K.render_pose_images(K.resize_keypoints(clip.keypoints, 64, 64, 96, 128), 96, 128)
    assert big.shape == (4, 96, 128, 3) and torch.equal(big, expected)
    (one_side,) = pose_nodes.RenderPoses().run(pk, width=128)  # height follows the aspect ratio
    assert one_side.shape == (4, 128, 128, 3)

    pk[2] = dict(pk[2], people=[])
    with pytest.raises(InputError, match=r"frame\(s\) 2 of 4"):
        pose_nodes.RenderPoses().run(pk)
    (images,) = pose_nodes.RenderPoses().run(pk, allow_missing=True)
    assert float(images[2].sum()) == 0.0 and float(images[1].sum()) > 0
    with pytest.raises(InputError, match="person"):
        pose_nodes.RenderPoses().run(pk, person="tallest")


def test_align_skeleton_moves_reference_onto_source(caplog):
    ref_clip = make_clip(3, 64, 64, "walk", center=(0.25, 0.1), body_height=0.5)
    src_clip = make_clip(3, 64, 64, "wave", center=(0.7, 0.2), body_height=0.7)
    node = pose_nodes.AlignSkeleton()
    with caplog.at_level(logging.INFO, logger="edit_your_motion"):
        pk, images = node.run(_pk(ref_clip), _pk(src_clip), anchor="neck_hip", scale=True, stick_width=2)
    assert "scale" in caplog.text and "anchor" in caplog.text
    expected = K.align_skeletons(ref_clip.keypoints, src_clip.keypoints, anchor="neck_hip", scale=True)
    got, h, w = K.from_pose_keypoint(pk)
    assert (h, w) == (64, 64) and np.allclose(got, expected, atol=1e-4)
    assert torch.equal(images, K.render_pose_images(expected, 64, 64, stick_width=2))
    # the reference anchor of its first frame lands on the source anchor
    params = K.alignment_parameters(ref_clip.keypoints, src_clip.keypoints)
    neck, hips = got[0, K.NECK, :2], got[0, [K.R_HIP, K.L_HIP], :2].mean(axis=0)
    assert np.allclose(0.5 * (neck + hips), params["source_anchor"], atol=1e-3)
    assert params["scale"] == pytest.approx(0.7 / 0.5, rel=1e-3)


def test_align_skeleton_other_canvas_and_no_scale():
    ref_clip = make_clip(2, 128, 128, "squat", center=(0.3, 0.1))
    src_clip = make_clip(2, 64, 96, "wave", center=(0.6, 0.15))
    ref_pk = K.to_pose_keypoint(ref_clip.keypoints, 128, 128)
    src_pk = K.to_pose_keypoint(src_clip.keypoints, 64, 96)
    pk, images = pose_nodes.AlignSkeleton().run(ref_pk, src_pk, anchor="bbox", scale=False)
    assert pk[0]["canvas_width"] == 96 and pk[0]["canvas_height"] == 64 and images.shape == (2, 64, 96, 3)
    got, _, _ = K.from_pose_keypoint(pk)
    # reference brought to the source frame height (x0.5), then moved without scaling
    expected = K.align_skeletons(K.resize_keypoints(ref_clip.keypoints, 128, 128, 64, 64), src_clip.keypoints,
                                 anchor="bbox", scale=False)
    assert np.allclose(got, expected, atol=1e-4)
    with pytest.raises(InputError, match="anchor"):
        pose_nodes.AlignSkeleton().run(ref_pk, src_pk, anchor="hips")


def test_align_skeleton_missing_frames():
    ref_pk = _pk(make_clip(3, 64, 64, "walk"))
    src_pk = _pk(make_clip(3, 64, 64, "wave"))
    ref_pk[1] = dict(ref_pk[1], people=[])
    with pytest.raises(InputError, match=r"reference has no person in frame\(s\) 1"):
        pose_nodes.AlignSkeleton().run(ref_pk, src_pk)
    pk, images = pose_nodes.AlignSkeleton().run(ref_pk, src_pk, allow_missing=True)
    assert pk[1]["people"] == [] and float(images[1].sum()) == 0.0
    # source frames without a person are fine as long as one frame has the anchor
    src_pk[0] = dict(src_pk[0], people=[])
    pose_nodes.AlignSkeleton().run(ref_pk, src_pk, allow_missing=True)
    empty = [dict(f, people=[]) for f in src_pk]
    with pytest.raises(InputError, match="source"):
        pose_nodes.AlignSkeleton().run(ref_pk, empty, allow_missing=True)


def test_align_skeleton_refuses_a_frame_count_mismatch_before_any_tuning():
    """Source 3 frames, reference 2: caught where both clips first meet, not by the sampler after
    both tuning stages."""
    src_pk = _pk(make_clip(3, 64, 64, "wave"))
    ref_pk = _pk(make_clip(2, 64, 64, "walk"))
    with pytest.raises(InputError, match=r"reference has 2 frames but source has 3.*same number of frames"):
        pose_nodes.AlignSkeleton().run(ref_pk, src_pk)


# ------------------------------------------------------------------ masks

def test_mask_frames_is_frames_times_mask(clip):
    (out,) = mask_nodes.MaskFrames().run(clip.frames, clip.masks, background=0.0)
    assert out.shape == clip.frames.shape and torch.allclose(out, clip.frames * clip.masks[..., None])
    (grey,) = mask_nodes.MaskFrames().run(clip.frames, clip.masks, background=0.5)
    assert torch.allclose(grey, clip.frames * clip.masks[..., None] + 0.5 * (1 - clip.masks[..., None]))
    # one mask for every frame, at another size
    single = torch.zeros(1, 32, 32)
    single[:, 8:24, 8:24] = 1
    (out,) = mask_nodes.MaskFrames().run(clip.frames, single)
    assert out.shape == clip.frames.shape and float(out[:, 0, 0].abs().sum()) == 0.0
    assert torch.allclose(out[:, 32, 32], clip.frames[:, 32, 32])


def test_mask_frames_description_points_to_stage_1_latent_input():
    """Stage 1 takes a LATENT (masked_latent), not frames: the description says to VAE-encode first."""
    from edit_your_motion.nodes import tuning_nodes

    text = mask_nodes.MaskFrames.DESCRIPTION
    assert "VAE Encode" in text and "masked_latent" in text and "Stage 1's frames" not in text
    assert tuning_nodes.TuneStage1.INPUT_TYPES()["required"]["masked_latent"][0] == "LATENT"


def test_mask_frames_errors(clip):
    empty = clip.masks.clone()
    empty[1] = 0
    with pytest.raises(InputError, match=r"frame\(s\) \[1\]"):
        mask_nodes.MaskFrames().run(clip.frames, empty)
    with pytest.raises(InputError, match="images has 4.*mask has 3"):
        mask_nodes.MaskFrames().run(clip.frames, clip.masks[:3])


def test_keypoint_mask_covers_keypoints(clip):
    (mask,) = mask_nodes.KeypointMask().run(_pk(clip))
    assert mask.shape == (4, 64, 64) and mask.dtype == torch.float32
    assert torch.equal(mask, K.person_masks_from_keypoints(clip.keypoints, 64, 64))
    for f in range(4):
        for x, y, c in clip.keypoints[f]:
            if c > 0 and 0 <= x < 64 and 0 <= y < 64:
                assert mask[f, int(round(y)), int(round(x))] == 1.0
        assert 0.05 < float(mask[f].mean()) < 0.9
    (loose,) = mask_nodes.KeypointMask().run(_pk(clip), grow=2.0)
    assert float(loose.sum()) > float(mask.sum())
    (big,) = mask_nodes.KeypointMask().run(_pk(clip), width=128, height=128)
    assert big.shape == (4, 128, 128)
    # usable straight away by the background mask node
    (masked,) = mask_nodes.MaskFrames().run(clip.frames, mask)
    assert masked.shape == clip.frames.shape


def test_keypoint_mask_missing_person(clip):
    pk = _pk(clip)
    pk[3] = dict(pk[3], people=[])
    with pytest.raises(InputError, match=r"frame\(s\) 3 of 4"):
        mask_nodes.KeypointMask().run(pk)
    (mask,) = mask_nodes.KeypointMask().run(pk, allow_missing=True)
    assert float(mask[3].sum()) == 0.0 and float(mask[0].sum()) > 0


# ------------------------------------------------------------------ shuffle

def _tagged(n, h=8, w=8):
    idx = torch.arange(n, dtype=torch.float32)
    images = idx.view(n, 1, 1, 1).expand(n, h, w, 3) / 10
    poses = idx.view(n, 1, 1, 1).expand(n, h, w, 3) / 20
    mask = idx.view(n, 1, 1).expand(n, h, w) / 30
    return images.contiguous(), poses.contiguous(), mask.contiguous()


def test_select_frames_takes_every_kth_frame_at_the_target_rate(caplog):
    """48 frames of a 24 fps clip at 12 fps: frames 0, 2, ..., 94 of 96, playing at 12 fps."""
    images, _, _ = _tagged(96)
    tags = (images[:, 0, 0, 0] * 10).round().long()
    out, fps, every = frame_nodes.SelectFrames().run(images, frames=48, target_fps=12.0, start_frame=0, fps=24.0)
    assert (every, fps) == (2, 12.0) and torch.equal(out, images[0:96:2])
    assert torch.equal((out[:, 0, 0, 0] * 10).round().long(), tags[0:96:2])
    # 30 fps to 12: every 2nd (15 fps); to 8: every 4th (7.5 fps); from frame 5; at most 3 frames
    out, fps, every = frame_nodes.SelectFrames().run(images, frames=3, target_fps=8.0, start_frame=5, fps=30.0)
    assert (every, fps) == (4, 7.5) and torch.equal(out, images[[5, 9, 13]])
    assert frame_nodes.SelectFrames().run(images, frames=0, target_fps=12.0, fps=30.0)[2] == 2
    # a clip at or below the target rate, target 0, or no fps connected: every frame
    for kw, rate in ((dict(fps=8.0), 8.0), (dict(fps=24.0, target_fps=0.0), 24.0), (dict(), 12.0)):
        out, fps, every = frame_nodes.SelectFrames().run(images, **dict(dict(frames=10, target_fps=12.0), **kw))
        assert every == 1 and fps == rate and torch.equal(out, images[:10])
    # fewer frames than asked: all there are, and a warning that says which count to set on both nodes
    with caplog.at_level(logging.WARNING, logger="edit_your_motion"):
        out, _, _ = frame_nodes.SelectFrames().run(images, frames=48, target_fps=6.0, fps=24.0)
    assert out.shape[0] == 24 and "only 24 frames" in caplog.text and "Set frames to 24" in caplog.text
    with pytest.raises(InputError, match="start_frame is 96 but the clip has 96 frames"):
        frame_nodes.SelectFrames().run(images, frames=8, target_fps=12.0, start_frame=96, fps=24.0)
    with pytest.raises(InputError, match="images must be an IMAGE batch"):
        frame_nodes.SelectFrames().run(images[0], frames=8)


def test_frame_stride_known_answers():
    from edit_your_motion.motion_core.method.frames import frame_stride, select_frames

    assert [frame_stride(f, 12.0) for f in (24.0, 25.0, 29.97, 30.0, 60.0, 12.0, 10.0)] == [2, 2, 2, 2, 5, 1, 1]
    assert frame_stride(None, 12.0) == frame_stride(float("nan"), 12.0) == frame_stride(24.0, 0.0) == 1
    assert select_frames(10, 3).tolist() == [0, 3, 6, 9] and select_frames(10, 3, 2, 1).tolist() == [1, 4]
    with pytest.raises(InputError, match="every_nth must be at least 1"):
        select_frames(10, 0)


def test_shuffle_applies_one_permutation_and_unshuffle_restores():
    images, poses, mask = _tagged(7)
    out_images, out_poses, out_mask, perm = frame_nodes.ShuffleFrames().run(images, seed=123, poses=poses, mask=mask)
    assert perm.dtype == torch.int64 and perm.device.type == "cpu" and perm.shape == (7,)
    assert not torch.equal(perm, torch.arange(7))
    order = (out_images[:, 0, 0, 0] * 10).round().long()
    assert torch.equal(order, perm)
    assert torch.equal((out_poses[:, 0, 0, 0] * 20).round().long(), perm)
    assert torch.equal((out_mask[:, 0, 0] * 30).round().long(), perm)
    # same seed, same order; a 64-bit ComfyUI seed works
    assert torch.equal(frame_nodes.ShuffleFrames().run(images, seed=123)[3], perm)
    frame_nodes.ShuffleFrames().run(images, seed=0xFFFFFFFFFFFFFFFF)
    (restored,) = frame_nodes.UnshuffleFrames().run(out_images, perm)
    assert torch.equal(restored, images)


def test_shuffle_optional_outputs_and_single_mask():
    images, _, _ = _tagged(5)
    out_images, out_poses, out_mask, perm = frame_nodes.ShuffleFrames().run(images, seed=1)
    assert out_poses is None and out_mask is None and out_images.shape == images.shape
    single = torch.ones(1, 8, 8)
    assert frame_nodes.ShuffleFrames().run(images, seed=1, mask=single)[2] is single


def test_shuffle_frame_count_mismatch_names_inputs():
    images, poses, mask = _tagged(4)
    with pytest.raises(InputError, match="images has 4.*poses has 3"):
        frame_nodes.ShuffleFrames().run(images, seed=0, poses=poses[:3])
    with pytest.raises(InputError, match="images has 4.*mask has 2"):
        frame_nodes.ShuffleFrames().run(images, seed=0, mask=mask[:2])


def test_unshuffle_errors():
    images, _, _ = _tagged(4)
    with pytest.raises(InputError, match="permutation orders 3 frames"):
        frame_nodes.UnshuffleFrames().run(images, torch.tensor([2, 0, 1]))
    with pytest.raises(InputError, match="not a permutation"):
        frame_nodes.UnshuffleFrames().run(images, torch.tensor([0, 0, 1, 2]))


# ------------------------------------------------------------------ OpenPose extraction

def _write_body_model(models_dir, nobody: bool):
    from controlnet_aux.open_pose.model import bodypose_model

    torch.manual_seed(0)
    net = bodypose_model().eval()
    if nobody:  # heatmap head at zero: no peak anywhere -> deterministic "nobody"
        with torch.no_grad():
            net.model6_2.Mconv7_stage6_L2.weight.zero_()
            net.model6_2.Mconv7_stage6_L2.bias.zero_()
    folder = models_dir / "openpose"
    folder.mkdir(exist_ok=True)
    path = folder / "body_pose_model.pth"
    # the published file's layout: keys without the 'model0.' / 'model1_1.' prefixes
    torch.save({k.split(".", 1)[1]: v.clone() for k, v in net.state_dict().items()}, path)
    return path


def test_extract_poses_nobody_lists_frames_and_caches_detector(models_dir):
    _write_body_model(models_dir, nobody=True)
    frames = make_clip(2, 64, 64, "walk").frames  # two different frames (a still clip is reported as one image)
    node = pose_nodes.ExtractPoses()
    with pytest.raises(InputError, match=r"images frame\(s\) 0, 1 of 2"):
        node.run(frames, "body_pose_model.pth", detect_resolution=64)
    assert len(pose_nodes._DETECTORS) == 1
    cached = next(iter(pose_nodes._DETECTORS.values()))
    with pytest.raises(InputError):
        node.run(frames, "body_pose_model.pth", detect_resolution=64)
    assert next(iter(pose_nodes._DETECTORS.values())) is cached


def test_extract_poses_outputs(models_dir, monkeypatch):
    _write_body_model(models_dir, nobody=False)
    clip = make_clip(2, 64, 64)
    steps = []
    real_step = bridge.Progress.step

    def counting_step(self, n=1, loss=None):
        steps.append(n)
        return real_step(self, n, loss)

    monkeypatch.setattr(bridge.Progress, "step", counting_step)
    # random weights rarely find a person: have the detector report the synthetic figure in every frame
    from edit_your_motion.motion_core.pose import openpose

    real_detect = openpose.detect_keypoints

    def fake_detect(images, body_model, person="largest", detect_resolution=512, callback=None):
        kp, found = real_detect(images, body_model, person, detect_resolution, callback)
        return clip.keypoints.copy(), np.ones(len(found), bool)

    monkeypatch.setattr(openpose, "detect_keypoints", fake_detect)
    images, pk = pose_nodes.ExtractPoses().run(clip.frames, "body_pose_model.pth", person="0",
                                               detect_resolution=64, stick_width=2)
    assert steps == [1, 1]
    assert images.shape == (2, 64, 64, 3) and images.device == bridge.intermediate_device()
    assert torch.equal(images, K.render_pose_images(clip.keypoints, 64, 64, stick_width=2))
    assert pk[0]["canvas_width"] == 64 and len(pk) == 2
    got, _, _ = K.from_pose_keypoint(pk)
    assert np.allclose(got, clip.keypoints)


def test_extract_poses_missing_file_names_file_and_folder(models_dir):
    with pytest.raises(InputError) as err:
        pose_nodes.ExtractPoses().run(make_clip(2, 64, 64).frames, "body_pose_model.pth", detect_resolution=64)
    msg = str(err.value)
    assert "body_pose_model.pth" in msg and str(models_dir / "openpose") in msg and "lllyasviel/Annotators" in msg


def test_extract_poses_bad_person_before_loading(models_dir):
    with pytest.raises(InputError, match="person"):
        pose_nodes.ExtractPoses().run(make_clip(2, 64, 64).frames, "body_pose_model.pth", person="everyone")


def test_extract_poses_interrupt(models_dir):
    _write_body_model(models_dir, nobody=True)
    bridge.request_interrupt()
    try:
        with pytest.raises(bridge.Interrupted):
            pose_nodes.ExtractPoses().run(make_clip(2, 64, 64).frames, "body_pose_model.pth", detect_resolution=64)
    finally:
        bridge._interrupt_flag = False
