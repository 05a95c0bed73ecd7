"""Long clips (beyond the paper): tuning, inversion and sampling on windows of a clip of any length.

:class:`ContextOptions` carries the window length ``W`` and overlap ``O``.

* **Tuning** (:func:`tuning_window`): each step sees ``W`` frames, so a step's time and memory depend
  on ``W`` and not on the clip's length. A shuffled stage (the first version's stage 1) draws ``W``
  frames at random from the whole clip, in a random order; the other stages take a contiguous window
  at a random offset. The draw of step ``k`` comes from its own seeded generator
  (:func:`~motion_core.seeding.step_generator` on a seed derived from the run's), so it is the same
  in a resumed run and does not shift the step's timestep and noise draws.
* **Inversion and sampling** (:func:`window_layout`, :func:`fused_prediction`): every step predicts
  the noise window by window (windows of ``W`` every ``W - O`` frames, the last one flush with the
  clip's end) and fuses each frame's predictions from the windows that cover it, with weights that
  sum to 1 per frame (``pyramid``: highest at a window's centre; ``linear``: 1 inside, ramping down
  across the overlap). The DDIM step then moves the whole clip at once, so fresh noise (eta > 0) and
  the background keeper act per frame on the whole clip, and noise is shared across windows.
* **RC-Attn in clip coordinates**: a window's batch also holds the clip frames its frames read K/V
  from (:func:`~motion_core.video_model.attention.window_kv_frames`; in ``rc`` mode the frame before
  the window, the clip's last frame for the first window); their predictions are not used. K/V
  injection maps each editing frame to the reconstruction's same clip frame, as before.

With ``W`` at least the clip's length there is one window holding the whole clip in order, and
every path computes exactly what it computed without a context.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import InputError
from ..seeding import name_seed, step_generator
from ..video_model.attention import window_kv_frames

FUSE_MODES = ("pyramid", "linear")
DEFAULT_LENGTH = 8
DEFAULT_OVERLAP = 2


@dataclass(frozen=True)
class ContextOptions:
    """Window length ``length`` (frames per window; at least the clip's length = no windows), the
    ``overlap`` of neighbouring sampling windows and how their predictions are fused (``fuse``)."""

    length: int = DEFAULT_LENGTH
    overlap: int = DEFAULT_OVERLAP
    fuse: str = "pyramid"

    def validate(self) -> None:
        if int(self.length) < 2:
            raise InputError(f"context window length must be >= 2 frames; got {self.length}: raise the window length")
        if not 0 <= int(self.overlap) < int(self.length):
            raise InputError(
                f"context overlap must be >= 0 and smaller than the window length ({self.length}); got {self.overlap}: "
                f"lower the overlap (e.g. {max(0, int(self.length) // 4)}) or raise the window length")
        if self.fuse not in FUSE_MODES:
            raise InputError(f"context fuse must be one of {', '.join(FUSE_MODES)}; got {self.fuse!r}")

    def window(self, num_frames: int) -> int:
        """The window length used on a clip of ``num_frames`` (the whole clip when it is shorter)."""
        self.validate()
        check_clip_length(num_frames)
        return min(int(self.length), num_frames)

    def borders(self, num_frames: int) -> list[int]:
        """Clip frames ``b`` where a sampling window starts (``b > 0``): the seam between ``b - 1`` and ``b``."""
        return [w.start for w in window_layout(num_frames, self)[1:]]


def check_clip_length(num_frames: int, name: str = "the clip") -> None:
    if num_frames < 2:
        raise InputError(
            f"{name} has {num_frames} frame(s); windowed (long-clip) editing needs at least 2 frames: give a clip of "
            "2 or more frames (a single image can be repeated to the reference's length), or disconnect the context")


@dataclass(frozen=True)
class Window:
    """A sampling window: clip frames ``[start, start + length)``, with the fusion weight of each
    of its frames (``weights`` ``(length,)``; the weights of every frame's windows sum to 1)."""

    start: int
    length: int
    weights: torch.Tensor

    @property
    def frames(self) -> list[int]:
        return list(range(self.start, self.start + self.length))


def _raw_weights(length: int, overlap: int, fuse: str) -> torch.Tensor:
    j = torch.arange(length, dtype=torch.float64)
    if fuse == "pyramid":  # 1, 2, ..., peak, ..., 2, 1 (AnimateDiff-Evolved's pyramid)
        return torch.minimum(j + 1, length - j)
    ramp = float(overlap + 1)
    return torch.minimum(torch.minimum((j + 1) / ramp, (length - j) / ramp), torch.ones_like(j))


def window_layout(num_frames: int, options: ContextOptions | None) -> list[Window]:
    """The sampling windows of a clip of ``num_frames`` frames: starts ``0, W - O, 2(W - O), ...`` and
    a last window that ends at the clip's end; one window (weights 1) when ``W >= num_frames``."""
    if options is None:
        return [Window(0, num_frames, torch.ones(num_frames, dtype=torch.float64))]
    w = options.window(num_frames)
    if w >= num_frames:
        return [Window(0, num_frames, torch.ones(num_frames, dtype=torch.float64))]
    stride = w - int(options.overlap)
    starts = list(range(0, num_frames - w, stride)) + [num_frames - w]
    raw = _raw_weights(w, int(options.overlap), options.fuse)
    total = torch.zeros(num_frames, dtype=torch.float64)
    for s in starts:
        total[s: s + w] += raw
    return [Window(s, w, raw / total[s: s + w]) for s in starts]


def is_windowed(num_frames: int, options: ContextOptions | None) -> bool:
    return len(window_layout(num_frames, options)) > 1


@dataclass(frozen=True)
class WindowBatch:
    """One window's batch: ``frames`` (clip indices) = the window's frames followed by the outside
    frames RC-Attn reads; the first ``used`` rows' predictions are fused with ``weights``."""

    frames: list[int]
    used: int
    weights: torch.Tensor
    index: torch.Tensor  # frames as a long tensor (host)


def window_batches(num_frames: int, options: ContextOptions | None, mode: str) -> list[WindowBatch]:
    """The batches of a windowed inversion or sampling step, in order."""
    out = []
    for w in window_layout(num_frames, options):
        frames = window_kv_frames(w.frames, num_frames, mode) if w.length < num_frames else w.frames
        out.append(WindowBatch(frames, w.length, w.weights, torch.tensor(frames, dtype=torch.long)))
    return out


def fused_prediction(num_frames: int, batches: list[WindowBatch], predict, like: torch.Tensor,
                     after_window=None) -> torch.Tensor:
    """The clip's prediction ``(groups * num_frames, ...)`` fused from ``predict(i, batch)``, which returns
    the window batch's prediction ``(groups * len(batch.frames), ...)`` with the same group layout.
    ``like``: a tensor with the result's shape, dtype and device; ``after_window(i)`` runs after
    window ``i`` (progress, cancellation). One window holding the whole clip in order is returned as
    predicted (bit-identical to an unwindowed step)."""
    if len(batches) == 1 and batches[0].frames == list(range(num_frames)):
        out = predict(0, batches[0])
        if after_window is not None:
            after_window(0)
        return out
    groups = like.shape[0] // num_frames
    fused = torch.zeros_like(like)
    view = fused.view(groups, num_frames, *like.shape[1:])
    for i, b in enumerate(batches):
        eps = predict(i, b)
        eps = eps.view(groups, len(b.frames), *eps.shape[1:])[:, : b.used]
        weights = b.weights.to(eps.device, eps.dtype).view(1, -1, *([1] * (eps.ndim - 2)))
        index = b.index[: b.used].to(eps.device)
        view.index_add_(1, index, eps * weights)
        if after_window is not None:
            after_window(i)
    return fused


def window_generator(seed: int, step: int) -> torch.Generator:
    """The host generator of tuning step ``step``'s window draw: a stream of its own, so the
    stage's order/timestep/noise draws stay those of ``step_generator(seed, step)``."""
    return step_generator(name_seed(f"context-window:{int(seed)}"), step)


def tuning_window(num_frames: int, length: int, step: int, seed: int, shuffled: bool,
                  permutation: torch.Tensor | None = None) -> torch.Tensor:
    """Clip frames (a long tensor of ``length``, in the order the model sees them) of tuning step
    ``step``: ``shuffled`` draws ``length`` frames at random from the clip in a random order (with a
    fixed ``permutation``, a contiguous run of it at a random offset); otherwise a contiguous window
    at a random offset."""
    gen = window_generator(seed, step)
    if shuffled and permutation is None:
        return torch.randperm(num_frames, generator=gen)[:length]
    offset = int(torch.randint(0, num_frames - length + 1, (1,), generator=gen))
    if shuffled:
        return torch.as_tensor(permutation)[offset: offset + length].clone()
    return torch.arange(offset, offset + length)


def calls_per_step(num_frames: int, options: ContextOptions | None) -> int:
    """Model calls per inversion or sampling step (the progress units of one step)."""
    return 1 if options is None else len(window_layout(num_frames, options))


def frames_per_call(num_frames: int, options: ContextOptions | None, mode: str = "rc", tuning: bool = False) -> int:
    """Frames in the batch of one model call: what sizes a step's activations (the memory estimate).
    Tuning: the window; inversion and sampling: the largest window batch (window + outside K/V frames)."""
    if options is None:
        return num_frames
    if tuning:
        return options.window(num_frames)
    return max(len(b.frames) for b in window_batches(num_frames, options, mode))
