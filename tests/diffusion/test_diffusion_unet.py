"""The U-Net in tinygrad against an independent numpy forward, for float, int8 and int4 files; weights stay packed."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from unet_numpy import unet_forward

from edgegen.quantize.import_gguf import load_gguf
from edgegen.runtime.diffusion import ImageGenerator


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["f32", "w8", "w4"])
def test_forward_matches_numpy(tiny_unet_files, variant):
    path = tiny_unet_files[variant]
    gen = ImageGenerator.load(path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 1, 28, 28)).astype(np.float32)
    t, y = np.array([0, 37, 99]), np.array([3, 10, 7])  # 10: the null class
    ours = gen.eps(x, t, y)
    # the reference runs on the file's own dequantized weights, so only arithmetic may differ
    weights = {n: a.astype(np.float64) for n, a in load_gguf(path).tensors.items()}
    ref = unet_forward(weights, gen.cfg, x.astype(np.float64), t, y)
    assert ours.shape == (3, 1, 28, 28)
    np.testing.assert_allclose(ours, ref, rtol=0, atol=2e-4 * np.abs(ref).max())


def test_quantized_weights_stay_packed(tiny_unet_files):
    sizes = {}
    # w4 keeps the layers at the pixels and the conditioning at 8 bits (quantize.recipes.KEEP_8BIT)
    for variant, qtype, at8 in (("w8", Q.Q8_0, set()), ("w4", Q.Q4_0, {"conv_out", "time.fc1", "time.fc2"})):
        gen = ImageGenerator.load(tiny_unet_files[variant])
        layers = gen.weights.layers
        packed = [n for n, layer in layers.items() if layer.ggml_type == qtype]
        # every other layer whose rows hold whole blocks is packed (conv_in's 9-wide rows cannot be)
        assert set(layers) - set(packed) == {"conv_in"} | at8, set(layers) - set(packed)
        assert all(layers[n].ggml_type == Q.Q8_0 for n in at8)
        assert all(layers[n].qs.dtype.itemsize == 1 for n in packed)
        sizes[variant] = sum(layers[n].size_bytes for n in packed)
    floats = ImageGenerator.load(tiny_unet_files["f32"]).weights.layers
    f32 = sum(layer.size_bytes for n, layer in floats.items() if n != "conv_in")
    assert sizes["w8"] < 0.3 * f32 and sizes["w4"] < 0.16 * f32, (sizes, f32)


@pytest.mark.slow
def test_quantized_forward_close_to_float(tiny_unet_files):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 1, 28, 28)).astype(np.float32)
    t, y = np.array([50, 80]), np.array([1, 2])
    out = {v: ImageGenerator.load(tiny_unet_files[v]).eps(x, t, y) for v in ("f32", "w8", "w4")}
    err = {v: np.abs(out[v] - out["f32"]).mean() / np.abs(out["f32"]).mean() for v in ("w8", "w4")}
    assert err["w8"] < 0.02 and err["w8"] < err["w4"] < 0.3, err
