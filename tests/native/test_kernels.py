"""Every build of the hand-written kernels (x86 portable and AVX2 natively through tinygrad; aarch64 NEON with and
without the dot-product extension, and aarch64 portable, under qemu-aarch64), per packed type, against reference.py.

- activation quantization: bit-exact (random rows, zeros, huge and tiny magnitudes, exact and near ties);
- integer-exact: crafted blocks with f16 scales 1.0 (minimums 0 or 1) and integer activations whose block maximum
  is 127, so every float in the kernel is an exact integer: the output must equal the exact integer result;
- random blocks: within 1e-5 of reference.py relative to the sum of the terms' magnitudes (float32 summation in a
  different order: about 16 additions of 6e-8 each), and within the 8-bit-activation error of
  x @ gguf.quants.dequantize(W).T: reference.activation_error_bound, the worst case of rounding every activation to
  half its block's step amax / 127 (llama.cpp quantizes activations the same way), plus the same 1e-5 float slack.

Activation blocks whose maximum is below about 3.7e-37 are not tested: there 127 / amax overflows to inf and
common.h's (int) conversion of inf or nan is undefined behaviour (x86 and aarch64 give different bytes).
"""
from __future__ import annotations

import platform
from dataclasses import dataclass

import numpy as np
import pytest
import reference
from gguf import GGMLQuantizationType as T
from gguf import quants
from native_helpers import (
    CRAFTED_N,
    CRAFTED_ROWS,
    PARTS,
    QUANT_ROWS,
    ROWS,
    VARIANTS,
    Job,
    K,
    N,
    Variant,
    host_has_avx2,
    isa_name,
    matmul_case,
    qemu_missing,
    quantization_cases,
    run_qemu,
    run_tinygrad,
)

from edgegen.runtime.native.layout import X8_HEADERS, interleave_rows
from edgegen.runtime.native.source import (
    ACT_BLOCK_BYTES,
    KERNEL_TYPES,
    attention_kernel,
    matmul_kernel,
    quantize_kernel,
)

TYPES = list(KERNEL_TYPES)
# every matmul kernel: each type with the file's row layout, and the types with an 8-row interleaved one
# (runtime.native.layout), which must give the same sums from the same blocks
KERNELS = [(t, "rows") for t in TYPES] + [(t, "x8") for t in X8_HEADERS]
KERNEL_PARAMS = [pytest.param(t, layout, id=t.name + ("x8" if layout == "x8" else "")) for t, layout in KERNELS]


@dataclass(frozen=True)
class AttentionCase:
    """Queries (T, H, hd) at positions start.. over a float16 KV cache (2, KvH, C, hd); hd 72 leaves a tail after
    the 16- and 8-wide vector loops."""

    q: np.ndarray
    kv: np.ndarray
    start: int
    window: int

    @property
    def scale(self) -> float:
        return float(self.q.shape[2]) ** -0.5


def _attention_case(seed: int, t: int, start: int, window: int, heads: int = 4, kv_heads: int = 2, hd: int = 72,
                    context: int = 16) -> AttentionCase:
    rng = np.random.default_rng(seed)
    q = (rng.standard_normal((t, heads, hd)) * 2).astype(np.float32)
    kv = (rng.standard_normal((2, kv_heads, context, hd)) * 3).astype(np.float16)
    return AttentionCase(q, kv, start, window)


# prefill from 0; a later chunk; one decode query near the end of the cache; a sliding window of 4 (gemma3)
ATTENTION_CASES = {"prefill": _attention_case(1, 5, 0, 0), "suffix": _attention_case(2, 3, 6, 0),
                   "decode": _attention_case(3, 1, 14, 0), "window": _attention_case(4, 4, 7, 4)}


def attention_case_kernel(case: AttentionCase, defines: tuple[str, ...]) -> tuple[str, str]:
    t, heads, hd = case.q.shape
    _, kv_heads, context, _ = case.kv.shape
    return attention_kernel(t, heads, kv_heads, hd, context, case.window, case.scale, case.start, PARTS, defines)
QUANT_CASES = quantization_cases()
FLOAT_SLACK = 1e-5
EPS = 1e-6


