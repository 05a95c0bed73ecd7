"""Write example_workflows/*.jpg: each shipped workflow's own thumbnail for ComfyUI's template browser.

Each shows what that workflow's first steps make of its sample inputs (example_workflows/input/, made by
make_sample_inputs.py from scikit-image's astronaut photograph, public domain), with nothing downloaded.
A band on top names the workflow; three panels below:

* paper method (video): source frame | the pose mediapipe finds in it | the frame with the background
  masked out by EYM Person Mask (what stage 1 learns from);
* later version (video): source frame | reference frame (the motion) | the reference skeleton moved onto
  the source person by EYM Align Skeleton (the poses the edit follows);
* later version (one image): source image | the reference skeletons of four frames, overlaid | those
  skeletons moved onto the person of the image.

They are not edit results. Run from the repository root with mediapipe, PyAV and scikit-image installed:
    .venv/bin/python tests/data/make_workflow_thumbnail.py
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parents[2]
WORKFLOWS = ROOT / "example_workflows"
INPUT = WORKFLOWS / "input"
PANEL = 256
NAMES = {
    "video_v1": "Edit-Your-Motion (video, paper method)",
    "video_v2": "Edit-Your-Motion v2 (video, later version)",
    "image_v2": "Edit-Your-Motion v2 (one image, later version)",
}


def _pack():
    spec = importlib.util.spec_from_file_location("edit_your_motion", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    sys.modules["edit_your_motion"] = importlib.util.module_from_spec(spec)
    from edit_your_motion.motion_core import pose
    from edit_your_motion.motion_core.pose import mediapipe_detector
    from edit_your_motion.motion_core.pose.mask_refine import refine_masks

    return pose, mediapipe_detector, refine_masks


def _frames(name: str) -> np.ndarray:
    import av

    with av.open(str(INPUT / name)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _draw(pose, keypoints: np.ndarray, size: int) -> np.ndarray:
    images = pose.render_pose_images(keypoints, size, size, stick_width=6).numpy()
    return (images.max(0) * 255).round().astype(np.uint8)  # several frames overlaid


def _sheet(title: str, panels, labels) -> np.ndarray:
    band, label_band = 34, 26
    canvas = np.full((band + label_band + PANEL, PANEL * 3 + 8, 3), 24, np.uint8)
    cv2.putText(canvas, title, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.62, (255, 200, 120), 1, cv2.LINE_AA)
    for i, (panel, label) in enumerate(zip(panels, labels)):
        x = i * (PANEL + 4)
        canvas[band + label_band:, x:x + PANEL] = cv2.resize(panel, (PANEL, PANEL), interpolation=cv2.INTER_AREA)
        cv2.putText(canvas, label, (x + 8, band + 18), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (235, 235, 235), 1, cv2.LINE_AA)
    return canvas


def _write(name: str, canvas: np.ndarray) -> None:
    out = WORKFLOWS / f"{name}.jpg"
    tmp = out.with_name("." + out.stem + ".tmp.jpg")
    cv2.imwrite(str(tmp), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    os.replace(tmp, out)
    print(f"wrote {out} ({out.stat().st_size} bytes, {canvas.shape[1]}x{canvas.shape[0]})")


def main() -> None:
    pose, mediapipe_detector, refine_masks = _pack()
    source, reference = _frames("eym_sample_astronaut.mp4"), _frames("eym_sample_astronaut_sway.mp4")
    image = cv2.cvtColor(cv2.imread(str(INPUT / "eym_sample_astronaut.jpg")), cv2.COLOR_BGR2RGB)
    size = source.shape[1]

    src = mediapipe_detector.detect_poses(source, video=True, segmentation=True)
    ref = mediapipe_detector.detect_poses(reference, video=True, segmentation=False)
    img = mediapipe_detector.detect_poses(image[None], video=False, segmentation=False)
    assert src.found.all() and ref.found.all() and img.found.all(), "mediapipe found nobody in a sample"

    mask = refine_masks(src.masks[:1], threshold=0.5).numpy()[0]
    _write(NAMES["video_v1"], _sheet(NAMES["video_v1"], [
        source[0], _draw(pose, src.keypoints[:1], size), (source[0] * mask[..., None]).astype(np.uint8),
    ], ["source frame", "pose (mediapipe)", "person mask (stage 1)"]))

    aligned = pose.align_skeletons(ref.keypoints, src.keypoints)
    _write(NAMES["video_v2"], _sheet(NAMES["video_v2"], [
        source[0], reference[2], _draw(pose, aligned[2:3], size),
    ], ["source frame", "reference frame (motion)", "reference pose on source"]))

    picks = [0, 2, 4, 6]
    still = np.repeat(img.keypoints, len(reference), axis=0)
    aligned_image = pose.align_skeletons(ref.keypoints, still)
    _write(NAMES["image_v2"], _sheet(NAMES["image_v2"], [
        image, _draw(pose, ref.keypoints[picks], size), _draw(pose, aligned_image[picks], size),
    ], ["source image", "reference motion (4 frames)", "moved onto the image"]))


if __name__ == "__main__":
    main()
