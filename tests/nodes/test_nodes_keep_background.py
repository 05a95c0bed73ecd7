"""The samplers' keep_background option through the nodes, as ComfyUI runs them (inference mode), with
bf16 weight storage; the inversion node's LATENT carries the trajectory."""

from __future__ import annotations

import pytest
import torch

from edit_your_motion.motion_core.errors import InputError
from edit_your_motion.motion_core.method.keep_background import latent_masks
from edit_your_motion.motion_core.pose.interop import to_pose_keypoint
from edit_your_motion.motion_core.pose.masks import fit_mask_grow, person_masks_from_keypoints
from edit_your_motion.motion_core.testing.values import latent
from edit_your_motion.nodes import inference_nodes, later_version_nodes, model_nodes

pytestmark = pytest.mark.usefixtures("comfy_inference_mode")  # as ComfyUI runs nodes

SCALE = 0.18215
KEY = inference_nodes.INVERSION_KEY


@pytest.fixture(scope="module")
def data(tiny_job):
    return dict(tiny_job, latent=latent(tiny_job["src"].frames), ref_kp=to_pose_keypoint(tiny_job["ref"].keypoints, 64, 64),
                src_kp=to_pose_keypoint(tiny_job["src"].keypoints, 64, 64))


def _outside(data):
    """Latent pixels outside the change region the nodes build with the rough keypoint target (no
    source_keypoints), grow 0 and feather 8 px = 1 latent pixel, whose ramp reaches 2 latent pixels: computed here from the masks, independently of the keeper."""
    person = latent_masks(data["src"].masks, 8, 8) | latent_masks(person_masks_from_keypoints(data["ref"].keypoints, 64, 64), 8, 8)
    near = torch.nn.functional.max_pool2d(person.float(), 5, stride=1, padding=2) > 0
    return (~near).expand(3, 4, 8, 8)


@pytest.mark.parametrize("method", ["eym_v1", "eym_v2"])
def test_keep_background_nodes_with_bf16_storage(data, method):
    handle = model_nodes.LoadVideoModel().run(data["unet"], data["cn"], "rc" if method == "eym_v1" else "bidirectional",
                                              "bf16", method)[0]
    z = inference_nodes.DDIMInversion().run(handle, data["latent"], data["ps"], data["src"].poses, 3, True, 1.0, 1.0)[0]
    traj = z[KEY]["trajectory"]
    assert traj.shape == (4, 3, 4, 8, 8) and traj.dtype == torch.float32
    assert torch.equal(z["samples"], traj[-1] / SCALE)  # the node's z_T is the trajectory's last level
    assert torch.equal(traj[0], data["latent"]["samples"] * SCALE)
    keep = dict(keep_background=True, source_mask=data["src"].masks, reference_keypoints=data["ref_kp"], region_feather=8)
    if method == "eym_v1":
        def run(latent=z, **kw):
            return inference_nodes.TwoBranchSampler().run(
                handle, latent, data["ps"], data["pt"], data["src"].poses, data["ref"].poses, 3, 1.0, 1.0, 0, 0.0, 0.0,
                1.0, "down+mid+up", "concat", True, **kw)[0]["samples"]
    else:
        def run(latent=z, **kw):
            return later_version_nodes.SingleBranchSampler().run(handle, latent, data["pt"], data["ref"].poses, 3, 1.0,
                                                                 1.0, **kw)[0]["samples"]
    kept, plain = run(**keep), run()
    outside = _outside(data)
    assert outside.any() and torch.isfinite(kept).all()
    # outside the region the edit is the source latents: the trajectory's first level, unscaled once
    assert torch.equal(kept[outside], (traj[0] / SCALE)[outside])
    assert not torch.equal(kept, plain)
    # a painted region of the whole frame is the plain sampler exactly
    assert torch.equal(run(keep_background=True, change_region=torch.ones(64, 64)), plain)
    # target_mask fitted: the target person drawn at the size fitted to the source person; with region_feather 0
    # everything outside source person | fitted target person (latent pixels, computed here) is the source
    grow, _ = fit_mask_grow(data["src"].keypoints, data["src"].masks)
    region = latent_masks(data["src"].masks, 8, 8) | latent_masks(
        person_masks_from_keypoints(data["ref"].keypoints, 64, 64, grow=grow), 8, 8)
    sharp = dict(keep, region_feather=0, ghost_fill="none")  # the node defaults' feather
    fitted = run(**sharp, target_mask="fitted", source_keypoints=data["src_kp"])
    out_fit = (~region).expand(3, 4, 8, 8)
    assert torch.equal(fitted[out_fit], (traj[0] / SCALE)[out_fit]) and grow < 1
    rough = run(**sharp, target_mask="keypoints")
    assert not torch.equal(fitted, rough)
    # without source_keypoints fitted falls back to the rough keypoint mask, exactly
    assert torch.equal(run(**sharp, target_mask="fitted"), rough)
    with pytest.raises(InputError, match="needs a change region"):
        run(keep_background=True)
    with pytest.raises(InputError, match="trajectory"):
        run(latent={"samples": z["samples"]}, **keep)
