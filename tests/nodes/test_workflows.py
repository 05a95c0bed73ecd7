"""The shipped example workflows (``example_workflows/*.json``, API twins in ``example_workflows/api/``)
load and run: checked without ComfyUI.

Node definitions come from
* ``tests/data/comfyui_core_nodes_v0.21.json``: every ComfyUI v0.21 core node with its input and
  output types (no input order or options);
* ``tests/data/comfyui_core_node_specs_v0.21.json``: the full ``/object_info`` entries (input order,
  required/optional, widget options, min/max) of the core nodes the workflows use; regenerate with
  ``tests/data/make_core_node_specs.py``;
* the pack's own classes (``INPUT_TYPES()``, ``RETURN_TYPES``), as ComfyUI serves them.

UI-format files (what the browser saves and loads, ``"version": 0.4``) are checked the way the
frontend builds nodes from definitions: which inputs become widgets, the order of
``widgets_values`` (including the extra ``control_after_generate`` value the frontend stores after an
INT input named ``seed``/``noise_seed`` and the ``upload`` value of file pickers), the links table
against each node's input/output slots, and the types on both ends. API-format files (what ``POST
/prompt`` accepts) are checked as ComfyUI's own prompt validation does. A file ``X_api.json`` must be
the API twin of ``X.json``.

The end-to-end test runs the API workflow in-process: the pack's nodes for real (standalone, tiny
models), ComfyUI's core nodes replaced by small stand-ins with the same semantics.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "tests" / "data"
WORKFLOWS = ROOT / "example_workflows"  # the folder ComfyUI's template browser lists (top level only)
API_DIR = WORKFLOWS / "api"

# ComfyUI's template browser titles a custom node's template with its file name (frontend 1.43 has no
# other title or description for them), so the UI files have readable names; each API twin keeps the
# short name that scripts use: api/<stem>_api.json.
WORKFLOW_NAMES = {
    "edit_your_motion": "Edit-Your-Motion (video, paper method)",
    "edit_your_motion_v2": "Edit-Your-Motion v2 (video, later version)",
    "edit_your_motion_v2_image": "Edit-Your-Motion v2 (one image, later version)",
}

CORE_NODES = json.loads((DATA / "comfyui_core_nodes_v0.21.json").read_text())
CORE_SPECS = json.loads((DATA / "comfyui_core_node_specs_v0.21.json").read_text())

FRONTEND_ONLY = {"Note", "MarkdownNote"}  # no Python class; the frontend drops them from API prompts
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
CONTROL_VALUES = ("fixed", "increment", "decrement", "randomize")
UPLOAD_OPTIONS = ("image_upload", "video_upload", "animated_image_upload")
# COMBO lists built from the user's folders: any non-empty name is accepted
DYNAMIC_COMBOS = {
    ("CheckpointLoaderSimple", "ckpt_name"), ("ControlNetLoader", "control_net_name"), ("LoadVideo", "file"),
    ("LoadImage", "image"), ("LoraLoaderModelOnly", "lora_name"), ("EYM_ExtractPoses", "openpose_model"),
    ("EYM_LoadTunedWeights", "tuned_weights"),
}

UI_FILES = sorted(WORKFLOWS.glob("*.json"))
API_FILES = sorted(API_DIR.glob("*.json"))


# ============================================================================ definitions
@dataclasses.dataclass
class InputDef:
    name: str
    section: str  # required / optional
    type: str  # COMBO for choice lists
    options: dict
    choices: list | None = None

    @property
    def is_widget(self) -> bool:
        return self.type in WIDGET_TYPES and not self.options.get("forceInput", False)

    def widget_slots(self) -> list[str]:
        """The ``widgets_values`` entries the frontend stores for this input, in order."""
        if not self.is_widget:
            return []
        slots = ["value"]
        if self.type == "INT":
            control = self.options.get("control_after_generate")
            if control is None:  # frontend: inputSpec.control_after_generate ?? ['seed', 'noise_seed'].includes(name)
                control = self.name in ("seed", "noise_seed")
            if control:
                slots.append("control")
        elif self.type in ("FLOAT", "COMBO") and self.options.get("control_after_generate"):
            slots.append("control")
        if self.type == "COMBO" and any(self.options.get(k) for k in UPLOAD_OPTIONS):
            slots.append("upload")
        return slots


@dataclasses.dataclass
class NodeDef:
    name: str
    inputs: list[InputDef]
    outputs: list[str]
    output_names: list[str]
    origin: str  # core / pack

    def input(self, name: str) -> InputDef | None:
        return next((i for i in self.inputs if i.name == name), None)

    @property
    def widgets(self) -> list[InputDef]:
        return [i for i in self.inputs if i.is_widget]

    @property
    def sockets(self) -> list[InputDef]:
        return [i for i in self.inputs if not i.is_widget]

    def widget_layout(self) -> list[tuple[InputDef, str]]:
        return [(i, slot) for i in self.widgets for slot in i.widget_slots()]


def _input_def(name: str, section: str, decl) -> InputDef:
    kind = decl[0]
    opts = dict(decl[1]) if len(decl) > 1 and isinstance(decl[1], dict) else {}
    if isinstance(kind, (list, tuple)):
        return InputDef(name, section, "COMBO", opts, list(kind))
    if kind == "COMBO":
        return InputDef(name, section, "COMBO", opts, list(opts.get("options", [])))
    return InputDef(name, section, str(kind), opts)


def _core_def(name: str) -> NodeDef:
    spec = CORE_SPECS[name]
    inputs = [_input_def(n, sec, spec["input"][sec][n])
              for sec in ("required", "optional") for n in spec["input_order"].get(sec, [])]
    return NodeDef(name, inputs, list(spec["output"]), list(spec["output_name"]), "core")


def _pack_def(name: str, cls) -> NodeDef:
    spec = cls.INPUT_TYPES()
    inputs = [_input_def(n, sec, decl) for sec in ("required", "optional") for n, decl in spec.get(sec, {}).items()]
    returns = list(cls.RETURN_TYPES)
    names = list(getattr(cls, "RETURN_NAMES", returns))
    return NodeDef(name, inputs, returns, names, "pack")


def pack_classes() -> dict:
    from edit_your_motion.nodes import NODE_CLASS_MAPPINGS

    return dict(NODE_CLASS_MAPPINGS)


def load_definitions() -> dict[str, NodeDef]:
    """Core nodes with full specs plus the pack's nodes. Core nodes known only by name (in
    comfyui_core_nodes_v0.21.json) map to None: they exist, but cannot be checked in detail."""
    defs: dict = {name: None for name in CORE_NODES}
    defs.update({name: _core_def(name) for name in CORE_SPECS})
    defs.update({name: _pack_def(name, cls) for name, cls in pack_classes().items()})
    return defs


@pytest.fixture(scope="module")
def defs():
    return load_definitions()


# ============================================================================ validation helpers
def types_match(a: str, b: str) -> bool:
    """ComfyUI's validate_node_input: equal, a wildcard, or overlapping comma-separated unions."""
    if a == b or a == "*" or b == "*":
        return True
    return bool(set(a.split(",")) & set(b.split(",")))


