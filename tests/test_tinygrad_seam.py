"""Contract tests for runtime.tinygrad_seam: each tinygrad internal edgegen relies on, exercised alone, so a tinygrad
upgrade that changes one fails here first, by name."""
from __future__ import annotations

import io
import json
import logging
import os
import pickle
import re
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from tinygrad import Context, Device, Tensor, TinyJit

from edgegen.runtime import tinygrad_seam as seam
from edgegen.runtime.tinygrad_seam import patches

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
    assert helpers.db_connection.__name__ == "db_connection" and helpers.db_connection.__module__ == patches.__name__
    assert compiler_cpu.ClangCompiler.compile.__module__ == patches.__name__


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


def test_cpu_device_programs_are_compiled_once_then_read_from_the_kernel_cache(tmp_path):
    """CPUDevice() compiles four queue programs; with the patch a second process reads their ELF from tinygrad's
    disk cache (four rows, keyed by AST and renderer) and the device still runs kernels."""
    import sqlite3

    code = ("from edgegen.runtime.tinygrad_seam import install; install()\n"
            "from tinygrad import Tensor; print((Tensor([1.0, 2.0], device='CPU') + 1).tolist())")
    env = dict(os.environ, CACHEDB=str(tmp_path / "cache.db"), DEV="CPU")
    for _ in range(2):
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-2000:]
        assert done.stdout.strip() == "[2.0, 3.0]"
        with sqlite3.connect(tmp_path / "cache.db") as db:
            tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
            table = next(t for t in tables if t.startswith("edgegen_cpu_device_program"))
            assert db.execute(f"SELECT COUNT(*) FROM '{table}'").fetchone()[0] == 4


def test_device_tensor_copies_read_only_memory_without_a_kernel():
    raw = np.frombuffer(bytes(range(200)), dtype=np.uint8)  # read-only, as a file's memory map is
    assert not raw.flags.writeable
    assert seam.device_tensor(raw, "CPU").numpy().tolist() == list(range(200))
    x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(seam.device_tensor(x, "CPU").numpy(), x)
    with pytest.raises(ValueError, match="unsupported dtype"):
        seam.device_tensor(np.zeros(3, np.int64), "CPU")


def test_device_bytes_fills_one_buffer_from_pieces_and_checks_the_size():
    pieces = (np.full(n, n, np.uint8) for n in (3, 5, 2))  # a generator: each piece made as it is copied
    assert seam.device_bytes(10, pieces, "CPU").numpy().tolist() == [3] * 3 + [5] * 5 + [2] * 2
    with pytest.raises(ValueError, match="more than 4 bytes for a 4-byte buffer"):
        seam.device_bytes(4, [np.zeros(3, np.uint8), np.zeros(3, np.uint8)], "CPU")
    with pytest.raises(ValueError, match="3 bytes for a 4-byte buffer"):
        seam.device_bytes(4, [np.zeros(3, np.uint8)], "CPU")


def test_rebuild_buffer_reports_each_copied_chunk_in_order(monkeypatch):
    from tinygrad import dtypes

    from edgegen.runtime.tinygrad_seam import graphs

    monkeypatch.setattr(graphs, "COPY_CHUNK", 64)
    data = np.arange(100, dtype=np.float32)
    chunks: list[bytes] = []
    with seam.copied_chunks(lambda view: chunks.append(bytes(view))):
        buf = graphs.rebuild_buffer("CPU", 100, dtypes.float32, None, memoryview(data), 0)
    assert all(len(c) <= 64 for c in chunks) and b"".join(chunks) == data.tobytes()
    np.testing.assert_array_equal(np.frombuffer(buf.as_memoryview(), np.float32), data)
    graphs.rebuild_buffer("CPU", 100, dtypes.float32, None, memoryview(data), 0)  # no hook outside the block
    assert len(chunks) == 7


