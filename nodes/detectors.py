"""Which pose detector and which person-mask method a node uses: OpenPose (needs its weights file),
mediapipe (optional package, models inside its wheel) or the rough keypoint mask, and ``auto``."""

from __future__ import annotations

import logging
import os

from ..motion_core.errors import InputError
from ..motion_core.pose import mediapipe_detector, openpose
from . import comfy_bridge as bridge

log = logging.getLogger("edit_your_motion")

DETECTOR_MODES = ("auto", "openpose", "mediapipe")
MASK_METHODS = ("auto", "mediapipe", "mediapipe_selfie", "keypoints")
# openpose_model's first choice, always listed (so a saved workflow holding it never reads as missing in
# ComfyUI's frontend): body_pose_model.pth from models/openpose or from comfyui_controlnet_aux's downloads
AUTO_OPENPOSE_FILE = "auto"
# the choice old graphs hold when models/openpose was empty (before "auto" existed): read as auto
NO_OPENPOSE_FILE = "(no file in models/openpose)"
_MODEL_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


def openpose_model_choices() -> list[str]:
    """``auto``, then the files of the openpose model folder, the body model first."""
    files = bridge.list_files(bridge.OPENPOSE_FOLDER, (".pth", ".safetensors"))
    # hand/face models of other packs may share the folder
    return [AUTO_OPENPOSE_FILE] + sorted(files, key=lambda f: (os.path.basename(f) != openpose.BODY_MODEL_FILENAME, f))


def find_openpose_file(filename: str) -> str | None:
    """The full path of an OpenPose model file: in ComfyUI's openpose model folders, else (a plain file
    name) where comfyui_controlnet_aux keeps its downloaded annotators; None when it is nowhere."""
    path = bridge.full_path(bridge.OPENPOSE_FOLDER, filename)
    if path is not None:
        return path
    if os.path.basename(filename) == filename:
        for folder in bridge.annotator_folders():
            candidate = os.path.join(folder, filename)
            if os.path.isfile(candidate):
                return candidate
    return None


def is_model_file_name(value) -> bool:
    return isinstance(value, str) and value.lower().endswith(_MODEL_SUFFIXES)


def where_hint() -> str:
    folders = bridge.folder_paths_for(bridge.OPENPOSE_FOLDER)
    return (" or ".join(folders) + " (ComfyUI/models/openpose; comfyui_controlnet_aux's downloads in "
            "custom_nodes/comfyui_controlnet_aux/ckpts/lllyasviel/Annotators are found too)")


def validate_detector(detector) -> str | bool:
    """ComfyUI's VALIDATE_INPUTS answer for ``detector``: True, or the error text.

    Besides the modes, a model file name is accepted: graphs saved before the detector choice existed
    hold the OpenPose file name in ``detector``; they run as ``openpose`` with that file."""
    if detector in DETECTOR_MODES or is_model_file_name(detector):
        return True
    return f"detector must be one of {', '.join(DETECTOR_MODES)}; got {detector!r}"


def choose_pose_detector(detector: str, openpose_model: str | None) -> tuple[str, str]:
    """``("openpose", file name)`` or ``("mediapipe", "")`` for a node's ``detector`` and ``openpose_model``.

    * ``openpose``: the chosen file (``body_pose_model.pth`` when none is chosen); a missing file is
      reported when it is loaded.
    * ``mediapipe``: mediapipe, or :class:`MediapipeUnavailable` saying how to install it.
    * ``auto``: OpenPose when the file is in the openpose model folder, else mediapipe when it imports,
      else one :class:`InputError` naming both ways.
    * a model file name (graphs from before the detector choice): ``openpose`` with that file.
    """
    if is_model_file_name(detector):
        return "openpose", detector
    if detector not in DETECTOR_MODES:
        raise InputError(validate_detector(detector))
    filename = openpose_model if is_model_file_name(openpose_model) else openpose.BODY_MODEL_FILENAME
    if detector == "openpose":
        return "openpose", filename
    if detector == "mediapipe":
        mediapipe_detector.import_mediapipe()  # raises with the install line when it is missing
        return "mediapipe", ""
    if find_openpose_file(filename) is not None:
        return "openpose", filename
    problem = mediapipe_detector.mediapipe_problem()
    if problem is None:
        bridge.warn_user(f"detector auto: the OpenPose model {filename} was not found, so mediapipe finds the poses "
                         f"(to use OpenPose, put {openpose.BODY_MODEL_FILENAME} in ComfyUI/models/openpose)")
        return "mediapipe", ""
    raise InputError(
        f"detector auto found no pose detector. OpenPose: the body model {filename} is not in {where_hint()}; "
        f"download {openpose.BODY_MODEL_FILENAME} from the Hugging Face repository lllyasviel/Annotators into "
        f"that folder. mediapipe: {problem}"
    )


def choose_mask_method(method: str) -> str:
    """``mediapipe``, ``mediapipe_selfie`` or ``keypoints``; ``auto`` is mediapipe when it imports, else
    keypoints. Asking for a mediapipe method without mediapipe raises :class:`MediapipeUnavailable`."""
    if method not in MASK_METHODS:
        raise InputError(f"method must be one of {', '.join(MASK_METHODS)}; got {method!r}")
    if method == "auto":
        if mediapipe_detector.mediapipe_available():
            return "mediapipe"
        bridge.warn_user("person mask auto: mediapipe is not installed, so the mask is the rough one drawn from the "
                         "keypoints (about twice the person's size); install mediapipe for the person's outline")
        return "keypoints"
    if method.startswith("mediapipe"):
        mediapipe_detector.import_mediapipe()
    return method
