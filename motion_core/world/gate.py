"""Gate for the world's base model: do fresh samples follow their poses and show plausible scenes?

``python -m motion_core.world.gate`` samples pairs of images from the same noise and prompt with two
different poses A and B (classifier-free guidance 3, 25 DDIM steps) and measures the **pose
localisation score**: the share of the change between the two samples, ``|x_A - x_B|``, that falls on
the silhouettes of the two skeletons (the world renderer's figure drawn at A and at B). Justification:
with the noise and the prompt fixed, the pose is the only thing that differs, so a model that follows
its poses changes the person where the skeletons are and leaves the rest of the scene; a model that
ignores them changes nothing (the score is then meaningless, so the mean change is reported too), and
one that moves things at random spreads the change over the image (score near ``chance``, the
silhouettes' share of the image). It also writes a picture grid (pose A | sample A | pose B | sample B).
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from ..method.ddim import ddim_schedule, ddim_step
from . import vae
from .model import WEIGHTS, WorldModels, load, pose_hints
from .scene import MOTIONS, POSE_SIZE, draw_person, make_motion, make_person, make_scene, motion_keypoints, motion_prompt


def _silhouettes(keypoints: np.ndarray, person) -> torch.Tensor:
    masks = [draw_person(np.zeros((POSE_SIZE, POSE_SIZE, 3), np.float32), k, person) for k in keypoints]
    return vae.downsample_masks(np.stack(masks)) > 0.3


@torch.no_grad()
def sample(models: WorldModels, prompts: list[str], keypoints: np.ndarray, noise: torch.Tensor, steps: int = 25,
           guidance: float = 3.0) -> torch.Tensor:
    """Independent images (one per row) from ``noise`` with per-row prompts and poses: the engine's
    DDIM step with classifier-free guidance, the model in ``self`` attention (no frame mixing)."""
    model = models.motion_model("self")
    n = noise.shape[0]
    cond = models.text.encode(prompts)
    uncond = models.text.encode([""] * n)
    emb = torch.cat([uncond, cond])
    hints = pose_hints(keypoints)
    hints = torch.cat([hints, hints])
    schedule = ddim_schedule(model.scheduler_config, steps)
    z = noise.clone()
    for t in schedule.timesteps.tolist():
        eps = model.predict(torch.cat([z, z]), t, emb, 2 * n, poses=hints)
        e_u, e_c = eps.chunk(2)
        z = ddim_step(z, e_u + guidance * (e_c - e_u), schedule.alpha(t), schedule.alpha_prev(t))
    return z


def evaluate(models: WorldModels, pairs: int = 16, seed: int = 1234, steps: int = 25, guidance: float = 3.0):
    rng = np.random.default_rng(seed)
    prompts, kp_a, kp_b, people = [], [], [], []
    for _ in range(pairs):
        s = rng.integers(1 << 30, size=4)
        scene, person = make_scene(int(s[0])), make_person(int(s[1]))
        ma, mb = rng.choice(len(MOTIONS), 2, replace=False)
        a = make_motion(int(s[2]), MOTIONS[ma])
        b = make_motion(int(s[3]), MOTIONS[mb])
        kp_a.append(motion_keypoints(a, 8)[rng.integers(8)])
        kp_b.append(motion_keypoints(b, 8)[rng.integers(8)])
        prompts.append(motion_prompt(person, scene, MOTIONS[ma]))
        people.append(person)
    kp_a, kp_b = np.stack(kp_a), np.stack(kp_b)
    noise = torch.randn((pairs, 4, POSE_SIZE // 8, POSE_SIZE // 8), generator=torch.Generator().manual_seed(seed))
    x = vae.decode(sample(models, prompts + prompts, np.concatenate([kp_a, kp_b]), torch.cat([noise, noise]), steps, guidance))
    xa, xb = x[:pairs], x[pairs:]
    union = torch.stack([(_silhouettes(kp_a[i:i + 1], people[i]) | _silhouettes(kp_b[i:i + 1], people[i]))[0]
                         for i in range(pairs)])
    change = (xa - xb).abs().sum(-1)
    score = (change * union).flatten(1).sum(1) / change.flatten(1).sum(1).clamp(min=1e-8)
    result = {
        "pairs": pairs, "seed": seed, "ddim_steps": steps, "guidance": guidance,
        "pose_localisation_score": float(score.mean()), "score_sd": float(score.std()),
        "chance": float(union.float().mean()), "mean_change": float(change.mean() / 3),
    }
    return result, (kp_a, xa, kp_b, xb)


def grid(kp_a, xa, kp_b, xb, rows: int = 8) -> np.ndarray:
    pa = torch.nn.functional.max_pool2d(pose_hints(kp_a[:rows]), 8).permute(0, 2, 3, 1)
    pb = torch.nn.functional.max_pool2d(pose_hints(kp_b[:rows]), 8).permute(0, 2, 3, 1)
    cols = [pa, xa[:rows], pb, xb[:rows]]
    tiles = [torch.cat([vae.upscale(c[i:i + 1], 4)[0] for c in cols], 1) for i in range(min(rows, xa.shape[0]))]
    return (torch.cat(tiles, 0).clamp(0, 1).numpy() * 255).round().astype(np.uint8)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m motion_core.world.gate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", default=str(WEIGHTS))
    p.add_argument("--pairs", type=int, default=16)
    p.add_argument("--grid", default=None, help="write the picture grid (PNG) here")
    args = p.parse_args(argv)
    result, images = evaluate(load(args.weights), args.pairs)
    print(json.dumps(result, indent=1))
    if args.grid:
        from PIL import Image

        from ..files import atomic_path

        with atomic_path(args.grid) as tmp:  # the world writes its own picture: apps sit above it
            Image.fromarray(grid(*images)).save(tmp, format="PNG")
        print(f"wrote {args.grid}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
