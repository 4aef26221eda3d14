"""reference.py (which the kernels match bit for bit, test_kernels.py) against ggml itself: the CPU library that
llama-cpp-python ships, called through ctypes where the `llamacpp` extra is installed, and otherwise ggml's answers
recorded from it (data/ggml_reference.npz, written by `python tests/native/test_vs_ggml.py --record` on a machine with
the extra; each live run also checks the recording still matches ggml, so CI compares with ggml either way).

- activation quantization: the same bytes as ggml's quantize_row_q8_0 and quantize_row_q8_1 (its AVX2/NEON builds
  round to nearest, ties to even, and store d and d * sum(q) as f16), so the two runtimes feed their integer dots
  the same int8 values and scales;
- block dots of the 32-weight types (ggml_vec_dot_<type>_q8_0/q8_1): within float32 summation order of ggml's.
K-quants are not compared: ggml pairs them with 256-wide Q8_K activations, edgegen with the 32-wide blocks above.
"""
from __future__ import annotations

import ctypes
import sys
from pathlib import Path

import numpy as np
import pytest
import reference
from gguf import GGMLQuantizationType as T
from native_helpers import K, random_activations, random_weights

RECORDED = Path(__file__).parent / "data" / "ggml_reference.npz"
Q8_0 = np.dtype([("d", "<f2"), ("qs", "i1", (32,))])
Q8_1 = np.dtype([("d", "<f2"), ("s", "<f2"), ("qs", "i1", (32,))])
# each 32-weight type and the activation format ggml's CPU backend pairs it with (its vec_dot_type)
PAIRS = {T.Q8_0: "q8_0", T.Q4_0: "q8_0", T.Q5_0: "q8_0", T.Q4_1: "q8_1", T.Q5_1: "q8_1"}
FORMATS = {"q8_0": Q8_0, "q8_1": Q8_1}


def _ggml_library() -> ctypes.CDLL | None:
    try:
        import llama_cpp
    except ImportError:
        return None
    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-cpu.so"
    if not path.is_file():
        return None
    lib = ctypes.CDLL(str(path))
    lib.ggml_cpu_init()  # fills ggml's f16 -> f32 table, which its dots read the block scales through
    for fmt in FORMATS:
        getattr(lib, f"quantize_row_{fmt}").argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return lib


def _activations() -> np.ndarray:
    rng = np.random.default_rng(7)
    x = random_activations(rng, 6)
    x[0, :32] = np.arange(32, dtype=np.float32) * 0.5  # ties: x * 127 / amax lands on k + 0.5
    x[1] *= np.float32(3e-3)  # small blocks: f16 subnormal scales
    x[2, :64] = 0.0  # an all-zero block
    return x


def _weights(ggml_type: T) -> np.ndarray:
    return random_weights(np.random.default_rng(int(ggml_type)), ggml_type, 12)


def _ggml_quantize(lib: ctypes.CDLL, fmt: str, x: np.ndarray) -> np.ndarray:
    out = np.zeros(x.size // 32, FORMATS[fmt])
    getattr(lib, f"quantize_row_{fmt}")(np.ascontiguousarray(x, np.float32).ctypes.data, out.ctypes.data, x.size)
    return out.reshape(x.shape[0], -1)


def _ggml_dots(lib: ctypes.CDLL, ggml_type: T, x: np.ndarray, raw: np.ndarray) -> np.ndarray:
    fmt = PAIRS[ggml_type]
    fn = getattr(lib, f"ggml_vec_dot_{ggml_type.name.lower()}_{fmt}")
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_size_t,
                   ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    xq = _ggml_quantize(lib, fmt, x)
    theirs = np.zeros((x.shape[0], raw.shape[0]), np.float32)
    for r in range(x.shape[0]):
        for n in range(raw.shape[0]):
            out = ctypes.c_float()
            w = np.ascontiguousarray(raw[n])
            fn(K, ctypes.addressof(out), 0, w.ctypes.data, 0, xq[r].ctypes.data, 0, 1)
            theirs[r, n] = out.value
    return theirs


def ggml_answers(lib: ctypes.CDLL) -> dict[str, np.ndarray]:
    """ggml's outputs for this module's inputs, by name: the recording's contents. The inputs go with them, so a
    change to the input generators shows up as a mismatch with the recording, not as a silent pass."""
    x = _activations()
    out = {"x": x}
    for fmt in FORMATS:
        out[f"quantize_{fmt}"] = _ggml_quantize(lib, fmt, x).view(np.uint8)
    for ggml_type in PAIRS:
        raw = _weights(ggml_type)
        out[f"weights_{ggml_type.name}"], out[f"dots_{ggml_type.name}"] = raw, _ggml_dots(lib, ggml_type, x, raw)
    return out


@pytest.fixture(scope="module")
def ggml() -> dict[str, np.ndarray]:
    """ggml's answers: live where llama-cpp-python is installed (and the recording checked against them), else the
    recording."""
    recorded = dict(np.load(RECORDED))
    lib = _ggml_library()
    if lib is None:
        return recorded
    live = ggml_answers(lib)
    assert set(live) == set(recorded), "the recording is stale: python tests/native/test_vs_ggml.py --record"
    for name, value in live.items():
        assert np.array_equal(value, recorded[name]), f"{name}: ggml answers otherwise than {RECORDED.name} says"
    return live


def test_inputs_are_the_recorded_ones(ggml: dict[str, np.ndarray]) -> None:
    assert np.array_equal(_activations(), ggml["x"])
    for ggml_type in PAIRS:
        assert np.array_equal(_weights(ggml_type), ggml[f"weights_{ggml_type.name}"])


@pytest.mark.parametrize("fmt", ["q8_0", "q8_1"])
def test_activation_quantization_is_ggmls(ggml: dict[str, np.ndarray], fmt: str) -> None:
    theirs = ggml[f"quantize_{fmt}"].view(FORMATS[fmt]).reshape(ggml["x"].shape[0], -1)
    ours = reference.quantize(ggml["x"])
    assert np.array_equal(theirs["qs"], ours["qs"])
    assert np.array_equal(theirs["d"].astype(np.float32), ours["d"])
    if fmt == "q8_1":
        assert np.array_equal(theirs["s"].astype(np.float32), ours["s"])


@pytest.mark.parametrize("ggml_type", list(PAIRS), ids=lambda t: t.name)
def test_block_dots_match_ggml(ggml: dict[str, np.ndarray], ggml_type: T) -> None:
    raw, theirs = ggml[f"weights_{ggml_type.name}"], ggml[f"dots_{ggml_type.name}"]
    ours = reference.dot(reference.quantize(ggml["x"]), reference.decode(raw, ggml_type))
    assert np.all(np.abs(theirs - ours.y) <= 1e-5 * ours.magnitude + 1e-30), np.abs(theirs - ours.y).max()


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    library = _ggml_library()
    if library is None:
        sys.exit("recording needs ggml: pip install -e '.[llamacpp]' (docs/KERNELS.md says how to build it)")
    RECORDED.parent.mkdir(exist_ok=True)
    np.savez_compressed(RECORDED, **ggml_answers(library))
    print(f"wrote {RECORDED}")
