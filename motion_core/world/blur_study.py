"""Where does the edited figure's softness come from? (README, "Beyond the paper", *The blur*.)

``python -m motion_core.world.blur_study CASES TUNED_CACHE OUT.json`` (e.g. ``0,1 tuned_cache blur.json``)
scores, per world case of seed 0 (``--quick`` tuning: 30 + 30 steps; the eym_v1 tuned weights must
be in ``TUNED_CACHE``, written by ``python -m motion_core quality --quick --tuned-cache TUNED_CACHE``):

* the ground truth against itself (the metrics' floor);
* the untuned base model inverting the ground-truth clip (P_t, its own aligned poses) and sampling it
  back, at 10 and 25 DDIM steps (what the base model and the step count allow an edit at best);
* ``eym_v1_enhanced`` at 10, 25 and 50 DDIM steps, and at 10 steps with guidance 2 and 4 (empty
  negative prompt) and with eta 0.5.

A study script, not part of the benchmark; one torch thread.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from ..method.ddim import ddim_invert, ddim_sample
from ..method.sampler import SamplerConfig, two_branch_sample
from . import metrics as M
from . import pipeline as P
from . import vae
from .model import load, pose_hints
from .scene import make_case


def study(case_index: int, models, tuned_cache: Path) -> dict:
    torch.manual_seed(case_index)
    case = make_case(0, case_index, 8)
    inp = P.CaseInputs.build(case, models)
    inp.cache.update(torch.load(tuned_cache / f"seed0_case{case_index}_frames8_steps30_lr{P.TUNING_LR:g}.pt"))

    def score(latents):
        return M.score(vae.decode(latents), inp.truth(), inp.truth_masks(), inp.source_masks(), inp.background(),
                       inp.palette())

    r = {"truth_roundtrip": score(vae.encode(torch.from_numpy(case.truth_images)))}
    base = models.motion_model("rc")
    truth = vae.encode(torch.from_numpy(case.truth_images))
    hints = pose_hints(case.aligned_keypoints)
    for steps in (10, 25):
        z_t = ddim_invert(base, truth, inp.p_t, hints, num_steps=steps)
        r[f"base_recon_truth_{steps}"] = score(ddim_sample(base, z_t, inp.p_t, hints, num_steps=steps))
    for steps in (10, 25, 50):
        r[f"enh_steps{steps}"] = score(P.run_eym_v1_enhanced(models, inp, P.Settings(stage_steps=30, ddim_steps=steps)))
    s = P.Settings(stage_steps=30, ddim_steps=10)
    model = P._tuned(models, inp, s, "v1_rc", "rc", None)
    z_t, traj = P._invert(model, inp, s)
    for name, cfg in (("enh_guidance2", SamplerConfig(num_steps=10, guidance_scale=2.0)),
                      ("enh_guidance4", SamplerConfig(num_steps=10, guidance_scale=4.0)),
                      ("enh_eta0.5", SamplerConfig(num_steps=10, eta=0.5))):
        r[name] = score(two_branch_sample(model, z_t, inp.p_s, inp.p_t, inp.source_hints, inp.reference_hints, cfg,
                                          uncond_embeddings=inp.uncond, keep=P.keeper_for(inp, traj, P.ENHANCED)).edited)
    return r


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 3:
        print(__doc__)
        return 2
    torch.set_num_threads(1)
    models = load(None)
    out = {c: study(int(c), models, Path(argv[1])) for c in argv[0].split(",")}
    Path(argv[2]).write_text(json.dumps({"per_case": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