def _pre_cases() -> dict[str, tuple[np.ndarray, tuple[np.ndarray, ...]]]:
    """Inputs of the fused quantize kernels: a row operation's input and its extra buffers (the norm's weight)."""
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((QUANT_ROWS, K)) * rng.uniform(0.1, 30, (QUANT_ROWS, 1))).astype(np.float32)
    w = rng.uniform(-2, 2, K).astype(np.float32)
    gate_up = (rng.standard_normal((QUANT_ROWS, 2 * K)) * 3).astype(np.float32)
    gate_up[0, :8] = [-100.0, -20.0, -1e-4, 0.0, 1e-4, 20.0, 100.0, -88.0]  # exp's clamps and tanh's tails
    return {"rms": (x, (w,)), "silu": (gate_up, ()), "gelu_tanh": (gate_up, ())}


PRE_CASES = _pre_cases()


def _skip_reason(variant: Variant) -> str | None:
    if variant.arch == "aarch64":
        return qemu_missing()
    if platform.machine() not in ("x86_64", "AMD64"):
        return f"x86 variant on a {platform.machine()} host"
    if variant.isa == "avx2" and not host_has_avx2():
        return "this CPU has no AVX2 + FMA"
    return None


VARIANT_PARAMS = [pytest.param(v, id=v.name) for v in VARIANTS]


