"""Edit quality against the world's ground truth.

All metrics compare world-resolution images ``(n, h, w, 3)`` in 0..1 (what the fixed VAE decodes)
with the ground truth seen through the same VAE, so a perfect edit scores PSNR = inf, errors 0.

* ``psnr``: whole-frame PSNR (dB), mean over frames.
* ``ssim``: SSIM with a Gaussian window (sigma 1.5, 7x7 at this resolution), mean over frames/channels.
* ``background_psnr``: PSNR over the pixels outside both the source person's and the ground-truth
  person's masks, in every frame: how well the scene is kept.
* ``pose_error``: 1 - IoU of the person's silhouette. A generated pixel counts as the person when its
  colour is nearer to the person's palette (shirt, trousers, pattern, skin) than to the true background
  at that pixel; the truth's silhouette comes from the renderer (coverage >= 0.5). Justification: the
  background of an edit case is known exactly, so this classifier is exact on the truth itself (tested)
  and needs no learned detector; a figure in the wrong pose, a missing or a ghost figure all lower the IoU.
* ``appearance_error``: distance (RGB, 0..1) between the mean colour of the generated person and of
  the true person, taken over the truth's person pixels that the generated frame also shows as person
  (all truth person pixels when it shows none): are the clothes the source's.
* ``ghost_error``: mean absolute RGB difference (0..1) between the edit and the truth over the pixels
  inside the source person's mask (coverage >= 0.5) and outside the ground-truth person's mask
  (coverage 0): the truth there is background, so a ghost of the source person raises it. NaN when
  the source person lies wholly inside the target person (no such pixel).
* ``flicker``: mean absolute frame-to-frame change over the pixels that are background in every frame
  (the true background is static), in 8-bit levels.
* ``seam_flicker`` (long clips): ``flicker`` over the consecutive pairs that straddle a sampling
  window's border only (frames ``b - 1`` and ``b`` for each window start ``b > 0``), in the same units;
  NaN when the clip was sampled in one window (no border).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

METRICS = ("psnr", "ssim", "background_psnr", "pose_error", "appearance_error", "ghost_error", "flicker",
           "seam_flicker")
#: which direction is better, for tables
HIGHER_IS_BETTER = {"psnr": True, "ssim": True, "background_psnr": True, "pose_error": False,
                    "appearance_error": False, "ghost_error": False, "flicker": False,
                    "seam_flicker": False}


def _t(x) -> torch.Tensor:
    return torch.as_tensor(np.asarray(x) if not isinstance(x, torch.Tensor) else x).double()


def _psnr_from_mse(mse: float) -> float:
    return float("inf") if mse <= 0 else 10 * math.log10(1.0 / mse)


def psnr(pred, truth) -> float:
    p, t = _t(pred), _t(truth)
    mse = (p - t).pow(2).flatten(1).mean(1)
    return float(np.mean([_psnr_from_mse(float(m)) for m in mse]))


def _gaussian(size: int = 7, sigma: float = 1.5) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-x**2 / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(pred, truth, size: int = 7, sigma: float = 1.5) -> float:
    """Mean SSIM (Wang et al. 2004, C1=(0.01)^2, C2=(0.03)^2) over valid window positions."""
    p, t = _t(pred).permute(0, 3, 1, 2), _t(truth).permute(0, 3, 1, 2)
    c = p.shape[1]
    w = _gaussian(size, sigma)[None, None].repeat(c, 1, 1, 1)
    mu_p, mu_t = F.conv2d(p, w, groups=c), F.conv2d(t, w, groups=c)
    s_pp = F.conv2d(p * p, w, groups=c) - mu_p**2
    s_tt = F.conv2d(t * t, w, groups=c) - mu_t**2
    s_pt = F.conv2d(p * t, w, groups=c) - mu_p * mu_t
    c1, c2 = 0.01**2, 0.03**2
    m = ((2 * mu_p * mu_t + c1) * (2 * s_pt + c2)) / ((mu_p**2 + mu_t**2 + c1) * (s_pp + s_tt + c2))
    return float(m.mean())


def background_psnr(pred, truth, background) -> float:
    """PSNR over pixels where ``background`` (h, w) or (n, h, w) is True."""
    p, t = _t(pred), _t(truth)
    bg = _t(background).bool()
    if bg.ndim == 2:
        bg = bg.expand(p.shape[:3])
    if not bg.any():
        raise ValueError("no background pixels to score")
    mse = (p - t).pow(2).mean(-1)[bg].mean()
    return _psnr_from_mse(float(mse))


def person_silhouette(images, background_image, palette) -> torch.Tensor:
    """Boolean ``(n, h, w)``: pixels nearer in colour to any of ``palette`` (k, 3) than to the true
    background image ``(h, w, 3)``."""
    x = _t(images)
    bg = _t(background_image)
    pal = _t(palette)
    d_person = (x[..., None, :] - pal).pow(2).sum(-1).amin(-1)
    d_bg = (x - bg).pow(2).sum(-1)
    return d_person < d_bg


def pose_error(pred, person_masks, background_image, palette) -> float:
    sil = person_silhouette(pred, background_image, palette)
    gt = _t(person_masks) >= 0.5
    inter = (sil & gt).flatten(1).sum(1).double()
    union = (sil | gt).flatten(1).sum(1).double().clamp(min=1)
    return float(1 - (inter / union).mean())


def appearance_error(pred, truth, person_masks, background_image, palette) -> float:
    p, t = _t(pred), _t(truth)
    gt = _t(person_masks) >= 0.5
    sil = person_silhouette(pred, background_image, palette)
    errs = []
    for i in range(p.shape[0]):
        sel = gt[i] & sil[i]
        if not sel.any():
            sel = gt[i]
        errs.append(float((p[i][sel].mean(0) - t[i][gt[i]].mean(0)).norm()))
    return float(np.mean(errs))


def ghost_error(pred, truth, source_masks, truth_masks) -> float:
    """Mean absolute RGB difference over the pixels where the source person stood (coverage >= 0.5)
    and the true person is not (coverage 0)."""
    p, t = _t(pred), _t(truth)
    sel = (_t(source_masks) >= 0.5) & (_t(truth_masks) <= 0)
    if not sel.any():
        return float("nan")
    return float((p - t).abs().mean(-1)[sel].mean())


def flicker(pred, static_background) -> float:
    p = _t(pred)
    bg = _t(static_background).bool()
    if p.shape[0] < 2 or not bg.any():
        return 0.0
    return float((p[1:] - p[:-1]).abs().mean(-1)[:, bg].mean() * 255)


def seam_flicker(pred, static_background, borders) -> float:
    """:func:`flicker` over the pairs ``(b - 1, b)`` for ``b`` in ``borders`` (window starts); NaN without borders."""
    p = _t(pred)
    bg = _t(static_background).bool()
    b = torch.as_tensor(sorted({int(x) for x in borders or ()}), dtype=torch.long)
    if b.numel() == 0 or not bg.any():
        return float("nan")
    if int(b.min()) < 1 or int(b.max()) >= p.shape[0]:
        raise ValueError(f"window borders must lie in [1, {p.shape[0]}); got {b.tolist()}")
    return float((p[b] - p[b - 1]).abs().mean(-1)[:, bg].mean() * 255)


def score(pred, truth, truth_masks, source_masks, background_image, palette, borders=None) -> dict[str, float]:
    """All metrics for one edit: ``pred``/``truth`` (n, h, w, 3), masks (n, h, w) coverage 0..1,
    ``background_image`` (h, w, 3) the scene without the person, ``palette`` (k, 3) the person's colours,
    ``borders`` the sampling windows' starts (long clips; None: one window)."""
    tm, sm = _t(truth_masks), _t(source_masks)
    bg_each = (tm <= 0) & (sm <= 0)
    static = bg_each.all(0)
    return {
        "psnr": psnr(pred, truth),
        "ssim": ssim(pred, truth),
        "background_psnr": background_psnr(pred, truth, bg_each),
        "pose_error": pose_error(pred, tm, background_image, palette),
        "appearance_error": appearance_error(pred, truth, tm, background_image, palette),
        "ghost_error": ghost_error(pred, truth, sm, tm),
        "flicker": flicker(pred, static),
        "seam_flicker": seam_flicker(pred, static, borders),
    }