def test_clang_warnings_go_to_the_log_not_the_terminal(capfd, caplog):
    from tinygrad.runtime.support.compiler_cpu import ClangCompiler

    seam.install()
    compiler = Device["CPU"].compiler
    assert isinstance(compiler, ClangCompiler)
    source = "int f(void) { int a[2] = {1, 2}; return a[5]; }\n"  # -Warray-bounds
    with caplog.at_level(logging.DEBUG, logger=patches.__name__):
        obj = compiler.compile(source)
    assert obj[:4] == b"\x7fELF"
    assert capfd.readouterr().err == ""
    assert "clang wrote" in caplog.text and "warning" in caplog.text
    with pytest.raises(subprocess.CalledProcessError) as err:
        compiler.compile("int f( {")
    assert b"error" in err.value.stderr


def test_captured_stderr_catches_native_writes(capfd, caplog):
    with caplog.at_level(logging.DEBUG, logger=patches.__name__), seam.captured_stderr("a test"):
        os.write(2, b"1 warning generated.\n")
    assert capfd.readouterr().err == ""
    assert "a test wrote: 1 warning generated." in caplog.text


@pytest.mark.skipif(not cl_usable(), reason="no OpenCL platform")
def test_opencl_compiles_quietly_and_reports_its_device_type(tmp_path):
    # A fresh process and kernel cache, so the OpenCL compiler really runs.
    code = ("from edgegen.runtime import tinygrad_seam as s; s.install(); from tinygrad import Tensor, Device; "
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


# ---- devices --------------------------------------------------------------------------------------------------------
def test_default_device_is_read_and_set_through_dev():
    before = seam.tinygrad_default_device()
    try:
        seam.set_default_device("CPU")
        assert seam.tinygrad_default_device() == "CPU" == Device.DEFAULT
    finally:
        seam.set_default_device(before)
    assert before == Device.DEFAULT


def test_describe_device_names_the_cpu_backend():
    info = seam.describe_device("CPU", Device["CPU"])
    assert info["device_name"] == "host CPU (shares host memory)" and info["device_memory_bytes"] is None
    assert isinstance(info["arch"], str) and info["arch"], "CPUDevice.arch is gone"


def test_device_memory_bytes_counts_allocations_and_imports_nothing(monkeypatch):
    keep = Tensor(np.ones(1024, np.float32), device="CPU").realize()  # noqa: F841 - held while counting
    used = seam.device_memory_bytes()
    assert used is not None and used.get("CPU", 0) >= 4096, used
    monkeypatch.delitem(sys.modules, "tinygrad.helpers")
    assert seam.device_memory_bytes() is None


def test_kernel_settings_follow_beam():
    assert re.fullmatch(r"beam=\d+\|jitbeam=\d+\|threads=\d+\|cpu_threads=\d+", seam.kernel_settings())
    with Context(BEAM=2):
        assert seam.kernel_settings().startswith("beam=2|jitbeam=2|")
    assert seam.kernel_settings() != "beam=2"


# ---- captured graphs and buffers ------------------------------------------------------------------------------------
def _doubled_plus_one(x: Tensor) -> Tensor:
    return (x * 2 + 1).realize()


def _captured_jit() -> tuple[TinyJit, Tensor]:
    jit = seam.capture_on_first_call(TinyJit(_doubled_plus_one))
    assert seam.captured_graph(jit) is None
    x = Tensor(np.arange(4, dtype=np.float32), device="CPU").realize()
    assert jit(x).tolist() == [1.0, 3.0, 5.0, 7.0]
    return jit, x


def test_capture_on_first_call_records_the_first_call_and_its_output():
    jit, _ = _captured_jit()
    graph = seam.captured_graph(jit)
    assert graph is not None, "TinyJit.cnt = 1 no longer captures on the first call"
    assert seam.graph_output(graph).tolist() == [1.0, 3.0, 5.0, 7.0]


def test_write_buffer_feeds_a_replay_in_place():
    jit, x = _captured_jit()
    seam.write_buffer(x, np.full(4, 5.0, np.float32))
    assert jit(x).tolist() == [11.0] * 4


def test_buffer_allocations_sees_new_buffers_only_while_active():
    seen: list[tuple[int, str]] = []
    with seam.buffer_allocations(lambda nbytes, dtype: seen.append((nbytes, dtype))):
        Tensor(np.zeros(256, np.float32), device="CPU").realize()
    assert (1024, "dtypes.float") in seen, seen
    n = len(seen)
    Tensor(np.zeros(512, np.float32), device="CPU").realize()
    assert len(seen) == n


def test_graph_reduction_moves_buffer_slots_and_pickles_bytes_out_of_band():
    jit, _ = _captured_jit()
    t = Tensor(np.ones(4, np.float32), device="CPU").realize()
    op, args = seam.graph_reduction(t.uop.base, 100)
    assert args[3].slot == t.uop.base.arg.slot + 100
    assert seam.graph_reduction(object(), 100) is None
    buffers: list[pickle.PickleBuffer] = []

    class Pickler(pickle.Pickler):
        def reducer_override(self, obj):
            reduction = seam.graph_reduction(obj, 2**41)
            return NotImplemented if reduction is None else reduction

    structure = io.BytesIO()
    Pickler(structure, protocol=5, buffer_callback=buffers.append).dump(seam.captured_graph(jit))
    assert buffers, "no buffer went out of band"
    loaded = pickle.loads(structure.getvalue(), buffers=[b.raw() for b in buffers])
    fresh = TinyJit(_doubled_plus_one)
    seam.install_captured(fresh, loaded)
    y = Tensor(np.full(4, 10.0, np.float32), device="CPU").realize()
    assert fresh(y).tolist() == [21.0] * 4, "an installed, unpickled graph did not replay"


def test_cpu_kernel_calls_reproduce_the_replay():
    jit, x = _captured_jit()
    calls = seam.cpu_kernel_calls(jit, (x,))
    assert calls and all(isinstance(c, seam.KernelCall) for c in calls)
    seam.write_buffer(x, np.full(4, 2.0, np.float32))
    for call in calls:
        for args in call.arguments({}):
            call.function(*args)
    assert seam.graph_output(seam.captured_graph(jit)).tolist() == [5.0] * 4
    with pytest.raises(seam.UnsupportedGraph, match="has not captured"):
        seam.cpu_kernel_calls(TinyJit(_doubled_plus_one), (x,))


def test_cpu_kernel_calls_with_a_symbolic_variable():
    from tinygrad import UOp

    v = UOp.variable("edgegen_seam_v", 0, 7)
    jit = seam.capture_on_first_call(TinyJit(lambda x, n: (x + n).realize()))
    x = Tensor(np.zeros(4, np.float32), device="CPU").realize()
    assert jit(x, v.bind(3)).tolist() == [3.0] * 4
    calls = seam.cpu_kernel_calls(jit, (x, v.bind(3)))
    assert any(not c.static for c in calls), "a kernel reading a variable was marked static"
    for call in calls:
        for args in call.arguments({"edgegen_seam_v": 6}):
            call.function(*args)
    assert seam.graph_output(seam.captured_graph(jit)).tolist() == [6.0] * 4


# ---- nothing else touches tinygrad's internals ----------------------------------------------------------------------
INTERNALS = ("engine", "uop", "device", "helpers", "runtime", "codegen", "renderer")
_INTERNAL_IMPORT = re.compile(
    rf"^\s*(?:from\s+tinygrad\.(?:{'|'.join(INTERNALS)})\b|import\s+tinygrad\.(?:{'|'.join(INTERNALS)})\b"
    rf"|from\s+tinygrad\s+import\s+.*\b(?:{'|'.join(INTERNALS)})\b)"
    rf"|[\"']tinygrad\.(?:{'|'.join(INTERNALS)})\b",
    re.MULTILINE,
)


def test_only_the_seam_imports_tinygrad_internals():
    seam_dir = REPO / "runtime" / "tinygrad_seam"
    offenders = []
    for folder in ("runtime", "models", "device", "quantize", "firmware_bridge", "cli", "tests"):
        for path in sorted((REPO / folder).rglob("*.py")):
            if seam_dir in path.parents or path == Path(__file__).resolve():
                continue
            for m in _INTERNAL_IMPORT.finditer(path.read_text(encoding="utf-8")):
                line = path.read_text(encoding="utf-8").count("\n", 0, m.start()) + 1
                offenders.append(f"{path.relative_to(REPO)}:{line}: {m.group(0).strip()}")
    assert not offenders, "tinygrad internals outside runtime/tinygrad_seam/ (add a seam function):\n" + "\n".join(
        offenders)


def test_the_internal_import_check_catches_each_form():
    for line in ("from tinygrad.engine.jit import x", "import tinygrad.uop.ops", "from tinygrad import helpers",
                 "from tinygrad import Tensor, helpers", 'sys.modules.get("tinygrad.helpers")',
                 "    from tinygrad.device import Buffer"):
        assert _INTERNAL_IMPORT.search(line), line
    for line in ("from tinygrad import Tensor, TinyJit", "from tinygrad.nn.optim import Adam",
                 "# tinygrad.helpers.CACHEDB is an environment variable"):
        assert not _INTERNAL_IMPORT.search(line), line


# ---- c_kernel: the contract the hand-written kernels rely on --------------------------------------------------------

SEAM_PROBE = """
void eg_seam_probe(float* restrict out, const float* restrict a, const int* restrict b, int n, int core_id) {
  for (int i = core_id * 4; i < core_id * 4 + 4; i++) out[i] = a[i] * 10.0f + (float)b[i] + (float)(n * 1000)
                                                                + (float)(core_id * 100000);
}
"""


def test_c_kernel_passes_buffers_in_slot_order_then_variables_then_core_id():
    """out, then the inputs in order, then each named variable, then core_id; every partition 0..parts-1 runs; a
    variable bound under TinyJit is read at each replay (the decode position depends on it)."""
    import numpy as np
    from tinygrad import Tensor, TinyJit, UOp, dtypes

    from edgegen.runtime.tinygrad_seam.kernels import c_kernel

    a = Tensor(np.arange(8, dtype=np.float32), device="CPU").realize()
    b = Tensor(np.arange(8, dtype=np.int32) * 2, device="CPU").realize()
    n_var = UOp.variable("n", 0, 99)

    @TinyJit
    def step(n):
        out = Tensor.empty(8, dtype=dtypes.float32, device="CPU")
        shifted = (a + Tensor(n, device="CPU").cast(dtypes.float32)).contiguous()  # the graph binds n, as decode's
        return c_kernel("eg_seam_probe", SEAM_PROBE, out, (shifted, b), 2, (("n", 0, 99),)).realize()

    for n in (1, 2, 3, 7):  # capture, then replays
        got = step(n_var.bind(n)).numpy()
        want = (np.arange(8) + n) * 10.0 + np.arange(8) * 2 + n * 1000 + (np.arange(8) // 4) * 100000
        assert np.array_equal(got, want.astype(np.float32)), (n, got)


def test_c_block_sizes_agree_with_gguf_and_the_python_constants():
    """common.h states each packed block's size with _Static_assert (a wrong struct does not compile); they are the
    GGUF table's, and the activation block is source.ACT_BLOCK_BYTES."""
    import re
    from importlib import resources

    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from edgegen.runtime.native.source import ACT_BLOCK_BYTES

    text = (resources.files("edgegen.runtime.native") / "c" / "common.h").read_text()
    sizes = dict(re.findall(r"_Static_assert\(sizeof\(eg_(block_\w+|q8x)\) == (\d+)", text))
    assert len(sizes) == 11
    for name, size in sizes.items():
        if name == "q8x":
            assert int(size) == ACT_BLOCK_BYTES
        else:
            qtype = GGMLQuantizationType[name.removeprefix("block_").upper().replace("_K", "_K")]
            assert GGML_QUANT_SIZES[qtype][1] == int(size), name
