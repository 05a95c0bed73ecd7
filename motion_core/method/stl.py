"""Spatio-temporal two-stage learning (STL): the later version's tuning (paper 001, Sec. III-D).

STL reverses the emphasis of the first version's DPL:

* **Stage 1, temporal features of the human motion**: background-masked frames (Eq. 10-12),
  frames in their original order; trains the temporal attention layers and Motion Attention.
* **Stage 2, spatial features of appearance and background**: unmasked frames in order; trains
  RCA (the spatial self-attention ``attn1`` in the ``bidirectional`` mode) and Motion Attention.

Both stages minimise the plain noise-prediction loss ``||eps - eps_theta||^2`` (Eq. 16); 300 steps
each is the paper's best setting (Table V). They are recipes (:data:`STAGE1`, :data:`STAGE2`) run by
the generic loop :func:`~motion_core.method.tuner.tune` (same loop, precision handling, resumption
and cancellation as DPL).

The paper does not name the prompt of either stage. We use the source prompt ``P_s`` in both: the
frames are shown in order, so the motion the prompt names is there to learn (the first version
uses the motion-free ``P_c`` only because its stage 1 shuffles the motion away). Pass another
embedding to change that.

``tune_without_stl`` is the "w/o STL" ablation of Table IV: the paper credits STL with "decoupling
learning" of temporal and spatial features, so without it every tensor STL trains (temporal, RCA,
MA) is trained together in ONE stage on the unmasked, ordered frames, with the same total step
budget (stage 1 + stage 2 steps) and the same loss.
"""

from __future__ import annotations


import torch

from ..video_model.model import MotionModel
from .tuner import StageRecipe, StageResult, StepCallback, TuneConfig, plain_loss, tune

STL_STEPS = 300

STAGE1 = StageRecipe(method="eym_v2", stage=1, name="STL stage 1", parts=("temporal", "motion_attention"),
                     shuffle=False, masked=True, prompt="source", loss=plain_loss)
STAGE2 = StageRecipe(method="eym_v2", stage=2, name="STL stage 2", parts=("attn1", "motion_attention"),
                     shuffle=False, masked=False, prompt="source", loss=plain_loss)
STAGES = (STAGE1, STAGE2)


def _config(config: TuneConfig | None) -> TuneConfig:
    return config or TuneConfig(steps=STL_STEPS)


def tune_stl_stage1(model: MotionModel, masked_latents: torch.Tensor, text_embeddings: torch.Tensor,
                    poses: torch.Tensor | None, config: TuneConfig | None = None,
                    callback: StepCallback | None = None) -> StageResult:
    """STL stage 1: background-masked latents ``(n, 4, h, w)`` in order; trains temporal attention +
    Motion Attention; loss Eq. 16. ``text_embeddings`` ``(1, tokens, dim)`` (we use ``P_s``)."""
    return tune(model, STAGE1, masked_latents, text_embeddings, poses, _config(config), callback)


def tune_stl_stage2(model: MotionModel, latents: torch.Tensor, text_embeddings: torch.Tensor,
                    poses: torch.Tensor | None, config: TuneConfig | None = None,
                    callback: StepCallback | None = None) -> StageResult:
    """STL stage 2: unmasked latents in order; trains RCA (``attn1``) + Motion Attention; loss Eq. 16."""
    return tune(model, STAGE2, latents, text_embeddings, poses, _config(config), callback)


def tune_without_stl(model: MotionModel, latents: torch.Tensor, text_embeddings: torch.Tensor,
                     poses: torch.Tensor | None, config: TuneConfig | None = None,
                     callback: StepCallback | None = None) -> StageResult:
    """The "w/o STL" ablation: one stage on the unmasked, ordered latents training temporal
    attention, RCA and Motion Attention together (loss Eq. 16). Give it ``config.steps`` = the two
    stages' total (600 for the paper's 300 + 300). The result is labelled stage 2."""
    names = list(dict.fromkeys(STAGE1.parameter_names(model) + STAGE2.parameter_names(model)))
    return tune(model, STAGE2, latents, text_embeddings, poses, _config(config), callback, parameters=names)
