"""Fixtures for the device tests: `edgegen` run in-process, and a sparse Llama-7B-shaped GGUF that fits nowhere small.

Helpers live in device_helpers.py (a unique module name: several test folders have a conftest.py).
"""
from __future__ import annotations

from pathlib import Path

import pytest
from device_helpers import LLAMA7B, write_sparse_llama
from gguf import GGMLQuantizationType as Q


@pytest.fixture(scope="session")
def llama7b_q4_path(tmp_path_factory) -> Path:
    return write_sparse_llama(tmp_path_factory.mktemp("sparse") / "llama7b-q4_0.gguf", Q.Q4_0, **LLAMA7B)


@pytest.fixture
def edgegen(capsys):
    """Run `edgegen ARGS...` in-process; returns (exit code, stdout, stderr)."""
    from edgegen.cli import main

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run
