"""Opt-in integration test: the pack inside a real ComfyUI, headless on the CPU.

Skipped unless ``EYM_COMFYUI_DIR`` points at a ComfyUI checkout (never runs in CI). Run with the
Python of that ComfyUI's environment, e.g.::

    EYM_COMFYUI_DIR=/path/to/ComfyUI EYM_COMFYUI_PYTHON=/path/to/venv/bin/python \\
        /path/to/venv/bin/python -m pytest -q tests/nodes/test_comfyui_integration.py -s

Environment:

* ``EYM_COMFYUI_DIR`` (required): the ComfyUI folder (the one with ``main.py``).
* ``EYM_COMFYUI_PYTHON``: Python that runs ComfyUI and the conversion script (default: this one).
* ``EYM_COMFYUI_CACHE``: a folder kept between runs for the ComfyUI base directory
  (``--base-directory``: models, input, output, user, custom_nodes). The random-weight model
  files (~3 GB) are written there only when missing. Default: a temporary folder, whose model
  files are deleted afterwards.
* ``EYM_COMFYUI_WORKFLOW``: an API-format workflow to test instead of the shipped
  ``example_workflows/api/edit_your_motion_api.json``.
* ``EYM_COMFYUI_PACK``: the pack folder to install (default: this repository).

Nothing is downloaded: the SD1.5 checkpoint, the openpose ControlNet and the OpenPose body model
are random-weight files of the real layouts and sizes, written by ``tests/comfyui_harness.py`` (and
here for OpenPose). The server listens on 127.0.0.1 only, on a free port, and the pack is linked
into ``<base>/custom_nodes`` (not into the ComfyUI checkout) and unlinked afterwards.

What random weights change, and how the shipped workflow is patched for them: a random OpenPose
network finds nobody, so the two ``EYM_ExtractPoses`` nodes of the shipped workflow cannot run.
:func:`patch_workflow` replaces each with ``EYM_RenderPoses`` fed with the synthetic clip's
ground-truth keypoints (what a working detector would have returned), given as a literal
POSE_KEYPOINT value in the API prompt (``{"__value__": [...]}``, ComfyUI's wrapper for list-valued
inputs), and connects the same literal to every input that took the detector's POSE_KEYPOINT
(``EYM_AlignSkeleton``, ``EYM_PersonMask``, set to its ``keypoints`` method: the synthetic figure
is no photograph for mediapipe). Everything else is the shipped graph: skeleton alignment,
person mask, background masking, VAE, CLIP, both tuning stages, saving the tuned
weights, inversion, two-branch sampling, decoding and saving the video. As the reference frames
then feed nothing, ComfyUI does not execute the reference video's loader chain.
``EYM_ExtractPoses`` itself is run separately (:func:`test_extract_poses_reports_no_person`): on the
synthetic video with the random detector it must fail with the pack's clear "no person" message.
"""

from __future__ import annotations

import base64
import importlib.util
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import textwrap
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The pack folder to install; another checkout of it can be tested with EYM_COMFYUI_PACK.
PACK = Path(os.environ.get("EYM_COMFYUI_PACK") or ROOT).resolve()
COMFY_DIR = os.environ.get("EYM_COMFYUI_DIR", "")
_WORKFLOW_CANDIDATES = [ROOT / "example_workflows" / "api" / "edit_your_motion_api.json",
                        ROOT / "workflows" / "api" / "edit_your_motion_api.json",
                        ROOT / "workflows" / "edit_your_motion_api.json"]
WORKFLOW = Path(os.environ.get("EYM_COMFYUI_WORKFLOW")
                or next((p for p in _WORKFLOW_CANDIDATES if p.is_file()), _WORKFLOW_CANDIDATES[0]))

pytestmark = [
    pytest.mark.comfyui,
    pytest.mark.slow,
    pytest.mark.skipif(not COMFY_DIR, reason="set EYM_COMFYUI_DIR to a ComfyUI checkout to run the integration test"),
]

CKPT_NAME = "eym_random_sd15.safetensors"
CN_NAME = "eym_random_openpose.safetensors"
OPENPOSE_NAME = "body_pose_model.pth"
PACK_LINK_NAME = "eym_integration_test_pack"
SIZE = 64  # pixels: 8x8 latents
FRAMES = 3
FPS = 8.0
CATEGORY_ROOT = "Edit-Your-Motion"

# The tuning nodes' progress bar starts with this many set-up units before the steps (nodes/tuning_nodes.py).
STAGE_SETUP_UNITS = 3

# Generous bounds for a 2-core CPU.
STARTUP_TIMEOUT = 600.0
RUN_TIMEOUT = 3600.0


