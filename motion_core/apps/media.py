"""Writing clips for people to watch: browser-playable H.264 mp4 and animated WebP/GIF.

* :func:`write_video` — H.264 (``libx264``, ``yuv420p``, ``+faststart``) in an mp4 through PyAV, whose
  wheel bundles ffmpeg (ComfyUI itself depends on ``av``). Plays in every browser and player.
* :func:`write_animation` — animated WebP (``.webp``) or GIF (``.gif``) through Pillow, looping.
* :func:`write_png` — one picture (a grid of frames) as a PNG through Pillow.

Frames are RGB ``uint8`` arrays ``(n, H, W, 3)``. Files are written under a temporary name in the
target folder and renamed when complete, so a reader never sees half a file.
"""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import atomic_path

ANIMATION_FORMATS = {".webp": "WEBP", ".gif": "GIF"}


def _check_frames(frames) -> np.ndarray:
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or frames.shape[0] < 1:
        raise InputError(
            f"frames must be RGB uint8 shaped (frames, height, width, 3) with at least one frame; got "
            f"{frames.shape} {frames.dtype}"
        )
    return np.ascontiguousarray(frames)


def _check_fps(fps: float) -> Fraction:
    if not fps > 0:
        raise InputError(f"fps must be > 0; got {fps}")
    return Fraction(fps).limit_denominator(1001)


def write_video(path: str | os.PathLike, frames, fps: float = 8.0) -> Path:
    """Write ``frames`` (RGB uint8 ``(n, H, W, 3)``) as an H.264 mp4 at ``fps``; returns the path.

    yuv420p needs even sizes: an odd width or height gets one more column or row (a copy of the
    last one).
    """
    import av

    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise InputError(f"write_video writes .mp4 files; got {path.name!r}")
    frames = _check_frames(frames)
    rate = _check_fps(fps)
    h, w = frames.shape[1:3]
    if h % 2 or w % 2:
        frames = np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    with atomic_path(path) as tmp:
        with av.open(str(tmp), mode="w", format="mp4", options={"movflags": "+faststart"}) as container:
            stream = container.add_stream("libx264", rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            stream.pix_fmt = "yuv420p"
            stream.options = {"crf": "18", "preset": "medium"}
            for frame in frames:
                for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                    container.mux(packet)
            for packet in stream.encode():  # flush
                container.mux(packet)
    return path


def write_animation(path: str | os.PathLike, frames, fps: float = 8.0) -> Path:
    """Write ``frames`` (RGB uint8 ``(n, H, W, 3)``) as a looping animated WebP (``.webp``,
    lossless) or GIF (``.gif``) at ``fps``; returns the path."""
    from PIL import Image

    path = Path(path)
    fmt = ANIMATION_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"write_animation writes {' or '.join(ANIMATION_FORMATS)} files; got {path.name!r}")
    frames = _check_frames(frames)
    duration = max(1, round(1000 / float(_check_fps(fps))))  # milliseconds per frame
    images = [Image.fromarray(f) for f in frames]
    extra = {"lossless": True} if fmt == "WEBP" else {}
    with atomic_path(path) as tmp:
        images[0].save(tmp, format=fmt, save_all=True, append_images=images[1:], duration=duration, loop=0, **extra)
    return path


def write_png(path: str | os.PathLike, image) -> Path:
    """Write one RGB ``uint8`` picture ``(H, W, 3)`` as a PNG; returns the path."""
    from PIL import Image

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"write_png writes .png files; got {path.name!r}")
    image = _check_frames(np.asarray(image)[None])[0]
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")
    return path