def check_value(node_type: str, inp: InputDef, value, slot: str = "value") -> str | None:
    """Why ``value`` is not acceptable for widget ``inp`` (None if it is)."""
    where = f"{node_type}.{inp.name}"
    if slot == "control":
        return None if value in CONTROL_VALUES else f"{where}: control_after_generate {value!r} not in {CONTROL_VALUES}"
    if slot == "upload":
        return None if isinstance(value, str) else f"{where}: upload widget value {value!r} is not a string"
    t, opts = inp.type, inp.options
    if t == "INT":
        if not isinstance(value, int) or isinstance(value, bool):
            return f"{where}: {value!r} is not an INT"
    elif t == "FLOAT":
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
            return f"{where}: {value!r} is not a FLOAT"
    elif t == "STRING":
        return None if isinstance(value, str) else f"{where}: {value!r} is not a STRING"
    elif t == "BOOLEAN":
        return None if isinstance(value, bool) else f"{where}: {value!r} is not a BOOLEAN"
    elif t == "COMBO":
        if (node_type, inp.name) in DYNAMIC_COMBOS:
            return None if isinstance(value, str) and value else f"{where}: {value!r} is not a file name"
        return None if value in inp.choices else f"{where}: {value!r} not in {inp.choices}"
    if t in ("INT", "FLOAT"):
        if "min" in opts and value < opts["min"]:
            return f"{where}: {value} < min {opts['min']}"
        if "max" in opts and value > opts["max"]:
            return f"{where}: {value} > max {opts['max']}"
    return None


def is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], str) and isinstance(value[1], int) \
        and not isinstance(value[1], bool)


def ui_widget_values(node: dict, d: NodeDef) -> dict[str, object]:
    """``{input name: value}`` from a UI node's ``widgets_values`` (control/upload entries dropped)."""
    values = node.get("widgets_values") or []
    return {inp.name: v for (inp, slot), v in zip(d.widget_layout(), values) if slot == "value"}


# ============================================================================ UI format
def validate_ui(wf: dict, defs: dict) -> list[str]:
    errors: list[str] = []
    err = errors.append
    if wf.get("version") != 0.4:
        err(f"version must be 0.4, got {wf.get('version')!r}")
    nodes, links = wf.get("nodes"), wf.get("links")
    if not isinstance(nodes, list) or not isinstance(links, list):
        return errors + ["'nodes' and 'links' must be lists"]
    by_id: dict = {}
    for node in nodes:
        if node.get("id") in by_id:
            err(f"duplicate node id {node.get('id')}")
        by_id[node.get("id")] = node
    link_ids = [lk[0] for lk in links if isinstance(lk, list)]
    if len(set(link_ids)) != len(link_ids):
        err("duplicate link ids")
    if by_id and wf.get("last_node_id", -1) < max(i for i in by_id if isinstance(i, int)):
        err("last_node_id is below the largest node id")
    if link_ids and wf.get("last_link_id", -1) < max(link_ids):
        err("last_link_id is below the largest link id")

    # ---- the links table against both ends
    for lk in links:
        if not (isinstance(lk, list) and len(lk) == 6):
            err(f"link {lk!r} is not [id, from_node, from_slot, to_node, to_slot, type]")
            continue
        lid, src_id, src_slot, dst_id, dst_slot, ltype = lk
        src, dst = by_id.get(src_id), by_id.get(dst_id)
        if src is None or dst is None:
            err(f"link {lid}: node {src_id if src is None else dst_id} does not exist")
            continue
        outs, ins = src.get("outputs") or [], dst.get("inputs") or []
        if not 0 <= src_slot < len(outs):
            err(f"link {lid}: node {src_id} has no output slot {src_slot}")
            continue
        if not 0 <= dst_slot < len(ins):
            err(f"link {lid}: node {dst_id} has no input slot {dst_slot}")
            continue
        out, inp = outs[src_slot], ins[dst_slot]
        if lid not in (out.get("links") or []):
            err(f"link {lid}: missing from node {src_id} output {src_slot} 'links'")
        if inp.get("link") != lid:
            err(f"link {lid}: node {dst_id} input {inp.get('name')!r} has link {inp.get('link')!r}")
        if ltype != out.get("type") or not types_match(ltype, inp.get("type", "")):
            err(f"link {lid}: type {ltype} but output {out.get('type')} -> input {inp.get('type')}")
        sdef, ddef = defs.get(src.get("type")), defs.get(dst.get("type"))
        if sdef is not None and src_slot < len(sdef.outputs) and not types_match(sdef.outputs[src_slot], ltype):
            err(f"link {lid}: {src.get('type')} output {src_slot} is {sdef.outputs[src_slot]}, not {ltype}")
        if ddef is not None and (idef := ddef.input(inp.get("name"))) is not None and not types_match(idef.type, ltype):
            err(f"link {lid}: {dst.get('type')}.{idef.name} takes {idef.type}, not {ltype}")
    table = {lk[0]: lk for lk in links if isinstance(lk, list) and len(lk) == 6}
    for nid, node in by_id.items():
        for slot, inp in enumerate(node.get("inputs") or []):
            lid = inp.get("link")
            if lid is not None and (lid not in table or table[lid][3] != nid or table[lid][4] != slot):
                err(f"node {nid} input {inp.get('name')!r}: link {lid} is not in the links table for this slot")
        for slot, out in enumerate(node.get("outputs") or []):
            for lid in out.get("links") or []:
                if lid not in table or table[lid][1] != nid or table[lid][2] != slot:
                    err(f"node {nid} output {slot}: link {lid} is not in the links table for this slot")

    # ---- each node against its definition
    for nid, node in by_id.items():
        ntype = node.get("type")
        if ntype in FRONTEND_ONLY:
            values = node.get("widgets_values")
            if node.get("inputs") or node.get("outputs") or not (
                    isinstance(values, list) and len(values) == 1 and isinstance(values[0], str)):
                err(f"node {nid} ({ntype}): a note has no slots and widgets_values ['text']")
            continue
        if ntype not in defs:
            err(f"node {nid}: unknown node type {ntype!r} (neither core, pack nor note)")
            continue
        d = defs[ntype]
        if d is None:
            err(f"node {nid}: core node {ntype} has no entry in comfyui_core_node_specs_v0.21.json; add it")
            continue
        errors.extend(_validate_ui_node(nid, node, d))
    return errors


