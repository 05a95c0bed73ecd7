"""The pack's main job from the command line: ``python -m motion_core edit``.

With a ComfyUI install that has this pack in ``custom_nodes`` and the model files in its model
folders, it copies your two videos into ComfyUI's input folder, fills the shipped API workflow
(``example_workflows/api/edit_your_motion_api.json``) with your prompts and settings, runs it on a headless
ComfyUI started on 127.0.0.1, and prints where the edited video was saved.

Without that (a fresh machine), the bare command says what is missing and runs its fallback (a real
edit in the pack's small world, :func:`run_fallback`). When real-edit options were given (``--comfyui``, ``--source``,
prompts, model files...), a missing piece is an error instead: it lists them and exits with 2.
Nothing here imports ComfyUI: it talks to the server over HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[2]
WORKFLOW = PACK_ROOT / "example_workflows" / "api" / "edit_your_motion_api.json"

# Node ids of the shipped API workflow and the class each must have.
NODES = {
    "checkpoint": ("1", "CheckpointLoaderSimple"), "controlnet": ("2", "ControlNetLoader"),
    "source_video": ("4", "LoadVideo"), "source_frames": ("6", "EYM_SelectFrames"), "source_size": ("7", "ImageScale"),
    "reference_video": ("8", "LoadVideo"), "reference_frames": ("10", "EYM_SelectFrames"),
    "reference_size": ("11", "ImageScale"), "source_pose": ("12", "EYM_ExtractPoses"),
    "reference_pose": ("13", "EYM_ExtractPoses"), "content_prompt": ("19", "CLIPTextEncode"),
    "source_prompt": ("20", "CLIPTextEncode"), "target_prompt": ("21", "CLIPTextEncode"),
    "stage1": ("22", "EYM_TuneStage1"), "stage2": ("23", "EYM_TuneStage2"), "inversion": ("25", "EYM_DDIMInversion"),
    "sampler": ("26", "EYM_TwoBranchSampler"), "save": ("29", "SaveVideo"), "context": ("33", "EYM_ContextOptions"),
}
MODEL_FILES = (("checkpoints", "checkpoint"), ("controlnet", "controlnet"))
# stdlib only here (the test harness loads this file on its own): the pins of mediapipe_detector.py
MEDIAPIPE_INSTALL = ('pip install --no-deps mediapipe==0.10.14 && '
                     'pip install absl-py attrs flatbuffers "protobuf<5" matplotlib')


def _guess_comfyui() -> str | None:
    parent = PACK_ROOT.parent
    if parent.name == "custom_nodes" and (parent.parent / "main.py").is_file():
        return str(parent.parent)
    return None


def add_edit_arguments(p) -> None:
    g = p.add_argument_group("ComfyUI")
    g.add_argument("--comfyui", default=None,
                   help="ComfyUI folder (default: $EYM_COMFYUI_DIR, or the ComfyUI this pack is installed in)")
    g.add_argument("--python", default=os.environ.get("EYM_COMFYUI_PYTHON", sys.executable), help="ComfyUI's Python")
    g.add_argument("--cpu", action="store_true", help="run ComfyUI on the CPU (very slow at 512x512)")
    g.add_argument("--timeout", type=float, default=4 * 3600, help="seconds to wait for the edit")
    i = p.add_argument_group("inputs")
    i.add_argument("--source", help="video of the person to keep")
    i.add_argument("--reference", help="video of the motion to give them")
    i.add_argument("--content-prompt", help="P_c: the person and background, no motion")
    i.add_argument("--source-prompt", help="P_s: P_c plus the source motion")
    i.add_argument("--target-prompt", help="P_t: P_c plus the new motion")
    i.add_argument("--checkpoint", help="SD1.5 checkpoint file name in ComfyUI/models/checkpoints")
    i.add_argument("--controlnet", help="openpose ControlNet file name in ComfyUI/models/controlnet")
    i.add_argument("--detector", default="auto",
                   help="pose detector: auto (OpenPose when --openpose-model is in ComfyUI/models/openpose, else "
                        "mediapipe), openpose or mediapipe")
    i.add_argument("--openpose-model", default="body_pose_model.pth", help="OpenPose body model in ComfyUI/models/openpose")
    s = p.add_argument_group("settings (paper defaults)")
    s.add_argument("--frames", type=int, default=48,
                   help="frames taken from each video at --fps (8 is the paper's clip; longer clips are edited in "
                        "context windows of 8 frames)")
    s.add_argument("--fps", type=float, default=12.0,
                   help="take every k-th frame of each video so it plays at about this rate (0: every frame); "
                        "the edit is saved at that rate")
    s.add_argument("--size", type=int, default=512, help="frame width and height (divisible by 8)")
    s.add_argument("--stage1-steps", type=int, default=300)
    s.add_argument("--stage2-steps", type=int, default=300)
    s.add_argument("--ddim-steps", type=int, default=50)
    s.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default="edit_output", help="where the fallback edit in the small world writes (when it runs)")
    p.add_argument("--self-check", action="store_true", help="run the self-check even if ComfyUI and weights are present")


def load_workflow(path: Path = WORKFLOW) -> dict:
    graph = json.loads(path.read_text())
    for name, (node, cls) in NODES.items():
        if graph.get(node, {}).get("class_type") != cls:
            raise RuntimeError(f"{path.name} changed: node {node} ({name}) should be {cls}")
    return graph


def fill_workflow(graph: dict, args, source_name: str, reference_name: str) -> dict:
    """The shipped workflow with the user's files, prompts and settings."""
    g = json.loads(json.dumps(graph))

    def put(name, **values):
        g[NODES[name][0]]["inputs"].update({k: v for k, v in values.items() if v is not None})

    if args.size % 8:  # (stdlib only here: the test harness loads this file on its own)
        raise SystemExit(f"--size {args.size} must be divisible by 8, e.g. {args.size // 8 * 8}")
    put("checkpoint", ckpt_name=args.checkpoint)
    put("controlnet", control_net_name=args.controlnet)
    put("source_video", file=source_name)
    put("reference_video", file=reference_name)
    for n in ("source_frames", "reference_frames"):
        put(n, frames=args.frames, target_fps=args.fps)
    for n in ("source_size", "reference_size"):
        put(n, width=args.size, height=args.size)
    for n in ("source_pose", "reference_pose"):
        put(n, detector=args.detector, openpose_model=args.openpose_model)
    put("content_prompt", text=args.content_prompt)
    put("source_prompt", text=args.source_prompt)
    put("target_prompt", text=args.target_prompt)
    put("stage1", steps=args.stage1_steps, seed=args.seed)
    put("stage2", steps=args.stage2_steps, seed=args.seed)
    put("inversion", steps=args.ddim_steps)
    put("sampler", steps=args.ddim_steps, seed=args.seed)
    return g


