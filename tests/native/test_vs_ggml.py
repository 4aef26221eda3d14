"""reference.py (which the kernels match bit for bit, test_kernels.py) against ggml itself: the CPU library that
llama-cpp-python ships, called through ctypes. Runs where the `bench` extra is installed.

- activation quantization: the same bytes as ggml's quantize_row_q8_0 and quantize_row_q8_1 (its AVX2/NEON builds
  round to nearest, ties to even, and store d and d * sum(q) as f16), so the two runtimes feed their integer dots
  the same int8 values and scales;
- block dots of the 32-weight types (ggml_vec_dot_<type>_q8_0/q8_1): within float32 summation order of ggml's.
K-quants are not compared: ggml pairs them with 256-wide Q8_K activations, edgegen with the 32-wide blocks above.
"""
from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np
import pytest
import reference
from gguf import GGMLQuantizationType as T
from native_helpers import K, random_activations, random_weights

llama_cpp = pytest.importorskip("llama_cpp", reason="ggml ships with llama-cpp-python (the bench extra)")
LIB = Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"
Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])
Q8_1 = np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", (32,))])
# each 32-weight type and the activation format ggml's CPU backend pairs it with (its vec_dot_type)
PAIRS = {T.Q8_0: "q8_0", T.Q4_0: "q8_0", T.Q5_0: "q8_0", T.Q4_1: "q8_1", T.Q5_1: "q8_1"}


@pytest.fixture(scope="module")
def ggml() -> ctypes.CDLL:
    if not LIB.is_file():
        pytest.skip(f"{LIB} is not there")
    lib = ctypes.CDLL(str(LIB))
    lib.ggml_cpu_init()  # fills ggml's f16 -> f32 table, which its dots read the block scales through
    for fmt in ("q8_0", "q8_1"):
        getattr(lib, f"quantize_row_{fmt}").argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def _ggml_quantize(lib: ctypes.CDLL, fmt: str, x: np.ndarray) -> np.ndarray:
    dtype = Q8_0 if fmt == "q8_0" else Q8_1
    out = np.zeros(x.size // 32, dtype)
    getattr(lib, f"quantize_row_{fmt}")(np.ascontiguousarray(x, np.float32).ctypes.data, out.ctypes.data, x.size)
    return out.reshape(x.shape[0], -1)


def _activations() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = random_activations(rng, 6)
    x[0, :32] = np.arange(32, dtype=np.float32) * 0.5  # ties: x * 127 / amax lands on k + 0.5
    x[1] *= np.float32(3e-3)  # small blocks: f16 subnormal scales
    x[2, :64] = 0.0  # an all-zero block
    return x


@pytest.mark.parametrize("fmt", ["q8_0", "q8_1"])
def test_activation_quantization_is_ggmls(ggml: ctypes.CDLL, fmt: str) -> None:
    x = _activations()
    theirs, ours = _ggml_quantize(ggml, fmt, x), reference.quantize(x)
    assert np.array_equal(theirs["qs"], ours["qs"])
    assert np.array_equal(theirs["d"].astype(np.float32), ours["d"])
    if fmt == "q8_1":
        assert np.array_equal(theirs["s"].astype(np.float32), ours["s"])


@pytest.mark.parametrize("ggml_type", list(PAIRS), ids=lambda t: t.name)
def test_block_dots_match_ggml(ggml: ctypes.CDLL, ggml_type: T) -> None:
    fmt = PAIRS[ggml_type]
    fn = getattr(ggml, f"ggml_vec_dot_{ggml_type.name.lower()}_{fmt}")
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    x = _activations()
    raw = random_weights(np.random.default_rng(int(ggml_type)), ggml_type, 12)
    ours = reference.dot(reference.quantize(x), reference.decode(raw, ggml_type))
    xq = _ggml_quantize(ggml, fmt, x)
    theirs = np.zeros((x.shape[0], raw.shape[0]), np.float32)
    for r in range(x.shape[0]):
        for n in range(raw.shape[0]):
            out = ctypes.c_float()
            w = np.ascontiguousarray(raw[n])
            fn(K, ctypes.addressof(out), 0, w.ctypes.data, 0, xq[r].ctypes.data, 0, 1)
            theirs[r, n] = out.value
    assert np.all(np.abs(theirs - ours.y) <= 1e-5 * ours.magnitude + 1e-30), np.abs(theirs - ours.y).max()
