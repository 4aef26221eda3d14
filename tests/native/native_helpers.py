"""Inputs for the kernel tests and the two ways of running a kernel: natively through tinygrad, or under qemu.

x86 variants run through runtime.tinygrad_seam.c_kernel on tinygrad's CPU device (its clang, -march=native). aarch64
variants are compiled with the same clang flags tinygrad's CPU compiler uses on arm64, laid out by tinygrad's own
jit_loader (so the entry point must be the start of the image, as on a real board), and run by harness.c, a static
aarch64 program, under qemu-aarch64. Names are unique to this folder (several test folders have a conftest.py).
"""
from __future__ import annotations

import functools
import shutil
import struct
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

HERE = Path(__file__).parent
K = 512  # two K-quant super-blocks, sixteen 32-blocks per row
ROWS, N, CRAFTED_ROWS, CRAFTED_N = 4, 16, 2, 6  # activation rows, weight rows; the first ones are the crafted ones
PARTS = 2  # core_id partitions: every kernel runs split, as the threaded runner runs it
QUANT_ROWS = 8

# Byte offsets of each type's f16 scale fields (d first; m or dmin second where the type has one).
F16_FIELDS = {T.Q8_0: (0,), T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q2_K: (80, 82),
              T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
# Scale bytes of the crafted blocks, masked so the exact sums stay far below 2^24 (see crafted_weights).
SCALE_MASKS = {T.Q2_K: (slice(0, 16), 0xFF), T.Q3_K: (slice(96, 108), 0xFF), T.Q4_K: (slice(4, 16), 0x0F),
               T.Q5_K: (slice(4, 16), 0x0F), T.Q6_K: (slice(192, 208), 0x0F)}


def _blocks(rng: np.random.Generator, ggml_type: T, rows: int) -> np.ndarray:
    block, size = GGML_QUANT_SIZES[ggml_type]
    return rng.integers(0, 256, (rows, K // block, size), dtype=np.uint8)


def _set_f16(raw: np.ndarray, off: int, values: np.ndarray) -> None:
    raw[..., off:off + 2] = values.astype(np.float16).view(np.uint8).reshape(*values.shape, 2)


def random_weights(rng: np.random.Generator, ggml_type: T, rows: int) -> np.ndarray:
    """Rows of random block bytes (every quant and scale bit pattern) with finite random f16 scales."""
    raw = _blocks(rng, ggml_type, rows)
    for off in F16_FIELDS[ggml_type]:
        mag = np.exp(rng.uniform(np.log(1e-3), np.log(0.1), raw.shape[:2]))
        _set_f16(raw, off, mag * rng.choice([-1.0, 1.0], raw.shape[:2]))
    return raw.reshape(rows, -1)


def crafted_weights(rng: np.random.Generator, ggml_type: T, rows: int) -> np.ndarray:
    """Random quants with f16 scale 1.0 and minimum 0 or 1 (per block); sub-block scales kept small (Q6_K's to
    -8..7, Q4_K/Q5_K's to 0..15) so every partial sum is an integer inside float32's 2^24 (the tests check it)."""
    raw = _blocks(rng, ggml_type, rows)
    fields = F16_FIELDS[ggml_type]
    _set_f16(raw, fields[0], np.ones(raw.shape[:2]))
    if len(fields) > 1:
        _set_f16(raw, fields[1], rng.integers(0, 2, raw.shape[:2]).astype(np.float64))
    if ggml_type in SCALE_MASKS:
        where, mask = SCALE_MASKS[ggml_type]
        raw[..., where] &= mask
        if ggml_type == T.Q6_K:  # sign-extend the 4 low bits: scales -8..7, both signs covered
            raw[..., where] = ((raw[..., where].astype(np.int16) ^ 8) - 8).astype(np.int8).view(np.uint8)
    return raw.reshape(rows, -1)


def random_activations(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Normal rows with per-block magnitudes over six decades (each block gets its own scale)."""
    scale = np.repeat(10.0 ** rng.uniform(-3, 3, (rows, K // 32)), 32, axis=1)
    return (rng.standard_normal((rows, K)) * scale).astype(np.float32)


def integer_activations(rng: np.random.Generator, rows: int) -> np.ndarray:
    """Integers in -127..127 with one +-127 per block: the block scale is exactly 1 and the quants are x itself."""
    x = rng.integers(-127, 128, (rows, K // 32, 32))
    pos = rng.integers(0, 32, (rows, K // 32))
    np.put_along_axis(x, pos[..., None], rng.choice([-127, 127], (rows, K // 32, 1)), axis=2)
    return x.reshape(rows, K).astype(np.float32)


def quantization_cases() -> dict[str, np.ndarray]:
    """Activation matrices (QUANT_ROWS, K) for the bit-exact quantization tests."""
    rng = np.random.default_rng(11)
    f32 = np.float32
    zeros = np.zeros((QUANT_ROWS, K), f32)
    zeros[1] = -0.0
    zeros[2, ::32] = rng.standard_normal(K // 32)  # one value per block, the rest zeros
    zeros[3, 5::64] = -1e-3
    bscale = np.repeat(10.0 ** rng.uniform(30, 38, (QUANT_ROWS, K // 32)), 32, axis=1)
    huge = (np.clip(rng.standard_normal((QUANT_ROWS, K)), -3, 3) / 3 * bscale).astype(f32)
    huge[0, 0], huge[0, 33] = np.finfo(f32).max, -np.finfo(f32).max
    # Block maxima about 1e-36 .. 1e-30, and blocks whose maximum is below 3.7e-37, where 1 / (amax / 127)
    # overflows and the kernel quantizes the block to zeros.
    tiny = random_activations(rng, QUANT_ROWS) * f32(1e-33)
    tiny[1, 1:32] = f32(1e-44)  # subnormals beside a normal block maximum
    tiny[1, 0] = f32(1e-6)
    tiny[2, 32:64] = f32(1e-38)
    tiny[2, 64:96] = f32(-1e-44)
    ties = np.empty((QUANT_ROWS, K), f32)
    for r in range(QUANT_ROWS):
        blocks = (rng.integers(-127, 127, (K // 32, 32)) + 0.5).astype(f32)  # k + 1/2 for scale 1
        blocks[:, 0] = 127.0
        if r % 2:  # amax 63.5: d = 0.5, 1 / d = 2, so x = (k + 1/2) / 2 lands on a tie too
            blocks = blocks / f32(2)
        if r >= 4:  # one ulp either side of the ties
            blocks[:, 1::2] = np.nextafter(blocks[:, 1::2], f32(np.inf))
            blocks[:, 2::2] = np.nextafter(blocks[:, 2::2], f32(-np.inf))
            blocks[:, 0] = 127.0 / (2 if r % 2 else 1)
        ties[r] = blocks.reshape(-1)
    return {"random": random_activations(rng, QUANT_ROWS), "zeros": zeros, "huge": huge, "tiny": tiny, "ties": ties}


@dataclass
class MatmulCase:
    """One type's inputs: activations (ROWS, K) whose first CRAFTED_ROWS rows are integers, weights (N, bytes) whose
    first CRAFTED_N rows are crafted (scales 1)."""

    ggml_type: T
    x: np.ndarray
    raw: np.ndarray


@functools.cache
def matmul_case(ggml_type: T) -> MatmulCase:
    rng = np.random.default_rng(int(ggml_type))
    x = np.concatenate([integer_activations(rng, CRAFTED_ROWS), random_activations(rng, ROWS - CRAFTED_ROWS)])
    raw = np.concatenate([crafted_weights(rng, ggml_type, CRAFTED_N), random_weights(rng, ggml_type, N - CRAFTED_N)])
    return MatmulCase(ggml_type, x, raw)


# ---- running kernels ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """One build of the kernels: `arch` x86_64 (tinygrad, natively) or aarch64 (qemu); `defines` for source.py;
    `march` and `qemu_cpu` for aarch64; `isa` the EG_ISA_NAME the build must select."""

    name: str
    arch: str
    isa: str
    defines: tuple[str, ...] = ()
    march: str = ""
    qemu_cpu: str = ""


VARIANTS = (
    Variant("x86-portable", "x86_64", "portable", ("EG_PORTABLE",)),
    Variant("x86-avx2", "x86_64", "avx2"),  # with vpdpbusd where the CPU has AVX-512 VNNI or AVX-VNNI
    Variant("x86-avx2-no-vnni", "x86_64", "avx2", ("EG_NO_VNNI",)),  # maddubs + madd: CPUs without VNNI
    # The Raspberry Pi 5 (Cortex-A76) and Jetson Orin (A78AE) have the dot-product extension.
    Variant("arm-neon-dotprod", "aarch64", "neon-dotprod", march="armv8.2-a+dotprod", qemu_cpu="cortex-a76"),
    # Without it (Cortex-A72, the Raspberry Pi 4): an sdot would be an illegal instruction on this qemu CPU.
    Variant("arm-neon", "aarch64", "neon", march="armv8.2-a", qemu_cpu="cortex-a72"),
    Variant("arm-portable", "aarch64", "portable", ("EG_PORTABLE",), march="armv8.2-a+dotprod", qemu_cpu="cortex-a76"),
)


def host_has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx2" in flags and " fma" in flags


def qemu_missing() -> str | None:
    """Why the aarch64 variants cannot run here, or None."""
    for tool, package in (("qemu-aarch64", "qemu-user"), ("ld.lld", "lld"), ("clang", "clang")):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian package {package}; scripts/setup.sh --test installs it)"
    return None


def aarch64_flags(variant: Variant) -> list[str]:
    """tinygrad's ClangCompiler command line on arm64 (runtime/support/compiler_cpu.py), -march for -mcpu=native."""
    return ["-c", "-x", "c", "-O2", "-fPIC", "-ffreestanding", "-fno-math-errno", "-nostdlib", "-fno-ident",
            "--target=aarch64-none-unknown-elf", "-ffixed-x18", f"-march={variant.march}"]


def isa_name(variant: Variant) -> str:
    """EG_ISA_NAME as the headers define it for this variant's compiler flags (the preprocessor's answer)."""
    from edgegen.runtime.native.source import headers

    src = "".join(f"#define {d} 1\n" for d in variant.defines) + headers() + "\neg_isa_is EG_ISA_NAME\n"
    flags = aarch64_flags(variant)[3:] if variant.arch == "aarch64" else ["-O2", "-ffreestanding", "-march=native"]
    out = subprocess.run(["clang", "-E", "-P", "-x", "c", *flags, "-"], input=src, capture_output=True, text=True,
                         check=True).stdout
    return out[out.rindex("eg_isa_is"):].split('"')[1]


@functools.cache
def aarch64_image(variant: Variant, source: str) -> bytes:
    """The kernel as tinygrad's CPU device would load it on aarch64: compiled, then laid out by jit_loader."""
    from edgegen.runtime.tinygrad_seam.kernels import load_image

    obj = subprocess.run(["clang", *aarch64_flags(variant), "-", "-o", "-"], input=source.encode(),
                         capture_output=True, check=True).stdout
    return load_image(obj)


@functools.cache
def harness() -> Path:
    """harness.c built as a static aarch64 Linux executable (clang + lld, no libc)."""
    out = Path(tempfile.mkdtemp(prefix="edgegen-native-harness-")) / "harness"
    subprocess.run(["clang", "--target=aarch64-linux-gnu", "-march=armv8-a", "-O2", "-ffreestanding", "-nostdlib",
                    "-static", "-fuse-ld=lld", "-o", str(out), str(HERE / "harness.c")], check=True,
                   capture_output=True)
    return out


@dataclass
class Job:
    """One kernel call: (name, source) from source.py, its input buffers, the output size, core_id partitions."""

    source: str
    inputs: tuple[np.ndarray, ...]
    out_bytes: int
    parts: int


def run_qemu(variant: Variant, jobs: list[Job]) -> list[bytes]:
    """Every job's output bytes, run in one qemu-aarch64 process."""
    stream = [struct.pack("<Q", len(jobs))]
    for job in jobs:
        image = aarch64_image(variant, job.source)
        data = [np.ascontiguousarray(a).tobytes() for a in job.inputs]
        stream.append(struct.pack(f"<{4 + len(data)}Q", len(image), len(data), job.parts, job.out_bytes,
                                  *map(len, data)))
        stream += [image, *data]
    run = subprocess.run(["qemu-aarch64", "-cpu", variant.qemu_cpu, str(harness())], input=b"".join(stream),
                         capture_output=True, timeout=120)
    if run.returncode != 0:
        raise AssertionError(f"harness under qemu-aarch64 -cpu {variant.qemu_cpu} exited {run.returncode}: "
                             f"{run.stderr.decode(errors='replace')[-2000:]}")
    outs, pos = [], 0
    for job in jobs:
        outs.append(run.stdout[pos:pos + job.out_bytes])
        pos += job.out_bytes
    assert pos == len(run.stdout), f"harness wrote {len(run.stdout)} bytes, expected {pos}"
    return outs


def run_tinygrad(jobs: list[tuple[str, Job]]) -> list[bytes]:
    """Every (function name, job)'s output bytes, each as one c_kernel on tinygrad's CPU device."""
    from tinygrad import Tensor, dtypes

    from edgegen.runtime.tinygrad_seam.kernels import c_kernel

    outs = []
    for name, job in jobs:
        ins = tuple(Tensor(np.ascontiguousarray(a).reshape(-1).view(np.uint8) if a.dtype != np.float32 else a,
                           device="CPU") for a in job.inputs)
        out = Tensor.empty(job.out_bytes, dtype=dtypes.uint8, device="CPU")
        outs.append(c_kernel(name, job.source, out, ins, job.parts).numpy().tobytes())
    return outs
