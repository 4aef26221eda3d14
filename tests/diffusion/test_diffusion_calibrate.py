"""Timestep-aware GPTQ for U-Net 4-bit weights (quantize.calibrate_unet): the packing, the statistics, the rounding,
and a calibrated file against round-to-nearest on the tiny models."""
from __future__ import annotations

import numpy as np
import pytest
from gguf.quants import dequantize, quantize
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegen.quantize.blocks import Q
from edgegen.quantize.calibrate_unet import _block_params, _codes, gptq, output_error, pack, patches
from edgegen.quantize.errors import QuantizeError


def _rtn(w: np.ndarray, qtype: Q) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rows, cols = w.shape
    blocks = w.reshape(rows, cols // 32, 32).astype(np.float64)
    dm = [_block_params(blocks[:, b], qtype) for b in range(cols // 32)]
    codes = np.concatenate([_codes(blocks[:, b], *dm[b]) for b in range(cols // 32)], axis=1)
    return codes, np.stack([d for d, _ in dm], 1), np.stack([m for _, m in dm], 1)


@settings(max_examples=25, deadline=None)
@given(rows=st.integers(1, 6), blocks=st.integers(1, 4), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 2**31),
       qtype=st.sampled_from([Q.Q4_0, Q.Q4_1]))
def test_packed_blocks_read_back_as_their_codes(rows, blocks, scale, seed, qtype):
    """What pack writes, ggml's dequantizer reads as d * code + m: the file holds exactly the rounding chosen. (Not
    byte for byte ggml's quantizer: it rounds against the float32 scale, we against the float16 one it stores.)"""
    w = (np.random.default_rng(seed).standard_normal((rows, 32 * blocks)) * scale).astype(np.float32)
    codes, d, m = _rtn(w, qtype)
    got = dequantize(pack(codes, d, m, qtype), qtype).reshape(w.shape)
    want = (np.repeat(d.astype(np.float16).astype(np.float32), 32, 1) * codes
            + np.repeat(m.astype(np.float16).astype(np.float32), 32, 1))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6 * scale)
    step = np.repeat(np.abs(d), 32, 1)  # nearest codes: within a step of w (Q4_0's top code stops at 7 d, not 8 d)
    assert np.all(np.abs(got - w) <= 1.01 * step + 1e-6 * scale)


@pytest.mark.parametrize(("k", "stride"), [(1, 1), (3, 1), (3, 2)])
def test_patches_times_kernel_is_the_convolution(k, stride):
    from tinygrad import Tensor

    rng = np.random.default_rng(k + stride)
    x = rng.standard_normal((2, 3, 7, 7)).astype(np.float32)
    w = rng.standard_normal((5, 3 * k * k)).astype(np.float32)
    want = Tensor(x, device="CPU").conv2d(Tensor(w.reshape(5, 3, k, k), device="CPU"), stride=stride,
                                          padding=k // 2).numpy()  # (2, 5, ho, wo)
    got = patches(x, k, stride, k // 2) @ w.T  # rows in (b, i, j) order
    np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1).reshape(-1, 5), rtol=1e-4, atol=1e-4)
    rows = np.array([0, 5, len(got) - 1])
    np.testing.assert_array_equal(patches(x, k, stride, k // 2, rows), patches(x, k, stride, k // 2)[rows])


@pytest.mark.parametrize("qtype", [Q.Q4_0, Q.Q4_1])
def test_gptq_lowers_the_output_error_on_unseen_inputs(qtype):
    """Correlated inputs (as a layer's are): GPTQ's rounding gives a smaller output error than round-to-nearest, on
    inputs it was not fitted to as well."""
    rng = np.random.default_rng(0)
    mix = rng.standard_normal((8, 96))  # inputs live near an 8-dimensional subspace

    def inputs(n: int) -> np.ndarray:
        return rng.standard_normal((n, 8)) @ mix + 0.1 * rng.standard_normal((n, 96))

    w = rng.standard_normal((24, 96)).astype(np.float32)
    x = inputs(4000)
    codes, d, m = gptq(w, x.T @ x, qtype)
    ours = dequantize(pack(codes, d, m, qtype), qtype).reshape(w.shape)
    rtn = dequantize(quantize(w, qtype), qtype).reshape(w.shape)
    held = inputs(4000)
    h = held.T @ held
    assert output_error(w, ours, h) < 0.5 * output_error(w, rtn, h)


def test_gptq_refuses_other_types():
    with pytest.raises(QuantizeError, match="Q4_0 and Q4_1"):
        gptq(np.zeros((2, 32), np.float32), np.eye(32), Q.Q8_0)


@pytest.mark.parametrize("files", ["tiny_unet_files", "tiny_latent_files"])
def test_calibrated_w4_draws_closer_to_float_than_round_to_nearest(files, request, tmp_path):
    """The fixtures' w4 files are calibrated (the default); the same recipe rounded to nearest draws images further
    from the float model's, for a seed calibration did not use. And calibration is deterministic."""
    from edgegen.quantize.pipeline import quantize_model
    from edgegen.quantize.source import load_source
    from edgegen.quantize.writer import write_artifact
    from edgegen.runtime.artifact import open_gguf
    from edgegen.runtime.diffusion import DiffusionParams, ImageGenerator

    paths = request.getfixturevalue(files)
    source = load_source(paths["f32"])
    rtn = tmp_path / "rtn.gguf"
    plain = quantize_model(source, "w4", diffusion_calibration=False)
    assert plain.calibration is None
    write_artifact(rtn, source, plain)
    again = quantize_model(source, "w4")
    report = again.report()["calibration"]
    assert report["method"] == "gptq-timestep" and report["error_after"] < report["error_before"]
    calibrated = open_gguf(paths["w4"])
    for name, t in again.tensors.items():
        assert np.array_equal(t.data.reshape(-1).view(np.uint8),
                              np.asarray(calibrated.tensors[name].data).reshape(-1).view(np.uint8)), name

    params = DiffusionParams(steps=10, seed=12345, guidance=2.0)
    labels = list(range(10))
    images = {v: ImageGenerator.load(p, jit_cache=False).sample(labels, params)
              for v, p in (("f32", paths["f32"]), ("cal", paths["w4"]), ("rtn", rtn))}
    err = {v: float(np.abs(images[v] - images["f32"]).mean()) for v in ("cal", "rtn")}
    assert err["cal"] < err["rtn"], err


def test_text_calibration_is_refused_for_a_unet(tiny_unet_files):
    from edgegen.quantize.pipeline import quantize_model
    from edgegen.quantize.source import load_source

    with pytest.raises(QuantizeError, match="calibrates on its own samples"):
        quantize_model(load_source(tiny_unet_files["f32"]), "w4", calibration_text="some text")


def test_calibration_opens_no_other_backend_and_leaves_the_environment(tiny_unet_files):
    """tinygrad left to find its default device opens every backend and writes DEV=<it> into os.environ: a bench
    that calibrated a file then ran its own timings and children on OpenCL (PoCL), 3-9x slower."""
    import subprocess
    import sys

    code = (
        "import os\n"
        "from edgegen.quantize.pipeline import quantize_model\n"
        "from edgegen.quantize.source import load_source\n"
        f"quantize_model(load_source({str(tiny_unet_files['f32'])!r}), 'w4')\n"
        "from tinygrad import Device\n"
        "print(os.environ.get('DEV'), 'CL' in Device._opened_devices)\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "DEV"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["None", "False"], proc.stdout
