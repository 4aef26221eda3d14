"""`edgegen bench` refuses bad input with one clear line, before loading anything."""
from __future__ import annotations

import sys

import pytest
from device_helpers import SMOLLM2_Q4_1


@pytest.mark.parametrize("argv, message", [
    (["--device", "VULKAN"], "unknown device 'VULKAN': expected one of CPU, CL, CUDA, NV, METAL"),
    (["--gen-tokens", "0"], "--gen-tokens must be a positive integer, got 0"),
    (["--runs", "-1"], "--runs must be a positive integer, got -1"),
    (["--prompt-tokens", "0"], "--prompt-tokens must be a positive integer, got 0"),
    (["--context", "64", "--prompt-tokens", "60", "--gen-tokens", "8"],
     "--prompt-tokens 60 + --gen-tokens 8 do not fit a context of 64 tokens"),
    (["--context", "10000"], "--context 10000 exceeds the model's trained context of 8192"),
    (["--board", "toaster"], "unknown board 'toaster'"),
])
def test_bench_bad_input(edgegen, argv, message):
    code, out, err = edgegen("bench", str(SMOLLM2_Q4_1), *argv)
    assert code == 2 and out == ""
    assert err.startswith("edgegen bench: error: ") and message in err


def test_bench_missing_model(edgegen, tmp_path):
    code, _, err = edgegen("bench", str(tmp_path / "missing.gguf"))
    assert code == 2 and f"model file '{tmp_path / 'missing.gguf'}' does not exist" in err


@pytest.mark.skipif(sys.platform == "darwin", reason="METAL works on a Mac")
def test_bench_unusable_backend(edgegen):
    code, out, err = edgegen("bench", str(SMOLLM2_Q4_1), "--device", "METAL", "--no-compile-times")
    assert code == 2 and out == ""
    assert err.startswith("edgegen bench: error: tinygrad device 'METAL' is not usable here")
