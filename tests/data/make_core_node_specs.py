"""Regenerate ``comfyui_core_node_specs_v0.21.json``: the ``/object_info`` entries of the ComfyUI core
nodes that the shipped workflows use (plus a few common alternatives), trimmed to what
tests/nodes/test_workflows.py checks: input declarations and order, outputs.

``comfyui_core_nodes_v0.21.json`` (every core node's input and output types, no order or options) is
kept as it is; this file adds input order, required/optional, widget options and min/max, which the
workflow validator needs to check ``widgets_values``.

Usage (standard library only), against a running ComfyUI with no model or input files, so the dynamic
file lists stay empty:

    python tests/data/make_core_node_specs.py http://127.0.0.1:8188 > tests/data/comfyui_core_node_specs_v0.21.json
    python tests/data/make_core_node_specs.py object_info.json > ...   # or from a saved /object_info dump
"""

from __future__ import annotations

import json
import sys
import urllib.request

NODES = (
    # used by workflows/edit_your_motion.json
    "CheckpointLoaderSimple", "ControlNetLoader", "LoadVideo", "GetVideoComponents", "ImageFromBatch",
    "ImageScale", "VAEEncode", "VAEDecode", "CLIPTextEncode", "CreateVideo", "SaveVideo",
    # alternatives named in the README and the workflow notes
    "LoadImage", "ImageScaleBy", "Video Slice", "GetImageSize", "RepeatImageBatch", "ImageBatch",
    "InvertMask", "PreviewImage", "SaveImage", "LoraLoaderModelOnly", "PrimitiveInt",
)
DYNAMIC = {  # file lists that depend on the user's folders: stored empty
    ("CheckpointLoaderSimple", "ckpt_name"), ("ControlNetLoader", "control_net_name"), ("LoadVideo", "file"),
    ("LoadImage", "image"), ("LoraLoaderModelOnly", "lora_name"),
}


def _trim(node: str, name: str, decl):
    if not isinstance(decl, list):  # hidden inputs such as "PROMPT"
        return decl
    kind = decl[0]
    opts = {k: v for k, v in (decl[1] if len(decl) > 1 else {}).items() if k != "tooltip"}
    if (node, name) in DYNAMIC:
        if isinstance(kind, list):
            kind = []
        else:
            opts["options"] = []
    return [kind, opts]


def main(source: str) -> None:
    if source.startswith("http"):
        with urllib.request.urlopen(source.rstrip("/") + "/object_info", timeout=60) as resp:
            info = json.load(resp)
    else:
        with open(source) as f:
            info = json.load(f)
    out = {}
    for node in NODES:
        entry = info[node]
        out[node] = {
            "input": {sec: {name: _trim(node, name, decl) for name, decl in decls.items()}
                      for sec, decls in entry["input"].items()},
            "input_order": entry["input_order"],
            "output": entry["output"],
            "output_name": entry["output_name"],
            "output_node": entry["output_node"],
        }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8188")
