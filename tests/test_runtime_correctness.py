"""tinygrad logits of a tiny random Llama vs an independent numpy forward, for each supported weight type."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as Q
from test_runtime_quant_types import make_tensor
from tiny_llama import VOCAB, random_weights, reference_logits, write_gguf
from tinygrad import Tensor

from edgegen.runtime.engine import TextGenerator
from edgegen.runtime.native.layout import x8_supported
from edgegen.runtime.native.linear import NativeLinear
from edgegen.runtime.native.options import KernelOptions
from edgegen.runtime.quant import PackedLinear, pack_linear

IDS = [5, 17, 42, 3, 88, 60, 7, 7, 31, 90, 12]


@pytest.fixture(scope="module")
def weights():
    return random_weights(seed=1)


# tinygrad's kernels keep activations in float, as the numpy reference: the tight 2e-3 checks the dequantization and
# the graph; the hand-written kernels (8-bit activations) are checked against these in tests/test_runtime_native.py
FLOAT_ACTIVATIONS = KernelOptions("tinygrad")


@pytest.mark.slow
@pytest.mark.parametrize("qtype", [Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1])
def test_logits_match_numpy_reference(tmp_path, weights, qtype):
    path = tmp_path / f"tiny-{qtype.name}.gguf"
    stored = write_gguf(path, weights, qtype)
    gen = TextGenerator.load(path, max_context=32, kernels=FLOAT_ACTIVATIONS)
    ref = reference_logits(stored, IDS)  # (T, vocab) from the same dequantized values

    # batched causal forward (the prefill/eval path)
    got = gen.logits(IDS)
    assert got.shape == (len(IDS), VOCAB)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())

    # bucketed prefill then KV-cached decode steps under TinyJit (the generation path)
    np.testing.assert_allclose(gen.graphs.prefill(IDS[:4]), ref[3], rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    for pos in range(4, len(IDS)):
        step = gen.graphs.decode(IDS[pos], pos)
        np.testing.assert_allclose(step, ref[pos], rtol=2e-3, atol=2e-3 * np.abs(ref).max(),
                                   err_msg=f"decode step at position {pos}")
    # after the first (capturing) step, decode ran through direct kernel calls on the CPU device
    assert gen.graphs.decode_replay is not None


@pytest.mark.slow
def test_mixed_precision_file(tmp_path, weights):
    """Tensors of one layer group in different types (as mixed recipes write) run as separate kernels."""
    path = tmp_path / "tiny-mixed.gguf"
    mixed = {"blk.0.attn_q.weight": Q.Q8_0, "blk.1.ffn_up.weight": Q.F16, "token_embd.weight": Q.Q8_0}
    stored = write_gguf(path, weights, Q.Q4_0, overrides=mixed)
    gen = TextGenerator.load(path, max_context=32, kernels=FLOAT_ACTIVATIONS)
    assert "blk.0.attn_q.weight" in gen.weights.layers and "blk.1.attn_q.weight+blk.1.attn_k.weight+" \
        "blk.1.attn_v.weight" in gen.weights.layers
    ref = reference_logits(stored, IDS)
    np.testing.assert_allclose(gen.logits(IDS), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    np.testing.assert_allclose(gen.graphs.prefill(IDS[:4]), ref[3], rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    np.testing.assert_allclose(gen.graphs.decode(IDS[4], 4), ref[4], rtol=2e-3, atol=2e-3 * np.abs(ref).max())


PACKED_TYPES = [Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q3_K, Q.Q2_K]
# types checked through a whole tiny model file; the others through one layer built from their blocks (K-quants need
# rows of 256, which the tiny model's 64 inputs are not)
MODEL_TYPES = (Q.Q8_0, Q.Q4_0, Q.Q4_1, Q.Q5_0, Q.Q5_1, Q.BF16)
# bytes per 256 weights added on the device: the 6-bit scales of these K-quants are unpacked to a byte each
UNPACKED_SCALE_BYTES = {Q.Q4_K: 4, Q.Q5_K: 4, Q.Q3_K: 4}


@pytest.mark.parametrize("qtype", PACKED_TYPES, ids=lambda t: t.name)
def test_quantized_layers_stay_packed(tmp_path, weights, qtype, record_allocations):
    """Weights occupy their packed size on the device, and a decode matvec allocates no float copy of them."""
    if qtype not in MODEL_TYPES:
        info, _ = make_tensor("blk.0.ffn_gate.weight+blk.0.ffn_up.weight", qtype, 2 * 128, 512)
        layer = pack_linear(info, "CPU")
    else:
        path = tmp_path / f"tiny-{qtype.name}.gguf"
        write_gguf(path, weights, qtype)
        gen = TextGenerator.load(path, max_context=32)
        layer = gen.weights.layers["blk.0.ffn_gate.weight+blk.0.ffn_up.weight"]  # rows of gate and up, one layer
        # the tinygrad buffers for all matrices add up to the file's packed bytes for those tensors
        packed = sum(x.size_bytes for x in gen.weights.layers.values())
        names = {n for key in gen.weights.layers for n in key.split("+")}
        in_file = sum(t.size_bytes for name, t in gen.model_file.tensors.items() if name in names)
        assert packed == in_file
    assert isinstance(layer, (PackedLinear, NativeLinear)) and layer.out_features == 2 * 128
    n = layer.out_features * layer.in_features
    block, block_bytes = GGML_QUANT_SIZES[qtype]  # Q4_1: 20 bytes per 32 weights, like the file
    if isinstance(layer, NativeLinear):  # the hand-written CPU kernels read the file's blocks as they are
        assert layer.size_bytes == n // block * block_bytes
        layout = "x8" if x8_supported(qtype, layer.out_features) else "rows"  # 8 rows interleaved on x86
        assert layer.layout == layout and layer.packed.dtype.itemsize == 1
    else:
        assert layer.size_bytes == n // block * block_bytes + n // 256 * UNPACKED_SCALE_BYTES.get(qtype, 0)
        if qtype == Q.BF16:
            assert layer.qs.dtype.itemsize == 2 and layer.d is None
        else:
            assert layer.qs.dtype.itemsize == 1 and layer.d.dtype.itemsize == 2
    device = layer.packed.device if isinstance(layer, NativeLinear) else layer.qs.device
    x = Tensor(np.random.default_rng(0).standard_normal(layer.in_features).astype(np.float32),
               device=device).realize()
    record_allocations.allocations.clear()
    assert layer(x).realize().shape == (layer.out_features,)
    floats = record_allocations.float_buffers()
    assert floats, "the matvec allocated no float buffers at all: the recorder is not seeing allocations"
    assert max(floats) < n * 4 // 8, (max(floats), n * 4)  # the output only: no float weight buffer


def test_graphs_reloaded_from_disk_give_the_same_tokens(tmp_path, weights, monkeypatch):
    """Captured graphs saved by one generator and loaded by another (in this same process, where slot numbers
    of live buffers would collide with unshifted pickled ones) produce identical tokens and logits."""
    from edgegen.runtime import SamplingParams, jit_cache

    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "tiny-q8.gguf"
    write_gguf(path, weights, Q.Q8_0)
    params = SamplingParams(max_tokens=8)
    first = TextGenerator.load(path, max_context=32)
    assert not first.graphs.from_disk
    a = first.stream_ids(IDS[:5], params, ignore_eos=True)
    list(a)
    first.wait_saved()  # written after the answer, on a thread of its own
    assert list((tmp_path / "cache" / "jit").glob("*.pkl")), "no graph file was written"
    second = TextGenerator.load(path, max_context=32)
    assert second.graphs.from_disk and second.graphs.built_model is None  # nothing repacked from the GGUF
    b = second.stream_ids(IDS[:5], params, ignore_eos=True)
    list(b)
    assert b.result.token_ids == a.result.token_ids
    # a prompt length whose prefill graph is not cached falls back to recapturing, and stays correct
    c = second.stream_ids(IDS[:3] * 7, params, ignore_eos=True)
    list(c)
    d = first.stream_ids(IDS[:3] * 7, params, ignore_eos=True)
    list(d)
    assert c.result.token_ids == d.result.token_ids and not second.graphs.from_disk
    assert jit_cache.cache_dir() == tmp_path / "cache" / "jit"