def _validate_ui_node(nid, node: dict, d: NodeDef) -> list[str]:
    errors: list[str] = []
    err = errors.append
    tag = f"node {nid} ({d.name})"
    if node.get("mode", 0) != 0:
        err(f"{tag}: mode {node.get('mode')} (muted/bypassed) in a shipped workflow")
    # inputs: sockets first (definition order), then widgets turned into inputs
    seen = set()
    for inp in node.get("inputs") or []:
        name = inp.get("name")
        if name in seen:
            err(f"{tag}: input {name!r} listed twice")
        seen.add(name)
        idef = d.input(name)
        if idef is None:
            err(f"{tag}: unknown input {name!r}")
            continue
        if "widget" in inp:
            if not idef.is_widget or inp["widget"].get("name") != name:
                err(f"{tag}: input {name!r} is marked as a widget input but is not a widget of {d.name}")
        elif idef.is_widget:
            err(f"{tag}: widget {name!r} listed as a plain socket (needs \"widget\": {{\"name\": ...}})")
        expected = "COMBO" if idef.type == "COMBO" else idef.type
        if inp.get("type") != expected:
            err(f"{tag}: input {name!r} has type {inp.get('type')}, definition says {expected}")
    for idef in d.sockets:
        entry = next((i for i in node.get("inputs") or [] if i.get("name") == idef.name), None)
        if idef.section == "required" and (entry is None or entry.get("link") is None):
            err(f"{tag}: required input {idef.name!r} is not linked")
    socket_order = [i.get("name") for i in node.get("inputs") or [] if "widget" not in i]
    if socket_order != [i.name for i in d.sockets if i.name in socket_order]:
        err(f"{tag}: socket order {socket_order} differs from the definition")
    # outputs
    outs = node.get("outputs") or []
    if [o.get("type") for o in outs] != d.outputs:
        err(f"{tag}: outputs {[o.get('type') for o in outs]} differ from the definition {d.outputs}")
    elif [o.get("name") for o in outs] != d.output_names:
        err(f"{tag}: output names {[o.get('name') for o in outs]} differ from {d.output_names}")
    # widgets_values
    layout = d.widget_layout()
    values = node.get("widgets_values", [])
    if isinstance(values, dict):
        err(f"{tag}: widgets_values must be a list")
        return errors
    if len(values) != len(layout):
        err(f"{tag}: {len(values)} widgets_values for {len(layout)} widget slots "
            f"{[(i.name, s) for i, s in layout]}")
        return errors
    for (idef, slot), value in zip(layout, values):
        if (problem := check_value(d.name, idef, value, slot)) is not None:
            err(f"{tag}: {problem}")
    # download links of the frontend's missing-models dialog (strings checked, never fetched): {name, url, directory}, name = a widget value
    for model in (node.get("properties") or {}).get("models", []):
        if not (isinstance(model, dict) and {"name", "url", "directory"} <= set(model)
                and _is_hub_link(str(model["url"])) and model["name"] in values
                and model["name"] in str(model["url"])):
            err(f"{tag}: properties.models entry {model!r} does not match the node's file widget")
    return errors


# ============================================================================ API format
def validate_api(prompt: dict, defs: dict) -> list[str]:
    errors: list[str] = []
    err = errors.append
    if not isinstance(prompt, dict) or not prompt:
        return ["an API prompt is a non-empty object {node_id: {class_type, inputs}}"]
    for nid, node in prompt.items():
        tag = f"node {nid}"
        if not isinstance(node, dict) or "class_type" not in node or not isinstance(node.get("inputs"), dict):
            err(f"{tag}: needs 'class_type' and an 'inputs' object")
            continue
        ctype = node["class_type"]
        tag = f"node {nid} ({ctype})"
        if ctype in FRONTEND_ONLY:
            err(f"{tag}: notes are frontend-only and must not be in an API prompt")
            continue
        if ctype not in defs:
            err(f"{tag}: unknown class_type")
            continue
        d = defs[ctype]
        if d is None:
            err(f"{tag}: core node has no entry in comfyui_core_node_specs_v0.21.json; add it")
            continue
        for name, value in node["inputs"].items():
            idef = d.input(name)
            if idef is None:
                err(f"{tag}: unknown input {name!r}")
                continue
            if is_link(value):
                src = prompt.get(value[0])
                if src is None:
                    err(f"{tag}.{name}: links to missing node {value[0]}")
                    continue
                sdef = defs.get(src.get("class_type"))
                if sdef is None:
                    continue  # reported on that node
                if not 0 <= value[1] < len(sdef.outputs):
                    err(f"{tag}.{name}: {src['class_type']} has no output {value[1]}")
                elif not types_match(sdef.outputs[value[1]], idef.type):
                    err(f"{tag}.{name}: takes {idef.type} but {src['class_type']} output {value[1]} is "
                        f"{sdef.outputs[value[1]]}")
            elif not idef.is_widget:
                err(f"{tag}.{name}: a {idef.type} input must be a link [node_id, slot], got {value!r}")
            elif (problem := check_value(ctype, idef, value)) is not None:
                err(f"{tag}: {problem}")
        for idef in d.inputs:
            if idef.section == "required" and idef.name not in node["inputs"]:
                err(f"{tag}: required input {idef.name!r} is missing")
    try:
        topological_order(prompt)
    except ValueError as exc:
        err(str(exc))
    return errors


def topological_order(prompt: dict) -> list[str]:
    deps = {nid: {v[0] for v in node.get("inputs", {}).values() if is_link(v) and v[0] in prompt}
            for nid, node in prompt.items()}
    order, done = [], set()
    while len(order) < len(deps):
        ready = sorted((n for n in deps if n not in done and deps[n] <= done), key=lambda n: (len(n), n))
        if not ready:
            raise ValueError(f"the graph has a cycle among nodes {sorted(set(deps) - done)}")
        order.extend(ready)
        done.update(ready)
    return order


# ============================================================================ UI <-> API twin
def compare_twins(ui: dict, api: dict, defs: dict) -> list[str]:
    errors: list[str] = []
    err = errors.append
    nodes = {str(n["id"]): n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY}
    if set(nodes) != set(api):
        err(f"node ids differ: only in UI {sorted(set(nodes) - set(api))}, only in API {sorted(set(api) - set(nodes))}")
    links = {lk[0]: lk for lk in ui["links"]}
    api_links = 0
    for nid in sorted(set(nodes) & set(api), key=int):
        node, anode = nodes[nid], api[nid]
        if node["type"] != anode["class_type"]:
            err(f"node {nid}: UI type {node['type']} vs API class_type {anode['class_type']}")
            continue
        d = defs.get(node["type"])
        if d is None:
            continue
        title = (anode.get("_meta") or {}).get("title")
        if title is not None and node.get("title") is not None and title != node["title"]:
            err(f"node {nid}: title {node['title']!r} vs API _meta.title {title!r}")
        ui_links = {}
        for inp in node.get("inputs") or []:
            if inp.get("link") is not None:
                lk = links[inp["link"]]
                ui_links[inp["name"]] = [str(lk[1]), lk[2]]
        widgets = ui_widget_values(node, d)
        for name, value in anode["inputs"].items():
            if is_link(value):
                api_links += 1
                if ui_links.get(name) != value:
                    err(f"node {nid}.{name}: API link {value} vs UI {ui_links.get(name)}")
            elif name in ui_links:
                err(f"node {nid}.{name}: linked in the UI, a value in the API")
            elif name not in widgets or widgets[name] != value:
                err(f"node {nid}.{name}: API value {value!r} vs UI {widgets.get(name, '(none)')!r}")
        for name in set(ui_links) - set(anode["inputs"]):
            err(f"node {nid}.{name}: linked in the UI, missing in the API")
        for name in set(widgets) - set(anode["inputs"]) - set(ui_links):
            err(f"node {nid}.{name}: widget value in the UI, missing in the API")
    if api_links != len(ui["links"]):
        err(f"{len(ui['links'])} UI links vs {api_links} API links")
    return errors


