"""The OpenCL backend (PoCL on a host without a GPU, installed by scripts/setup.sh) runs the same model code."""
from __future__ import annotations

import subprocess
import sys

import pytest

SCRIPT = r"""
import sys, numpy as np
from gguf import GGMLQuantizationType as Q
sys.path.insert(0, sys.argv[2])
from tiny_llama import random_weights, reference_logits, write_gguf
from edgegen.runtime.engine import TextGenerator
stored = write_gguf(sys.argv[1], random_weights(seed=5), Q.Q4_0)
gen = TextGenerator.load(sys.argv[1], device="CL", max_context=32, jit_cache=False)
ids = [3, 14, 15, 92, 65, 35]
ref = reference_logits(stored, ids)
np.testing.assert_allclose(gen.logits(ids), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
np.testing.assert_allclose(gen.graphs.prefill(ids[:3]), ref[2], rtol=2e-3, atol=2e-3 * np.abs(ref).max())
for pos in range(3, len(ids)):
    np.testing.assert_allclose(gen.graphs.decode(ids[pos], pos), ref[pos], rtol=2e-3, atol=2e-3 * np.abs(ref).max())
print("device", gen.device)
"""


@pytest.mark.slow
def test_tiny_model_on_opencl_matches_numpy(tmp_path):
    # A separate process: the device is chosen per process, and the CPU tests in this one keep theirs.
    tests_dir = str(__import__("pathlib").Path(__file__).parent)
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "tiny.gguf"), tests_dir],
                          capture_output=True, text=True, timeout=900, check=False,
                          env={**__import__("os").environ, "DEV": "CL"})
    if "is not usable here" in proc.stderr and "CL" in proc.stderr:
        pytest.fail(f"OpenCL is not usable: scripts/setup.sh installs PoCL; stderr: {proc.stderr[-800:]}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "device CL" in proc.stdout
