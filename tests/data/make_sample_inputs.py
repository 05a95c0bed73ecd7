"""Write the sample inputs the shipped workflows open with (example_workflows/input/).

All three come from scikit-image's astronaut photograph (Eileen Collins, NASA: public domain, shipped
in the scikit-image wheel); nothing is downloaded:

* ``eym_sample_astronaut.mp4``: the source clip, 96 frames at 24 fps (4 s), 512x512, a slow push-in on the
  photograph (the person, clothes and background to keep);
* ``eym_sample_astronaut_sway.mp4``: the reference clip, 96 frames at 24 fps, 512x512: the photograph
  mirrored, smaller, standing further right and swaying from side to side on a grey backdrop (the
  motion; a different place and size than the source, which EYM Align Skeleton corrects);
* ``eym_sample_astronaut.jpg``: the source image of the single-image workflow.

The pack copies them into ComfyUI's input folder when it loads (never over a file of the same name), so
the workflows' Load Video / Load Image nodes find them. Each frame is checked with mediapipe (the pose
detector the workflows fall back to without the OpenPose file): a person must be found in every frame.

Run from the repository root with scikit-image, PyAV and mediapipe installed:
    .venv/bin/python tests/data/make_sample_inputs.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
from fractions import Fraction
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "example_workflows" / "input"
SIZE, FRAMES, FPS = 512, 96, 24

SOURCE_VIDEO = "eym_sample_astronaut.mp4"
REFERENCE_VIDEO = "eym_sample_astronaut_sway.mp4"
SOURCE_IMAGE = "eym_sample_astronaut.jpg"


def source_frames(photo: np.ndarray) -> np.ndarray:
    """A slow push-in (100% -> 92% of the frame, centred a little above the middle)."""
    out = []
    for i in range(FRAMES):
        z = 1.0 + 0.09 * i / (FRAMES - 1)
        m = cv2.getRotationMatrix2D((SIZE / 2, SIZE * 0.45), 0.0, z)
        out.append(cv2.warpAffine(photo, m, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_REPLICATE))
    return np.stack(out)


def reference_frames(photo: np.ndarray) -> np.ndarray:
    """The mirrored photograph at 70% size, its bottom centre at (62%, 100%) of the frame, swaying
    +-10 degrees about that point, one cycle every two seconds."""
    mirrored = np.ascontiguousarray(photo[:, ::-1])
    out = []
    for i in range(FRAMES):
        angle = 10.0 * np.sin(np.pi * i / FPS)
        m = cv2.getRotationMatrix2D((SIZE / 2, SIZE), angle, 0.7)
        m[0, 2] += SIZE * 0.12  # move the pivot from x = 50% to 62%
        out.append(cv2.warpAffine(mirrored, m, (SIZE, SIZE), flags=cv2.INTER_AREA, borderMode=cv2.BORDER_CONSTANT,
                                  borderValue=(118, 118, 122)))
    return np.stack(out)


def write_mp4(path: Path, frames: np.ndarray) -> None:
    """H.264 (yuv420p, crf 27), written to a temporary name and renamed."""
    import av

    tmp = path.with_name("." + path.name + ".tmp.mp4")
    with av.open(str(tmp), "w") as container:
        stream = container.add_stream("libx264", rate=Fraction(FPS))
        stream.width, stream.height, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.options = {"crf": "27", "preset": "slow"}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    os.replace(tmp, path)


def _mediapipe():
    spec = importlib.util.spec_from_file_location("edit_your_motion", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    sys.modules["edit_your_motion"] = importlib.util.module_from_spec(spec)
    from edit_your_motion.motion_core.pose import mediapipe_detector

    return mediapipe_detector


def main() -> None:
    import skimage.data

    photo = skimage.data.astronaut()  # 512 x 512 RGB uint8
    OUT.mkdir(parents=True, exist_ok=True)
    detector = _mediapipe()
    clips = {SOURCE_VIDEO: source_frames(photo), REFERENCE_VIDEO: reference_frames(photo)}
    for name, frames in clips.items():
        found = detector.detect_poses(frames, video=True, segmentation=False)
        assert found.found.all(), f"{name}: mediapipe finds nobody in frames {np.flatnonzero(~found.found)}"
        write_mp4(OUT / name, frames)
    tmp = OUT / ("." + SOURCE_IMAGE + ".tmp.jpg")
    cv2.imwrite(str(tmp), cv2.cvtColor(photo, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 88])
    os.replace(tmp, OUT / SOURCE_IMAGE)
    for name in (SOURCE_VIDEO, REFERENCE_VIDEO, SOURCE_IMAGE):
        print(f"wrote {OUT / name} ({(OUT / name).stat().st_size} bytes)")


if __name__ == "__main__":
    main()
