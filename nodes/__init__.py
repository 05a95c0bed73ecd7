"""ComfyUI nodes of Edit-Your-Motion: thin adapters over ``motion_core``, one module per area."""

from __future__ import annotations

import importlib
import logging

from . import comfy_bridge

log = logging.getLogger("edit_your_motion")

AREAS = ("model_nodes", "pose_nodes", "mask_nodes", "frame_nodes", "tuning_nodes", "inference_nodes", "later_version_nodes",
         "context_nodes")

NODE_CLASS_MAPPINGS: dict = {}
NODE_DISPLAY_NAME_MAPPINGS: dict = {}

for _area in AREAS:
    _module = importlib.import_module(f".{_area}", __name__)
    NODE_CLASS_MAPPINGS.update(_module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(_module.NODE_DISPLAY_NAME_MAPPINGS)

comfy_bridge.register_model_folders()
comfy_bridge.install_browser_warnings()
try:
    comfy_bridge.install_sample_inputs()
except OSError as exc:  # e.g. a read-only input folder: the workflows then name files the user must add
    log.warning("Edit-Your-Motion: could not copy the sample inputs into ComfyUI's input folder: %s", exc)