class Outputs:
    """One variant's kernel outputs for every quantization case and every type, computed on first use (one qemu
    process per aarch64 variant)."""

    def __init__(self, variant: Variant) -> None:
        self.variant = variant
        qname, qsrc = quantize_kernel(QUANT_ROWS, K, PARTS, variant.defines)
        jobs: list[tuple[str, Job]] = [
            (qname, Job(qsrc, (x,), QUANT_ROWS * K // 32 * ACT_BLOCK_BYTES, PARTS)) for x in QUANT_CASES.values()]
        for t, layout in KERNELS:
            case = matmul_case(t)
            raw = interleave_rows(case.raw, t, N) if layout == "x8" else case.raw
            mname, msrc = matmul_kernel(t, ROWS, N, K, PARTS, variant.defines, layout)
            jobs.append((mname, Job(msrc, (reference.quantize(case.x), raw), ROWS * N * 4, PARTS)))
        for case in ATTENTION_CASES.values():
            aname, asrc = attention_case_kernel(case, variant.defines)
            jobs.append((aname, Job(asrc, (case.q, case.kv.view(np.uint16)), case.q.nbytes, PARTS)))
        for pre, (x, extra) in PRE_CASES.items():
            pname, psrc = quantize_kernel(QUANT_ROWS, K, PARTS, variant.defines, pre, EPS)
            jobs.append((pname, Job(psrc, (x, *extra), QUANT_ROWS * K // 32 * ACT_BLOCK_BYTES, PARTS)))
        # Each activation row alone (decode) and each query alone at its position: the batched kernels must give
        # these bits exactly (a request's tokens may not depend on what it was batched with, or prefill vs decode).
        n_batched = len(jobs)
        for t, layout in KERNELS:
            case = matmul_case(t)
            raw = interleave_rows(case.raw, t, N) if layout == "x8" else case.raw
            mname, msrc = matmul_kernel(t, 1, N, K, PARTS, variant.defines, layout)
            jobs += [(mname, Job(msrc, (reference.quantize(case.x[m:m + 1]), raw), N * 4, PARTS)) for m in range(ROWS)]
        for case in ATTENTION_CASES.values():
            for i in range(case.q.shape[0]):
                one = AttentionCase(case.q[i:i + 1], case.kv, case.start + i, case.window)
                aname, asrc = attention_case_kernel(one, variant.defines)
                jobs.append((aname, Job(asrc, (one.q, one.kv.view(np.uint16)), one.q.nbytes, PARTS)))
        outs = run_qemu(variant, [j for _, j in jobs]) if variant.arch == "aarch64" else run_tinygrad(jobs)
        singles, outs = outs[n_batched:], outs[:n_batched]
        self.matmul_rows = {key: np.stack([np.frombuffer(singles.pop(0), np.float32) for _ in range(ROWS)])
                            for key in KERNELS}
        self.attention_rows = {
            name: np.concatenate([np.frombuffer(singles.pop(0), np.float32).reshape(1, *case.q.shape[1:])
                                  for _ in range(case.q.shape[0])])
            for name, case in ATTENTION_CASES.items()}
        self.pre = {pre: np.frombuffer(o, reference.Q8X).reshape(QUANT_ROWS, K // 32)
                    for pre, o in zip(PRE_CASES, outs[len(outs) - len(PRE_CASES):], strict=True)}
        self.quant = dict(zip(QUANT_CASES, outs[:len(QUANT_CASES)], strict=True))
        n_mm = len(QUANT_CASES) + len(KERNELS)
        self.matmul = {key: np.frombuffer(o, np.float32).reshape(ROWS, N) for key, o in
                       zip(KERNELS, outs[len(QUANT_CASES):n_mm], strict=True)}
        self.attention = {name: np.frombuffer(o, np.float32).reshape(case.q.shape) for (name, case), o in
                          zip(ATTENTION_CASES.items(), outs[n_mm:n_mm + len(ATTENTION_CASES)], strict=True)}


_outputs: dict[str, Outputs] = {}


@pytest.fixture
def outputs(variant: Variant) -> Outputs:
    """The variant's outputs (built once per session), or a skip saying why this host cannot run it."""
    reason = _skip_reason(variant)
    if reason:
        pytest.skip(reason)
    if variant.name not in _outputs:
        _outputs[variant.name] = Outputs(variant)
    return _outputs[variant.name]


def test_the_vnni_build_uses_vpdpbusd_where_the_cpu_has_it() -> None:
    """On a CPU with AVX-512 VNNI or AVX-VNNI the x8 and row kernels are built with vpdpbusd (the variants above
    check its sums), and without it when EG_NO_VNNI is defined."""
    import subprocess

    flags = subprocess.run(["clang", "-march=native", "-dM", "-E", "-x", "c", "/dev/null"], capture_output=True,
                           text=True, check=True).stdout
    if "__AVX512VNNI__" not in flags and "__AVXVNNI__" not in flags:
        pytest.skip("this CPU has no VNNI")
    for defines, want in (((), True), (("EG_NO_VNNI",), False)):
        _, src = matmul_kernel(T.Q4_1, 4, 8, 256, 1, defines, "x8")
        asm = subprocess.run(["clang", "-S", "-O2", "-ffreestanding", "-march=native", "-x", "c", "-", "-o", "-"],
                             input=src, capture_output=True, text=True, check=True).stdout
        assert ("vpdpbusd" in asm) == want, defines


@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_build_selects_its_isa(variant: Variant) -> None:
    """Each build's flags pick the intended ISA header (a NEON build falling back to portable would test nothing)."""
    reason = _skip_reason(variant)
    if reason:
        pytest.skip(reason)
    assert isa_name(variant) == variant.isa


@pytest.mark.parametrize("case", list(QUANT_CASES))
@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_quantize_bit_exact(outputs: Outputs, variant: Variant, case: str) -> None:
    got = np.frombuffer(outputs.quant[case], reference.Q8X)
    want = reference.quantize(QUANT_CASES[case]).reshape(-1)
    size = reference.Q8X.itemsize
    bad = np.flatnonzero((got.view(np.uint8).reshape(-1, size) != want.view(np.uint8).reshape(-1, size)).any(axis=1))
    assert bad.size == 0, (f"{bad.size} of {want.size} blocks differ; block {bad[0]}: got {got[bad[0]]}, "
                           f"want {want[bad[0]]}")


@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_rms_norm_then_quantize_bit_exact(outputs: Outputs, variant: Variant) -> None:
    """RMSNorm folded into the quantization: the same bytes as quantizing reference.rms_normed's float rows."""
    x, (w,) = PRE_CASES["rms"]
    want = reference.quantize(reference.rms_normed(x, w, EPS))
    assert outputs.pre["rms"].tobytes() == want.tobytes()


@pytest.mark.parametrize("activation", ["silu", "gelu_tanh"])
@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_gate_then_quantize(outputs: Outputs, variant: Variant, activation: str) -> None:
    """The gate folded into the quantization: each dequantized value q * d within half a quantization step of the
    exact activation(gate) * up, plus the f16 rounding of d (|q| <= 127 times 2^-11 of d) and the polynomial exp's
    float slack; the block scale that of the exact row."""
    gate_up, _ = PRE_CASES[activation]
    exact = reference.gated(gate_up, activation).reshape(QUANT_ROWS, K // 32, 32)
    got = outputs.pre[activation]
    values = got["qs"].astype(np.float64) * got["d"][..., None]
    step = got["d"][..., None].astype(np.float64)
    bound = step * (0.5 + 127 * 2.0**-11) * (1 + 1e-3) + FLOAT_SLACK * np.abs(exact).max(axis=2, keepdims=True)
    err = np.abs(values - exact)
    assert (err <= bound).all(), f"worst error {(err - bound).max():.3g} beyond half a step"
    np.testing.assert_allclose(got["d"], np.abs(exact).max(axis=2) / 127, rtol=2e-3)  # f16-rounded scale


def _reference(t: T) -> tuple[reference.DotResult, np.ndarray]:
    case = matmul_case(t)
    return reference.dot(reference.quantize(case.x), reference.decode(case.raw, t)), case.x


@pytest.mark.parametrize(("ggml_type", "layout"), KERNEL_PARAMS)
@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_integer_exact(outputs: Outputs, variant: Variant, ggml_type: T, layout: str) -> None:
    ref, x = _reference(ggml_type)
    assert np.array_equal(reference.quantize(x[:CRAFTED_ROWS])["d"], np.ones((CRAFTED_ROWS, K // 32)))
    exact = ref.y[:CRAFTED_ROWS, :CRAFTED_N]
    # every partial sum is an integer below 2^24 in magnitude, so float32 holds each one exactly in any order
    assert ref.magnitude[:CRAFTED_ROWS, :CRAFTED_N].max() < 2**24
    assert np.array_equal(exact, np.round(exact)) and np.abs(exact).max() > 0
    got = outputs.matmul[ggml_type, layout][:CRAFTED_ROWS, :CRAFTED_N].astype(np.float64)
    assert np.array_equal(got, exact), f"got {got.tolist()}\nwant {exact.tolist()}"


@pytest.mark.parametrize(("ggml_type", "layout"), KERNEL_PARAMS)
@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_matches_reference(outputs: Outputs, variant: Variant, ggml_type: T, layout: str) -> None:
    ref, _ = _reference(ggml_type)
    got = outputs.matmul[ggml_type, layout].astype(np.float64)
    err, tol = np.abs(got - ref.y), FLOAT_SLACK * ref.magnitude
    worst = np.unravel_index((err - tol).argmax(), err.shape)
    assert (err <= tol).all(), f"worst error {err[worst]:.3g} at {worst}, allowed {tol[worst]:.3g}"


@pytest.mark.parametrize(("ggml_type", "layout"), KERNEL_PARAMS)
@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_matches_dequantize(outputs: Outputs, variant: Variant, ggml_type: T, layout: str) -> None:
    case = matmul_case(ggml_type)
    w = quants.dequantize(case.raw, ggml_type).reshape(N, K).astype(np.float64)
    x = case.x.astype(np.float64)
    want = x @ w.T
    scale = np.abs(x) @ np.abs(w).T
    bound = reference.activation_error_bound(case.x, w) + FLOAT_SLACK * scale
    err = np.abs(outputs.matmul[ggml_type, layout] - want)
    assert (err <= bound).all(), f"worst error {(err / scale).max():.3g} of sum|x||w|, beyond the 8-bit bound"
    assert (bound < 0.05 * scale).all()  # the bound constrains: at most 5% of sum |x| |w| (a half step of 1/127)


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_attention_matches_reference(outputs: Outputs, variant: Variant, case: str) -> None:
    """The attention kernel over a float16 KV cache: within float32 rounding (and the polynomial exp's 2e-7) of
    reference.attention, which widens the same float16 keys and values exactly."""
    c = ATTENTION_CASES[case]
    want, magnitude = reference.attention(c.q, c.kv, c.start, c.window, c.scale)
    err = np.abs(outputs.attention[case] - want)
    assert (err <= FLOAT_SLACK * magnitude).all(), f"worst error {(err / magnitude).max():.3g} of the term scale"


@pytest.mark.parametrize(("ggml_type", "layout"), KERNEL_PARAMS)
@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_batched_rows_equal_each_row_alone(outputs: Outputs, variant: Variant, ggml_type: T, layout: str) -> None:
    """Prefill (4 activation rows per weight block) and decode (one row) give every row the same bits: the float
    sums per row run in the same order whatever the batch, so a prefill and a decode of one position agree."""
    batched, alone = outputs.matmul[ggml_type, layout], outputs.matmul_rows[ggml_type, layout]
    assert np.array_equal(batched.view(np.uint32), alone.view(np.uint32)), \
        f"rows differ at {np.argwhere(batched != alone)[:4].tolist()}: max |diff| {np.abs(batched - alone).max():.3g}"


@pytest.mark.parametrize("case", list(ATTENTION_CASES))
@pytest.mark.parametrize("variant", VARIANT_PARAMS)
def test_attention_queries_equal_each_query_alone(outputs: Outputs, variant: Variant, case: str) -> None:
    batched, alone = outputs.attention[case], outputs.attention_rows[case]
    assert np.array_equal(batched.view(np.uint32), alone.view(np.uint32)), f"max |diff| {np.abs(batched - alone).max()}"


def test_attention_reference_is_softmax_attention() -> None:
    """reference.attention is causal softmax attention: a query attending to one key returns that key's value, and
    a window of 1 reduces every query to its own position."""
    c = ATTENTION_CASES["window"]
    out, _ = reference.attention(c.q, c.kv, 0, 0, c.scale)
    np.testing.assert_allclose(out[0], c.kv[1, np.arange(4) // 2, 0].astype(np.float64))
    one, _ = reference.attention(c.q, c.kv, 3, 1, c.scale)
    np.testing.assert_allclose(one[1], c.kv[1, np.arange(4) // 2, 4].astype(np.float64))


# ---- the model itself ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ggml_type", TYPES, ids=[t.name for t in TYPES])
def test_reference_decodes_like_gguf(ggml_type: T) -> None:
    """reference.decode's integers and scales give gguf.quants.dequantize's floats (so the model reads the same
    layout gguf-py does)."""
    case = matmul_case(ggml_type)
    want = quants.dequantize(case.raw, ggml_type).reshape(N, K)
    got = reference.decode(case.raw, ggml_type).dequantize()
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * np.abs(want).max())


def test_reference_quantize_rounds_ties_to_even_and_scales_in_f16() -> None:
    """llama.cpp's AVX2/NEON quantize_row_q8_0/q8_1: _mm256_round_ps(_MM_ROUND_NEAREST), d and s stored as f16."""
    x = np.zeros((1, 32), np.float32)
    x[0, :8] = [127.0, 2.5, -2.5, 0.5, -0.5, 1.4999999, -126.5, 3.5]
    q = reference.quantize(x)[0, 0]
    assert q["d"] == 1.0 and q["qs"][:8].tolist() == [127, 2, -2, 0, 0, 1, -126, 4]
    assert q["bs"].tolist() == [127 + 2 - 2 + 0 + 0 + 1 - 126 + 4, 0] and q["s"] == 6.0
    odd = np.full((1, 32), 0.1, np.float32)  # d = 0.1 / 127 is not an f16 value: stored rounded, s from the exact d
    oq = reference.quantize(odd)[0, 0]
    assert oq["d"] == np.float32(np.float16(np.float32(0.1) / np.float32(127)))
    assert oq["s"] == np.float32(np.float16(np.float32(0.1) / np.float32(127) * np.float32(32 * 127)))
    assert oq["d"] != np.float32(0.1) / np.float32(127)
    zero = reference.quantize(np.zeros((1, 32), np.float32))[0, 0]
    assert zero["d"] == 0.0 and not zero["qs"].any()
