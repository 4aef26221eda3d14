"""Contract tests for runtime.tinygrad_seam: each tinygrad internal edgegen relies on, exercised alone, so a tinygrad
upgrade that changes one fails here first, by name."""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from tinygrad import Device, Tensor

from edgegen.runtime import tinygrad_seam as seam

REPO = Path(__file__).resolve().parents[1]


def cl_usable() -> bool:
    try:
        Device["CL"]
        return True
    except Exception:  # noqa: BLE001
        return False


def test_install_is_idempotent_and_patches_the_named_functions():
    from tinygrad import helpers
    from tinygrad.runtime.support import compiler_cpu

    seam.install()
    seam.install()
    assert helpers.db_connection.__name__ == "db_connection" and helpers.db_connection.__module__ == seam.__name__
    assert compiler_cpu.ClangCompiler.compile.__module__ == seam.__name__


def test_each_thread_gets_its_own_kernel_cache_connection():
    from tinygrad import helpers

    seam.install()
    conns: list[object] = []
    t = threading.Thread(target=lambda: conns.append(helpers.db_connection()))
    t.start()
    t.join(30)
    assert conns and conns[0] is not helpers.db_connection()
    helpers.diskcache_put("edgegen_seam_contract", "k", {"v": 1})
    got: list[object] = []
    t = threading.Thread(target=lambda: got.append(helpers.diskcache_get("edgegen_seam_contract", "k")))
    t.start()
    t.join(30)
    assert got == [{"v": 1}]


def test_clang_warnings_go_to_the_log_not_the_terminal(capfd, caplog):
    from tinygrad.runtime.support.compiler_cpu import ClangCompiler

    seam.install()
    compiler = Device["CPU"].compiler
    assert isinstance(compiler, ClangCompiler)
    source = "int f(void) { int a[2] = {1, 2}; return a[5]; }\n"  # -Warray-bounds
    with caplog.at_level(logging.DEBUG, logger=seam.__name__):
        obj = compiler.compile(source)
    assert obj[:4] == b"\x7fELF"
    assert capfd.readouterr().err == ""
    assert "clang wrote" in caplog.text and "warning" in caplog.text
    with pytest.raises(subprocess.CalledProcessError) as err:
        compiler.compile("int f( {")
    assert b"error" in err.value.stderr


def test_captured_stderr_catches_native_writes(capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger=seam.__name__), seam.captured_stderr("a test"):
        os.write(2, b"1 warning generated.\n")
    assert capfd.readouterr().err == ""
    assert "a test wrote: 1 warning generated." in caplog.text


@pytest.mark.skipif(not cl_usable(), reason="no OpenCL platform")
def test_opencl_compiles_quietly_and_reports_its_device_type(tmp_path):
    # A fresh process and kernel cache, so the OpenCL compiler really runs.
    code = ("from runtime import tinygrad_seam as s; s.install(); from tinygrad import Tensor, Device; "
            "import json; print(json.dumps([(Tensor([1.0, 2.0], device='CL') * 3 + 0.5).tolist(), "
            "s.opencl_device_type(Device['CL'])]))")
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                          check=False)
    assert done.returncode == 0, done.stderr
    values, kind = json.loads(done.stdout.strip().splitlines()[-1])
    assert values == [3.5, 6.5]
    assert kind in ("cpu", "gpu", "accelerator")
    assert "warning" not in done.stderr, done.stderr


def test_write_buffer_overwrites_a_realized_tensor_in_place():
    t = Tensor(np.zeros((1, 4), np.float32), device="CPU").realize()
    before = t.uop.buffer
    seam.write_buffer(t, np.arange(4, dtype=np.float32).reshape(1, 4))
    assert t.uop.buffer is before and t.numpy().tolist() == [[0.0, 1.0, 2.0, 3.0]]
    with pytest.raises(ValueError, match="8 bytes for a 16-byte buffer"):
        seam.write_buffer(t, np.zeros(2, np.float32))


def test_tinygrad_version_is_the_installed_distribution():
    from importlib.metadata import version

    assert seam.tinygrad_version() == version("tinygrad")
