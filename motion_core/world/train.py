"""Train the world's base model from scratch: ``python -m motion_core.world.train``.

Single frames (SD1.5 is an image model) of random scenes, people, motions and phases; epsilon
prediction on SD1.5's noise schedule; the UNet, the pose ControlNet and the text encoder learn
together. Prompts: 60% ``P_s`` (content + motion), 30% ``P_c`` (content only), 10% empty (for
classifier-free guidance). 10% of the frames show the person over a plain colour instead of the scene
(SD1.5 has seen plenty of plain backgrounds; stage 1 of the method feeds masked frames). Seeded: the
same arguments give the same weights on the same machine. An exponential moving average of the weights
is what gets saved.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import multiprocessing as mp
import queue
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from . import model as WM
from . import vae
from .scene import POSE_SIZE, training_sample


def make_batch(rng: np.random.Generator, batch: int):
    images, kps, prompts = [], [], []
    for _ in range(batch):
        img, kp, mask, prompt = training_sample(rng)
        r = rng.random()
        if rng.random() < 0.1:  # plain background
            colour = rng.uniform(0, 1, 3) * (rng.random() < 0.7)
            img = img * mask[..., None] + colour * (1 - mask[..., None])
        if r < 0.1:
            prompt = ""
        elif r < 0.4:
            prompt = prompt.rsplit(" is ", 1)[0]
        images.append(img), kps.append(kp), prompts.append(prompt)
    latents = vae.encode(np.stack(images).astype(np.float32))
    hints = WM.pose_hints(np.stack(kps))
    return latents, hints, prompts


def _producer(seed: int, batch: int, out, stop):
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)
    rng = np.random.default_rng([seed, 99])
    while not stop.is_set():
        item = make_batch(rng, batch)
        while not stop.is_set():
            try:
                out.put(item, timeout=0.5)
                break
            except queue.Full:
                pass


def train(out: Path, steps: int = 3000, minutes: float = 40.0, batch: int = 32, lr: float = 1e-3, seed: int = 0,
          ema_decay: float = 0.995, save_every: int = 100, log=print) -> dict:
    torch.manual_seed(seed)
    models = WM.build(seed)
    params = [p for m in (models.unet, models.controlnet, models.text) for p in m.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    warmup = 100
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda k: min(1.0, (k + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(k, steps) / steps))))
    ema = copy.deepcopy(models)
    for m in (ema.unet, ema.controlnet, ema.text):
        m.requires_grad_(False)
    ema_params = [p for m in (ema.unet, ema.controlnet, ema.text) for p in m.parameters()]
    noise_sched = DDPMScheduler.from_config(WM.SCHEDULER_CONFIG)
    gen = torch.Generator().manual_seed(seed)
    # batches are drawn in another process: drawing them in a thread holds the GIL the training loop needs
    ctx = mp.get_context("spawn")
    q = ctx.Queue(maxsize=3)
    stop = ctx.Event()
    worker = ctx.Process(target=_producer, args=(seed, batch, q, stop), daemon=True)
    worker.start()
    t0 = time.perf_counter()
    losses, history = [], []
    k = 0
    meta = {}
    try:
        for k in range(steps):
            latents, hints, prompts = q.get()
            noise = torch.randn(latents.shape, generator=gen)
            t = torch.randint(0, noise_sched.config.num_train_timesteps, (latents.shape[0],), generator=gen)
            zt = noise_sched.add_noise(latents, noise, t)
            emb = models.text(WM.tokenize_prompts(prompts))
            down, mid = models.controlnet(zt, t, emb, hints, return_dict=False)
            pred = models.unet(zt, t, emb, down_block_additional_residuals=down, mid_block_additional_residual=mid).sample
            loss = F.mse_loss(pred, noise)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            with torch.no_grad():
                d = min(ema_decay, (1 + k) / (10 + k))
                torch._foreach_lerp_(ema_params, [p.detach() for p in params], 1 - d)
            losses.append(float(loss.detach()))
            elapsed = time.perf_counter() - t0
            if (k + 1) % 25 == 0:
                avg = float(np.mean(losses[-25:]))
                history.append([k + 1, round(avg, 5), round(elapsed, 1)])
                log(f"step {k + 1}/{steps}  loss {avg:.4f}  lr {sched.get_last_lr()[0]:.2e}  {elapsed / 60:.1f} min", flush=True)
            done = elapsed > minutes * 60 or k + 1 == steps
            if (k + 1) % save_every == 0 or done:
                meta = {"steps": k + 1, "batch": batch, "lr": lr, "seed": seed, "ema_decay": ema_decay,
                        "final_loss_avg100": round(float(np.mean(losses[-100:])), 5), "minutes": round(elapsed / 60, 1),
                        "loss_history": history, "pose_size": POSE_SIZE}
                WM.save(ema, out, meta)
            if done:
                break
    finally:
        stop.set()
        worker.join(timeout=5)
        if worker.is_alive():
            worker.terminate()
    log(f"saved {out} after {k + 1} steps ({meta.get('minutes')} min), final loss {meta.get('final_loss_avg100')}")
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m motion_core.world.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(WM.WEIGHTS), help="safetensors file to write (atomically, every 100 steps)")
    p.add_argument("--steps", type=int, default=3000, help="optimizer steps (the cosine schedule spans these)")
    p.add_argument("--minutes", type=float, default=40.0, help="stop early after this many minutes")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    meta = train(Path(args.out), args.steps, args.minutes, args.batch, args.lr, args.seed)
    print(json.dumps({k: v for k, v in meta.items() if k != "loss_history"}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
