"""Each method's tuning stages, looked up by the method a video model is built for.

The recipes live with their method (:mod:`~motion_core.method.dpl` for ``eym_v1``,
:mod:`~motion_core.method.stl` for ``eym_v2``); the loop that runs them is
:func:`motion_core.method.tuner.tune`. :func:`tune_stage` is the one entry point for "stage k of this
model's method", used by the nodes, the world and the benchmark.
"""

from __future__ import annotations

import torch

from ..errors import InputError
from ..video_model.model import MotionModel
from . import dpl, stl
from .tuner import StageRecipe, StageResult, StepCallback, TuneConfig, tune

STAGES: dict[str, tuple[StageRecipe, ...]] = {"eym_v1": dpl.STAGES, "eym_v2": stl.STAGES}


def stage_recipe(method: str, stage: int) -> StageRecipe:
    """The recipe of ``stage`` (1 or 2) of ``method``."""
    if method not in STAGES:
        raise InputError(f"method must be one of {', '.join(STAGES)}; got {method!r}")
    if stage not in (1, 2):
        raise InputError(f"stage must be 1 or 2; got {stage}")
    return STAGES[method][stage - 1]


def stage_parameter_names(model: MotionModel, stage: int) -> list[str]:
    """UNet parameter names that ``stage`` of the model's method trains."""
    return stage_recipe(model.method, stage).parameter_names(model)


def tune_stage(model: MotionModel, stage: int, latents: torch.Tensor, text_embeddings: torch.Tensor,
               poses: torch.Tensor | None, config: TuneConfig | None = None, callback: StepCallback | None = None,
               permutation: torch.Tensor | None = None, parameters: list[str] | None = None) -> StageResult:
    """Run stage ``stage`` of the model's method (DPL for eym_v1, STL for eym_v2); see
    :func:`~motion_core.method.tuner.tune` for the arguments."""
    return tune(model, stage_recipe(model.method, stage), latents, text_embeddings, poses, config, callback,
                permutation, parameters)