def missing_for_real_run(args, graph: dict) -> list[str]:
    """What stops a real edit; empty when everything is in place."""
    reasons = []
    if not args.comfyui or not (Path(args.comfyui) / "main.py").is_file():
        reasons.append("no ComfyUI folder (pass --comfyui DIR or set EYM_COMFYUI_DIR)")
        return reasons
    comfy = Path(args.comfyui)
    installed = [p for p in (comfy / "custom_nodes").glob("*") if p.resolve() == PACK_ROOT]
    if not installed:
        reasons.append(f"this pack is not installed in {comfy / 'custom_nodes'} (clone or link it there)")
    wanted = {"checkpoint": args.checkpoint or graph[NODES["checkpoint"][0]]["inputs"]["ckpt_name"],
              "controlnet": args.controlnet or graph[NODES["controlnet"][0]]["inputs"]["control_net_name"]}
    for folder, key in MODEL_FILES:
        if not (comfy / "models" / folder / wanted[key]).is_file():
            reasons.append(f"no {wanted[key]} in {comfy / 'models' / folder}")
    reasons += _pose_detector_missing(args, comfy)
    for flag in ("source", "reference"):
        value = getattr(args, flag)
        if not value or not Path(value).is_file():
            reasons.append(f"no --{flag} video given" if not value else f"--{flag} {value} does not exist")
    return reasons


def _mediapipe_in(python: str) -> bool:
    """Whether ComfyUI's Python can import mediapipe's pose solution."""
    try:
        done = subprocess.run([python, "-c", "import mediapipe.python.solutions.pose"], capture_output=True,
                              timeout=300)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