# ============================================================================ tests: files
def _load(path: Path):
    return json.loads(path.read_text(encoding="utf-8"))


def _twin(path: Path) -> Path | None:
    """The API twin ``api/<stem>_api.json`` of a UI workflow (the api/ subfolder is not listed by the
    template browser)."""
    stem = next((k for k, v in WORKFLOW_NAMES.items() if v == path.stem), None)
    twin = API_DIR / f"{stem}_api.json"
    return twin if stem is not None and twin.is_file() else None


def _file(name: str) -> Path:
    """A shipped workflow by file name; ``<stem>.json`` (the short name) finds the UI file of that stem."""
    stem = name[:-len(".json")] if name.endswith(".json") else name
    if stem in WORKFLOW_NAMES:
        name = WORKFLOW_NAMES[stem] + ".json"
    return next(p for p in UI_FILES + API_FILES if p.name == name)


def test_workflows_are_shipped():
    """Every UI workflow in example_workflows/ has its API twin in example_workflows/api/ and the other way
    round; nothing is left in the old workflows/ folder (ComfyUI would list both folders' files)."""
    assert {p.stem for p in UI_FILES} == set(WORKFLOW_NAMES.values())
    assert {p.name for p in API_FILES} == {f"{stem}_api.json" for stem in WORKFLOW_NAMES}
    assert all(_twin(p) is not None for p in UI_FILES)
    assert not (ROOT / "workflows").exists()
    for name in ("example", "examples", "workflow"):
        assert not (ROOT / name).exists(), f"ComfyUI would also list {name}/"


@pytest.mark.parametrize("path", UI_FILES + API_FILES, ids=lambda p: p.name)
def test_valid_json_with_known_node_types(path, defs):
    data = _load(path)
    if path in UI_FILES:
        types = {n["type"] for n in data["nodes"]}
        unknown = types - set(defs) - FRONTEND_ONLY
    else:
        types = {n["class_type"] for n in data.values()}
        unknown = types - set(defs)
    assert not unknown, f"not core, pack or note nodes: {unknown}"
    assert any(t.startswith("EYM_") for t in types)


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_workflow_is_valid(path, defs):
    assert validate_ui(_load(path), defs) == []


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_api_workflow_is_valid(path, defs):
    prompt = _load(path)
    assert validate_api(prompt, defs) == []
    assert any(defs[n["class_type"]].outputs == [] or n["class_type"] in ("SaveVideo", "EYM_SaveTunedWeights")
               for n in prompt.values()), "an API prompt needs an output node"


@pytest.mark.parametrize("path", [p for p in UI_FILES if _twin(p) is not None], ids=lambda p: p.name)
def test_ui_and_api_twins_agree(path, defs):
    assert compare_twins(_load(path), _load(_twin(path)), defs) == []


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_ui_layout_is_readable(path):
    """Nodes do not overlap, every node sits in a titled group or is a note, and titles are set."""
    wf = _load(path)
    boxes = {n["id"]: (n["pos"][0], n["pos"][1], n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
             for n in wf["nodes"]}
    ids = sorted(boxes)
    for i, a in enumerate(ids):
        for b in ids[i + 1:]:
            (ax0, ay0, ax1, ay1), (bx0, by0, bx1, by1) = boxes[a], boxes[b]
            # the frontend draws a ~30 px title bar above pos
            assert ax1 <= bx0 or bx1 <= ax0 or ay1 <= by0 - 30 or by1 <= ay0 - 30, f"nodes {a} and {b} overlap"
    groups = wf.get("groups") or []
    assert groups and all(g.get("title") for g in groups)
    for i, g in enumerate(groups):
        for h in groups[i + 1:]:
            (gx, gy, gw, gh), (hx, hy, hw, hh) = g["bounding"], h["bounding"]
            assert gx + gw <= hx or hx + hw <= gx or gy + gh <= hy or hy + hh <= gy, \
                f"groups {g['title']!r} and {h['title']!r} overlap"
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        assert n.get("title"), f"node {n['id']} has no title"
        x0, y0, x1, y1 = boxes[n["id"]]
        assert any(g["bounding"][0] <= x0 and g["bounding"][1] <= y0 - 30 and x1 <= g["bounding"][0] + g["bounding"][2]
                   and y1 <= g["bounding"][1] + g["bounding"][3] for g in groups), f"node {n['id']} is in no group"


# The frontend draws a group's title in a bar at the top of the group (LiteGraph's NODE_TITLE_HEIGHT, 30 px;
# older frontends font_size * 1.4 = 34 px at the default 24) and a node's title bar 30 px above its pos.
GROUP_TITLE_BAND = 40
NODE_TITLE_HEIGHT = 30


def title_band_overlaps(wf: dict) -> list[str]:
    """Nodes (notes included) whose box, title bar included, covers part of a group's title bar."""
    found = []
    for g in wf.get("groups") or []:
        gx, gy, gw, _ = g["bounding"]
        for n in wf["nodes"]:
            x0, y0 = n["pos"][0], n["pos"][1] - NODE_TITLE_HEIGHT
            x1, y1 = n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1]
            if x0 < gx + gw and gx < x1 and y0 < gy + GROUP_TITLE_BAND and gy < y1:
                found.append(f"node {n['id']} covers the title of group {g['title']!r}")
    return found


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_no_node_covers_a_group_title(path):
    assert title_band_overlaps(_load(path)) == []


def test_title_band_check_finds_a_covered_title(main_pair):
    ui = copy.deepcopy(main_pair[0])
    group = ui["groups"][0]
    node = next(n for n in ui["nodes"] if n["type"] not in FRONTEND_ONLY and
                group["bounding"][0] <= n["pos"][0] <= group["bounding"][0] + group["bounding"][2])
    node["pos"][1] = group["bounding"][1] + 45  # its title bar reaches 15 px into the group's title bar
    assert title_band_overlaps(ui) == [f"node {node['id']} covers the title of group {group['title']!r}"]


def test_thumbnail_for_the_template_browser():
    """ComfyUI's template browser shows X.jpg next to X.json: a small real JPEG."""
    thumb = _file("edit_your_motion.json").with_suffix(".jpg")
    data = thumb.read_bytes()
    assert data[:3] == b"\xff\xd8\xff" and data[-2:] == b"\xff\xd9" and len(data) < 150_000
    import cv2

    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and 150 <= image.shape[0] <= 600 and 1.0 <= image.shape[1] / image.shape[0] <= 4.0
    assert float(image.std()) > 20  # a picture, not a blank