def _load_harness():
    spec = importlib.util.spec_from_file_location("eym_comfyui_harness", Path(__file__).resolve().parents[1] / "comfyui_harness.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


H = _load_harness()


# --------------------------------------------------------------------------------------------
# Files: models, input videos
# --------------------------------------------------------------------------------------------

def _write_random_openpose(path: Path, seed: int = 0) -> None:
    """A random-weight OpenPose body network in the layout of the published ``body_pose_model.pth``
    (controlnet_aux's ``bodypose_model`` keys without the ``model0.``/``model1_1.`` prefix)."""
    import torch
    from controlnet_aux.open_pose.model import bodypose_model

    torch.manual_seed(seed)
    net = bodypose_model().eval()
    sd = {k.split(".", 1)[1]: v.detach().clone() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    torch.save(sd, tmp)
    os.replace(tmp, path)


def _write_video(path: Path, frames, fps: float = FPS) -> None:
    """frames: (n, H, W, 3) float 0..1 -> mp4 (MPEG-4 part 2, which ComfyUI's PyAV reader decodes)."""
    import cv2
    import numpy as np

    arr = (frames.numpy() * 255.0).round().clip(0, 255).astype(np.uint8)
    n, h, w = arr.shape[:3]
    tmp = path.with_name("tmp_" + path.name)
    writer = cv2.VideoWriter(str(tmp), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (w, h))
    assert writer.isOpened(), f"OpenCV cannot write {tmp}"
    for frame in arr:
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    os.replace(tmp, path)


def _read_video(path: Path):
    """(frame count, height, width) of a video, by decoding every frame with OpenCV."""
    import cv2

    cap = cv2.VideoCapture(str(path))
    assert cap.isOpened(), f"OpenCV cannot open {path}"
    n, shape = 0, None
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        n += 1
        shape = frame.shape
    cap.release()
    return n, (shape[0] if shape else 0), (shape[1] if shape else 0)


def _pose_keypoint(keypoints, height: int, width: int) -> list:
    """comfyui_controlnet_aux POSE_KEYPOINT frames (pixel coordinates) from ``(n, 18, 3)`` keypoints."""
    out = []
    for kp in keypoints:
        out.append({
            "people": [{"pose_keypoints_2d": [float(v) for v in kp.reshape(-1)],
                        "face_keypoints_2d": None, "hand_left_keypoints_2d": None, "hand_right_keypoints_2d": None}],
            "canvas_height": int(height), "canvas_width": int(width),
        })
    return out


# --------------------------------------------------------------------------------------------
# A minimal stdlib WebSocket client (ComfyUI's /ws progress messages)
# --------------------------------------------------------------------------------------------

class _WebSocket:
    """Enough of RFC 6455 to read ComfyUI's JSON messages on 127.0.0.1."""

    def __init__(self, port: int, client_id: str, timeout: float = 30.0):
        self.sock = socket.create_connection((H.HOST, port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        request = (f"GET /ws?clientId={client_id} HTTP/1.1\r\nHost: {H.HOST}:{port}\r\nUpgrade: websocket\r\n"
                   f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n")
        self.sock.sendall(request.encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise ConnectionError("websocket handshake: connection closed")
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        if b" 101 " not in head.split(b"\r\n", 1)[0]:
            raise ConnectionError(f"websocket handshake failed: {head[:200]!r}")

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("websocket closed")
            self.buf += chunk
        out, self.buf = self.buf[:n], self.buf[n:]
        return out

    def _send(self, opcode: int, payload: bytes = b"") -> None:
        mask = os.urandom(4)
        header = bytes([0x80 | opcode])
        n = len(payload)
        if n < 126:
            header += bytes([0x80 | n])
        elif n < 65536:
            header += bytes([0x80 | 126]) + struct.pack(">H", n)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", n)
        self.sock.sendall(header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def recv_json(self, timeout: float):
        """The next JSON text message, or None after ``timeout`` seconds without one."""
        deadline = time.monotonic() + timeout
        message, msg_opcode = b"", None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                b0, b1 = self._read(2)
                n = b1 & 0x7F
                if n == 126:
                    n = struct.unpack(">H", self._read(2))[0]
                elif n == 127:
                    n = struct.unpack(">Q", self._read(8))[0]
                mask = self._read(4) if b1 & 0x80 else None
                payload = self._read(n)
            except socket.timeout:
                return None
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            opcode = b0 & 0x0F
            if opcode == 0x9:  # ping
                self._send(0xA, payload)
                continue
            if opcode == 0x8:
                raise ConnectionError("websocket closed by the server")
            if opcode in (0x1, 0x2):
                message, msg_opcode = payload, opcode
            elif opcode == 0x0:
                message += payload
            else:
                continue
            if b0 & 0x80:  # final fragment
                if msg_opcode == 0x1:
                    return json.loads(message.decode("utf-8"))
                message, msg_opcode = b"", None  # binary: previews, skipped

    def close(self) -> None:
        try:
            self._send(0x8, struct.pack(">H", 1000))
        except OSError:
            pass
        self.sock.close()


# --------------------------------------------------------------------------------------------
# Fixtures
# --------------------------------------------------------------------------------------------

def _comfy_python() -> str:
    return os.environ.get("EYM_COMFYUI_PYTHON") or sys.executable


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The ComfyUI base directory with the random-weight models and the synthetic input videos."""
    comfy_dir = Path(COMFY_DIR).resolve()
    assert (comfy_dir / "main.py").is_file(), f"EYM_COMFYUI_DIR={COMFY_DIR} has no main.py"
    cache = os.environ.get("EYM_COMFYUI_CACHE")
    root = Path(cache).resolve() if cache else tmp_path_factory.mktemp("comfyui_base")
    models = root / "models"
    ckpt = models / "checkpoints" / CKPT_NAME
    cn = models / "controlnet" / CN_NAME
    body = models / "openpose" / OPENPOSE_NAME
    t0 = time.monotonic()
    if not ckpt.is_file():
        H.write_random_sd15_checkpoint(ckpt)
    if not cn.is_file():
        H.write_random_sd15_controlnet(cn)
    if not body.is_file():
        _write_random_openpose(body)
    print(f"\n[eym] model files ready in {time.monotonic() - t0:.1f} s under {models}")

    from edit_your_motion.motion_core.testing.synthetic import make_clip

    # source: a figure waving; reference: another figure walking, elsewhere in the frame and smaller
    src = make_clip(FRAMES, SIZE, SIZE, motion="wave", seed=1)
    ref = make_clip(FRAMES, SIZE, SIZE, motion="walk", seed=2, center=(0.35, 0.25), body_height=0.6)
    inp = root / "input"
    inp.mkdir(parents=True, exist_ok=True)
    _write_video(inp / "eym_source.mp4", src.frames)
    _write_video(inp / "eym_reference.mp4", ref.frames)
    for name in ("eym_source.mp4", "eym_reference.mp4"):
        n, h, w = _read_video(inp / name)
        assert (n, h, w) == (FRAMES, SIZE, SIZE), f"{name}: OpenCV reads {n} frames of {w}x{h}"
    ns = SimpleNamespace(
        comfy_dir=comfy_dir, root=root, models=models, ckpt=ckpt, cn=cn, body=body, input=inp,
        output=root / "output", tuned=models / "edit_your_motion",
        source=src, reference=ref, source_video="eym_source.mp4", reference_video="eym_reference.mp4",
    )
    yield ns
    if not cache:  # do not leave ~3 GB behind in pytest's kept temporary folders
        shutil.rmtree(models, ignore_errors=True)


@pytest.fixture(scope="module")
def server(base):
    """ComfyUI on 127.0.0.1:<free port> with the pack linked into ``<base>/custom_nodes``."""
    with _fresh_server(base) as ns:
        yield ns


@contextmanager
def _fresh_server(base):
    link = H.install_pack(base.root, PACK, name=PACK_LINK_NAME)
    port = H.free_port()
    logs = base.root / "logs"
    logs.mkdir(exist_ok=True)
    log_path = logs / f"comfyui_{port}.log"
    proc = None
    t0 = time.monotonic()
    try:
        proc = H.start_comfyui(base.comfy_dir, base.root, port=port, python=_comfy_python(),
                               timeout=STARTUP_TIMEOUT, log_path=log_path)
        startup = time.monotonic() - t0
        startup_log = Path(log_path).read_text("utf-8", "replace")
        print(f"\n[eym] ComfyUI answered on 127.0.0.1:{port} after {startup:.1f} s (log {log_path})")
        yield SimpleNamespace(proc=proc, port=port, log_path=log_path, link=link, startup_s=startup, base=base,
                              startup_log=startup_log,
                              results={})
    finally:
        if proc is not None:
            rc = H.stop(proc)
            print(f"\n[eym] ComfyUI stopped (exit code {rc})")
        if link.is_symlink():
            link.unlink()


def _log_text(server) -> str:
    return Path(server.log_path).read_text("utf-8", "replace")


@contextmanager
def _log_on_failure(server, n_bytes: int = 16000):
    """Print the tail of the server log when the test body fails."""
    try:
        yield
    except BaseException:
        tail = _shorten(H.read_log_tail(server.proc, n_bytes), n_bytes)
        print("\n[eym] ---- ComfyUI log tail ----\n" + tail + "\n[eym] ---- end ----")
        raise


@contextmanager
def _cleanup(base, tag: str):
    """Delete the files a run tagged ``tag`` wrote (video, tuned weights), pass or fail."""
    try:
        yield
    finally:
        for folder in (base.output / "video", base.tuned):
            for f in folder.glob(f"eym_it_{tag}_*"):
                f.unlink()


# --------------------------------------------------------------------------------------------
# Workflow patching
# --------------------------------------------------------------------------------------------

def _is_link(v) -> bool:
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def _of_class(graph: dict, class_type: str) -> list:
    return sorted((k for k, n in graph.items() if n["class_type"] == class_type), key=lambda k: (len(k), k))


def _upstream(graph: dict, node_id: str, class_type: str) -> str:
    """The nearest node of ``class_type`` upstream of ``node_id`` (breadth first)."""
    todo, seen = [node_id], set()
    while todo:
        nid = todo.pop(0)
        if nid in seen:
            continue
        seen.add(nid)
        if nid != node_id and graph[nid]["class_type"] == class_type:
            return nid
        todo += [v[0] for v in graph[nid]["inputs"].values() if _is_link(v)]
    raise AssertionError(f"no {class_type} upstream of node {node_id} ({graph[node_id]['class_type']})")


def load_workflow(path: Path = WORKFLOW) -> dict:
    assert path.is_file(), f"the API-format workflow {path} does not exist"
    graph = json.loads(path.read_text("utf-8"))
    assert isinstance(graph, dict) and all("class_type" in n and "inputs" in n for n in graph.values()), \
        f"{path} is not an API-format workflow ({{id: {{class_type, inputs}}}})"
    return graph


EXPECTED_CLASSES = {
    "CheckpointLoaderSimple": 1, "ControlNetLoader": 1, "LoadVideo": 2, "GetVideoComponents": 2,
    "EYM_SelectFrames": 2, "EYM_ContextOptions": 1, "ImageScale": 2, "EYM_ExtractPoses": 2, "EYM_AlignSkeleton": 1, "EYM_PersonMask": 1,
    "EYM_MaskFrames": 1, "VAEEncode": 2, "CLIPTextEncode": 3, "EYM_LoadVideoModel": 1, "EYM_TuneStage1": 1,
    "EYM_TuneStage2": 1, "EYM_SaveTunedWeights": 1, "EYM_DDIMInversion": 1, "EYM_TwoBranchSampler": 1,
    "VAEDecode": 1, "CreateVideo": 1, "SaveVideo": 1,
}


def patch_workflow(graph: dict, base, tag: str, tune_steps=(1, 1), ddim_steps: int = 2) -> tuple[dict, dict]:
    """The shipped workflow made runnable on random weights and tiny inputs (see the module doc).

    Returns ``(graph, ids)`` where ``ids`` names the nodes the tests look at."""
    g = json.loads(json.dumps(graph))
    (align,) = _of_class(g, "EYM_AlignSkeleton")
    ref_extract, src_extract = g[align]["inputs"]["reference"][0], g[align]["inputs"]["source"][0]
    assert g[ref_extract]["class_type"] == g[src_extract]["class_type"] == "EYM_ExtractPoses"
    src_load, ref_load = _upstream(g, src_extract, "LoadVideo"), _upstream(g, ref_extract, "LoadVideo")
    assert src_load != ref_load

    g[_of_class(g, "CheckpointLoaderSimple")[0]]["inputs"]["ckpt_name"] = CKPT_NAME
    g[_of_class(g, "ControlNetLoader")[0]]["inputs"]["control_net_name"] = CN_NAME
    g[src_load]["inputs"]["file"] = base.source_video
    g[ref_load]["inputs"]["file"] = base.reference_video
    for nid in _of_class(g, "EYM_SelectFrames"):
        g[nid]["inputs"].update(frames=FRAMES, target_fps=0.0, start_frame=0)  # every frame of the test clips
    for nid in _of_class(g, "ImageScale"):
        g[nid]["inputs"].update(width=SIZE, height=SIZE)
    for nid in _of_class(g, "EYM_KeypointMask") + _of_class(g, "EYM_RenderPoses"):
        g[nid]["inputs"].update(width=0, height=0)  # the keypoints' canvas: the frames' size
    for nid in _of_class(g, "EYM_PersonMask"):
        g[nid]["inputs"]["method"] = "keypoints"  # the synthetic figure is no photograph for mediapipe
    stage1 = _of_class(g, "EYM_TuneStage1") + _of_class(g, "EYM_STLStage1")  # first version, later version
    stage2 = _of_class(g, "EYM_TuneStage2") + _of_class(g, "EYM_STLStage2")
    for nid, steps in zip(stage1 + stage2, tune_steps):
        g[nid]["inputs"]["steps"] = steps
    for nid in _of_class(g, "EYM_DDIMInversion") + _of_class(g, "EYM_TwoBranchSampler") + _of_class(g, "EYM_SingleBranchSampler"):
        g[nid]["inputs"]["steps"] = ddim_steps
    for nid in _of_class(g, "EYM_SaveTunedWeights"):
        g[nid]["inputs"]["filename_prefix"] = f"eym_it_{tag}"
    for nid in _of_class(g, "SaveVideo"):
        g[nid]["inputs"]["filename_prefix"] = f"video/eym_it_{tag}"

    # The random OpenPose network finds nobody: render the ground-truth keypoints instead of detecting.
    keypoints = {
        src_extract: _pose_keypoint(base.source.keypoints, SIZE, SIZE),
        ref_extract: _pose_keypoint(base.reference.keypoints, SIZE, SIZE),
    }
    for eid, kp in keypoints.items():
        old = g[eid]["inputs"]
        g[eid] = {"class_type": "EYM_RenderPoses", "inputs": {
            "pose_keypoint": {"__value__": kp}, "person": old.get("person", "largest"), "width": 0, "height": 0,
            "stick_width": old.get("stick_width", 4), "allow_missing": False,
        }}
        for node in g.values():  # consumers of the detector's POSE_KEYPOINT output (slot 1) get the literal
            for name, v in node["inputs"].items():
                if _is_link(v) and v[0] == eid:
                    if v[1] == 1:
                        node["inputs"][name] = {"__value__": kp}
                    else:
                        assert v[1] == 0, f"EYM_ExtractPoses has two outputs; a link asks for slot {v[1]}"
    ids = {
        "stage1": stage1[0], "stage2": stage2[0],
        "save_weights": _of_class(g, "EYM_SaveTunedWeights")[0], "save_video": _of_class(g, "SaveVideo")[0],
        "source_poses": src_extract, "reference_poses": ref_extract, "source_load": src_load,
    }
    return g, ids


def _shorten(text: str, limit: int = 6000) -> str:
    """Collapse runs of near-identical lines (torch's per-tensor "While copying the parameter ..."
    lines) and keep the head and the tail of long text."""
    out, run = [], 0
    for line in str(text).splitlines():
        if line.strip().startswith("While copying the parameter"):
            run += 1
            if run == 1:
                out.append(line)
            continue
        if run > 1:
            out.append(f"\t... ({run - 1} more such lines)")
        run = 0
        out.append(line)
    if run > 1:
        out.append(f"\t... ({run - 1} more such lines)")
    text = "\n".join(out)
    return text if len(text) <= limit else text[: limit // 2] + "\n[...]\n" + text[-limit // 2:]


def _describe(entry: dict) -> str:
    """A readable account of a failed history entry: node, exception and the end of its traceback."""
    err = H.history_error(entry)
    if err is None:
        return json.dumps(entry.get("status"))[:4000]
    if err["event"] == "execution_interrupted":
        return f"interrupted in node {err.get('node_id')} ({err.get('node_type')})"
    tb = "".join(err.get("traceback") or [])[-4000:]
    return (f"node {err.get('node_id')} ({err.get('node_type')}) raised {err.get('exception_type')}: "
            f"{_shorten(err.get('exception_message'), 3000)}\n{tb}")


def _run(server, graph: dict, timeout: float = RUN_TIMEOUT) -> tuple[str, dict, float]:
    t0 = time.monotonic()
    pid = H.queue_prompt(server.port, graph)
    entry = H.wait_history(server.port, pid, timeout=timeout)
    return pid, entry, time.monotonic() - t0


def _execution_times(log: str) -> list[float]:
    import re

    return [float(m) for m in re.findall(r"Prompt executed in ([0-9.]+) seconds", log)]


# --------------------------------------------------------------------------------------------
# 5. Weight conversion, numerically (runs first: no server holding memory yet)
# --------------------------------------------------------------------------------------------

CONVERSION_SCRIPT = textwrap.dedent(r'''
    import importlib.util, json, sys, time
    comfy_dir, pack_dir, ckpt, cn_path = sys.argv[1:5]
    sys.path.insert(0, comfy_dir)
    import torch
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    import comfy.model_management as mm
    import comfy.sd, comfy.controlnet

    # Import the pack as ComfyUI does: a package from its __init__.py, relative imports inside.
    spec = importlib.util.spec_from_file_location("eym_pack_under_test", pack_dir + "/__init__.py",
                                                  submodule_search_locations=[pack_dir])
    pack = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = pack
    spec.loader.exec_module(pack)
    from eym_pack_under_test.nodes.handle import activated

    t0 = time.monotonic()
    with torch.inference_mode():  # ComfyUI runs every node under inference mode
        model = comfy.sd.load_checkpoint_guess_config(ckpt, output_vae=False, output_clip=False)[0]
        control_net = comfy.controlnet.load_controlnet(cn_path)
        (handle,) = pack.NODE_CLASS_MAPPINGS["EYM_LoadVideoModel"]().run(model, control_net, attention_mode="self",
                                                                         weight_dtype="fp32")
    t_load = time.monotonic() - t0

    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, 768, generator=g)
    hint = torch.rand(2, 3, 64, 64, generator=g)
    t = torch.tensor([501.0, 501.0])
    res = {"load_s": t_load}
    with torch.inference_mode():
        mm.load_models_gpu([model], force_full_load=True)
        unet = model.model.diffusion_model
        ctx2 = context.expand(2, -1, -1)
        ref = unet(x, timesteps=t, context=ctx2).float()
        mm.load_models_gpu([control_net.control_model_wrapped], force_full_load=True)
        cm = control_net.control_model
        ctrl = cm(x=x, hint=hint, timesteps=t, context=ctx2)
        ctrl_out = [c.float() for c in ctrl["output"]]
        ctrl_mid = ctrl["middle"][0].float()
        ref_ctrl = unet(x, timesteps=t, context=ctx2,
                        control={"input": [], "middle": [ctrl_mid.clone()], "output": [c.clone() for c in ctrl_out]}).float()
        with activated(handle) as motion:
            # one clip of two frames: with attention mode "self" and the zero-initialised temporal layers the
            # inflated video model must equal the image model frame by frame
            ours = motion.predict(x, t, context, num_frames=2).float()
            down, mid = motion.controlnet_residuals(x, t, ctx2, hint, 1.0)
            ours_ctrl = motion.predict(x, t, context, num_frames=2, poses=hint, control_scale=1.0).float()

    def diff(a, b):
        return {"max_abs": float((a - b).abs().max()), "ref_max_abs": float(b.abs().max()),
                "rel": float((a - b).abs().max() / b.abs().max().clamp_min(1e-12)), "finite": bool(torch.isfinite(a).all())}

    res["unet"] = diff(ours, ref)
    res["controlnet_down"] = [diff(d.float(), c) for d, c in zip(down, ctrl_out)]
    res["controlnet_down_count"] = [len(down), len(ctrl_out)]
    res["controlnet_mid"] = diff(mid.float(), ctrl_mid)
    res["unet_with_control"] = diff(ours_ctrl, ref_ctrl)
    res["control_effect"] = float((ref_ctrl - ref).abs().max())
    res["attention_mode"] = handle.attention_mode
    print("EYM_RESULT " + json.dumps(res))
''')


def test_weight_conversion_matches_comfyui(base, tmp_path):
    """ComfyUI's own SD1.5 UNet and ControlNet vs the pack's converted video model (attention mode
    ``self``, one frame per group, so it must equal the image model), fp32 on the CPU."""
    script = tmp_path / "eym_conversion_check.py"
    script.write_text(CONVERSION_SCRIPT)
    t0 = time.monotonic()
    proc = subprocess.run([_comfy_python(), str(script), str(base.comfy_dir), str(PACK), str(base.ckpt), str(base.cn)],
                          cwd=str(base.comfy_dir), capture_output=True, text=True, timeout=RUN_TIMEOUT)
    elapsed = time.monotonic() - t0
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("EYM_RESULT ")]
    assert proc.returncode == 0 and lines, (
        f"conversion script failed (exit {proc.returncode})\nstdout:\n{_shorten(proc.stdout)}\nstderr:\n{_shorten(proc.stderr)}")
    res = json.loads(lines[-1][len("EYM_RESULT "):])
    print(f"\n[eym] conversion check ({elapsed:.1f} s, model build {res['load_s']:.1f} s): "
          f"UNet max|diff| {res['unet']['max_abs']:.3g} (|ref| max {res['unet']['ref_max_abs']:.3g}); "
          f"ControlNet down residuals max|diff| {max(d['max_abs'] for d in res['controlnet_down']):.3g} "
          f"(|ref| max {max(d['ref_max_abs'] for d in res['controlnet_down']):.3g}), "
          f"mid {res['controlnet_mid']['max_abs']:.3g}; UNet+ControlNet max|diff| {res['unet_with_control']['max_abs']:.3g} "
          f"(control changes the output by up to {res['control_effect']:.3g})")
    assert res["attention_mode"] == "self"
    assert res["controlnet_down_count"] == [12, 12]
    checks = [("unet", res["unet"]), ("controlnet_mid", res["controlnet_mid"]),
              ("unet_with_control", res["unet_with_control"])]
    checks += [(f"controlnet_down[{i}]", d) for i, d in enumerate(res["controlnet_down"])]
    for name, d in checks:
        assert d["finite"], f"{name}: non-finite output"
        assert d["ref_max_abs"] > 0, f"{name}: ComfyUI's reference output is all zero"
        assert d["max_abs"] <= 1e-4 * max(1.0, d["ref_max_abs"]), f"{name}: {d}"
    assert res["control_effect"] > 1e-3, "the ControlNet residuals did not change ComfyUI's output; the check is vacuous"


# --------------------------------------------------------------------------------------------
# 1. Startup
# --------------------------------------------------------------------------------------------

def _tracebacks(log: str) -> list[str]:
    """Each traceback in ``log``: its header, the indented frame lines and the exception line."""
    out, lines, i = [], log.splitlines(), 0
    while i < len(lines):
        if lines[i].startswith("Traceback (most recent call last)"):
            j = i + 1
            while j < len(lines) and (lines[j].startswith(" ") or not lines[j].strip()):
                j += 1
            out.append("\n".join(lines[i:j + 1]))
            i = j
        i += 1
    return out


def _resident_bytes(pid: int) -> tuple[int, int]:
    """(peak, current) resident set size of a process: VmHWM and VmRSS from /proc (Linux)."""
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(value.split()[0]) * 1024
    return fields["VmHWM"], fields["VmRSS"]


def _plain_controlnet_graph(base) -> dict:
    """Plain SD1.5 + ControlNet sampling with the same model files, at the workflow test's size and frame
    count (a batch of FRAMES images, 2 steps): the baseline of #16's RAM targets."""
    g = H.sd15_smoke_graph(CKPT_NAME, size=SIZE, steps=2, filename_prefix="eym_rss_baseline")
    g["4"]["inputs"]["batch_size"] = FRAMES
    g["8"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": CN_NAME}}
    g["9"] = {"class_type": "EmptyImage", "inputs": {"width": SIZE, "height": SIZE, "batch_size": FRAMES, "color": 0}}
    g["10"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
        "positive": ["2", 0], "negative": ["3", 0], "control_net": ["8", 0], "image": ["9", 0],
        "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
    g["5"]["inputs"].update(positive=["10", 0], negative=["10", 1])
    return g


WORKFLOW_V2 = WORKFLOW.parent / "edit_your_motion_v2_api.json"


@pytest.mark.skipif(not Path("/proc/self/status").is_file(), reason="reads /proc (Linux)")
def test_resident_memory_against_plain_sampling(base):
    """#16 §3, measured: (before the module's own server starts, so no other ComfyUI holds memory) the ComfyUI
    process's peak resident memory (VmHWM) and what stays resident after the run (VmRSS), for plain SD1.5 +
    ControlNet sampling and for the shipped video workflows of both methods (each in a fresh server, same model
    files, 3 frames at 64x64, fp32 weights on the CPU). The issue's targets are peak <= baseline + 3 GB and,
    after the run, baseline + the cached handle; they are printed with the figures (the README records them).
    Asserted: the measurement sees the pack's work, and the first version's peak stays within the target
    (its frozen weights share ComfyUI's memory instead of copying it)."""
    tag = uuid.uuid4().hex[:8]
    figures = {}
    with _fresh_server(base) as s, _log_on_failure(s):
        _, entry, _ = _run(s, _plain_controlnet_graph(base))
        assert entry["status"]["status_str"] == "success", _describe(entry)
        figures["plain"] = _resident_bytes(s.proc.pid)
    workflows = {"eym_v1": (WORKFLOW, "adamw")}
    if WORKFLOW_V2.is_file():
        workflows["eym_v2"] = (WORKFLOW_V2, "adamw")
        has_bnb = subprocess.run([_comfy_python(), "-c", "import bitsandbytes"], capture_output=True).returncode == 0
        if has_bnb:  # the documented switch: 8-bit AdamW on both tuning nodes
            workflows["eym_v2 + adamw8bit"] = (WORKFLOW_V2, "adamw8bit")
    for method, (path, optimizer) in workflows.items():
        with _fresh_server(base) as s, _log_on_failure(s), _cleanup(base, tag):
            graph, _ = patch_workflow(load_workflow(path), base, tag)
            for node in graph.values():
                if "optimizer" in node["inputs"]:
                    node["inputs"]["optimizer"] = optimizer
            _, entry, _ = _run(s, graph)
            assert entry["status"]["status_str"] == "success", _describe(entry)
            figures[method] = _resident_bytes(s.proc.pid)
    gb = 2 ** 30
    p0, r0 = figures["plain"]
    print(f"\n[eym] resident memory (GiB), peak / after the run: plain SD1.5 + ControlNet sampling {p0 / gb:.2f} / {r0 / gb:.2f}")
    for method in workflows:
        p1, r1 = figures[method]
        print(f"[eym] shipped {method} workflow {p1 / gb:.2f} / {r1 / gb:.2f}; peak over the baseline "
              f"{(p1 - p0) / gb:+.2f} (target +3), after the run {(r1 - r0) / gb:+.2f}")
        assert p1 >= r1 > 0
        assert p1 > p0  # tuning holds more than sampling: the measurement sees the pack's work
    assert p0 >= r0 > 0
    assert figures["eym_v1"][0] - p0 <= 3 * 10 ** 9, "the first version's peak exceeds plain sampling + 3 GB"


def test_startup_log_clean(server):
    with _log_on_failure(server):
        log = server.startup_log
        assert "IMPORT FAILED" not in log
        link = str(server.link)
        assert any(link in ln and "seconds" in ln for ln in log.splitlines()), \
            f"the import-times summary does not list {link}"
        bad = [b for b in _tracebacks(log) if PACK_LINK_NAME in b or str(PACK) in b or "edit_your_motion" in b]
        assert not bad, "traceback(s) mentioning the pack:\n" + "\n----\n".join(bad)
        print(f"\n[eym] startup {server.startup_s:.1f} s; pack imported: "
              + next(ln.strip() for ln in log.splitlines() if link in ln and "seconds" in ln))


# --------------------------------------------------------------------------------------------
# 2. /object_info
# --------------------------------------------------------------------------------------------

def _pack_mappings():
    import edit_your_motion.nodes as pack_nodes  # noqa: PLC0415 - the pack, as tests/conftest.py registers it

    return pack_nodes.NODE_CLASS_MAPPINGS, pack_nodes.NODE_DISPLAY_NAME_MAPPINGS


def test_object_info_lists_pack_nodes(server):
    with _log_on_failure(server):
        mappings, display = _pack_mappings()
        assert mappings and all(k.startswith("EYM_") for k in mappings)
        info = H.object_info(server.port)
        missing = sorted(set(mappings) - set(info))
        assert not missing, f"/object_info lacks {missing}"
        assert sorted(k for k in info if k.startswith("EYM_")) == sorted(mappings)
        for name, cls in mappings.items():
            entry = info[name]
            spec = cls.INPUT_TYPES()
            for section in ("required", "optional"):
                assert sorted(entry["input"].get(section, {})) == sorted(spec.get(section, {})), (name, section)
                assert entry["input_order"].get(section, []) == list(spec.get(section, {})), (name, section)
            assert entry["category"] == CATEGORY_ROOT or entry["category"].startswith(CATEGORY_ROOT + "/"), \
                (name, entry["category"])
            assert entry["category"] == cls.CATEGORY
            assert entry["output"] == list(cls.RETURN_TYPES), name
            if getattr(cls, "RETURN_NAMES", None):
                assert entry["output_name"] == list(cls.RETURN_NAMES), name
            assert entry["display_name"] == display.get(name, name)
            assert entry["output_node"] == bool(getattr(cls, "OUTPUT_NODE", False)), name
        # the pack's model folders are registered: after "auto", the random body model is offered
        model = info["EYM_ExtractPoses"]["input"]["optional"]["openpose_model"]
        choices = model[0] if isinstance(model[0], list) else model[1].get("options")
        assert choices and choices[0] == "auto" and OPENPOSE_NAME in choices[1:], model
        print(f"\n[eym] /object_info: {len(mappings)} EYM nodes, {len(info)} node types in all")


# --------------------------------------------------------------------------------------------
# 3. The shipped workflow, end to end through /prompt
# --------------------------------------------------------------------------------------------

def test_workflow_structure():
    graph = load_workflow()
    counts = {}
    for node in graph.values():
        counts[node["class_type"]] = counts.get(node["class_type"], 0) + 1
    for cls, n in EXPECTED_CLASSES.items():
        assert counts.get(cls, 0) == n, f"{WORKFLOW.name}: expected {n} x {cls}, found {counts.get(cls, 0)}"
    for nid, node in graph.items():
        for name, v in node["inputs"].items():
            if _is_link(v):
                assert v[0] in graph, f"node {nid} input {name} links to missing node {v[0]}"


def test_workflow_end_to_end(server):
    base = server.base
    tag = uuid.uuid4().hex[:8]
    with _log_on_failure(server), _cleanup(base, tag):
        graph, ids = patch_workflow(load_workflow(), base, tag)
        pid, entry, elapsed = _run(server, graph)
        err = H.history_error(entry)
        assert entry["status"]["status_str"] == "success" and err is None, _describe(entry)
        outputs = entry["outputs"]

        # the video: in ComfyUI's output folder, the right frame count and size
        saved = outputs[ids["save_video"]]["images"]
        assert len(saved) == 1 and saved[0]["type"] == "output", saved
        video = base.output / saved[0]["subfolder"] / saved[0]["filename"]
        assert video.is_file(), video
        n, h, w = _read_video(video)
        assert (n, h, w) == (FRAMES, SIZE, SIZE), f"{video}: {n} frames of {w}x{h}"

        # the tuned weights: in models/edit_your_motion, with both stages recorded
        text = outputs[ids["save_weights"]]["text"]
        weights = base.tuned / text[0]
        assert weights.is_file(), (text, sorted(p.name for p in base.tuned.glob("*")))
        from safetensors import safe_open

        with safe_open(str(weights), "pt") as f:
            keys, meta = list(f.keys()), f.metadata() or {}
        assert keys and any("temporal_attention" in k for k in keys) and any(".attn1." in k for k in keys)
        assert json.loads(meta.get("stages", "{}")) == {"1": 1, "2": 1}, meta.get("stages")
        mode = graph[_of_class(graph, "EYM_LoadVideoModel")[0]]["inputs"]["attention_mode"]
        assert meta.get("attention_mode") == mode, (meta.get("attention_mode"), mode)
        log = _log_text(server)
        assert "skeleton offset: anchor" in log, "EYM_AlignSkeleton did not run"  # its log line
        server.results["tuned_weights_bytes"] = weights.stat().st_size
        server.results["end_to_end_s"] = elapsed
        times = _execution_times(log)
        print(f"\n[eym] workflow ({len(graph)} nodes, {FRAMES} frames {SIZE}x{SIZE}, 1+1 tuning steps, 2 DDIM steps): "
              f"{elapsed:.1f} s wall (ComfyUI: {times[-1] if times else '?'} s); video {video.name} ({n} frames); "
              f"tuned weights {weights.name} ({weights.stat().st_size / 2**20:.1f} MiB, {len(keys)} tensors, "
              f"metadata keys {sorted(meta)})")


def test_extract_poses_reports_no_person(server):
    """The bad-input path: the random OpenPose network finds no one, and the node says so clearly."""
    base = server.base
    with _log_on_failure(server):
        graph = {
            "1": {"class_type": "LoadVideo", "inputs": {"file": base.source_video}},
            "2": {"class_type": "GetVideoComponents", "inputs": {"video": ["1", 0]}},
            "3": {"class_type": "EYM_ExtractPoses", "inputs": {"images": ["2", 0], "detector": "openpose",
                                                               "openpose_model": OPENPOSE_NAME,
                                                               "person": "largest", "detect_resolution": 64,
                                                               "stick_width": 4}},
            "4": {"class_type": "PreviewImage", "inputs": {"images": ["3", 0]}},
        }
        pid, entry, elapsed = _run(server, graph, timeout=900)
        err = H.history_error(entry)
        assert entry["status"]["status_str"] == "error" and err and err["event"] == "execution_error", entry["status"]
        assert err["node_type"] == "EYM_ExtractPoses" and err["node_id"] == "3", err
        assert err["exception_type"].endswith("InputError"), err["exception_type"]
        msg = err["exception_message"]
        assert "OpenPose found no person" in msg and f"frame(s) 0, 1, 2 of {FRAMES}" in msg, msg
        print(f"\n[eym] EYM_ExtractPoses on random weights ({elapsed:.1f} s): {err['exception_type']}: {msg}")


# --------------------------------------------------------------------------------------------
# 4. /interrupt during tuning
# --------------------------------------------------------------------------------------------

def test_interrupt_stops_tuning_within_a_step(server):
    base = server.base
    tag = uuid.uuid4().hex[:8]
    with _log_on_failure(server), _cleanup(base, tag):
        total = 200
        graph, ids = patch_workflow(load_workflow(), base, tag, tune_steps=(total, 1))
        stage1 = ids["stage1"]
        graph[stage1]["inputs"]["seed"] = 12345  # a new cache key for stage 1 even after the end-to-end run
        client_id = uuid.uuid4().hex
        ws = _WebSocket(server.port, client_id)
        try:
            t_queue = time.monotonic()
            pid = H.queue_prompt(server.port, graph, client_id=client_id)
            ticks = []  # (time, value) of stage 1 progress messages
            trace = []  # (seconds since queueing, type, node, value) of every message, for the report
            t_int = t_end = None
            end_event = None
            deadline = time.monotonic() + RUN_TIMEOUT
            while time.monotonic() < deadline:
                msg = ws.recv_json(timeout=30.0)
                if msg is None:
                    continue
                data = msg.get("data") or {}
                if data.get("prompt_id") not in (None, pid):
                    continue
                kind = msg.get("type")
                trace.append((round(time.monotonic() - t_queue, 2), kind, data.get("node"), data.get("value")))
                if kind == "progress" and str(data.get("node")) == stage1:
                    ticks.append((time.monotonic(), int(data["value"])))
                    # the bar's first units are the node's set-up (tuning_nodes: unload, load, first step)
                    if t_int is None and data["value"] >= 3 + STAGE_SETUP_UNITS:
                        t_int = time.monotonic()
                        H.interrupt(server.port)
                elif kind in ("execution_interrupted", "execution_error", "execution_success"):
                    t_end, end_event = time.monotonic(), kind
                    break
            assert end_event is not None, "the prompt did not end"
        finally:
            ws.close()
        entry = H.wait_history(server.port, pid, timeout=120)
        assert t_int is not None, f"stage 1 progress never reached 3 steps ({ticks}); {_describe(entry)}"
        assert end_event == "execution_interrupted", (end_event, H.history_error(entry))
        err = H.history_error(entry)
        assert err and err["event"] == "execution_interrupted" and err["node_type"] == "EYM_TuneStage1", err
        # seconds per step between successive messages; ComfyUI v0.21 throttles progress messages to changes
        # of at least 0.5% of the bar (comfy.utils.PROGRESS_THROTTLE_MIN_PERCENT), so with a few hundred
        # steps a message may cover two steps
        steps = [(b[0] - a[0]) / (b[1] - a[1]) for a, b in zip(ticks, ticks[1:])
                 if b[1] > a[1] and a[1] >= STAGE_SETUP_UNITS and b[0] <= t_int]
        assert steps, ticks
        step_s = max(steps)
        latency = t_end - t_int
        last = max(v for _, v in ticks)
        server.results.update(step_s=step_s, interrupt_latency_s=latency)
        at_interrupt = max(v for t, v in ticks if t <= t_int)
        print(f"\n[eym] interrupt: stage 1 step {min(steps):.2f}-{step_s:.2f} s ({SIZE}x{SIZE}, {FRAMES} frames); "
              f"interrupted after step {at_interrupt} of {total} "
              f"({t_int - t_queue:.1f} s after queueing); ended {latency:.2f} s after POST /interrupt")
        print("[eym] websocket trace (s, type, node, value): " + "; ".join(map(str, trace[-12:])))
        # no more than the step under way when the interrupt came (a throttled message may report 2 at once)
        assert last <= at_interrupt + 2 < total + STAGE_SETUP_UNITS, (last, at_interrupt)
        assert latency <= 1.5 * step_s + 10.0, f"interrupt took {latency:.1f} s; one step takes {step_s:.1f} s"
        # the server is still usable and idle afterwards
        queue = H._get_json(server.port, "/queue")
        assert not queue["queue_running"] and not queue["queue_pending"], queue


# --------------------------------------------------------------------------------------------
# The first five minutes in a real browser (Playwright + Debian's chromium)
# --------------------------------------------------------------------------------------------
#
# Opt-in like the rest of this file, and skipped unless ``playwright`` (pip) imports and a Chromium is
# found: ``$EYM_CHROMIUM``, else ``chromium`` on PATH (Debian: ``apt-get install chromium``; Playwright's
# own browser download is not needed). Screenshots go to ``$EYM_BROWSER_SHOTS`` (default: a pytest
# temporary folder, printed). The server gets its own base folder with empty files named as the
# workflows' models (the frontend only compares names; nothing is queued that would load them), the
# pack's sample inputs (the pack copies them in at start-up) and no OpenPose file: the user of the issue,
# with mediapipe in ComfyUI's Python.

_tw_spec = importlib.util.spec_from_file_location("eym_test_workflows_helpers", Path(__file__).resolve().parents[1] / "nodes" / "test_workflows.py")
TW = sys.modules.setdefault(_tw_spec.name, importlib.util.module_from_spec(_tw_spec))
if not hasattr(TW, "validate_ui"):
    _tw_spec.loader.exec_module(TW)

CHROMIUM = os.environ.get("EYM_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
VIEWPORT = {"width": 1280, "height": 720}
ERROR_TEXTS = ("required model is missing", "missing required inputs", "ERRORS")


def _sync_playwright():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("pip install playwright to run the browser test")
    if not CHROMIUM:
        pytest.skip("no Chromium: apt-get install chromium, or set EYM_CHROMIUM")
    return sync_playwright


@pytest.fixture(scope="module")
def browser_server(tmp_path_factory):
    comfy_dir = Path(COMFY_DIR).resolve()
    _sync_playwright()
    root = tmp_path_factory.mktemp("comfyui_browser")
    for path in TW.UI_FILES:  # the models the workflows list, as empty files: the frontend compares names
        for node in TW._load(path)["nodes"]:
            for model in (node.get("properties") or {}).get("models", []):
                target = root / "models" / model["directory"] / model["name"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.touch()
    link = H.install_pack(root, PACK, name=PACK_LINK_NAME)
    port = H.free_port()
    log_path = root / f"comfyui_{port}.log"
    proc = None
    try:
        proc = H.start_comfyui(comfy_dir, root, port=port, python=_comfy_python(), timeout=STARTUP_TIMEOUT,
                               log_path=log_path)
        shots = Path(os.environ.get("EYM_BROWSER_SHOTS") or tmp_path_factory.mktemp("browser_shots"))
        shots.mkdir(parents=True, exist_ok=True)
        print(f"\n[eym] browser test: ComfyUI on 127.0.0.1:{port}, screenshots in {shots}")
        yield SimpleNamespace(proc=proc, port=port, root=root, log_path=log_path, shots=shots,
                              url=f"http://{H.HOST}:{port}")
    finally:
        if proc is not None:
            H.stop(proc)
        if link.is_symlink():
            link.unlink()


@pytest.fixture(scope="module")
def chromium(browser_server):
    with _sync_playwright()() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            yield browser
        finally:
            browser.close()


def _http(url: str) -> tuple[int, str, bytes]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=30) as r:
        return r.status, r.headers.get("Content-Type", ""), r.read()


def _open_page(chromium, server):
    page = chromium.new_page(viewport=VIEWPORT)
    page.console = []
    page.on("console", lambda m: page.console.append(f"{m.type}: {m.text}"))
    page.goto(server.url, wait_until="networkidle")
    page.wait_for_function("() => window.app && window.app.graph && window.app.canvas && window.app.extensionManager",
                           timeout=120000)
    page.wait_for_timeout(3000)
    return page


def _open_from_template_browser(page, name: str) -> None:
    """What a user does: Workflow > Browse Templates, the pack's entry under Extensions, the card."""
    entry = page.get_by_text(PACK_LINK_NAME, exact=True).first
    for _ in range(3):  # on a first start the frontend opens the template browser by itself, a moment later
        if entry.is_visible():
            break
        page.evaluate("() => window.app.extensionManager.command.execute('Comfy.BrowseTemplates')")
        page.wait_for_timeout(3000)
    entry.click(timeout=30000)
    page.wait_for_timeout(1000)
    page.get_by_text(name, exact=True).first.click(timeout=30000)


def _drop_file(page, path: Path) -> None:
    """Drag and drop: a drop event carrying the file, on the canvas (the frontend handles it on the document)."""
    page.evaluate("""([name, text]) => {
        const file = new File([text], name, {type: 'application/json'});
        const data = new DataTransfer();
        data.items.add(file);
        const target = document.querySelector('#graph-canvas') || document.querySelector('canvas');
        for (const type of ['dragenter', 'dragover', 'drop']) {
            target.dispatchEvent(new DragEvent(type, {dataTransfer: data, bubbles: true, cancelable: true}));
        }
    }""", [path.name, path.read_text("utf-8")])


def test_browser_template_listing_serves_workflows_and_thumbnails(browser_server):
    """The template browser's list names the pack's UI workflows only (no API twins), and each workflow and
    its own thumbnail are served as shipped."""
    import urllib.parse

    status, _, body = _http(browser_server.url + "/workflow_templates")
    listed = json.loads(body)
    assert sorted(listed[PACK_LINK_NAME]) == sorted(p.stem for p in TW.UI_FILES)
    for path in TW.UI_FILES:
        base_url = f"{browser_server.url}/api/workflow_templates/{PACK_LINK_NAME}/" + urllib.parse.quote(path.stem)
        status, kind, data = _http(base_url + ".jpg")
        assert status == 200 and kind.startswith("image/jpeg") and data == path.with_suffix(".jpg").read_bytes()
        status, _, data = _http(base_url + ".json")
        assert status == 200 and json.loads(data) == TW._load(path)


@pytest.mark.parametrize("how", ["template", "drop"])
@pytest.mark.parametrize("path", TW.UI_FILES, ids=lambda p: p.stem)
def test_browser_opens_workflow_clean_and_readable(chromium, browser_server, path, how):
    ui = TW._load(path)
    page = _open_page(chromium, browser_server)
    try:
        if how == "template":
            _open_from_template_browser(page, path.stem)
        else:
            page.keyboard.press("Escape")  # a first start opens the template browser by itself
            _drop_file(page, path)
        page.wait_for_function("(n) => window.app.graph._nodes.length === n", arg=len(ui["nodes"]), timeout=60000)
        page.wait_for_timeout(2500)  # the frontend's checks of models and inputs run after loading
        shot = browser_server.shots / f"{path.stem} - {how}.png"
        page.screenshot(path=str(shot))
        text = page.evaluate("() => document.body.innerText")
        state = page.evaluate("""() => {
            const c = window.app.canvas;
            const ctx = c.canvas.getContext('2d');
            ctx.save(); ctx.font = c.title_text_font;
            const titles = window.app.graph._nodes.map(n => ({id: n.id, title: n.title, width: n.size[0],
                text: ctx.measureText(n.title || '').width}));
            ctx.restore();
            return {scale: c.ds.scale, offset: Array.from(c.ds.offset), lowQuality: c.low_quality,
                    errors: window.app.graph._nodes.filter(n => n.has_errors).map(n => n.id), titles};
        }""")
        prompt = page.evaluate("async () => (await window.app.graphToPrompt()).output")
        print(f"\n[eym] {path.stem} ({how}): zoom {state['scale']:.2f}, offset {state['offset']}, screenshot {shot}")
        assert not [t for t in ERROR_TEXTS if t in text], f"error panel on opening: {text[:400]}"
        assert state["errors"] == [], f"nodes outlined in red: {state['errors']}"
        ds = ui["extra"]["ds"]
        assert abs(state["scale"] - ds["scale"]) < 1e-6 and state["offset"] == ds["offset"], state
        assert state["lowQuality"] is False, "the canvas draws nodes without titles at this zoom"
        # title text (the frontend's font) + the collapse dot and margins fits the node
        cut = [(t["title"], round(t["text"]), t["width"]) for t in state["titles"] if t["text"] + 40 > t["width"]]
        assert cut == [], f"titles cut off: {cut}"
        # inputs a node does not declare are ignored by the server: the frontend adds the value of Load Video's
        # preview widget ("video-preview") once the sample file plays
        info = json.loads(_http(browser_server.url + "/object_info")[2])
        declared = lambda ct: {n for sec in ("required", "optional") for n in info[ct]["input"].get(sec, {})}
        strip = lambda g: {k: {"class_type": v["class_type"],
                               "inputs": {n: x for n, x in v["inputs"].items() if n in declared(v["class_type"])}}
                           for k, v in g.items()}
        twin = TW._load(TW._twin(path))
        assert strip(twin) == {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in twin.items()}
        assert strip(prompt) == strip(twin)
        assert {n for v in prompt.values() for n in v["inputs"]} - {n for v in twin.values() for n in v["inputs"]} \
            <= {"video-preview"}
    finally:
        page.close()


def test_browser_shows_a_warning_from_a_node(chromium, browser_server):
    """A warning a node logs reaches the page that queued the prompt as a toast: EYM Extract Poses on the
    sample image with detector auto and no OpenPose file falls back to mediapipe and says so."""
    from edit_your_motion.nodes import comfy_bridge as bridge

    if subprocess.run([_comfy_python(), "-c", "from mediapipe.python.solutions import pose"],
                      capture_output=True).returncode != 0:
        pytest.skip("mediapipe is not installed in ComfyUI's Python")
    page = _open_page(chromium, browser_server)
    try:
        client_id = page.evaluate("() => window.app.api.clientId")
        graph = {
            "1": {"class_type": "LoadImage", "inputs": {"image": "eym_sample_astronaut.jpg"}},
            "2": {"class_type": "EYM_ExtractPoses", "inputs": {
                "images": ["1", 0], "detector": "auto", "person": "largest", "detect_resolution": 512,
                "stick_width": 4, "openpose_model": "auto"}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
        }
        pid = H.queue_prompt(browser_server.port, graph, client_id=client_id)
        entry = H.wait_history(browser_server.port, pid, timeout=300)
        assert entry["status"]["status_str"] == "success", H.history_error(entry)
        page.get_by_text("mediapipe finds the poses", exact=False).first.wait_for(timeout=30000)
        shot = browser_server.shots / "warning toast.png"
        page.screenshot(path=str(shot))
        assert any("Edit-Your-Motion" in line and "mediapipe finds the poses" in line for line in page.console), \
            page.console[-10:]
        assert bridge.WARNING_EVENT == "edit_your_motion.warning"
    finally:
        page.close()
