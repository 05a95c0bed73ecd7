"""OpenPose body detection (controlnet_aux's body network) with weights from a caller-given file.

controlnet_aux is imported lazily (it is a heavy import) and only its network definition, its
weight-key helper and its per-image ``Body`` inference are reused. Weights are read with
``torch.load(..., weights_only=True)`` or safetensors, never with unrestricted pickle
(controlnet_aux's own ``Body(path)`` uses plain ``torch.load``, so it is not used to load).

Output follows ``keypoints.py``: float32 ``(n, 18, 3)`` (x, y, confidence) in pixels of the input
frames, missing points ``(0, 0, 0)``.
"""

from __future__ import annotations

import os
import pickle
import warnings
from typing import Callable

import numpy as np
import torch

from ..errors import InputError
from .images import to_uint8_frames
from .keypoints import NUM_KEYPOINTS, check_person, select_person

__all__ = [
    "BODY_MODEL_FILENAME",
    "load_body_model",
    "detect_keypoints",
    "subset_to_people",
    "candidate_subset_to_keypoints",
    "require_people",
]

BODY_MODEL_FILENAME = "body_pose_model.pth"
BODY_MODEL_SOURCE = "the Hugging Face repository lllyasviel/Annotators"


def _import_open_pose():
    """Return controlnet_aux's ``(body module, model module, util module)``."""
    try:
        with warnings.catch_warnings():
            # controlnet_aux imports timm's deprecated paths and re-registers timm models on import:
            # warnings about its own code that read like errors and that no user can act on
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"timm(\.|$)")
            warnings.filterwarnings("ignore", message=r"Overwriting \S+ in registry", category=UserWarning)
            warnings.simplefilter("ignore", DeprecationWarning)  # its own imports (scipy, torch.jit)
            from controlnet_aux.open_pose import body as body_mod  # noqa: PLC0415 - heavy, lazy on purpose
            from controlnet_aux.open_pose import model as model_mod  # noqa: PLC0415
            from controlnet_aux.open_pose import util as util_mod  # noqa: PLC0415
    except Exception as exc:  # ImportError, or an optional dependency of controlnet_aux failing
        raise ImportError(
            "OpenPose detection needs the Python package controlnet-aux (pip install controlnet-aux); "
            f"importing it failed: {exc}. Alternatively feed POSE_KEYPOINT from another pose estimator node."
        ) from exc
    return body_mod, model_mod, util_mod


def _missing_file_error(path, where_hint: str | None) -> InputError:
    where = f" and put it in {where_hint}" if where_hint else " and pass its path"
    return InputError(
        f"OpenPose body model file {BODY_MODEL_FILENAME} not found (looked for {path!s}). "
        f"Download {BODY_MODEL_FILENAME} from {BODY_MODEL_SOURCE}{where}. "
        "A .safetensors conversion of it works too."
    )


def _resolve_path(path, where_hint: str | None) -> str:
    if path is None or str(path) == "":
        raise _missing_file_error("no path given", where_hint)
    path = os.fspath(path)
    if os.path.isdir(path):
        stem = os.path.splitext(BODY_MODEL_FILENAME)[0]
        for cand in (BODY_MODEL_FILENAME, stem + ".safetensors"):
            if os.path.isfile(os.path.join(path, cand)):
                return os.path.join(path, cand)
        raise _missing_file_error(os.path.join(path, BODY_MODEL_FILENAME), where_hint)
    if not os.path.isfile(path):
        raise _missing_file_error(path, where_hint)
    return path


def _read_state_dict(path: str) -> dict:
    name = os.path.basename(path)
    if path.lower().endswith(".safetensors"):
        from safetensors.torch import load_file  # noqa: PLC0415

        try:
            return load_file(path, device="cpu")
        except Exception as exc:
            raise InputError(f"could not read the OpenPose body model {name} as safetensors: {exc}. "
                             f"Download {BODY_MODEL_FILENAME} again.") from exc
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputError(
            f"{name} is not a plain weights file: it contains Python objects that are not loaded for "
            f"safety (torch.load weights_only=True refused it). Use the original {BODY_MODEL_FILENAME} "
            f"from {BODY_MODEL_SOURCE}, or a .safetensors conversion."
        ) from exc
    except Exception as exc:  # truncated / not a torch file
        raise InputError(f"could not read the OpenPose body model {name}: {exc}. "
                         f"Download {BODY_MODEL_FILENAME} again.") from exc
    for key in ("state_dict", "model"):  # tolerate a checkpoint wrapper dict
        if isinstance(sd, dict) and isinstance(sd.get(key), dict) and not isinstance(sd.get(key), torch.Tensor):
            sd = sd[key]
    if not isinstance(sd, dict):
        raise InputError(f"{name} does not hold a state dict of tensors; use {BODY_MODEL_FILENAME} "
                         f"from {BODY_MODEL_SOURCE}")
    return sd


