"""`edgegen device`: backends probed in subprocesses, host memory as /proc/meminfo has it, board identity."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from device_helpers import REPO

from edgegen.device.backends import probe_backends
from edgegen.device.host import read_host


def _meminfo_bytes() -> dict[str, int]:
    out = {}
    with open("/proc/meminfo") as f:
        for line in f:
            key, value = line.split(":")
            out[key] = int(value.split()[0]) * 1024  # the file says kB and means KiB
    return out


@pytest.fixture(scope="module")
def device_json() -> dict:
    # The real command line, in its own process, as a user would run it.
    proc = subprocess.run([sys.executable, "-m", "edgegen.cli", "device", "--json"], cwd=REPO,
                          capture_output=True, text=True, timeout=180, check=False)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_cpu_backend_is_usable(device_json):
    cpu = next(b for b in device_json["backends"] if b["backend"] == "CPU")
    assert cpu["usable"] and cpu["error"] is None
    assert "CPU" in device_json["usable_backends"]
    # Every backend got an answer; the unusable ones say why.
    assert {b["backend"] for b in device_json["backends"]} == {"CPU", "CL", "CUDA", "NV", "METAL"}
    for b in device_json["backends"]:
        assert b["usable"] or b["error"]


def test_memory_is_consistent_with_proc_meminfo(device_json):
    host, meminfo = device_json["host"], _meminfo_bytes()
    assert host["memory_total_bytes"] == meminfo["MemTotal"]
    # MemAvailable moves as other processes run: same order, within 10% of the total.
    assert abs(host["memory_available_bytes"] - meminfo["MemAvailable"]) < 0.1 * meminfo["MemTotal"]
    assert 0 < host["memory_available_bytes"] <= host["memory_total_bytes"]


def test_cpu_facts(device_json):
    import os

    host = device_json["host"]
    assert host["cpu_logical_cores"] == os.cpu_count()
    with open("/proc/cpuinfo") as f:
        names = {line.split(":", 1)[1].strip() for line in f if line.startswith("model name")}
    assert host["cpu_model"] in names


def test_no_board_identity_on_a_plain_vm(device_json):
    from pathlib import Path

    if Path("/proc/device-tree/model").exists():
        pytest.skip("this machine has a device tree")
    assert device_json["host"]["board_model"] is None and device_json["board_profile"] is None


def test_board_identity_read_from_device_tree(tmp_path, monkeypatch):
    from edgegen.device import host

    (tmp_path / "model").write_bytes(b"NVIDIA Jetson Orin Nano Developer Kit\x00")
    (tmp_path / "nv_tegra_release").write_text("# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic\n")
    monkeypatch.setattr(host, "DEVICE_TREE_MODEL", tmp_path / "model")
    monkeypatch.setattr(host, "TEGRA_RELEASE", tmp_path / "nv_tegra_release")
    info = read_host()
    assert info.board_model == "NVIDIA Jetson Orin Nano Developer Kit"
    assert info.tegra_release.startswith("# R36 (release), REVISION: 4.3")


def test_a_probe_that_hangs_is_reported_as_timed_out():
    start = time.perf_counter()
    (result,) = probe_backends(("CPU",), timeout_s=0.2)  # importing tinygrad alone takes longer than this
    assert time.perf_counter() - start < 10
    assert not result["usable"] and result["error"] == "timed out after 0.2 s"


def test_device_bad_input(edgegen):
    code, out, err = edgegen("device", "--backends", "CPU,VULKAN")
    assert code == 2 and out == ""
    assert err.strip() == "edgegen device: error: unknown backend(s) VULKAN: expected some of CPU, CL, CUDA, NV, METAL"
    code, _, err = edgegen("device", "--timeout", "0")
    assert code == 2 and "--timeout must be a positive number of seconds, got 0.0" in err


def test_device_text_report(edgegen):
    code, out, _ = edgegen("device", "--backends", "CPU")
    assert code == 0
    assert "memory:" in out and "CPU    usable" in out
