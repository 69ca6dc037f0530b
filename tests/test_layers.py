"""The engine's folders follow the data flow, and imports go one way along it: platform <- reading <-
planning <- pushing <- finishing <- the top-level modules (pipeline, runs, api). A module that imports a
later layer (or a cycle between two) fails here, so the layout stays something a reader can trust."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent / "shared"
LAYERS = ["platform", "reading", "planning", "pushing", "finishing"]


def _layer(module: str) -> int:
    parts = module.split(".")
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return len(LAYERS)  # shared.pipeline, shared.runs, shared.api: may import every layer


def _imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("shared"):
            found += [f"{node.module}.{a.name}" if node.module.count(".") < 2 else node.module for a in node.names]
        elif isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.startswith("shared")]
    return found


MODULES = sorted(p for p in SHARED.rglob("*.py") if "node_modules" not in p.parts)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(SHARED)))
def test_imports_go_one_way(path: Path):
    module = ".".join(path.relative_to(SHARED.parent).with_suffix("").parts)
    upward = [m for m in _imports(path) if _layer(m) > _layer(module)]
    assert not upward, f"{module} imports a later layer: {upward}"


def test_no_module_is_left_flat():
    flat = {p.stem for p in SHARED.glob("*.py")} - {"__init__", "pipeline", "runs", "api"}
    assert not flat, f"put these in a layer folder: {sorted(flat)}"
