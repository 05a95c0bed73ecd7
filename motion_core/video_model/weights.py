"""Tuned weights on disk: only the trained tensors, as safetensors with metadata, written atomically.

The metadata records the method (``eym_v1`` or ``eym_v2``; files from before the later version
existed hold no method and are ``eym_v1``), the attention mode, the stages run with their step
counts, and a fingerprint of the base UNet, so that loading onto another base model, or onto a
video model built for the other method, is refused with a clear message.

The fingerprint survives the base model being held in fp32, fp16 or bf16: for a few frozen tensors
it stores their RMS and four seeded random projections of (a prefix of) their values, normalised by
the norm. Storage rounding moves those numbers by about 1e-3 at most; another model (or a fine-tune
that moved its weights by more than a few percent) moves them by far more.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import InputError, ModelError, nonfinite_tensors
from ..seeding import name_generator
from ..video_model.model import MotionModel
from ..video_model.motion_attention import MA_KEY

FORMAT = "edit-your-motion/tuned-weights/1"
FINGERPRINT_TENSORS = 8
FINGERPRINT_PREFIX = 1 << 18
FINGERPRINT_PROJECTIONS = 4
FINGERPRINT_TOLERANCE = 0.02


def fingerprint(model: MotionModel) -> dict[str, list[float]]:
    """A dtype-independent summary of the frozen base UNet weights."""
    trained = set(model.trainable_parameter_names())
    params = dict(model.unet.named_parameters())
    names = sorted(n for n, p in params.items() if n not in trained and p.ndim >= 2)
    if not names:
        raise ModelError("the UNet has no frozen weight matrices to fingerprint")
    step = max(1, len(names) // FINGERPRINT_TENSORS)
    chosen = names[::step][:FINGERPRINT_TENSORS]
    out = {}
    for name in chosen:
        w = params[name].detach().flatten()[:FINGERPRINT_PREFIX].to("cpu", torch.float64)
        norm = w.norm().clamp(min=1e-12)
        r = torch.randn(FINGERPRINT_PROJECTIONS, w.numel(), generator=name_generator(name),
                        dtype=torch.float64)
        proj = (r @ w) / norm
        out[name] = [float(norm / w.numel() ** 0.5)] + proj.tolist()
    return out


def fingerprint_distance(a: dict, b: dict) -> float:
    """0 for the same base model; ``inf`` when the fingerprints cover different tensors."""
    if set(a) != set(b):
        return float("inf")
    worst = 0.0
    for name in a:
        (rms_a, *pa), (rms_b, *pb) = a[name], b[name]
        worst = max(worst, abs(rms_a - rms_b) / max(abs(rms_a), 1e-12))
        worst = max(worst, max(abs(x - y) for x, y in zip(pa, pb)))
    return worst


def save_tuned_weights(path: str | os.PathLike, model: MotionModel, state: dict[str, torch.Tensor],
                       steps: dict[int, int], extra: dict | None = None) -> Path:
    """Write ``state`` (the trained tensors) to ``path`` as safetensors, atomically.

    ``steps`` maps each stage run to its number of steps. The file appears complete or not at all.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        raise InputError(f"tuned weights are saved as .safetensors; got file name {path.name!r}")
    if not state:
        raise InputError("there are no tuned tensors to save; run stage 1 and/or stage 2 first")
    broken = nonfinite_tensors(state.items())
    if broken:
        raise InputError(f"tuned tensor {broken[0]} holds NaN or infinite values; nothing was written. Tune again "
                         "(with a lower learning rate)")
    meta = {
        "format": FORMAT,
        "method": model.method,
        "attention_mode": model.attention_mode,
        "stages": json.dumps({str(k): int(v) for k, v in sorted(steps.items())}),
        "base_fingerprint": json.dumps(fingerprint(model)),
        "unet_channels": json.dumps(list(model.unet.config.block_out_channels)),
    }
    if extra:
        meta.update({str(k): str(v) for k, v in extra.items()})
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in state.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata=meta)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp made it private; saved weights are ordinary files
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_tuned_weights(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """Tensors and parsed metadata of a tuned-weights file (no model needed)."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"tuned weights file {str(path)!r} does not exist; save tuned weights first or pick another file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for a damaged file
        raise InputError(f"{path.name} is not a readable safetensors file ({exc}); save the tuned weights again") from exc
    if meta.get("format") != FORMAT:
        raise InputError(f"{path.name} is not an Edit-Your-Motion tuned-weights file (format {meta.get('format')!r})")
    broken = nonfinite_tensors(tensors.items())
    if broken:
        raise InputError(f"{path.name} holds NaN or infinite values (tensor {broken[0]}); the file is damaged: tune again")
    parsed = dict(meta)
    parsed["stages"] = {int(k): v for k, v in json.loads(meta["stages"]).items()}
    parsed["base_fingerprint"] = json.loads(meta["base_fingerprint"])
    parsed.setdefault("method", "eym_v1")
    return tensors, parsed


def verify_tuned_weights(tensors: dict[str, torch.Tensor], meta: dict, model: MotionModel, name: str,
                         check_base: bool = True) -> None:
    """Raise ModelError unless the tensors fit ``model`` and (with ``check_base``) were tuned on its
    base weights."""
    method = meta.get("method", "eym_v1")
    if method != model.method:
        raise ModelError(
            f"{name} was tuned with method {method} but the video model is built for {model.method}; load the video "
            f"model with method {method} (EYM Load Video Model's 'method'), or tune again"
        )
    if check_base:
        d = fingerprint_distance(meta["base_fingerprint"], fingerprint(model))
        if d > FINGERPRINT_TOLERANCE:
            raise ModelError(
                f"{name} was tuned on a different base checkpoint (fingerprint distance {d:.3g}); load the checkpoint "
                "it was tuned with, or tune again on this one (or skip the base-model check at your own risk)"
            )
    has_ma = [k for k in tensors if k.startswith(MA_KEY + ".")]
    if has_ma and model.motion_attention is None:
        raise ModelError(f"{name} holds Motion Attention weights but the video model has no Motion Attention; "
                         "load the video model with method eym_v2")
    if not has_ma and model.motion_attention is not None and method == "eym_v2":
        raise ModelError(f"{name} was tuned without Motion Attention (an ablation) but the video model has it; "
                         "build the video model with motion_attention=False to use these weights")
    allowed = set(model.trainable_parameter_names())
    params = dict(model.unet.named_parameters())
    bad = [k for k, v in tensors.items() if k not in allowed or tuple(params[k].shape) != tuple(v.shape)]
    if bad:
        raise ModelError(f"{name} does not fit this video model (e.g. tensor {bad[0]}); load its own base checkpoint")


def load_tuned_weights(path: str | os.PathLike, model: MotionModel, check_base: bool = True) -> dict:
    """Load a tuned-weights file into ``model`` (after checking it was made for this base model).

    Sets the model's attention mode to the one the weights were tuned with. Returns the metadata.
    """
    tensors, meta = read_tuned_weights(path)
    verify_tuned_weights(tensors, meta, model, Path(path).name, check_base)
    model.set_attention_mode(meta["attention_mode"])
    model.load_tuned_state(tensors)
    return meta