@pytest.mark.parametrize("path", UI_FILES, ids=lambda p: p.name)
def test_workflow_opens_clean_without_the_openpose_file(path, defs, models_dir_empty):
    """ComfyUI's frontend opens a workflow with "N ERRORS" and red outlines when a file-list widget holds a
    name the server does not list, or when a node's properties.models names a file absent from its folder
    (its missing-models panel cannot mark a model optional). With mediapipe the OpenPose file is optional, so
    no node may ask for it: Extract Poses holds openpose_model auto, which is always listed, and no node lists
    body_pose_model.pth under properties.models. The models that are required (checkpoint, ControlNet) are
    listed with their download links."""
    from edit_your_motion.nodes import pose_nodes

    ui = _load(path)
    choices = pose_nodes.ExtractPoses.INPUT_TYPES()["optional"]["openpose_model"][0]
    extract = [n for n in ui["nodes"] if n["type"] == "EYM_ExtractPoses"]
    assert extract
    for node in extract:
        values = ui_widget_values(node, defs["EYM_ExtractPoses"])
        assert values["detector"] == "auto" and values["openpose_model"] == "auto" and "auto" in choices
    listed = {m["name"]: m for n in ui["nodes"] for m in (n.get("properties") or {}).get("models", [])}
    assert set(listed) == {"v1-5-pruned-emaonly-fp16.safetensors", "control_v11p_sd15_openpose.pth"}
    assert all(m["url"].startswith("https://huggingface.co/") and m["directory"] in ("checkpoints", "controlnet")
               for m in listed.values())
    masks = [n for n in ui["nodes"] if n["type"] == "EYM_PersonMask"]
    assert len(masks) == 1 and ui_widget_values(masks[0], defs["EYM_PersonMask"])["method"] == "auto"


@pytest.fixture
def models_dir_empty(tmp_path, monkeypatch):
    monkeypatch.setenv("EYM_MODELS_DIR", str(tmp_path))
    return tmp_path


def test_main_workflow_uses_paper_settings(defs):
    """300 + 300 tuning steps at lr 3e-5, 50 DDIM steps for inversion and sampling, no guidance, 512x512,
    fixed seeds, the three prompts; 48 frames at about 12 fps in the paper's 8-frame windows, saved at the
    rate of the source frames taken."""
    prompt = _load(_file("edit_your_motion_api.json"))
    by_type: dict = {}
    for nid, node in prompt.items():
        by_type.setdefault(node["class_type"], []).append((nid, node["inputs"]))
    for ctype in ("EYM_TuneStage1", "EYM_TuneStage2"):
        ((_, inputs),) = by_type[ctype]
        assert inputs["steps"] == 300 and inputs["learning_rate"] == 3e-5
    ((_, inv),) = by_type["EYM_DDIMInversion"]
    ((_, smp),) = by_type["EYM_TwoBranchSampler"]
    assert inv["steps"] == smp["steps"] == 50 and inv["guidance"] == smp["guidance"] == 1.0
    # a real clip length (#15): 48 frames of each clip taken at about 12 fps, each with its own clip's fps,
    # tuned, inverted and sampled in context windows of the paper's 8 frames
    selects = by_type["EYM_SelectFrames"]
    assert len(selects) == 2 and all((i["frames"], i["target_fps"], i["start_frame"]) == (48, 12.0, 0) for _, i in selects)
    for _, i in selects:
        video = prompt[i["fps"][0]]
        assert video["class_type"] == "GetVideoComponents" and i["fps"][1] == 2 and i["images"] == [i["fps"][0], 0]
    ((cid, context),) = by_type["EYM_ContextOptions"]
    assert (context["window_length"], context["overlap"], context["fuse"]) == (8, 2, "pyramid")
    for ctype in ("EYM_TuneStage1", "EYM_TuneStage2", "EYM_DDIMInversion", "EYM_TwoBranchSampler"):
        ((_, inputs),) = by_type[ctype]
        assert inputs["context"] == [cid, 0], ctype
    assert all((i["width"], i["height"], i["crop"]) == (512, 512, "center") for _, i in by_type["ImageScale"])
    texts = sorted(i["text"] for _, i in by_type["CLIPTextEncode"])
    assert len(texts) == 3 and len(set(texts)) == 3
    # the video plays at the rate of the frames taken from the source
    ((_, create),) = by_type["CreateVideo"]
    (source_select,) = [nid for nid, i in selects if prompt[i["images"][0]]["inputs"]["video"][0] == "4"]
    assert prompt["4"]["inputs"]["file"] == "eym_sample_astronaut.mp4" and create["fps"] == [source_select, 1]
    # the UI stores "fixed" after every seed, so re-queueing does not re-tune
    ui = _load(_file("edit_your_motion.json"))
    for node in ui["nodes"]:
        d = defs.get(node["type"])
        if d is not None:
            for (idef, slot), value in zip(d.widget_layout(), node["widgets_values"]):
                if slot == "control":
                    assert value == "fixed", (node["id"], idef.name)


@pytest.mark.parametrize("path", API_FILES, ids=lambda p: p.name)
def test_workflows_use_the_enhanced_settings_one_switch_from_the_papers(path):
    """Beyond the paper: every shipped sampler keeps the background with the region drawn from the Person
    Mask and the aligned reference keypoints; the UI twin's note names the one switch back to the paper."""
    prompt = _load(path)
    (smp,) = [n for n in prompt.values() if n["class_type"] in ("EYM_TwoBranchSampler", "EYM_SingleBranchSampler")]
    inputs = smp["inputs"]
    assert inputs["keep_background"] is True and inputs["ghost_fill"] == "other_frames" and inputs["renoise_ghost"] is False
    assert prompt[inputs["source_mask"][0]]["class_type"] == "EYM_PersonMask"
    assert prompt[inputs["reference_keypoints"][0]]["class_type"] == "EYM_AlignSkeleton" and inputs["reference_keypoints"][1] == 0
    # the target person drawn at the size fitted to the source person (its keypoints against its mask), hard edge
    assert inputs["target_mask"] == "fitted" and inputs["region_feather"] == 0
    align = [n for n in prompt.values() if n["class_type"] == "EYM_AlignSkeleton"][0]
    assert inputs["source_keypoints"] == align["inputs"]["source"]
    assert prompt[inputs["source_keypoints"][0]]["class_type"] == "EYM_ExtractPoses"
    ui = _load(_file(path.name.replace("_api.json", ".json")))
    notes = " ".join(n["widgets_values"][0] for n in ui["nodes"] if n["type"] == "MarkdownNote")
    assert "set `keep_background` to false on the sampler" in notes


def test_core_specs_agree_with_core_node_list():
    for name, spec in CORE_SPECS.items():
        assert name in CORE_NODES, name
        declared = {n: ("COMBO" if isinstance(decl[0], list) else decl[0])
                    for sec in ("required", "optional") for n, decl in spec["input"].get(sec, {}).items()}
        assert declared == CORE_NODES[name]["input"], name
        assert spec["output"] == CORE_NODES[name]["output"], name


def test_frontend_widget_rules():
    """Spot checks of the widget layout against UI files the frontend itself saved (templates)."""
    d = _core_def("LoadVideo")
    assert [(i.name, s) for i, s in d.widget_layout()] == [("file", "value"), ("file", "upload")]
    assert [s for _, s in _core_def("ImageScale").widget_layout()] == ["value"] * 4
    assert [s for _, s in _core_def("PrimitiveInt").widget_layout()] == ["value", "control"]
    assert [i.name for i in _core_def("CreateVideo").sockets] == ["images", "audio"]
    seed = InputDef("seed", "required", "INT", {"min": 0})
    assert seed.widget_slots() == ["value", "control"]
    assert dataclasses.replace(seed, options={"control_after_generate": False}).widget_slots() == ["value"]
    assert InputDef("steps", "required", "INT", {}).widget_slots() == ["value"]
    assert InputDef("image", "required", "IMAGE", {}).widget_slots() == []


