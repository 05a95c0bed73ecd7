"""Write example_workflows/*.jpg, the template browser's thumbnail of the shipped workflow.

It shows what the workflow's first steps make of a real photograph, with nothing downloaded:
scikit-image's astronaut (public domain, shipped in the scikit-image wheel) | the pose that
EYM Extract Poses finds with mediapipe, drawn for the openpose ControlNet | the frame with the
background masked out by EYM Person Mask (what stage 1 learns from). It is not an edit result.

Run from the repository root with mediapipe and scikit-image installed:
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
OUT = ROOT / "example_workflows" / "Edit-Your-Motion (video, paper method).jpg"
PANEL = 256


def _pack():
    spec = importlib.util.spec_from_file_location("edit_your_motion", ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    sys.modules["edit_your_motion"] = importlib.util.module_from_spec(spec)
    from edit_your_motion.motion_core.pose import mediapipe_detector, render_pose_images
    from edit_your_motion.motion_core.pose.mask_refine import refine_masks

    return mediapipe_detector, render_pose_images, refine_masks


def main() -> None:
    import skimage.data

    mediapipe_detector, render_pose_images, refine_masks = _pack()
    photo = skimage.data.astronaut()  # 512 x 512 RGB uint8
    found = mediapipe_detector.detect_poses(photo[None], video=False, segmentation=True)
    assert found.found.all(), "mediapipe found nobody in the photograph"
    pose = (render_pose_images(found.keypoints, 512, 512, stick_width=6)[0].numpy() * 255).round().astype(np.uint8)
    mask = refine_masks(found.masks, threshold=0.5).numpy()[0]
    masked = (photo * mask[..., None]).astype(np.uint8)
    panels = [cv2.resize(p, (PANEL, PANEL), interpolation=cv2.INTER_AREA) for p in (photo, pose, masked)]
    labels = ("source frame", "pose (mediapipe)", "person mask (stage 1)")
    band = 30
    canvas = np.full((PANEL + band, PANEL * 3 + 8, 3), 24, np.uint8)
    for i, (panel, label) in enumerate(zip(panels, labels)):
        x = i * (PANEL + 4)
        canvas[band:, x:x + PANEL] = panel
        cv2.putText(canvas, label, (x + 8, 21), cv2.FONT_HERSHEY_SIMPLEX, 0.55, (235, 235, 235), 1, cv2.LINE_AA)
    tmp = OUT.with_suffix(".tmp.jpg")
    cv2.imwrite(str(tmp), cv2.cvtColor(canvas, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 85])
    os.replace(tmp, OUT)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {canvas.shape[1]}x{canvas.shape[0]})")


if __name__ == "__main__":
    main()
