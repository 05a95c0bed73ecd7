"""Edit-Your-Motion engine: plain torch + diffusers, no ComfyUI import.

Grouped by concept:

* ``video_model``: the inflated SD1.5 UNet (RC-Attn, temporal layers), offline conversion from
  LDM checkpoints, tuned-weight files;
* ``method``: frames and masks, the two-stage tuner and its losses, DDIM inversion and sampling,
  the two-branch K/V-injected sampler; the later version (``eym_v2``): STL, single-branch
  sampling, single-image sources and the ablation variants;
* ``pose``: OpenPose-18 keypoints, rendering, alignment, masks, detectors;
* ``world``: a small world with ground truth and a base model trained in it (a client of the
  engine, never a dependency of it);
* ``apps``: the command-line jobs (``python -m motion_core edit|selfcheck|bench|quality``);
* ``testing``: small random SD1.5-shaped models and a synthetic clip for tests.

The names below are the public API.
"""

from .errors import InputError, ModelError
from .method.ddim import ddim_invert, ddim_sample
from .method.frames import apply_background_mask, poses_to_condition
from .method.sampler import SamplerConfig, two_branch_sample
from .method.tuner import StageRecipe, TuneConfig, tune
from .method.dpl import run_v1, tune_stage1, tune_stage2
from .method.stages import stage_parameter_names, stage_recipe, tune_stage
from .method.stl import tune_stl_stage1, tune_stl_stage2, tune_without_stl
from .method.single_branch import repeat_to_frames, single_branch_sample
from .method.eym_v2 import V2_VARIANTS, build_v2_model, run_v2, tune_v2
from .method.windows import ContextOptions
from .video_model.attention import ATTENTION_MODES
from .video_model.model import METHODS, MotionModel
from .video_model.weights import load_tuned_weights, read_tuned_weights, save_tuned_weights

__all__ = [
    "InputError", "ModelError", "MotionModel", "ATTENTION_MODES", "TuneConfig", "tune_stage", "tune_stage1",
    "tune_stage2", "ddim_invert", "ddim_sample", "SamplerConfig", "two_branch_sample", "apply_background_mask",
    "poses_to_condition", "save_tuned_weights", "load_tuned_weights", "read_tuned_weights",
    "METHODS", "tune_stl_stage1", "tune_stl_stage2", "tune_without_stl", "single_branch_sample", "repeat_to_frames",
    "V2_VARIANTS", "build_v2_model", "run_v2", "tune_v2", "StageRecipe", "tune", "run_v1", "stage_recipe",
    "stage_parameter_names", "ContextOptions",
]
