"""Load the repository root as the package ``edit_your_motion`` so tests import the pack the way
ComfyUI does (a package whose ``nodes`` use relative imports) and never shadow ComfyUI's own
top-level ``nodes`` module."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "edit_your_motion"

if PACKAGE not in sys.modules:
    spec = importlib.util.spec_from_file_location(
        PACKAGE, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)]
    )
    module = importlib.util.module_from_spec(spec)
    # Registered without running the root __init__: engine tests then do not depend on the nodes
    # importing; tests/nodes/test_nodes_contract.py runs the root __init__ as ComfyUI does.
    sys.modules[PACKAGE] = module

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


# No global seed here: tests that need fixed random data use their own torch.Generator, and
# the engine must not depend on torch's global random state (tests check that).


@pytest.fixture
def comfy_inference_mode():
    """ComfyUI executes every node under torch.inference_mode(); node tests do the same."""
    with torch.inference_mode():
        yield


@pytest.fixture(scope="session")
def mediapipe_solutions():
    """mediapipe's solutions package. Skipped where mediapipe is not installed, but not in CI, which
    installs it (.ci/setup; no wheel exists for Python >= 3.13): there a broken install fails instead of
    hiding behind a skip."""
    import os

    from edit_your_motion.motion_core.pose import mediapipe_detector

    problem = mediapipe_detector.mediapipe_problem()
    if problem is None:
        return mediapipe_detector.import_mediapipe()
    if os.environ.get("CI") and sys.version_info < (3, 13):
        pytest.fail(f"CI installs mediapipe (.ci/setup), but it is not usable: {problem}")
    pytest.skip(f"mediapipe is not installed here: {problem}")


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """An empty models folder for the pack (``EYM_MODELS_DIR``), with no pose detector cached from
    another test."""
    from edit_your_motion.nodes import pose_nodes

    monkeypatch.setenv("EYM_MODELS_DIR", str(tmp_path))
    pose_nodes._DETECTORS.clear()
    yield tmp_path
    pose_nodes._DETECTORS.clear()
