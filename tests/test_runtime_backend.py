"""The default backend: a real accelerator when one is usable, tinygrad's CPU backend when the only OpenCL device is
the CPU (PoCL), DEV and --device obeyed; `edgegen device` says which and why."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgegen.runtime.backend import resolve_device
from edgegen.runtime.errors import ArtifactError

REPO = Path(__file__).resolve().parents[1]


def child(code: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k != "DEV"}
    return subprocess.run([sys.executable, "-c", code], env={**base, "PYTHONPATH": str(REPO), **env},
                          capture_output=True, text=True, timeout=300, check=False)


def test_default_backend_prefers_a_gpu_and_skips_opencl_on_the_cpu():
    code = ("import json; from edgegen.runtime import tinygrad_seam as s; "
            "from edgegen.runtime.backend import default_backend; from tinygrad import Device; s.install(); "
            "c = default_backend(); tg = Device.DEFAULT; "
            "kind = s.opencl_device_type(Device['CL']) if tg == 'CL' else None; "
            "print(json.dumps([c.device, c.reason, tg, kind]))")
    done = child(code)
    assert done.returncode == 0, done.stderr
    device, reason, tinygrad_pick, cl_kind = json.loads(done.stdout.strip().splitlines()[-1])
    if tinygrad_pick == "CL" and cl_kind == "cpu":
        assert device == "CPU" and "runs on the CPU" in reason
    elif tinygrad_pick == "CL":
        assert device == "CL" and cl_kind in reason
    else:
        assert device == tinygrad_pick
    # DEV in the environment still decides.
    done = child("from edgegen.runtime.backend import default_backend; print(default_backend().device)", DEV="CPU")
    assert done.stdout.strip() == "CPU"


def test_resolve_device_names_the_unusable_backend_and_leaves_the_default_alone():
    from tinygrad import Device

    before = Device.DEFAULT
    with pytest.raises(ArtifactError, match="tinygrad device 'NOSUCH' is not usable here"):
        resolve_device("nosuch")
    assert resolve_device("cpu") == "CPU"
    assert before == Device.DEFAULT


@pytest.mark.slow
def test_edgegen_device_shows_the_default_backend_and_the_jit_cache(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "DEV"}
    env.update(PYTHONPATH=str(REPO), EDGEGEN_CACHE=str(tmp_path), EDGEGEN_JIT_CACHE_MB="300")
    done = subprocess.run([sys.executable, "-m", "edgegen.cli", "device", "--backends", "CPU"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    lines = {ln.split(":", 1)[0]: ln for ln in done.stdout.splitlines()}
    assert lines["default"].split()[1] in ("CPU", "CL", "CUDA", "NV", "METAL") and "--device overrides" in lines[
        "default"]
    assert "0 MiB in 0 entries, limit 300 MiB" in lines["jit cache"] and str(tmp_path) in lines["jit cache"]


@pytest.mark.slow
@pytest.mark.parametrize("device", [None, "CPU"])
def test_a_run_opens_only_the_backend_it_runs_on(tiny_q4_path, tmp_path, device):
    """Finding tinygrad's own default opens every backend in turn (PoCL loads LLVM: ~100 MB more peak RSS); with
    edgegen's choice made in a child process and set as the default, or the device named (--device CPU) set as the
    default, a run opens just the one it uses."""
    code = ("import json, sys; from edgegen.runtime.engine import TextGenerator; "
            "from edgegen.runtime import SamplingParams; from tinygrad import Device; "
            f"g = TextGenerator.load(sys.argv[1], device={device!r}, max_context=64); "
            "g.generate('hi', SamplingParams(max_tokens=2), chat=False); "
            "print(json.dumps([g.device, sorted(Device._opened_devices)]))")
    base = {k: v for k, v in os.environ.items() if k != "DEV"}
    done = subprocess.run([sys.executable, "-c", code, str(tiny_q4_path)], capture_output=True, text=True,
                          timeout=300, check=False,
                          env={**base, "PYTHONPATH": str(REPO), "EDGEGEN_CACHE": str(tmp_path)})
    assert done.returncode == 0, done.stderr
    ran_on, opened = json.loads(done.stdout.strip().splitlines()[-1])
    accelerators = {"CL", "CUDA", "NV", "METAL", "AMD"} - {ran_on}
    assert not accelerators & set(opened), f"ran on {ran_on} but opened {opened}"
    if device is None:
        assert json.loads((tmp_path / "backend.json").read_text())["device"] == ran_on  # remembered for the next run
