"""Imports only point down: engine helpers <- video model and poses <- method <- world and test models
<- apps <- nodes. Parsed from the source, so a new upward import fails here, not in a user's ComfyUI."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: each top-level part of motion_core and its layer; a module may import only lower layers (or its own part)
LAYERS = {
    "errors": 0,
    "files": 1, "seeding": 1, "precision": 1,
    "video_model": 2, "pose": 2,
    "method": 3,
    "world": 4, "testing": 4,
    "apps": 5,
    "__init__": 6, "__main__": 6,
}


def _imported_parts(path: Path, package_root: Path):
    """(line, top-level part of motion_core) for every relative import in ``path``."""
    rel = path.relative_to(package_root)
    here = list(rel.parts[:-1])
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.ImportFrom) or not node.level:
            continue
        base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
        if node.level - 1 > len(here):  # leaves motion_core (nodes importing the engine)
            yield node.lineno, None
            continue
        mod = base + (node.module.split(".") if node.module else [])
        if mod:
            yield node.lineno, mod[0]
        else:  # "from . import x" at the package top
            for alias in node.names:
                yield node.lineno, alias.name


def test_every_engine_import_points_down():
    package = ROOT / "motion_core"
    upward = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package)
        part = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        assert part in LAYERS, f"{rel}: add {part!r} to LAYERS"
        for line, target in _imported_parts(path, package):
            assert target is not None, f"motion_core/{rel}:{line} imports from outside the engine"
            if target != part and LAYERS.get(target, 0) >= LAYERS[part]:
                upward.append(f"motion_core/{rel}:{line} ({part}) imports {target}")
    assert upward == []


def test_the_engine_never_imports_the_nodes():
    for path in (ROOT / "motion_core").rglob("*.py"):
        text = path.read_text()
        assert "from ..nodes" not in text and "from ...nodes" not in text and "import nodes" not in text, path


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test above can fail: a world module importing apps is reported."""
    pkg = tmp_path / "motion_core"
    (pkg / "world").mkdir(parents=True)
    bad = pkg / "world" / "gate.py"
    bad.write_text("from ..apps.quality import write_png\nfrom ..method.ddim import ddim_step\n")
    assert list(_imported_parts(bad, pkg)) == [(1, "apps"), (2, "method")]


def test_nodes_import_no_private_names():
    """What two node modules share is a public helper; nodes do not reach into private engine names."""
    private = []
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                private += [f"nodes/{path.name}:{node.lineno} {a.name}" for a in node.names if a.name.startswith("_")]
    assert private == []