def _pose_detector_missing(args, comfy: Path) -> list[str]:
    """What stops the pose detector the workflow will use (see nodes/detectors.py)."""
    detector = args.detector
    model = args.openpose_model
    if detector.lower().endswith((".pth", ".safetensors")):  # the old meaning: an OpenPose file
        detector, model = "openpose", detector
    has_file = (comfy / "models" / "openpose" / model).is_file()
    no_file = f"no {model} in {comfy / 'models' / 'openpose'}"
    no_mediapipe = f"mediapipe is not installed in ComfyUI's Python {args.python} ({MEDIAPIPE_INSTALL})"
    if detector == "openpose":
        return [] if has_file else [no_file]
    if detector == "mediapipe":
        return [] if _mediapipe_in(args.python) else [no_mediapipe]
    if detector != "auto":
        return [f"--detector {detector}: use auto, openpose or mediapipe"]
    if has_file or _mediapipe_in(args.python):
        return []
    return [f"no pose detector for --detector auto: {no_file}, and {no_mediapipe}"]


# --------------------------------------------------------------------------- HTTP (stdlib only, loopback only)
HOST = "127.0.0.1"


def request(port: int, path: str, payload=None, timeout: float = 30.0):
    """GET (or POST ``payload`` as JSON) ``path`` on the local ComfyUI; JSON answer or None.
    An HTTP error (e.g. 400 with ``node_errors`` for an invalid workflow) raises RuntimeError with
    ComfyUI's answer."""
    data = None if payload is None else json.dumps(payload).encode()
    req = urllib.request.Request(f"http://{HOST}:{port}{path}", data=data,
                                 headers={"Content-Type": "application/json"} if data else {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            body = resp.read().decode("utf-8")
    except urllib.error.HTTPError as err:
        raise RuntimeError(f"{path} -> HTTP {err.code}: {err.read().decode('utf-8', 'replace')[:4000]}") from None
    return json.loads(body) if body.strip() else None


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((HOST, port)) == 0


def start_server(comfy: Path, python: str, port: int, extra: list[str], log_path: Path, timeout: float = 300.0,
                 env: dict | None = None) -> subprocess.Popen:
    """Start ComfyUI on 127.0.0.1:``port`` (its output in ``log_path``, also ``proc.log_path``);
    return the process once ``/object_info`` answers."""
    if _port_open(port):
        raise RuntimeError(f"port {port} on {HOST} is already in use (another ComfyUI?)")
    cmd = [python, "main.py", "--listen", HOST, "--port", str(port), "--disable-api-nodes", "--disable-auto-launch", *extra]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=comfy, stdout=log, stderr=subprocess.STDOUT, env=full_env,
                                start_new_session=True)
    proc.log_path = Path(log_path)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ComfyUI exited with code {proc.returncode} during startup; see {log_path}")
        try:
            request(port, "/object_info/EYM_LoadVideoModel", timeout=5)
            return proc
        except (urllib.error.URLError, ConnectionError, OSError, ValueError, RuntimeError):
            time.sleep(0.5)
    stop_server(proc)
    raise TimeoutError(f"ComfyUI did not answer within {timeout:.0f} s; see {log_path}")


def stop_server(proc: subprocess.Popen, timeout: float = 30.0) -> int | None:
    """SIGINT (ComfyUI shuts down cleanly), then SIGTERM, then SIGKILL; this process only."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    for sig, wait_s in ((signal.SIGINT, timeout), (signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            return proc.wait(wait_s)
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def queue(port: int, graph: dict, client_id: str | None = None) -> str:
    """POST an API-format graph to ``/prompt``; its prompt id. A rejected graph raises RuntimeError."""
    resp = request(port, "/prompt", {"prompt": graph, "client_id": client_id or uuid.uuid4().hex})
    if resp.get("node_errors"):
        raise RuntimeError(f"ComfyUI refused the workflow: {json.dumps(resp['node_errors'])[:4000]}")
    return resp["prompt_id"]


def interrupt(port: int, prompt_id: str | None = None) -> None:
    request(port, "/interrupt", {"prompt_id": prompt_id} if prompt_id else {})


def wait(port: int, prompt_id: str, timeout: float, poll: float = 0.5, report=None) -> dict:
    """Poll ``/history`` until the prompt has finished (success, error or interrupt); its entry."""
    deadline, start, last = time.monotonic() + timeout, time.monotonic(), time.monotonic()
    while time.monotonic() < deadline:
        entry = (request(port, f"/history/{prompt_id}") or {}).get(prompt_id)
        status = (entry or {}).get("status", {})
        if entry is not None and status.get("completed") is not None and (
                status.get("completed") or status.get("status_str") in ("success", "error")):
            return entry
        if report and time.monotonic() - last > 60:
            last = time.monotonic()
            report(f"... running for {time.monotonic() - start:.0f} s")
        time.sleep(poll)
    raise TimeoutError(f"prompt {prompt_id} did not finish within {timeout:.0f} s")


def run_real(args, graph: dict, log=print) -> int:
    comfy = Path(args.comfyui)
    tag = uuid.uuid4().hex[:8]
    names = {}
    for flag in ("source", "reference"):
        src = Path(getattr(args, flag))
        names[flag] = f"eym_{flag}_{tag}{src.suffix}"
        (comfy / "input").mkdir(exist_ok=True)
        shutil.copyfile(src, comfy / "input" / names[flag])
    filled = fill_workflow(graph, args, names["source"], names["reference"])
    port = free_port()
    log_path = Path(args.output).resolve() / f"comfyui_{tag}.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log(f"starting ComfyUI in {comfy} (log: {log_path})")
    proc = start_server(comfy, args.python, port, ["--cpu"] if args.cpu else [], log_path)
    try:
        prompt_id = queue(port, filled)
        log(f"queued the edit ({args.frames} frames at {args.size}x{args.size}, "
            f"{args.stage1_steps} + {args.stage2_steps} tuning steps, {args.ddim_steps} DDIM steps)")
        entry = wait(port, prompt_id, args.timeout, poll=2.0, report=log)
    finally:
        stop_server(proc)
        for name in names.values():
            (comfy / "input" / name).unlink(missing_ok=True)
    status = entry.get("status", {})
    if status.get("status_str") == "error":
        for kind, detail in status.get("messages", []):
            if kind == "execution_error":
                log(f"ComfyUI error in {detail.get('node_type')}: {detail.get('exception_message')}")
        return 1
    saved = []
    for out in entry.get("outputs", {}).values():
        for item in out.get("images", []) + out.get("videos", []):
            saved.append(comfy / "output" / item.get("subfolder", "") / item["filename"])
    for path in saved:
        log(f"edited video: {path}")
    return 0 if saved else 1


#: Options that ask for a real edit: given on the command line, a missing piece is an error, not a
#: reason to fall back.
REAL_EDIT_OPTIONS = ("comfyui", "source", "reference", "content_prompt", "source_prompt", "target_prompt",
                     "checkpoint", "controlnet")


def explicit_real_edit(args) -> list[str]:
    """The real-edit options given on the command line (``--comfyui`` ... ``--controlnet``)."""
    return [f"--{name.replace('_', '-')}" for name in REAL_EDIT_OPTIONS if getattr(args, name, None) is not None]


def run_fallback(args, log=print) -> int:
    """What the bare ``edit`` command does when no real edit can run: a real edit in the pack's
    small world with its trained base model (``apps/world_edit.py``), which says plainly that it is
    the toy world, not SD1.5. Exit 0 when the edit beats the ControlNet-only baseline against the
    ground truth, 1 otherwise."""
    from ..apps.world_edit import run_world_edit

    return 0 if run_world_edit(args.output, log=log)["passed"] else 1


def invalid_settings(args) -> list[str]:
    """Settings no edit can use (checked before anything runs)."""
    bad = []
    if args.size < 8 or args.size % 8:
        bad.append(f"--size {args.size} must be a positive multiple of 8, e.g. {max(8, args.size // 8 * 8)}")
    if args.frames < 1:
        bad.append(f"--frames {args.frames} must be >= 1")
    if not args.fps >= 0:
        bad.append(f"--fps {args.fps} must be 0 (every frame) or more")
    for flag in ("stage1_steps", "stage2_steps", "ddim_steps"):
        if getattr(args, flag) < 1:
            bad.append(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be >= 1")
    return bad


def run_edit(args, log=print) -> int:
    bad = invalid_settings(args)
    if bad:
        for b in bad:
            log(f"error: {b}")
        return 2
    if args.self_check:
        from ..apps.selfcheck import run_selfcheck

        return 0 if run_selfcheck(args.output, log=log)["passed"] else 1
    graph = load_workflow()
    asked = explicit_real_edit(args)
    if args.comfyui is None:
        args.comfyui = os.environ.get("EYM_COMFYUI_DIR") or _guess_comfyui()
    reasons = missing_for_real_run(args, graph)
    if not reasons:
        return run_real(args, graph, log=log)
    if asked:  # the user asked for a real edit: say what is missing and fail
        log(f"Cannot run the edit asked for ({' '.join(asked)}); missing:")
        for r in reasons:
            log(f"  - {r}")
        return 2
    log("A real edit needs ComfyUI with this pack and the SD1.5 model files; here:")
    for r in reasons:
        log(f"  - {r}")
    return run_fallback(args, log=log)
