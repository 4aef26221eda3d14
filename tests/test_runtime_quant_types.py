"""Every GGML type the packed linear layer runs, against gguf-py's own dequantization and numpy's matmul."""
from __future__ import annotations

import gguf
import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from tinygrad import Tensor

from edgegen.runtime.artifact.reader import TensorInfo
from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.quant import PackedLinear, embedding_rows, pack_linear

QUANTIZABLE = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16]  # gguf.quants.quantize supports these
# types gguf-py can only dequantize: random bytes, with the f16 scales at these byte offsets made finite and small
RAW_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.Q3_K: (108,), Q.Q2_K: (80, 82)}
TYPES = [Q.F32, Q.F16, *QUANTIZABLE, *RAW_SCALES]
DEVICE = "CPU"


def make_tensor(name: str, qtype: Q, out: int, inn: int, seed: int = 0) -> tuple[TensorInfo, np.ndarray]:
    """A (out, inn) weight stored as `qtype`, the way the reader hands it over, and its float value per gguf-py."""
    rng = np.random.default_rng(seed)
    if qtype in RAW_SCALES:
        block, size = GGML_QUANT_SIZES[qtype]
        raw = rng.integers(0, 256, (out, inn // block, size), dtype=np.uint8)
        for at in RAW_SCALES[qtype]:
            scale = rng.uniform(-0.01, 0.01, (out, inn // block)).astype(np.float16)
            raw[:, :, at : at + 2] = scale.view(np.uint8).reshape(out, inn // block, 2)
        data = raw.reshape(out, -1)
    else:
        w = (rng.standard_normal((out, inn)) * 0.1).astype(np.float32)
        data = gguf.quants.quantize(w, qtype)
        if qtype not in (Q.F32, Q.F16):
            data = data.view(np.uint8).reshape(out, -1)
    ref = gguf.quants.dequantize(data, qtype).reshape(out, inn).astype(np.float32)
    return TensorInfo(name, qtype, (out, inn), data), ref


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_kernel_matches_gguf_dequantize_and_numpy_matmul(qtype):
    info, ref = make_tensor("blk.0.ffn_up.weight", qtype, 48, 512)
    layer = pack_linear(info, DEVICE)
    assert isinstance(layer, PackedLinear) and (layer.out_features, layer.in_features) == (48, 512)
    np.testing.assert_allclose(layer.weight().numpy(), ref, rtol=1e-6, atol=1e-7 * np.abs(ref).max())

    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, 512)).astype(np.float32)
    tol = {"rtol": 1e-4, "atol": 1e-5 * np.abs(ref).sum(axis=1).max()}
    np.testing.assert_allclose(layer(Tensor(x, device=DEVICE)).numpy(), x @ ref.T, **tol)  # decode: one row
    xs = rng.standard_normal((2, 3, 512)).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(xs, device=DEVICE)).numpy(), xs @ ref.T, **tol)  # prefill: rows > 1


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_concatenated_tensors_are_one_layer(qtype):
    a, ref_a = make_tensor("blk.0.attn_q.weight", qtype, 32, 256, seed=2)
    b, ref_b = make_tensor("blk.0.attn_k.weight", qtype, 16, 256, seed=3)
    layer = pack_linear([a, b], DEVICE)
    assert layer.name == "blk.0.attn_q.weight+blk.0.attn_k.weight" and layer.out_features == 48
    ref = np.concatenate([ref_a, ref_b])
    x = np.random.default_rng(4).standard_normal(256).astype(np.float32)
    np.testing.assert_allclose(layer(Tensor(x, device=DEVICE)).numpy(), ref @ x, rtol=1e-4,
                               atol=1e-5 * np.abs(ref).sum(axis=1).max())


@pytest.mark.parametrize("qtype", TYPES, ids=lambda t: t.name)
def test_embedding_rows_dequantize_every_type(qtype):
    info, ref = make_tensor("token_embd.weight", qtype, 40, 256, seed=5)
    ids = [3, 0, 39, 3]
    np.testing.assert_array_equal(embedding_rows(info, ids), ref[ids])


@pytest.mark.parametrize("qtype", list(RAW_SCALES), ids=lambda t: t.name)
def test_kquant_input_size_must_be_a_multiple_of_256(qtype):
    block, size = GGML_QUANT_SIZES[qtype]
    # a row of 288 inputs as raw bytes: a whole number of 32-blocks, not of 256-weight super-blocks
    info = TensorInfo("blk.3.ffn_down.weight", qtype, (4, 288), np.zeros((4, 288 * size // block), np.uint8))
    with pytest.raises(ArtifactError, match=rf"blk\.3\.ffn_down\.weight: input size 288 is not a multiple of the "
                                            rf"{qtype.name} block size 256"):
        pack_linear(info, DEVICE)


def test_unsupported_type_names_the_tensor_and_the_supported_types():
    info = TensorInfo("blk.0.attn_v.weight", Q.IQ2_XXS, (4, 256), np.zeros((4, 66), np.uint8))
    with pytest.raises(ArtifactError, match=r"blk\.0\.attn_v\.weight: type IQ2_XXS cannot be used as a linear layer "
                                            r"\(supported: F32, F16, BF16, Q8_0, .*Q2_K\)"):
        pack_linear(info, DEVICE)
