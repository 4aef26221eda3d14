"""The model-file package (edgegen.runtime.artifact) imports no tinygrad and is the only GGUF reader in library code."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES

from edgegen.runtime.artifact import constants

REPO = Path(__file__).resolve().parents[1]
LIBRARY_FOLDERS = ("runtime", "quantize", "models", "device", "firmware_bridge", "cli")


def test_importing_the_artifact_package_loads_no_tinygrad():
    """Every artifact module, and what device and the quantizer reach it through, in a fresh interpreter."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import edgegen.runtime, edgegen.runtime.artifact as a\n"
        "mods = [m.name for m in pkgutil.iter_modules(a.__path__, a.__name__ + '.')]\n"
        "assert {'edgegen.runtime.artifact.' + n for n in ('constants', 'reader', 'writer', 'config', 'tokenizer')}"
        " <= set(mods), mods\n"
        "for m in mods + ['edgegen.models', 'edgegen.models.config', 'edgegen.runtime.tokenizer',"
        " 'edgegen.device.model_facts', 'edgegen.device.planner', 'edgegen.device.model_open']:\n"
        "    importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] == 'tinygrad'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd="/", timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", f"tinygrad modules imported: {done.stdout.strip()}"


def test_gguf_reader_is_used_only_inside_the_artifact_package():
    """Library code reads GGUF through artifact.reader; gguf-py's GGUFReader stays a test-only reference."""
    offenders = []
    for folder in LIBRARY_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel.parts[:2] == ("runtime", "artifact"):
                continue
            if "GGUFReader" in path.read_text(encoding="utf-8"):
                offenders.append(str(rel))
    assert offenders == [], f"GGUFReader outside runtime/artifact/: {offenders}"


def test_block_sizes_are_gguf_pys_table():
    assert constants.BLOCK_SIZES is GGML_QUANT_SIZES
    assert constants.BLOCK_SIZES[constants.GGMLQuantizationType.Q4_1] == (32, 20)
    assert isinstance(constants.SUPPORTED_TYPES, tuple)
    assert max(constants.PREFILL_BUCKETS) == constants.MAX_PREFILL_TOKENS


def test_planner_recipe_sizes_come_from_the_block_table():
    from edgegen.device.planner import ACT_BYTES, RECIPE_BYTES_PER_WEIGHT

    assert RECIPE_BYTES_PER_WEIGHT["w8"] == (34 / 32, 34 / 32)
    assert RECIPE_BYTES_PER_WEIGHT["w4-mix8"] == (18 / 32, 34 / 32)
    assert RECIPE_BYTES_PER_WEIGHT["w4a"] == (20 / 32, 20 / 32)
    assert np.dtype(np.float32).itemsize == ACT_BYTES


def test_runtime_limits_are_the_ones_the_engine_and_model_use():
    """The planner's copies of runtime facts are the runtime's own: prefill buckets and the KV cache's element size."""
    from tinygrad import dtypes

    from edgegen.runtime import engine

    assert tuple(engine.PREFILL_BUCKETS) == constants.PREFILL_BUCKETS
    assert dtypes.float32.itemsize == constants.KV_BYTES_TINYGRAD  # models/llama.py Block.allocate_cache's dtypes
    assert dtypes.float16.itemsize == constants.KV_BYTES_NATIVE


def test_the_default_context_has_one_owner():
    """The KV cache the runtime allocates unless asked, read by the engine, the planner's callers and the deploy
    preflight from artifact.constants (it was written in five places)."""
    from edgegen.cli import bench as cli_bench
    from edgegen.device.bench import BenchSettings
    from edgegen.firmware_bridge.deploy import preflight
    from edgegen.runtime import engine

    assert engine.DEFAULT_CONTEXT == preflight.DEFAULT_CONTEXT == constants.DEFAULT_MAX_CONTEXT
    assert BenchSettings.__dataclass_fields__["context"].default == constants.DEFAULT_MAX_CONTEXT
    assert cli_bench.DEFAULT_MAX_CONTEXT is constants.DEFAULT_MAX_CONTEXT