# ============================================================================ tests: the validator fails
@pytest.fixture(scope="module")
def main_pair():
    return _load(_file("edit_your_motion.json")), _load(_file("edit_your_motion_api.json"))


def _ui_node(wf, ctype):
    return next(n for n in wf["nodes"] if n["type"] == ctype)


def _api_node(prompt, ctype):
    return next(n for n in prompt.values() if n["class_type"] == ctype)


def test_validator_reports_wrong_link_type(main_pair, defs):
    ui, api = copy.deepcopy(main_pair[0]), copy.deepcopy(main_pair[1])
    # UI: claim the model link carries a MASK
    target = _ui_node(ui, "EYM_LoadVideoModel")
    lid = next(i["link"] for i in target["inputs"] if i["name"] == "model")
    next(lk for lk in ui["links"] if lk[0] == lid)[5] = "MASK"
    assert any("type MASK" in e for e in validate_ui(ui, defs))
    # UI: a link that is consistent in itself but connects CLIP to a MODEL input
    ui = copy.deepcopy(main_pair[0])
    target = _ui_node(ui, "EYM_LoadVideoModel")
    inp = next(i for i in target["inputs"] if i["name"] == "model")
    lk = next(lk for lk in ui["links"] if lk[0] == inp["link"])
    src = next(n for n in ui["nodes"] if n["id"] == lk[1])
    src["outputs"][0]["links"].remove(lk[0])
    src["outputs"][1]["links"] = (src["outputs"][1]["links"] or []) + [lk[0]]
    lk[2], lk[5] = 1, "CLIP"
    assert any("takes MODEL, not CLIP" in e or "input MODEL" in e for e in validate_ui(ui, defs))
    # API: the VAE input fed from the checkpoint's MODEL output
    node = _api_node(api, "VAEEncode")
    node["inputs"]["vae"] = [node["inputs"]["vae"][0], 0]
    assert any("takes VAE but CheckpointLoaderSimple output 0 is MODEL" in e for e in validate_api(api, defs))


def test_validator_reports_unknown_input(main_pair, defs):
    ui, api = copy.deepcopy(main_pair[0]), copy.deepcopy(main_pair[1])
    _api_node(api, "EYM_TuneStage1")["inputs"]["learning_rates"] = 3e-5
    assert any("unknown input 'learning_rates'" in e for e in validate_api(api, defs))
    _ui_node(ui, "EYM_TuneStage1")["inputs"].append({"name": "bogus", "type": "IMAGE", "link": None})
    assert any("unknown input 'bogus'" in e for e in validate_ui(ui, defs))
    api = copy.deepcopy(main_pair[1])
    api["999"] = {"class_type": "EYM_DoesNotExist", "inputs": {}}
    assert any("unknown class_type" in e for e in validate_api(api, defs))


def test_validator_reports_missing_required_input(main_pair, defs):
    ui, api = copy.deepcopy(main_pair[0]), copy.deepcopy(main_pair[1])
    del _api_node(api, "EYM_TwoBranchSampler")["inputs"]["reference_poses"]
    del _api_node(api, "EYM_TuneStage2")["inputs"]["noise_constraint_lambda"]
    errors = validate_api(api, defs)
    assert any("required input 'reference_poses' is missing" in e for e in errors)
    assert any("required input 'noise_constraint_lambda' is missing" in e for e in errors)
    # UI: unlink the sampler's reference poses on both ends
    node = _ui_node(ui, "EYM_TwoBranchSampler")
    inp = next(i for i in node["inputs"] if i["name"] == "reference_poses")
    lid, inp["link"] = inp["link"], None
    lk = next(lk for lk in ui["links"] if lk[0] == lid)
    ui["links"].remove(lk)
    src = next(n for n in ui["nodes"] if n["id"] == lk[1])
    src["outputs"][lk[2]]["links"].remove(lid)
    assert validate_ui(ui, defs) == [f"node {node['id']} (EYM_TwoBranchSampler): required input 'reference_poses' is not linked"]


def test_validator_reports_bad_widget_values(main_pair, defs):
    ui, api = copy.deepcopy(main_pair[0]), copy.deepcopy(main_pair[1])
    stage1 = _ui_node(ui, "EYM_TuneStage1")
    stage1["widgets_values"] = stage1["widgets_values"][:-1]
    _ui_node(ui, "ImageScale")["widgets_values"][0] = "sharpest"
    _ui_node(ui, "EYM_TwoBranchSampler")["widgets_values"][4] = "sometimes"  # after the seed (index 3)
    errors = "\n".join(validate_ui(ui, defs))
    assert "widgets_values for" in errors and "'sharpest' not in" in errors and "control_after_generate 'sometimes'" in errors
    _api_node(api, "EYM_DDIMInversion")["inputs"]["steps"] = 0
    _api_node(api, "EYM_TuneStage2")["inputs"]["gradient_checkpointing"] = "yes"
    _api_node(api, "EYM_DDIMInversion")["inputs"]["source_poses"] = 3
    errors = "\n".join(validate_api(api, defs))
    assert "steps: 0 < min 1" in errors and "'yes' is not a BOOLEAN" in errors and "must be a link" in errors


def test_twin_comparison_reports_differences(main_pair, defs):
    ui, api = copy.deepcopy(main_pair[0]), copy.deepcopy(main_pair[1])
    _api_node(api, "EYM_TuneStage1")["inputs"]["steps"] = 299
    sampler = _api_node(api, "EYM_TwoBranchSampler")["inputs"]
    sampler["source_poses"], sampler["reference_poses"] = sampler["reference_poses"], sampler["source_poses"]
    errors = "\n".join(compare_twins(ui, api, defs))
    assert "API value 299 vs UI 300" in errors and "source_poses: API link" in errors


# ============================================================================ end to end
class _Video:
    def __init__(self, frames, fps):
        self.frames, self.fps = frames, fps


class _StandInCLIP:
    pass


class _StandInVAE:
    pass


def _node(fn, returns, output_node=False):
    return type(fn.__name__, (), {"FUNCTION": "run", "RETURN_TYPES": returns, "OUTPUT_NODE": output_node,
                                  "run": lambda self, **kw: fn(**kw)})


def _crop_box(h, w, height, width, crop):
    """ComfyUI's common_upscale crop: the centred part of the frame with the target aspect ratio."""
    x0 = y0 = 0
    if crop == "center":
        old, new = w / h, width / height
        if old > new:
            x0 = round((w - w * (new / old)) / 2)
        elif old < new:
            y0 = round((h - h * (old / new)) / 2)
    return y0, x0, h - 2 * y0, w - 2 * x0


