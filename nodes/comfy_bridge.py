"""The one module that talks to ComfyUI (``comfy.*``, ``folder_paths``).

Everything else in the pack goes through these functions. Outside ComfyUI (tests, scripts) each
falls back to plain torch: the best available device, a no-op progress bar, a local interrupt
flag, model folders under ``EYM_MODELS_DIR`` (default ``./models``), warnings to ``logging`` only,
and no input folder (``EYM_INPUT_DIR`` names one).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import torch

from ..motion_core.errors import ModelError
from ..motion_core.files import atomic_path

log = logging.getLogger("edit_your_motion")

try:  # pragma: no cover - exercised inside ComfyUI only
    import comfy.model_management as _mm
    import comfy.model_patcher as _patcher
    import comfy.utils as _cu
    import folder_paths as _fp

    HAS_COMFY = True
    Interrupted = _mm.InterruptProcessingException
except ImportError:
    _mm = _patcher = _cu = _fp = None
    HAS_COMFY = False

    class Interrupted(BaseException):
        """Raised when processing is interrupted (ComfyUI's InterruptProcessingException outside ComfyUI)."""


TUNED_FOLDER = "edit_your_motion"
OPENPOSE_FOLDER = "openpose"
# where comfyui_controlnet_aux puts the annotators it downloads, under its own folder
CONTROLNET_AUX_ANNOTATORS = os.path.join("ckpts", "lllyasviel", "Annotators")
# the pack's sample inputs, copied into ComfyUI's input folder (see install_sample_inputs)
SAMPLE_INPUTS = Path(__file__).resolve().parents[1] / "example_workflows" / "input"
# the server-to-browser event of warnings; web/edit_your_motion.js shows it as a toast
WARNING_EVENT = "edit_your_motion.warning"
_interrupt_flag = False


# --------------------------------------------------------------------------- devices
def torch_device() -> torch.device:
    if HAS_COMFY:
        return _mm.get_torch_device()
    if torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


def offload_device() -> torch.device:
    return _mm.unet_offload_device() if HAS_COMFY else torch.device("cpu")


def intermediate_device() -> torch.device:
    return _mm.intermediate_device() if HAS_COMFY else torch.device("cpu")


def soft_empty_cache() -> None:
    if HAS_COMFY:
        _mm.soft_empty_cache()
    elif torch.cuda.is_available():
        torch.cuda.empty_cache()


def return_freed_host_memory() -> bool:
    """Hand the host memory freed since (a tuning stage's optimizer state, gradients, activations) back
    to the system: glibc keeps freed blocks in its heap, where they still count as the process's
    resident memory. True where it ran (Linux with glibc); elsewhere nothing happens."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):
        return False
    trim.argtypes = [ctypes.c_size_t]
    trim(0)
    return True


def _host_available() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def free_memory(required: int, device: torch.device) -> int | None:
    """Ask ComfyUI to unload models from ``device`` until ``required`` bytes are free there, and
    return the bytes free afterwards (None where unknown). Outside ComfyUI: torch's cached blocks
    are released and the driver's free memory is returned (the host's available memory for the CPU)."""
    if HAS_COMFY:
        _mm.free_memory(int(required), device)
        return int(_mm.get_free_memory(device))
    if device.type == "cuda":
        torch.cuda.empty_cache()
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        return _host_available()
    return None


def is_oom(exc: BaseException) -> bool:
    if HAS_COMFY:
        return bool(_mm.is_oom(exc))
    return isinstance(exc, torch.cuda.OutOfMemoryError)


def supports_bf16(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu"


# --------------------------------------------------------------------------- interruption / progress
def check_interrupt() -> None:
    """Raise :data:`Interrupted` if the user pressed Cancel (call it every step)."""
    global _interrupt_flag
    if HAS_COMFY:
        _mm.throw_exception_if_processing_interrupted()
    elif _interrupt_flag:
        _interrupt_flag = False
        raise Interrupted("processing interrupted")


def request_interrupt() -> None:
    """Ask the running node to stop at its next step (ComfyUI's Cancel, or a local flag)."""
    global _interrupt_flag
    if HAS_COMFY:
        _mm.interrupt_current_processing(True)
    else:
        _interrupt_flag = True


class Progress:
    """ComfyUI's progress bar; ``step()`` also checks for interruption.

    The bar is shown (at 0) as soon as it is made, so a node makes it first thing, before its slow set-up.
    ``prepare`` extra units cover that set-up (converting weights, loading a detector, moving a model to the
    GPU): each :meth:`phase` call fills one and logs what is being done, so the bar moves from the first
    second, before the first of the ``total`` steps.
    """

    def __init__(self, total: int, label: str = "", prepare: int = 0):
        self.total, self.label, self.done = int(total), label, 0
        self.prepare, self.prepared = int(prepare), 0
        self.started = time.perf_counter()
        self.bar = _cu.ProgressBar(self.total + self.prepare) if HAS_COMFY else None
        if self.bar is not None:
            self.bar.update_absolute(0)

    def _show(self) -> None:
        if self.bar is not None:
            self.bar.update_absolute(self.prepared + self.done)

    def phase(self, what: str) -> None:
        """One set-up unit done (``what`` is about to start); checks for interruption."""
        check_interrupt()
        self.prepared = min(self.prepare, self.prepared + 1)
        log.info("%s: %s (%.1f s)", self.label, what, time.perf_counter() - self.started)
        self._show()

    def step(self, n: int = 1, loss: float | None = None) -> None:
        check_interrupt()
        self.prepared = self.prepare  # set-up is over once steps run
        self.done += n
        self._show()
        if self.done == n:
            log.info("%s: first step done after %.1f s", self.label, time.perf_counter() - self.started)
        if loss is not None and (self.done == self.total or self.done % max(1, self.total // 10) == 0):
            log.info("%s step %d/%d, loss %.4f", self.label, self.done, self.total, loss)


# --------------------------------------------------------------------------- warnings for the user
def _executing() -> tuple[str | None, str | None]:
    """(prompt id, node id) of the node running now, when ComfyUI knows them."""
    try:
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        if context is not None:
            return context.prompt_id, context.node_id
    except ImportError:
        pass
    server = _prompt_server()
    return None, getattr(server, "last_node_id", None)


def _prompt_server():
    if not HAS_COMFY:
        return None
    try:
        from server import PromptServer
    except ImportError:
        return None
    return getattr(PromptServer, "instance", None)


class BrowserWarnings(logging.Handler):
    """Sends the pack's warnings (``logging`` WARNING and above on the ``edit_your_motion`` logger, from
    the nodes and the engine alike) to the browser that queued the prompt, as the ``WARNING_EVENT``
    message; the pack's web extension shows each as a toast. A text is sent once per prompt (the same
    crop warning from five nodes is one toast). ``send`` is the server's ``send_sync`` (tests pass a stand-in)."""

    def __init__(self, send=None):
        super().__init__(logging.WARNING)
        self._send = send
        self._prompt: object = None
        self._sent: set = set()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            send, client = self._send, None
            if send is None:
                server = _prompt_server()
                if server is None:
                    return
                send, client = server.send_sync, getattr(server, "client_id", None)
            prompt, node = _executing()
            if prompt != self._prompt or prompt is None and len(self._sent) > 100:
                self._prompt, self._sent = prompt, set()
            text = record.getMessage()
            if text in self._sent:
                return
            self._sent.add(text)
            send(WARNING_EVENT, {"message": text, "node": node, "prompt_id": prompt, "level": record.levelname.lower()},
                 client)
        except Exception:  # a message must never break a node
            pass


def install_browser_warnings() -> BrowserWarnings | None:
    """Route the pack's warnings to the browser (inside ComfyUI; once)."""
    if not HAS_COMFY:
        return None
    for handler in log.handlers:
        if isinstance(handler, BrowserWarnings):
            return handler
    handler = BrowserWarnings()
    log.addHandler(handler)
    return handler


def warn_user(message: str) -> None:
    """A warning the user must see: the server console and, inside ComfyUI, the browser (a toast)."""
    log.warning(message)


# --------------------------------------------------------------------------- model management
class _Holder(torch.nn.Module):
    """ComfyUI's ModelPatcher sets ``model.device``, which diffusers models do not allow; this plain
    container takes that attribute instead."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.inner = module


class Managed:
    """A module whose device placement is managed by ComfyUI (or by hand outside it)."""

    def __init__(self, module: torch.nn.Module):
        self.module = module
        self.patcher = None
        if HAS_COMFY:
            self.patcher = _patcher.ModelPatcher(_Holder(module), load_device=torch_device(),
                                                 offload_device=offload_device())

    def load(self, memory_required: int = 0) -> torch.device:
        """Put the module on the compute device, making room through ComfyUI first."""
        if self.patcher is not None:
            _mm.load_models_gpu([self.patcher], memory_required=memory_required, force_full_load=True)
            return self.patcher.load_device
        device = torch_device()
        self.module.to(device)
        return device

    def release(self) -> None:
        """Move the module off the GPU (and out of ComfyUI's loaded-model list)."""
        if self.patcher is not None:
            for i in range(len(_mm.current_loaded_models) - 1, -1, -1):
                loaded = _mm.current_loaded_models[i]
                if loaded.model is self.patcher:
                    loaded.model_unload()
                    _mm.current_loaded_models.pop(i)
            _mm.soft_empty_cache()
        else:
            self.module.to(offload_device())
            soft_empty_cache()


def unload_other_models() -> None:
    """Free the compute device for training: ComfyUI unloads every model it holds (checkpoint, CLIP,
    VAE, ControlNet copies); they reload on demand when a later node needs them."""
    if HAS_COMFY:
        _mm.unload_all_models()
    soft_empty_cache()


# --------------------------------------------------------------------------- ComfyUI model objects
def unet_weights(model) -> tuple[dict | torch.nn.Module, float]:
    """LDM-layout UNet weights (LoRA and other patches applied) and the latent scale of a MODEL.

    Outside ComfyUI a diffusers ``UNet2DConditionModel`` (or an LDM state dict) stands in for MODEL.
    """
    from diffusers import UNet2DConditionModel

    from ..motion_core.video_model.sd15 import SD15_LATENT_SCALE

    if isinstance(model, (UNet2DConditionModel, dict)):
        return model, SD15_LATENT_SCALE
    if not (HAS_COMFY and hasattr(model, "model") and hasattr(model.model, "diffusion_model")):
        raise ModelError(f"model must be a MODEL from a checkpoint loader; got {type(model).__name__}")
    import comfy.supported_models as sm

    cfg = model.model.model_config
    if not isinstance(cfg, sm.SD15) or type(cfg) is not sm.SD15:
        raise ModelError(
            f"the MODEL is {type(cfg).__name__}, not Stable Diffusion 1.5; load an SD1.5 checkpoint "
            "(e.g. v1-5-pruned-emaonly.safetensors) with Load Checkpoint"
        )
    scale = float(model.model.latent_format.scale_factor)
    # state_dict_for_saving applies the MODEL's patches (LoRAs...) when a tensor is converted.
    sd = model.state_dict_for_saving()
    prefix = "model.diffusion_model."
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}, scale


def controlnet_weights(control_net) -> dict | torch.nn.Module:
    """LDM-layout weights of a CONTROL_NET (or a diffusers ControlNetModel / state dict outside ComfyUI)."""
    from diffusers import ControlNetModel

    if isinstance(control_net, (ControlNetModel, dict)):
        return control_net
    if HAS_COMFY:
        import comfy.controlnet as cn

        if type(control_net) is cn.ControlNet and getattr(control_net, "control_model", None) is not None:
            return control_net.control_model.state_dict()
        if isinstance(control_net, (cn.ControlLora,)) or hasattr(control_net, "t2i_model"):
            raise ModelError(
                f"the CONTROL_NET is a {type(control_net).__name__}; Edit-Your-Motion needs a full SD1.5 openpose "
                "ControlNet (e.g. control_v11p_sd15_openpose.pth or its safetensors release) loaded with Load ControlNet Model"
            )
    raise ModelError(f"control_net must be a CONTROL_NET from Load ControlNet Model; got {type(control_net).__name__}")


# --------------------------------------------------------------------------- model folders
def _fallback_models_dir() -> Path:
    return Path(os.environ.get("EYM_MODELS_DIR", "models")).resolve()


def register_model_folders() -> None:
    """Register the pack's folders: ``models/edit_your_motion`` (tuned weights) and ``models/openpose``."""
    if not HAS_COMFY:
        return
    for name in (TUNED_FOLDER, OPENPOSE_FOLDER):
        path = os.path.join(_fp.models_dir, name)
        known = _fp.folder_names_and_paths.get(name, ([], set()))[0]
        if path not in known:  # extra_model_paths.yaml may list other folders for it already
            _fp.add_model_folder_path(name, path, is_default=True)


def annotator_folders() -> list[str]:
    """Where comfyui_controlnet_aux keeps its downloaded annotators: ``$AUX_ANNOTATOR_CKPTS_PATH`` (its own
    override) and ``<pack>/ckpts`` of every custom node pack, each with ``lllyasviel/Annotators`` below,
    the folders that exist."""
    roots = []
    env = os.environ.get("AUX_ANNOTATOR_CKPTS_PATH")
    if env:
        roots.append(os.path.join(env, "lllyasviel", "Annotators"))
    for custom_nodes in custom_nodes_folders():
        try:
            packs = sorted(os.listdir(custom_nodes))
        except OSError:
            continue
        roots += [os.path.join(custom_nodes, pack, CONTROLNET_AUX_ANNOTATORS) for pack in packs]
    return [r for r in roots if os.path.isdir(r)]


def custom_nodes_folders() -> list[str]:
    """ComfyUI's custom_nodes folders (outside ComfyUI: ``$EYM_CUSTOM_NODES_DIR`` if set)."""
    if HAS_COMFY:
        try:
            return list(_fp.get_folder_paths("custom_nodes"))
        except KeyError:
            return []
    env = os.environ.get("EYM_CUSTOM_NODES_DIR")
    return [env] if env else []


def input_folder() -> Path | None:
    """ComfyUI's input folder (outside ComfyUI: ``$EYM_INPUT_DIR``, else None)."""
    if HAS_COMFY:
        return Path(_fp.get_input_directory())
    env = os.environ.get("EYM_INPUT_DIR")
    return Path(env) if env else None


def install_sample_inputs(source: Path = SAMPLE_INPUTS, target: Path | None = None) -> list[str]:
    """Copy the pack's sample inputs (the files the shipped workflows open with) into ComfyUI's input
    folder, so Load Video / Load Image list them. A file of the same name already there is left alone.
    Each copy is written to a temporary name and renamed. Returns the names copied."""
    target = target if target is not None else input_folder()
    if target is None or not Path(source).is_dir():
        return []
    copied = []
    for path in sorted(Path(source).iterdir()):
        if not path.is_file() or path.name.startswith("."):
            continue
        dest = Path(target) / path.name
        if dest.exists():
            continue
        with atomic_path(dest) as tmp:
            shutil.copyfile(path, tmp)
        copied.append(path.name)
    if copied:
        log.info("Edit-Your-Motion: copied the sample inputs %s into %s", ", ".join(copied), target)
    return copied


def folder_paths_for(name: str) -> list[str]:
    if HAS_COMFY:
        try:
            return list(_fp.get_folder_paths(name))
        except KeyError:
            return [os.path.join(_fp.models_dir, name)]
    return [str(_fallback_models_dir() / name)]


def list_files(name: str, suffixes: tuple[str, ...] = ()) -> list[str]:
    if HAS_COMFY:
        try:
            files = _fp.get_filename_list(name)
        except KeyError:
            files = []
    else:
        files = []
        for folder in folder_paths_for(name):
            root = Path(folder)
            if root.is_dir():
                files += [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()]
    return sorted(f for f in files if not suffixes or f.endswith(suffixes))


def full_path(name: str, filename: str) -> str | None:
    if HAS_COMFY:
        try:
            return _fp.get_full_path(name, filename)
        except KeyError:
            return None
    for folder in folder_paths_for(name):
        p = Path(folder) / filename
        if p.is_file():
            return str(p)
    return None


def output_folder(name: str) -> Path:
    """First registered folder for ``name`` (created if needed): where new files are written."""
    path = Path(folder_paths_for(name)[0])
    path.mkdir(parents=True, exist_ok=True)
    return path

