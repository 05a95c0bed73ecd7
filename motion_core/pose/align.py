"""Skeleton offset (the later version's alignment): move and scale reference skeletons onto the source person."""

from __future__ import annotations


import numpy as np

from ..errors import InputError
from .keypoints import (
    L_HIP, L_SHOULDER, NECK, R_HIP, R_SHOULDER, as_keypoint_array, present_mask,
)


# ----------------------------------------------------------------------------------------------
# skeleton offset (alignment)
# ----------------------------------------------------------------------------------------------

_ANCHOR_MODES = ("neck_hip", "neck_shoulders", "bbox")
# the anchor choices callers may pass to alignment_parameters / align_skeletons (neck_shoulders is only
# the automatic fallback of neck_hip)
ANCHOR_MODES: tuple[str, ...] = ("neck_hip", "bbox")


def _anchor_and_size(kp: np.ndarray, mode: str, need_size: bool):
    """Per frame anchor ``(n, 2)``, body size ``(n,)`` and usability ``(n,)`` for one anchor mode."""
    present = present_mask(kp)
    xy = kp[..., :2].astype(np.float64)
    n = kp.shape[0]
    if mode == "neck_hip":
        hips = present[:, [R_HIP, L_HIP]]
        n_hips = hips.sum(axis=1)
        mid_hip = (xy[:, [R_HIP, L_HIP]] * hips[..., None]).sum(axis=1) / np.maximum(n_hips, 1)[:, None]
        anchor = 0.5 * (xy[:, NECK] + mid_hip)
        size = np.linalg.norm(xy[:, NECK] - mid_hip, axis=1)
        ok = present[:, NECK] & (n_hips > 0)
    elif mode == "neck_shoulders":
        anchor = xy[:, NECK]
        size = np.linalg.norm(xy[:, R_SHOULDER] - xy[:, L_SHOULDER], axis=1)
        ok = present[:, NECK] & present[:, R_SHOULDER] & present[:, L_SHOULDER]
    elif mode == "bbox":
        ok = present.any(axis=1)
        lo = np.where(present[..., None], xy, np.inf).min(axis=1)
        hi = np.where(present[..., None], xy, -np.inf).max(axis=1)
        lo = np.where(ok[:, None], lo, 0.0)
        hi = np.where(ok[:, None], hi, 0.0)
        anchor = 0.5 * (lo + hi)
        size = hi[:, 1] - lo[:, 1]
    else:  # pragma: no cover - guarded by callers
        raise ValueError(mode)
    size = np.where(ok, size, 0.0)
    if need_size:
        ok = ok & (size > 1e-6)
    return anchor.reshape(n, 2), size, ok


def alignment_parameters(reference, source, anchor: str = "neck_hip", scale: bool = True,
                         reference_name: str = "reference pose", source_name: str = "source pose") -> dict:
    """Compute the skeleton-offset transform used by :func:`align_skeletons` (see there).

    Returns a dict with ``mode`` (the anchor mode actually used), ``scale`` (float), ``reference_anchor``
    and ``source_anchor`` (``(x, y)`` numpy arrays), ``reference_frame`` and ``source_frame`` (the frame
    indices the anchors/sizes were measured on), ``reference_size`` and ``source_size``.
    """
    ref = as_keypoint_array(reference, reference_name)
    src = as_keypoint_array(source, source_name)
    if anchor not in ANCHOR_MODES:
        raise InputError(f"anchor must be 'neck_hip' or 'bbox'; got {anchor!r}")
    modes = _ANCHOR_MODES if anchor == "neck_hip" else ("bbox",)
    for mode in modes:
        a_r, s_r, ok_r = _anchor_and_size(ref, mode, scale)
        a_s, s_s, ok_s = _anchor_and_size(src, mode, scale)
        if ok_r.any() and ok_s.any():
            fr, fs = int(np.argmax(ok_r)), int(np.argmax(ok_s))
            factor = float(s_s[fs] / s_r[fr]) if scale else 1.0
            return {
                "mode": mode,
                "scale": factor,
                "reference_anchor": a_r[fr],
                "source_anchor": a_s[fs],
                "reference_frame": fr,
                "source_frame": fs,
                "reference_size": float(s_r[fr]),
                "source_size": float(s_s[fs]),
            }
    # no mode worked for both: name the input(s) that lack even a bbox anchor
    what = "two body keypoints at different heights" if scale else "any body keypoint"
    bad = [nm for nm, kp in ((reference_name, ref), (source_name, src)) if not _anchor_and_size(kp, "bbox", scale)[2].any()]
    if not bad:  # only reachable for anchor='bbox' (both usable handled above) - defensive
        bad = [reference_name, source_name]
    raise InputError(
        f"{' and '.join(bad)} {'has' if len(bad) == 1 else 'have'} no frame with {what}, so the skeletons "
        "cannot be aligned. Check that the pose estimator found the person (look at its preview), "
        "or turn the skeleton offset off."
    )


def align_skeletons(reference, source, anchor: str = "neck_hip", scale: bool = True,
                    reference_name: str = "reference pose", source_name: str = "source pose") -> np.ndarray:
    """Skeleton offset: move (and optionally scale) the reference skeletons onto the source person.

    The reference person usually stands elsewhere and at another size than the source person; rendering
    the reference skeletons unchanged makes the edited person jump there (ghosting). This moves the
    whole reference sequence rigidly so that its anchor lands on the source person's anchor:

        p' = s * (p - a_ref) + a_src          for every present reference point p of every frame

    * ``a_ref`` / size_ref are measured on the FIRST reference frame where the anchor is usable,
      ``a_src`` / size_src on the first such source frame (``source`` may be ``(m, 18, 3)`` or one
      ``(18, 3)`` frame).
    * ``s = size_src / size_ref`` if ``scale`` else 1.
    * Because one transform is applied to all frames, the reference motion's frame-to-frame
      displacement is kept (multiplied by ``s``); missing points stay ``(0, 0, 0)``; confidences are
      unchanged.

    Anchor modes:
      * ``anchor="neck_hip"`` (default): anchor = midpoint of the neck (1) and the mid-hip (mean of the
        present hips 8 / 11; one hip is enough, e.g. in profile); size = neck-to-mid-hip distance.
        Fallback when either input has no frame with neck and a hip: anchor = neck, size = shoulder
        width (needs neck and both shoulders); if that is not usable in both inputs either, the
        ``"bbox"`` mode. The same mode is always used for both inputs so the anchors mean the same body
        point. (Shoulder width shrinks when a person turns sideways, so the fallback scale is rougher.)
      * ``anchor="bbox"``: anchor = centre of the bounding box of the present points; size = bounding
        box height.

    A frame counts as usable only if its size is > 0 when ``scale`` is on.

    Raises:
        InputError: naming the input that has no frame usable for any anchor (no keypoints at all,
        or - with ``scale`` - no two points at different heights).

    Returns:
        float32 ``(n, 18, 3)`` aligned reference keypoints.
    """
    ref = as_keypoint_array(reference, reference_name)
    params = alignment_parameters(ref, source, anchor=anchor, scale=scale,
                                  reference_name=reference_name, source_name=source_name)
    s = params["scale"]
    a_ref = params["reference_anchor"]
    a_src = params["source_anchor"]
    present = present_mask(ref)
    moved = s * (ref[..., :2].astype(np.float64) - a_ref) + a_src
    out = ref.copy()
    out[..., :2] = np.where(present[..., None], moved, 0.0).astype(np.float32)
    return out