def image_scale(image, upscale_method, width, height, crop):
    """ImageScale on an IMAGE batch: optional centre crop to the target aspect ratio, then resize."""
    n, h, w, _ = image.shape
    if width == 0 and height == 0:
        return image
    width = width or max(1, round(w * height / h))
    height = height or max(1, round(h * width / w))
    y0, x0, ch, cw = _crop_box(h, w, height, width, crop)
    x = image[:, y0:y0 + ch, x0:x0 + cw].permute(0, 3, 1, 2)
    mode = {"lanczos": "bicubic", "nearest-exact": "nearest-exact"}.get(upscale_method, upscale_method)
    kw = {"antialias": True} if upscale_method == "lanczos" else {}
    x = torch.nn.functional.interpolate(x, size=(height, width), mode=mode, **kw)
    return x.permute(0, 2, 3, 1).clamp(0, 1)


def _stand_ins(clips: dict, saved: list) -> dict:
    from edit_your_motion.motion_core.testing import synthetic, tiny

    scale = 0.18215

    def checkpoint_loader(ckpt_name):
        return tiny.build_unet("tiny", 0), _StandInCLIP(), _StandInVAE()

    def controlnet_loader(control_net_name):
        return (tiny.build_controlnet(tiny.build_unet("tiny", 0), "tiny", 1),)

    def load_video(file):
        clip, fps = clips[file]
        return (_Video(clip.frames, fps),)

    def components(video):
        assert isinstance(video, _Video)
        return video.frames, None, float(video.fps)

    def encode_text(text, clip):
        assert isinstance(clip, _StandInCLIP)
        return ([[tiny.encode_prompt(text), {}]],)

    def vae_encode(pixels, vae):
        assert isinstance(vae, _StandInVAE)
        return ({"samples": synthetic.frames_to_latents(pixels[..., :3]) / scale},)

    def vae_decode(samples, vae):
        assert isinstance(vae, _StandInVAE)
        return (synthetic.latents_to_frames(samples["samples"] * scale),)

    def create_video(images, fps, audio=None):
        return (_Video(images, fps),)

    def save_video(video, filename_prefix, format, codec):
        saved.append((video, filename_prefix))
        return {"ui": {"images": []}}

    return {
        "CheckpointLoaderSimple": _node(checkpoint_loader, ("MODEL", "CLIP", "VAE")),
        "ControlNetLoader": _node(controlnet_loader, ("CONTROL_NET",)),
        "LoadVideo": _node(load_video, ("VIDEO",)),
        "GetVideoComponents": _node(components, ("IMAGE", "AUDIO", "FLOAT")),
        "ImageScale": _node(lambda **kw: (image_scale(**kw),), ("IMAGE",)),
        "CLIPTextEncode": _node(encode_text, ("CONDITIONING",)),
        "VAEEncode": _node(vae_encode, ("LATENT",)),
        "VAEDecode": _node(vae_decode, ("IMAGE",)),
        "CreateVideo": _node(create_video, ("VIDEO",)),
        "SaveVideo": _node(save_video, (), output_node=True),
    }


def execute(prompt: dict, classes: dict) -> dict:
    """Run an API prompt in topological order as ComfyUI does (under inference mode); returns the
    outputs by node id."""
    outputs: dict = {}
    with torch.inference_mode():
        for nid in topological_order(prompt):
            node = prompt[nid]
            cls = classes[node["class_type"]]
            kwargs = {k: outputs[v[0]][v[1]] if is_link(v) else v for k, v in node["inputs"].items()}
            result = getattr(cls(), cls.FUNCTION)(**kwargs)
            if isinstance(result, dict):
                result = result.get("result", ())
            assert len(result) == len(cls.RETURN_TYPES), node["class_type"]
            outputs[nid] = tuple(result)
    return outputs


def _upstream(prompt: dict, nid: str, ctype: str, name: str | None = None) -> str:
    """The nearest node of class ``ctype`` feeding node ``nid`` (through input ``name`` first)."""
    inputs = prompt[nid]["inputs"]
    links = [inputs[name]] if name else [v for v in inputs.values() if is_link(v)]
    for src, _ in links:
        if prompt[src]["class_type"] == ctype:
            return src
        try:
            return _upstream(prompt, src, ctype)
        except LookupError:
            continue
    raise LookupError(f"no {ctype} upstream of node {nid}")


def _write_body_model(models_dir: Path) -> None:
    from controlnet_aux.open_pose.model import bodypose_model

    torch.manual_seed(0)
    net = bodypose_model().eval()
    folder = models_dir / "openpose"
    folder.mkdir(parents=True, exist_ok=True)
    # the published file's layout: keys without the 'model0.' / 'model1_1.' prefixes
    torch.save({k.split(".", 1)[1]: v.clone() for k, v in net.state_dict().items()}, folder / "body_pose_model.pth")


def test_api_workflow_runs_end_to_end(tmp_path, monkeypatch):
    """auto with the OpenPose file present and no mediapipe: OpenPose poses, the keypoint mask."""
    from edit_your_motion.motion_core.pose import mediapipe_detector, openpose
    from edit_your_motion.motion_core.testing.synthetic import make_clip
    from edit_your_motion.nodes import pose_nodes

    monkeypatch.setenv("EYM_MODELS_DIR", str(tmp_path))
    monkeypatch.setattr(mediapipe_detector, "mediapipe_available", lambda: False)
    pose_nodes._DETECTORS.clear()
    _write_body_model(tmp_path)

    prompt = _load(_file("edit_your_motion_api.json"))
    # CPU-sized run: 3 frames of 64x64, 2 tuning steps per stage, 3 DDIM steps
    overrides = {"EYM_SelectFrames": {"frames": 3}, "ImageScale": {"width": 64, "height": 64},
                 "EYM_ExtractPoses": {"detect_resolution": 64}, "EYM_TuneStage1": {"steps": 2},
                 "EYM_TuneStage2": {"steps": 2}, "EYM_DDIMInversion": {"steps": 3}, "EYM_TwoBranchSampler": {"steps": 3}}
    for node in prompt.values():
        node["inputs"].update(overrides.get(node["class_type"], {}))

    sampler = next(n for n, v in prompt.items() if v["class_type"] == "EYM_TwoBranchSampler")
    align = _upstream(prompt, sampler, "EYM_AlignSkeleton", "reference_poses")
    src_video = _upstream(prompt, sampler, "LoadVideo", "source_poses")
    ref_video = _upstream(prompt, align, "LoadVideo", "reference")
    assert _upstream(prompt, sampler, "LoadVideo", "inverted_latent") == src_video != ref_video
    source = make_clip(5, 64, 80, "wave", seed=2)  # wider than tall: ImageScale crops the centre
    # the reference at 24 fps gives every 2nd frame at the workflow's 12 fps, the source at 12.5 fps every frame
    reference = make_clip(6, 64, 64, "walk", seed=3)
    clips = {prompt[src_video]["inputs"]["file"]: (source, 12.5), prompt[ref_video]["inputs"]["file"]: (reference, 24.0)}

    # random weights find nobody: report the synthetic figure's keypoints for whichever clip frame
    # (cropped and resized like the workflow does) the detector is given
    candidates = []
    for clip in (source, reference):
        _, h, w, _ = clip.frames.shape
        y0, x0, ch, cw = _crop_box(h, w, 64, 64, "center")
        kp = clip.keypoints.copy()
        kp[..., 0] = (kp[..., 0] - x0) * 64 / cw
        kp[..., 1] = (kp[..., 1] - y0) * 64 / ch
        candidates += list(zip(image_scale(clip.frames, "lanczos", 64, 64, "center"), kp))
    calls = []

    def fake_detect(images, body_model, person="largest", detect_resolution=512, callback=None):
        assert isinstance(body_model, torch.nn.Module) and images.shape[1:3] == (64, 64)
        calls.append(images.shape[0])
        out = []
        for i, frame in enumerate(images):
            errs = [float((frame - f).abs().mean()) for f, _ in candidates]
            assert min(errs) < 1e-4
            out.append(candidates[int(np.argmin(errs))][1])
            if callback:
                callback(i + 1, images.shape[0])
        return np.stack(out).astype(np.float32), np.ones(images.shape[0], bool)

    monkeypatch.setattr(openpose, "detect_keypoints", fake_detect)
    saved: list = []
    classes = dict(pack_classes())
    classes.update(_stand_ins(clips, saved))
    try:
        outputs = execute(prompt, classes)
    finally:
        pose_nodes._DETECTORS.clear()

    assert calls == [3, 3]
    ref_select = _upstream(prompt, align, "EYM_SelectFrames", "reference")
    assert outputs[ref_select][1:] == (12.0, 2) and torch.equal(outputs[ref_select][0], reference.frames[[0, 2, 4]])
    ((video, prefix),) = saved
    frames = video.frames
    assert tuple(frames.shape) == (3, 64, 64, 3) and video.fps == 12.5
    assert torch.isfinite(frames).all() and 0 <= float(frames.min()) and float(frames.max()) <= 1
    assert frames.std() > 0
    tuned = sorted((tmp_path / "edit_your_motion").rglob("*.safetensors"))
    assert len(tuned) == 1 and tuned[0].stat().st_size > 0

    # the saved tuning loads back onto the untuned video model (EYM Load Tuned Weights)
    load_model = next(n for n, v in prompt.items() if v["class_type"] == "EYM_LoadVideoModel")
    save_node = next(n for n, v in prompt.items() if v["class_type"] == "EYM_SaveTunedWeights")
    loader = classes["EYM_LoadTunedWeights"]
    assert tuned[0].name in loader.INPUT_TYPES()["required"]["tuned_weights"][0]
    (reloaded,) = loader().run(outputs[load_model][0], str(tuned[0].relative_to(tmp_path / "edit_your_motion")))
    tuned_state = outputs[save_node][0].state
    assert reloaded.steps == {1: 2, 2: 2} and set(reloaded.state) == set(tuned_state)
    assert all(torch.equal(reloaded.state[k].float().cpu(), tuned_state[k].float().cpu()) for k in tuned_state)



