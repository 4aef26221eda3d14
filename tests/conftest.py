"""Shared fixtures: the tiny GGUF model and a recorder of tinygrad buffer allocations."""
from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))  # local_broker: a throwaway Mosquitto
os.environ.setdefault("DEV", "CPU")  # tinygrad's clang backend: the one every CI machine has
# Captured decode/prefill graphs go to a per-run folder, never the user's ~/.cache/edgegen.
os.environ["EDGEGEN_CACHE"] = tempfile.mkdtemp(prefix="edgegen-test-cache-")
atexit.register(shutil.rmtree, os.environ["EDGEGEN_CACHE"], ignore_errors=True)  # a graph cache per run: ~150 MB


@pytest.fixture(scope="session")
def tiny_q4_path(tmp_path_factory):
    from gguf import GGMLQuantizationType as Q
    from tiny_llama import random_weights, write_gguf

    path = tmp_path_factory.mktemp("tiny") / "tiny-q4_1.gguf"
    write_gguf(path, random_weights(seed=3), Q.Q4_1)
    return path


class AllocationRecorder:
    """Records (nbytes, dtype) of every device buffer tinygrad allocates while active."""

    def __init__(self) -> None:
        self.allocations: list[tuple[int, str]] = []

    def float_buffers(self) -> list[int]:
        return [n for n, dt in self.allocations if "float" in dt or "half" in dt]


@pytest.fixture
def record_allocations():
    from edgegen.runtime.tinygrad_seam import buffer_allocations

    recorder = AllocationRecorder()
    with buffer_allocations(lambda nbytes, dtype: recorder.allocations.append((nbytes, dtype))):
        yield recorder
