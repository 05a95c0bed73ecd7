"""Every node's declared inputs, outputs and function agree; the pack imports the way ComfyUI
imports it; only nodes/comfy_bridge.py talks to ComfyUI."""

from __future__ import annotations

import importlib.util
import inspect
import json
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CORE_NODES = json.loads((ROOT / "tests" / "data" / "comfyui_core_nodes_v0.21.json").read_text())
PACK_TYPES = {"EYM_MODEL", "EYM_PERMUTATION", "EYM_CONTEXT", "POSE_KEYPOINT"}
CORE_TYPES = {"IMAGE", "MASK", "LATENT", "CONDITIONING", "MODEL", "CONTROL_NET", "VAE", "CLIP"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def load_pack_like_comfyui():
    """ComfyUI imports a pack with spec_from_file_location under a module name made from its folder
    path (dots replaced), then reads the mappings."""
    name = str(ROOT).replace(".", "_x_") + "_contract"
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def pack():
    return load_pack_like_comfyui()


def _nodes():
    from edit_your_motion.nodes import NODE_CLASS_MAPPINGS

    return sorted(NODE_CLASS_MAPPINGS.items())


def test_mappings_exported(pack):
    ids = set(pack.NODE_CLASS_MAPPINGS)
    assert ids == set(pack.NODE_DISPLAY_NAME_MAPPINGS)
    assert all(i.startswith("EYM_") for i in ids)
    expected = {
        "EYM_LoadVideoModel", "EYM_RCAttnPatch", "EYM_SaveTunedWeights", "EYM_LoadTunedWeights",
        "EYM_ExtractPoses", "EYM_RenderPoses", "EYM_AlignSkeleton", "EYM_MaskFrames", "EYM_KeypointMask",
        "EYM_PersonMask", "EYM_SelectFrames", "EYM_ShuffleFrames", "EYM_UnshuffleFrames", "EYM_TuneStage1", "EYM_TuneStage2",
        "EYM_DDIMInversion", "EYM_TwoBranchSampler", "EYM_STLStage1", "EYM_STLStage2", "EYM_SingleBranchSampler",
        "EYM_RepeatImageToClip",
    }
    assert expected <= ids
    if CORE_NODES is not None:
        assert not ids & set(CORE_NODES), "a pack cannot override core node ids"


def test_root_init_imported_alone_defines_no_nodes_and_does_not_fail():
    """pytest imports the checkout's root __init__.py as a lone module when the folder name is no
    identifier (a clone named "ComfyUI-EditYourMotion"): it must load, with no nodes, rather than fail
    every test on its relative import. ComfyUI imports it as a package (test_mappings_exported)."""
    spec = importlib.util.spec_from_file_location("ComfyUI-EditYourMotion", ROOT / "__init__.py")
    spec.submodule_search_locations = None  # a lone module, as pytest's importlib mode makes it
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.NODE_CLASS_MAPPINGS == {} and module.WEB_DIRECTORY == "./web"


@pytest.mark.parametrize("node_id,cls", _nodes())
def test_node_declaration_is_consistent(node_id, cls):
    spec = cls.INPUT_TYPES()
    assert set(spec) <= {"required", "optional", "hidden"} and "required" in spec
    inputs = {}
    for section in ("required", "optional"):
        for name, decl in spec.get(section, {}).items():
            assert isinstance(decl, tuple) and 1 <= len(decl) <= 2, (node_id, name)
            kind = decl[0]
            opts = decl[1] if len(decl) == 2 else {}
            assert opts.get("tooltip"), f"{node_id}.{name} has no tooltip"
            if isinstance(kind, list):
                assert kind and ("default" not in opts or opts["default"] in kind), (node_id, name)
            else:
                assert kind in PACK_TYPES | CORE_TYPES | WIDGET_TYPES, (node_id, name, kind)
                if kind in ("INT", "FLOAT") and "default" in opts:
                    assert opts.get("min", -float("inf")) <= opts["default"] <= opts.get("max", float("inf"))
            inputs[name] = section
    returns = cls.RETURN_TYPES
    # primitive outputs (FLOAT, INT...) are ordinary ComfyUI outputs too (Get Video Components' fps)
    assert isinstance(returns, tuple) and all(r in PACK_TYPES | CORE_TYPES | WIDGET_TYPES for r in returns), node_id
    assert len(cls.RETURN_NAMES) == len(returns)
    if hasattr(cls, "OUTPUT_TOOLTIPS"):
        assert len(cls.OUTPUT_TOOLTIPS) == len(returns)
    assert cls.CATEGORY.split("/")[0] == "Edit-Your-Motion"
    assert getattr(cls, "DESCRIPTION", ""), node_id
    fn = getattr(cls, cls.FUNCTION)
    params = inspect.signature(fn).parameters
    accepts_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    for name, section in inputs.items():
        assert name in params or accepts_kwargs, f"{node_id}.{cls.FUNCTION} does not take input {name!r}"
        if section == "optional" and name in params:
            assert params[name].default is not inspect.Parameter.empty, f"optional {node_id}.{name} needs a default"
    for name, p in params.items():
        if name == "self" or p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL):
            continue
        assert name in inputs, f"{node_id}.{cls.FUNCTION} takes {name!r}, which is no declared input"


def _sources(folder: str):
    return sorted((ROOT / folder).rglob("*.py"))


def test_only_the_bridge_imports_comfy():
    pattern = re.compile(r"^\s*(import|from)\s+(comfy|comfy_extras|folder_paths|server|execution)\b", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in _sources("nodes") + _sources("motion_core")
                 if pattern.search(p.read_text()) and p.name != "comfy_bridge.py"]
    assert offenders == []
    bridge = (ROOT / "nodes" / "comfy_bridge.py").read_text()
    assert pattern.search(bridge)


def test_engine_does_not_depend_on_nodes():
    offenders = [str(p.relative_to(ROOT)) for p in _sources("motion_core")
                 if re.search(r"^\s*from\s+\.\.(nodes|\s)|^\s*import\s+nodes\b", p.read_text(), re.M)]
    assert offenders == []


def test_engine_imports_alone_without_comfy():
    """motion_core is usable as a library: import it as a top-level package in a clean process."""
    import subprocess

    code = (
        "import sys; sys.path.insert(0, %r); import motion_core.method.tuner, motion_core.method.sampler, motion_core.video_model.weights, motion_core.pose; "
        "assert not any(m == 'comfy' or m.startswith('comfy.') for m in sys.modules); print('ok')" % str(ROOT)
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