def _is_hub_link(url: str) -> bool:
    """An https link into the Hugging Face hub (the workflow stores it for ComfyUI's missing-models
    dialog; the tests only read the string)."""
    from urllib.parse import urlparse

    parts = urlparse(url)
    return parts.scheme == "https" and parts.hostname == "huggingface" + ".co"


@dataclasses.dataclass
class _Frames:
    frames: torch.Tensor


def test_api_workflow_runs_with_auto_and_no_openpose_file(tmp_path, monkeypatch, mediapipe_solutions):
    """The shipped workflow as a user with only the SD1.5 checkpoint and the openpose ControlNet runs it:
    no body_pose_model.pth, detector and mask on auto, so real mediapipe finds the poses and segments the
    person. The clips are pans over scikit-image's astronaut photograph (a real person)."""
    skimage_data = pytest.importorskip("skimage.data")
    from edit_your_motion.motion_core.pose import from_pose_keypoint, mediapipe_detector, openpose
    from edit_your_motion.nodes import pose_nodes

    monkeypatch.setenv("EYM_MODELS_DIR", str(tmp_path))
    pose_nodes._DETECTORS.clear()

    def no_openpose(*args, **kwargs):
        raise AssertionError("OpenPose must not be used without its file")

    monkeypatch.setattr(openpose, "load_body_model", no_openpose)
    monkeypatch.setattr(openpose, "detect_keypoints", no_openpose)
    detected = []
    real_detect = mediapipe_detector.detect_poses
    monkeypatch.setattr(mediapipe_detector, "detect_poses",
                        lambda images, **kw: detected.append(images.shape[0]) or real_detect(images, **kw))

    photo = torch.from_numpy(skimage_data.astronaut().copy()).float() / 255
    source = torch.stack([photo[16:400, 16 + 8 * i:400 + 8 * i] for i in range(4)])  # a slow pan
    reference = torch.stack([photo[0:448, 32 - 8 * i:480 - 8 * i].flip(1) for i in range(4)])  # mirrored, the other way
    prompt = _load(_file("edit_your_motion_api.json"))
    overrides = {"EYM_SelectFrames": {"frames": 3}, "ImageScale": {"width": 128, "height": 128},
                 "EYM_TuneStage1": {"steps": 1}, "EYM_TuneStage2": {"steps": 1}, "EYM_DDIMInversion": {"steps": 2},
                 "EYM_TwoBranchSampler": {"steps": 2}}
    for node in prompt.values():
        node["inputs"].update(overrides.get(node["class_type"], {}))
    assert {n["inputs"].get("detector") for n in prompt.values() if n["class_type"] == "EYM_ExtractPoses"} == {"auto"}
    sampler = next(n for n, v in prompt.items() if v["class_type"] == "EYM_TwoBranchSampler")
    align = _upstream(prompt, sampler, "EYM_AlignSkeleton", "reference_poses")
    src_video = _upstream(prompt, sampler, "LoadVideo", "source_poses")
    ref_video = _upstream(prompt, align, "LoadVideo", "reference")
    clips = {prompt[src_video]["inputs"]["file"]: (_Frames(source), 10.0),
             prompt[ref_video]["inputs"]["file"]: (_Frames(reference), 10.0)}
    saved: list = []
    classes = dict(pack_classes())
    classes.update(_stand_ins(clips, saved))
    outputs = execute(prompt, classes)

    assert detected == [3, 3, 3]  # source and reference poses, then the source mask
    ((video, _),) = saved
    assert tuple(video.frames.shape) == (3, 128, 128, 3) and torch.isfinite(video.frames).all()
    (mask_node,) = [n for n, v in prompt.items() if v["class_type"] == "EYM_PersonMask"]
    mask = outputs[mask_node][0]
    # the crops are 384 px scaled to 128: the face (about x 195..250, y 75..165 in the photograph) is
    # person, the flag in the top-left corner is not
    assert mask.shape == (3, 128, 128)
    for i in range(3):
        x0, x1 = round((195 - 16 - 8 * i) / 3), round((250 - 16 - 8 * i) / 3)
        y0, y1 = round((75 - 16) / 3), round((165 - 16) / 3)
        assert float(mask[i, y0:y1, x0:x1].mean()) > 0.95 and float(mask[i, :15, :15].sum()) == 0
    src_kp, h, w = from_pose_keypoint(outputs[_upstream(prompt, sampler, "EYM_ExtractPoses", "source_poses")][1])
    assert (h, w) == (128, 128) and (src_kp[:, 0, 2] > 0).all()  # the nose in every frame
