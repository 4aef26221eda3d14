"""The import rules of docs/ARCHITECTURE.md, checked on the source: libraries below the CLI import only downwards."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
IMPORT = re.compile(r"^\s*(?:from|import)\s+edgegen\.(\w+)((?:\.\w+)*)", re.M)
# package -> the edgegen packages (or runtime subpackages/modules) its library modules may import
ALLOWED = {
    "runtime/artifact": {"runtime.artifact", "runtime.errors", "models.config"},
    "device": {"device", "runtime.artifact", "runtime.errors", "runtime.tinygrad_seam"},
    # runtime.tinygrad_seam: the U-Net calibration runs tinygrad and pins its default device as the runtime does
    "quantize": {"quantize", "runtime.artifact", "runtime.errors", "runtime.onnx_format", "runtime.tinygrad_seam",
                 "models"},
    "models": {"models"},
    "runtime": {"runtime", "models"},
    "firmware_bridge": {"firmware_bridge", "runtime", "device"},
}


def imports_of(folder: str) -> list[tuple[str, str]]:
    out = []
    for path in sorted((REPO / folder).rglob("*.py")):
        if folder == "runtime" and "artifact" in path.parts:
            continue
        for m in IMPORT.finditer(path.read_text()):
            out.append((str(path.relative_to(REPO)), m[1] + m[2]))
    return out


@pytest.mark.parametrize("folder", sorted(ALLOWED))
def test_library_imports_point_down(folder):
    allowed = ALLOWED[folder]
    bad = [(f, name) for f, name in imports_of(folder)
           if not any(name == a or name.startswith(a + ".") for a in allowed)]
    assert not bad, f"{folder} imports outside {sorted(allowed)}: {bad}"


def test_no_library_parses_arguments():
    """argparse lives in cli/ only (library entry points for child processes read sys.argv by hand)."""
    users = [str(p.relative_to(REPO)) for top in ("runtime", "quantize", "models", "device", "firmware_bridge")
             for p in (REPO / top).rglob("*.py") if re.search(r"^\s*import argparse|^\s*from argparse", p.read_text(),
                                                               re.M)]
    assert users == []
