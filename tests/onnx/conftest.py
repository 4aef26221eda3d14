"""Fixtures for the ONNX tests: all-MiniLM-L6-v2 exported by the repo's torch script, and its quantized files."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def minilm_fp32(tmp_path_factory) -> Path:
    """The fp32 ONNX file, written by scripts/export_minilm_onnx.py (torch, about 10 s)."""
    out = tmp_path_factory.mktemp("minilm") / "minilm.onnx"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "export_minilm_onnx.py"), "-o", str(out)],
                          capture_output=True, text=True, check=False)
    assert proc.returncode == 0, f"export_minilm_onnx.py failed:\n{proc.stderr[-3000:]}"
    return out


@pytest.fixture(scope="session")
def minilm_quantized(minilm_fp32) -> dict[str, Path]:
    from edgegen.quantize.onnx_quant import ONNX_RECIPES, quantize_onnx_file

    out = {}
    for name, recipe in ONNX_RECIPES.items():
        out[name] = minilm_fp32.with_name(f"minilm-{name}.onnx")
        quantize_onnx_file(minilm_fp32, recipe, out[name])
    return out
