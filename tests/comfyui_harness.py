"""Helpers for an opt-in integration test against a real ComfyUI checkout.

Nothing here imports the pack or ComfyUI. Uses only the standard library plus ``torch`` and
``safetensors`` (for the random-weight model files).

* ``write_random_sd15_checkpoint`` / ``write_random_sd15_controlnet`` write fp16 safetensors
  files with random weights in the original (LDM) key layout and the full SD1.5 shapes, so
  ``CheckpointLoaderSimple`` detects an SD1.5 model (``model_config`` class ``SD15``) and
  ``ControlNetLoader`` an SD1.5 ControlNet, with no missing or unexpected keys.
  Full size is needed: ComfyUI's VAE and CLIP-L shapes are fixed (truncated CLIP layers stay
  uninitialised), and diffusers-side conversion of the UNet expects the 686 SD1.5 keys.
  Checkpoint: ~2.13 GB, ControlNet: ~0.72 GB.
* ``start_comfyui`` / ``queue_prompt`` / ``wait_history`` / ``interrupt`` / ``stop`` drive a
  ComfyUI server on loopback over its HTTP API; ``install_pack`` symlinks a pack folder into
  ``custom_nodes``.

Load this file by path (``importlib.util.spec_from_file_location``) or put ``tests/`` on
``sys.path``: pytest runs with ``--import-mode=importlib``.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

Shape = Tuple[int, ...]

# --------------------------------------------------------------------------------------------
# SD1.5 key layouts (LDM / original CompVis naming)
# --------------------------------------------------------------------------------------------

_SD15_UNET = dict(in_channels=4, out_channels=4, model_channels=320, channel_mult=(1, 2, 4, 4),
                  num_res_blocks=2, attention_levels=(0, 1, 2), context_dim=768, time_dim=1280)


def _norm(p: str, c: int) -> Iterator[Tuple[str, Shape]]:
    yield p + ".weight", (c,)
    yield p + ".bias", (c,)


def _conv(p: str, cin: int, cout: int, k: int = 3, bias: bool = True) -> Iterator[Tuple[str, Shape]]:
    yield p + ".weight", (cout, cin, k, k)
    if bias:
        yield p + ".bias", (cout,)


def _linear(p: str, cin: int, cout: int, bias: bool = True) -> Iterator[Tuple[str, Shape]]:
    yield p + ".weight", (cout, cin)
    if bias:
        yield p + ".bias", (cout,)


def _unet_resblock(p: str, cin: int, cout: int, emb: int) -> Iterator[Tuple[str, Shape]]:
    yield from _norm(p + ".in_layers.0", cin)
    yield from _conv(p + ".in_layers.2", cin, cout)
    yield from _linear(p + ".emb_layers.1", emb, cout)
    yield from _norm(p + ".out_layers.0", cout)
    yield from _conv(p + ".out_layers.3", cout, cout)
    if cin != cout:
        yield from _conv(p + ".skip_connection", cin, cout, k=1)


def _spatial_transformer(p: str, c: int, context: int) -> Iterator[Tuple[str, Shape]]:
    # SD1.x: use_linear_in_transformer=False -> 1x1 conv proj_in/proj_out, one block, GEGLU FF.
    yield from _norm(p + ".norm", c)
    yield from _conv(p + ".proj_in", c, c, k=1)
    b = p + ".transformer_blocks.0"
    for attn, kv_dim in (("attn1", c), ("attn2", context)):
        yield from _linear(f"{b}.{attn}.to_q", c, c, bias=False)
        yield from _linear(f"{b}.{attn}.to_k", kv_dim, c, bias=False)
        yield from _linear(f"{b}.{attn}.to_v", kv_dim, c, bias=False)
        yield from _linear(f"{b}.{attn}.to_out.0", c, c)
    yield from _linear(b + ".ff.net.0.proj", c, c * 8)
    yield from _linear(b + ".ff.net.2", c * 4, c)
    for n in ("norm1", "norm2", "norm3"):
        yield from _norm(f"{b}.{n}", c)
    yield from _conv(p + ".proj_out", c, c, k=1)


def _unet_encoder_half(prefix: str, cfg: dict) -> Tuple[List[Tuple[str, Shape]], List[int]]:
    """time_embed, input_blocks, middle_block (shared by UNet and ControlNet)."""
    mc, emb, ctx = cfg["model_channels"], cfg["time_dim"], cfg["context_dim"]
    out: List[Tuple[str, Shape]] = []
    out += _linear(prefix + "time_embed.0", mc, emb)
    out += _linear(prefix + "time_embed.2", emb, emb)
    out += _conv(prefix + "input_blocks.0.0", cfg["in_channels"], mc)
    chans = [mc]
    ch, idx = mc, 1
    levels = len(cfg["channel_mult"])
    for level, mult in enumerate(cfg["channel_mult"]):
        for _ in range(cfg["num_res_blocks"]):
            p = f"{prefix}input_blocks.{idx}"
            out += _unet_resblock(p + ".0", ch, mc * mult, emb)
            ch = mc * mult
            if level in cfg["attention_levels"]:
                out += _spatial_transformer(p + ".1", ch, ctx)
            chans.append(ch)
            idx += 1
        if level != levels - 1:
            out += _conv(f"{prefix}input_blocks.{idx}.0.op", ch, ch)
            chans.append(ch)
            idx += 1
    out += _unet_resblock(prefix + "middle_block.0", ch, ch, emb)
    out += _spatial_transformer(prefix + "middle_block.1", ch, ctx)
    out += _unet_resblock(prefix + "middle_block.2", ch, ch, emb)
    return out, chans


def sd15_unet_shapes(prefix: str = "model.diffusion_model.", cfg: dict | None = None) -> List[Tuple[str, Shape]]:
    """SD1.5 UNet layout; ``cfg`` overrides its sizes (keys of ``_SD15_UNET``) for a smaller model of the same layout."""
    cfg = {**_SD15_UNET, **(cfg or {})}
    mc, emb, ctx = cfg["model_channels"], cfg["time_dim"], cfg["context_dim"]
    out, chans = _unet_encoder_half(prefix, cfg)
    ch = mc * cfg["channel_mult"][-1]
    idx = 0
    for level in reversed(range(len(cfg["channel_mult"]))):
        mult = cfg["channel_mult"][level]
        for i in range(cfg["num_res_blocks"] + 1):
            p = f"{prefix}output_blocks.{idx}"
            out += _unet_resblock(p + ".0", ch + chans.pop(), mc * mult, emb)
            ch = mc * mult
            sub = 1
            if level in cfg["attention_levels"]:
                out += _spatial_transformer(p + ".1", ch, ctx)
                sub = 2
            if level and i == cfg["num_res_blocks"]:
                out += _conv(f"{p}.{sub}.conv", ch, ch)
            idx += 1
    out += _norm(prefix + "out.0", mc)
    out += _conv(prefix + "out.2", mc, cfg["out_channels"])
    return out


def sd15_clip_shapes(prefix: str = "cond_stage_model.transformer.text_model.") -> List[Tuple[str, Shape]]:
    """CLIP ViT-L/14 text encoder, 12 layers (ComfyUI's SD1 CLIP config is fixed at 12)."""
    d, ff = 768, 3072
    out: List[Tuple[str, Shape]] = [
        (prefix + "embeddings.token_embedding.weight", (49408, d)),
        (prefix + "embeddings.position_embedding.weight", (77, d)),
    ]
    for i in range(12):
        p = f"{prefix}encoder.layers.{i}"
        for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out += _linear(f"{p}.self_attn.{n}", d, d)
        out += _norm(p + ".layer_norm1", d)
        out += _linear(p + ".mlp.fc1", d, ff)
        out += _linear(p + ".mlp.fc2", ff, d)
        out += _norm(p + ".layer_norm2", d)
    out += _norm(prefix + "final_layer_norm", d)
    return out


def _vae_resblock(p: str, cin: int, cout: int) -> Iterator[Tuple[str, Shape]]:
    yield from _norm(p + ".norm1", cin)
    yield from _conv(p + ".conv1", cin, cout)
    yield from _norm(p + ".norm2", cout)
    yield from _conv(p + ".conv2", cout, cout)
    if cin != cout:
        yield from _conv(p + ".nin_shortcut", cin, cout, k=1)


def _vae_mid(p: str, c: int) -> Iterator[Tuple[str, Shape]]:
    yield from _vae_resblock(p + ".block_1", c, c)
    yield from _norm(p + ".attn_1.norm", c)
    for n in ("q", "k", "v", "proj_out"):
        yield from _conv(f"{p}.attn_1.{n}", c, c, k=1)
    yield from _vae_resblock(p + ".block_2", c, c)


def sd15_vae_shapes(prefix: str = "first_stage_model.") -> List[Tuple[str, Shape]]:
    """KL-f8 autoencoder (ch=128, ch_mult 1,2,4,4, 2 res blocks, z=4); ComfyUI's config is fixed."""
    ch, mult, nrb, z = 128, (1, 2, 4, 4), 2, 4
    out: List[Tuple[str, Shape]] = []
    e = prefix + "encoder."
    out += _conv(e + "conv_in", 3, ch)
    cin = ch
    for i, m in enumerate(mult):
        for j in range(nrb):
            out += _vae_resblock(f"{e}down.{i}.block.{j}", cin, ch * m)
            cin = ch * m
        if i != len(mult) - 1:
            out += _conv(f"{e}down.{i}.downsample.conv", cin, cin)
    out += _vae_mid(e + "mid", cin)
    out += _norm(e + "norm_out", cin)
    out += _conv(e + "conv_out", cin, 2 * z)
    d = prefix + "decoder."
    cin = ch * mult[-1]
    out += _conv(d + "conv_in", z, cin)
    out += _vae_mid(d + "mid", cin)
    for i in reversed(range(len(mult))):
        for j in range(nrb + 1):
            out += _vae_resblock(f"{d}up.{i}.block.{j}", cin, ch * mult[i])
            cin = ch * mult[i]
        if i != 0:
            out += _conv(f"{d}up.{i}.upsample.conv", cin, cin)
    out += _norm(d + "norm_out", cin)
    out += _conv(d + "conv_out", cin, 3)
    out += _conv(prefix + "quant_conv", 2 * z, 2 * z, k=1)
    out += _conv(prefix + "post_quant_conv", z, z, k=1)
    return out


def sd15_controlnet_shapes(prefix: str = "", hint_channels: int = 3) -> List[Tuple[str, Shape]]:
    """ControlNet v1.1 SD1.5 layout (``control_v11p_sd15_*``): UNet encoder half, ``zero_convs``,
    ``input_hint_block``, ``middle_block_out``. Use ``prefix="control_model."`` for the v1.0 style."""
    out, chans = _unet_encoder_half(prefix, _SD15_UNET)
    hint = [(hint_channels, 16), (16, 16), (16, 32), (32, 32), (32, 96), (96, 96), (96, 256), (256, 320)]
    for n, (cin, cout) in enumerate(hint):
        out += _conv(f"{prefix}input_hint_block.{2 * n}", cin, cout)
    for n, c in enumerate(chans):
        out += _conv(f"{prefix}zero_convs.{n}.0", c, c, k=1)
    c = chans[-1]
    out += _conv(prefix + "middle_block_out.0", c, c, k=1)
    return out


# --------------------------------------------------------------------------------------------
# Random weights, written atomically
# --------------------------------------------------------------------------------------------

def _random_state_dict(shapes: Sequence[Tuple[str, Shape]], seed: int):
    """Seeded, variance-preserving random fp16 tensors: conv/linear weights N(0, 1/fan_in),
    biases 0, norm weights 1, embeddings N(0, 0.02). Keeps activations finite in fp16."""
    import torch

    gen = torch.Generator().manual_seed(int(seed))
    sd = {}
    for key, shape in shapes:
        if len(shape) == 1:  # norm weights 1, all biases 0
            t = torch.ones(shape, dtype=torch.float16) if key.endswith(".weight") else torch.zeros(shape, dtype=torch.float16)
        else:
            fan_in = 1
            for s in shape[1:]:
                fan_in *= s
            std = 0.02 if "embedding" in key else fan_in ** -0.5
            t = torch.empty(shape, dtype=torch.float16).normal_(0.0, std, generator=gen)
        sd[key] = t
    return sd


def _atomic_save(sd, path, metadata: Optional[Dict[str, str]] = None) -> Path:
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + path.name + ".", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        save_file(sd, tmp, metadata=metadata or {})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_random_sd15_checkpoint(path, seed: int = 0) -> Path:
    """UNet + CLIP-L + VAE, LDM keys, fp16 safetensors (~2.13 GB). ComfyUI loads it as SD15."""
    shapes = sd15_unet_shapes() + sd15_clip_shapes() + sd15_vae_shapes()
    return _atomic_save(_random_state_dict(shapes, seed), path, {"format": "pt"})


def write_random_sd15_controlnet(path, seed: int = 0, hint_channels: int = 3) -> Path:
    """SD1.5 ControlNet (v1.1 layout, no prefix), fp16 safetensors (~0.72 GB)."""
    sd = _random_state_dict(sd15_controlnet_shapes(hint_channels=hint_channels), seed)
    return _atomic_save(sd, path, {"format": "pt"})


# --------------------------------------------------------------------------------------------
# Driving a ComfyUI server over HTTP (loopback only)
# --------------------------------------------------------------------------------------------

# The HTTP client and server control live in the pack's stdlib-only motion_core/apps/edit.py (the
# command line's `python -m motion_core edit` uses them too); this harness adds the test set-up.
_ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("eym_headless", _ROOT / "motion_core" / "apps" / "edit.py")
headless = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(headless)

HOST = headless.HOST
free_port = headless.free_port
queue_prompt = headless.queue
interrupt = headless.interrupt
stop = headless.stop_server


def _get_json(port: int, path: str, timeout: float = 10.0):
    return headless.request(port, path, timeout=timeout)


def _post_json(port: int, path: str, payload, timeout: float = 30.0):
    return headless.request(port, path, payload, timeout=timeout)


def write_extra_model_paths(models_dir, yaml_path) -> Path:
    """Write an ``--extra-model-paths-config`` YAML pointing checkpoints/controlnet/vae/... at
    sub-folders of ``models_dir``. (``--base-directory`` is the alternative; it also moves
    input/output/user/custom_nodes.)"""
    models_dir = Path(models_dir).resolve()
    lines = ["eym_test:", f"    base_path: {json.dumps(str(models_dir))}"]
    for name in ("checkpoints", "controlnet", "vae", "loras", "clip", "diffusion_models"):
        lines.append(f"    {name}: {name}/")
    yaml_path = Path(yaml_path)
    yaml_path.write_text("\n".join(lines) + "\n")
    return yaml_path


def start_comfyui(comfy_dir, base_dir_or_extra_paths=None, port: int = 8188, python: Optional[str] = None,
                  timeout: float = 180.0, log_path=None, extra_args: Sequence[str] = (),
                  env: Optional[Dict[str, str]] = None) -> subprocess.Popen:
    """Start ``main.py --cpu`` on 127.0.0.1:port and wait until it answers.

    ``base_dir_or_extra_paths``: a ``.yaml``/``.yml`` file -> ``--extra-model-paths-config``;
    a directory -> ``--base-directory`` (ComfyUI then uses <dir>/models, input, output, user,
    custom_nodes); None -> neither. stdout+stderr go to ``log_path`` (default
    ``<comfy_dir>/eym_test_comfyui_<port>.log``); the path is on ``process.log_path``.
    """
    comfy_dir = Path(comfy_dir).resolve()
    python = python or os.environ.get("EYM_COMFYUI_PYTHON") or sys.executable
    extra = ["--cpu"]
    if base_dir_or_extra_paths is not None:
        p = Path(base_dir_or_extra_paths).resolve()
        extra += ["--extra-model-paths-config" if p.suffix.lower() in (".yaml", ".yml") else "--base-directory", str(p)]
    log_path = Path(log_path) if log_path else comfy_dir / f"eym_test_comfyui_{port}.log"
    return headless.start_server(comfy_dir, python, port, extra + list(extra_args), log_path, timeout, env)


def read_log_tail(proc, n_bytes: int = 20000) -> str:
    path = getattr(proc, "log_path", None)
    if not path or not Path(path).exists():
        return ""
    data = Path(path).read_bytes()
    return data[-n_bytes:].decode("utf-8", "replace")


def import_failed(proc) -> bool:
    """True when ComfyUI logged ``IMPORT FAILED`` for a custom node (it keeps running anyway)."""
    path = getattr(proc, "log_path", None)
    return bool(path) and "IMPORT FAILED" in Path(path).read_text("utf-8", "replace")


def object_info(port: int, node_class: Optional[str] = None):
    return _get_json(port, "/object_info" + (f"/{node_class}" if node_class else ""), timeout=60.0)


def wait_history(port: int, prompt_id: str, timeout: float = 600.0, poll: float = 0.5) -> dict:
    """Poll /history/<id> until the prompt finished (success, error or interrupt); returns its entry.
    ``entry["status"]["status_str"]`` is "success" or "error"; ``entry["status"]["messages"]``
    holds execution_error / execution_interrupted events; ``entry["outputs"]`` the UI outputs."""
    return headless.wait(port, prompt_id, timeout, poll)


def history_error(entry: dict) -> Optional[dict]:
    """The execution_error / execution_interrupted message of a history entry, if any."""
    for name, data in entry.get("status", {}).get("messages", []):
        if name in ("execution_error", "execution_interrupted"):
            return {"event": name, **data}
    return None


def install_pack(comfy_dir, pack_dir, name: Optional[str] = None) -> Path:
    """Symlink ``pack_dir`` into ``<comfy_dir>/custom_nodes/<name>`` (default: the folder's name;
    ComfyUI imports it as a package whose ``__name__`` is that full path). With ``--base-directory``
    pass the base directory as ``comfy_dir`` (ComfyUI then reads ``<base>/custom_nodes``).
    Idempotent; refuses to replace a real folder."""
    pack_dir = Path(pack_dir).resolve()
    link = Path(comfy_dir) / "custom_nodes" / (name or pack_dir.name)
    if link.is_symlink():
        if link.resolve() == pack_dir:
            return link
        link.unlink()
    elif link.exists():
        raise FileExistsError(f"{link} exists and is not a symlink")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(pack_dir, target_is_directory=True)
    return link


def sd15_smoke_graph(ckpt_name: str, prompt: str = "a person dancing", size: int = 64, steps: int = 1,
                     seed: int = 0, filename_prefix: str = "eym_smoke") -> dict:
    """API-format graph: CheckpointLoaderSimple -> CLIPTextEncode x2 -> EmptyLatentImage ->
    KSampler -> VAEDecode -> SaveImage."""
    return {
        "1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": ckpt_name}},
        "2": {"class_type": "CLIPTextEncode", "inputs": {"text": prompt, "clip": ["1", 1]}},
        "3": {"class_type": "CLIPTextEncode", "inputs": {"text": "", "clip": ["1", 1]}},
        "4": {"class_type": "EmptyLatentImage", "inputs": {"width": size, "height": size, "batch_size": 1}},
        "5": {"class_type": "KSampler", "inputs": {
            "model": ["1", 0], "positive": ["2", 0], "negative": ["3", 0], "latent_image": ["4", 0],
            "seed": seed, "steps": steps, "cfg": 7.0, "sampler_name": "euler", "scheduler": "normal",
            "denoise": 1.0}},
        "6": {"class_type": "VAEDecode", "inputs": {"samples": ["5", 0], "vae": ["1", 2]}},
        "7": {"class_type": "SaveImage", "inputs": {"images": ["6", 0], "filename_prefix": filename_prefix}},
    }