def load_body_model(path, where_hint: str | None = None, device: str | torch.device = "cpu") -> torch.nn.Module:
    """Build controlnet_aux's OpenPose body network and load its weights from ``path``.

    Args:
        path: the weights file (``body_pose_model.pth`` as published in lllyasviel/Annotators, a state
            dict of the full network, or a ``.safetensors`` version of either), or a directory
            containing ``body_pose_model.pth`` / ``body_pose_model.safetensors``.
        where_hint: where the user should put the file, shown in the missing-file message
            (e.g. ``"ComfyUI/models/openpose"``).
        device: device to move the network to.

    Weights are read with ``torch.load(path, map_location="cpu", weights_only=True)`` (a file with
    arbitrary pickled objects is refused) or safetensors. Both key layouts are accepted: the original
    file's (``conv1_1.weight``, mapped with controlnet_aux's ``util.transfer``) and the network's own
    (``model0.conv1_1.weight``).

    Returns:
        the ``bodypose_model`` ``nn.Module`` in eval mode, gradients disabled.

    Raises:
        InputError: file missing (naming ``body_pose_model.pth`` and ``where_hint``), unreadable,
        refused by ``weights_only``, or not an OpenPose body model.
    """
    resolved = _resolve_path(path, where_hint)
    sd = _read_state_dict(resolved)
    _, model_mod, util_mod = _import_open_pose()
    net = model_mod.bodypose_model()
    wanted = net.state_dict().keys()
    if not all(k in sd for k in wanted):
        try:
            sd = util_mod.transfer(net, sd)
        except KeyError as exc:
            raise InputError(
                f"{os.path.basename(resolved)} is not an OpenPose body model (weight {exc} is missing). "
                f"Use {BODY_MODEL_FILENAME} from {BODY_MODEL_SOURCE}."
            ) from None
    else:
        sd = {k: sd[k] for k in wanted}
    try:
        net.load_state_dict(sd)
    except RuntimeError as exc:
        raise InputError(f"{os.path.basename(resolved)} does not fit the OpenPose body network: {exc}. "
                         f"Use {BODY_MODEL_FILENAME} from {BODY_MODEL_SOURCE}.") from exc
    net.eval().requires_grad_(False)
    return net.to(device)


# ----------------------------------------------------------------------------------------------
# candidate / subset -> keypoints
# ----------------------------------------------------------------------------------------------

def subset_to_people(candidate, subset) -> np.ndarray:
    """controlnet_aux Body output -> ``(p, 18, 3)`` pixel keypoints of every person.

    ``candidate`` is ``(k, 4)`` rows ``(x, y, score, id)`` (may be empty, even shaped ``(0,)``);
    ``subset`` is ``(p, 20)``: columns 0..17 index ``candidate`` (-1 = missing), 18 total score,
    19 part count. Confidence is the candidate's heatmap score.
    """
    subset = np.asarray(subset, dtype=np.float64).reshape(-1, 20)
    candidate = np.asarray(candidate, dtype=np.float64)
    people = np.zeros((subset.shape[0], NUM_KEYPOINTS, 3), dtype=np.float32)
    if subset.shape[0] == 0:
        return people
    if candidate.ndim != 2:
        candidate = candidate.reshape(-1, 4)
    idx = subset[:, :NUM_KEYPOINTS].astype(np.int64)
    have = idx >= 0
    rows = candidate[np.where(have, idx, 0)]
    people[..., :3] = np.where(have[..., None], rows[..., :3], 0.0)
    # a present point needs confidence > 0 to count as present in our convention
    people[..., 2] = np.where(have, np.maximum(people[..., 2], np.float32(1e-6)), 0.0)
    return people


def candidate_subset_to_keypoints(candidate, subset, person: str | int = "largest") -> tuple[np.ndarray, bool]:
    """Pick one person from controlnet_aux's ``(candidate, subset)``.

    ``person="largest"`` picks the largest bounding box (ties: more points, then higher total score
    ``subset[:, 18]``); an int picks that subset row. Returns ``((18, 3) pixel keypoints, found)``;
    when nobody (or no such person) was found the keypoints are all zero and ``found`` is False.
    """
    people = subset_to_people(candidate, subset)
    scores = np.asarray(subset, dtype=np.float64).reshape(-1, 20)[:, 18] if people.shape[0] else None
    i = select_person(people, person, scores=scores)
    if i < 0:
        return np.zeros((NUM_KEYPOINTS, 3), dtype=np.float32), False
    return people[i].copy(), True


# ----------------------------------------------------------------------------------------------
# detection
# ----------------------------------------------------------------------------------------------

def _resize_for_detection(frame: np.ndarray, resolution: int | None) -> np.ndarray:
    """controlnet_aux's ``resize_image``: short side -> ``resolution``, both sides rounded to x64."""
    if not resolution:
        return frame
    import cv2  # noqa: PLC0415

    h, w = frame.shape[:2]
    k = float(resolution) / min(h, w)
    nh = max(64, int(np.round(h * k / 64.0)) * 64)
    nw = max(64, int(np.round(w * k / 64.0)) * 64)
    if (nh, nw) == (h, w):
        return frame
    return cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_LANCZOS4 if k > 1 else cv2.INTER_AREA)


def detect_keypoints(images, body_model, person: str | int = "largest", detect_resolution: int | None = 512,
                     callback: Callable[[int, int], None] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Detect OpenPose-18 body keypoints frame by frame.

    Args:
        images: ``(n, H, W, 3)`` RGB frames, float 0..1 (torch/numpy, ComfyUI IMAGE) or uint8.
        body_model: the network from :func:`load_body_model` (or a controlnet_aux ``Body``).
        person: ``"largest"`` (largest bounding box) or a person index in detection order.
        detect_resolution: like controlnet_aux's ``OpenposeDetector`` the frame is resized so its
            short side is this many pixels (sides rounded to multiples of 64) before detection;
            ``None``/0 detects at the native size. Keypoints are returned in pixels of the INPUT frames.
        callback: called as ``callback(i, n)`` after each frame (progress / interruption checks).

    Each frame runs controlnet_aux's ``Body`` inference on the BGR image as ``OpenposeDetector`` does.
    Missing people do not raise here: check ``found`` with :func:`require_people`.

    Returns:
        ``(keypoints (n, 18, 3) float32 pixels, found (n,) bool)``.
    """
    person = check_person(person)
    body_mod, _, _ = _import_open_pose()
    if isinstance(body_model, body_mod.Body):
        body = body_model
    elif isinstance(body_model, torch.nn.Module):
        body = body_mod.Body.__new__(body_mod.Body)  # Body(path) would torch.load unrestricted; skip __init__
        body.model = body_model.eval()
    else:
        raise InputError("body_model must be the OpenPose body network from load_body_model")
    frames = to_uint8_frames(images)
    n, h, w = frames.shape[:3]
    out = np.zeros((n, NUM_KEYPOINTS, 3), dtype=np.float32)
    found = np.zeros(n, dtype=bool)
    for i in range(n):
        rgb = _resize_for_detection(frames[i], detect_resolution)
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with torch.no_grad():
            candidate, subset = body(bgr)
        kp, ok = candidate_subset_to_keypoints(candidate, subset, person)
        if ok:
            dh, dw = bgr.shape[:2]
            present = kp[:, 2] > 0
            kp[:, 0] = np.where(present, kp[:, 0] * (w / dw), 0.0)
            kp[:, 1] = np.where(present, kp[:, 1] * (h / dh), 0.0)
        out[i], found[i] = kp, ok
        if callback is not None:
            callback(i, n)
    return out, found


def require_people(found, input_name: str, detector: str = "OpenPose", still: bool = False) -> None:
    """Raise ``InputError`` listing the frames of ``input_name`` where ``detector`` found no person.

    ``still``: the frames are one image (a single frame, or one image repeated to a clip's length); the
    message then speaks of the image, not of frame numbers."""
    found = np.asarray(found, dtype=bool).reshape(-1)
    missing = np.nonzero(~found)[0].tolist()
    if not missing:
        return
    if still or len(found) == 1:
        raise InputError(
            f"{detector} found no person in the image {input_name}: is the person visible and large enough? "
            "Use another image, or provide POSE_KEYPOINT from another pose estimator (e.g. DWPose) instead."
        )
    shown = ", ".join(map(str, missing[:30])) + (f", ... ({len(missing)} in all)" if len(missing) > 30 else "")
    everything = " (no frame at all: is the person visible and large enough?)" if len(missing) == len(found) else ""
    raise InputError(
        f"{detector} found no person in {input_name} frame(s) {shown} of {len(found)}{everything}. "
        "Trim those frames from the clip, or provide POSE_KEYPOINT from another pose estimator "
        "(e.g. DWPose) instead."
    )
