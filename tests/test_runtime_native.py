"""The hand-written CPU kernels inside the model (runtime.native): the same answers as tinygrad's kernels, any thread
count, and prompt-prefix reuse. The kernels alone are checked per ISA in tests/native/."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from edgegen.runtime.artifact.constants import PREFILL_BUCKETS
from edgegen.runtime.engine import TextGenerator
from edgegen.runtime.errors import GenerationError
from edgegen.runtime.native.linear import NativeLinear
from edgegen.runtime.native.options import KernelOptions, KernelPlan
from edgegen.runtime.sampling import SamplingParams
from tests.tiny_arch import random_weights, shape_for, write_gguf

IDS = [5, 17, 42, 3, 88, 60, 7, 7, 31, 90, 12, 44]


@pytest.fixture(scope="module")
def q8_files(tmp_path_factory):
    out = {}
    for family in ("llama", "gemma3", "qwen2"):  # plain; sliding window + GQA + post norms; biases
        s = shape_for(family)
        path = tmp_path_factory.mktemp(family) / f"{family}-q8.gguf"
        write_gguf(path, s, random_weights(s, seed=3), Q.Q8_0)
        out[family] = path
    return out


def load(path, kernels: str, threads: int = 1) -> TextGenerator:
    return TextGenerator.load(path, "CPU", max_context=64, jit_cache=False, kernels=KernelOptions(kernels, threads))


def steps(gen: TextGenerator, ids: list[int], extra: list[int]) -> list[np.ndarray]:
    """Logits after a prefill of `ids`, then after each decode step of `extra`."""
    out = [gen.graphs.prefill(ids)]
    for i, token in enumerate(extra):
        out.append(gen.graphs.decode(token, len(ids) + i))
    return out


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2"])
def test_native_kernels_match_tinygrads(q8_files, family):
    """Prefill (batched matmuls, attention from position 0) and KV-cached decode (attention at a symbolic position,
    a sliding window on gemma3's local layers) agree with tinygrad's kernels within the 8-bit activation rounding."""
    native, reference = load(q8_files[family], "native", 2), load(q8_files[family], "tinygrad")
    assert native.graphs.native and not reference.graphs.native
    assert all(isinstance(layer, NativeLinear) and layer.parts == 2 for layer in native.weights.layers.values())
    assert native.weights.attention is not None and reference.weights.attention is None
    extra = [9, 61, 33, 70, 2, 2]  # past gemma3's window of 5
    for got, want in zip(steps(native, IDS, extra), steps(reference, IDS, extra)):
        scale = float(np.abs(want).max())
        assert float(np.abs(got - want).max()) <= 2e-2 * scale
    whole = native.logits(IDS + extra)
    np.testing.assert_allclose(whole, reference.logits(IDS + extra), atol=2e-2 * float(np.abs(whole).max()))


def test_thread_count_does_not_change_the_logits(q8_files):
    """Threads split output rows, never a dot product: 1, 2 and 3 threads give bit-identical logits."""
    runs = [steps(load(q8_files["gemma3"], "native", n), IDS, [9, 61, 33]) for n in (1, 2, 3)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("kernels", ["native", "tinygrad"])
def test_a_shared_prefix_is_not_prefilled_again(q8_files, kernels):
    """A prompt that starts like the cached one prefills only the rest (native: a suffix graph from the shared
    position; tinygrad: decode steps) and gets the logits of a whole prefill."""
    gen, fresh = load(q8_files["gemma3"], kernels, 2), load(q8_files["gemma3"], kernels, 2)
    gen.graphs.prefill_reusing(IDS)
    second = IDS[:9] + [77, 1, 50, 23]
    got = gen.graphs.prefill_reusing(second)
    assert gen.graphs.session.cached_ids == second
    want = fresh.graphs.prefill(second)
    if kernels == "native":  # every row's arithmetic is the same whatever it is batched with: the same bits
        assert np.array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * float(np.abs(want).max()))
    suffix_graphs = [b for b in PREFILL_BUCKETS if gen.graphs.captured(f"suffix{b}") is not None]
    bucket = next(b for b in PREFILL_BUCKETS if b >= 4)  # 4 new tokens: the smallest bucket that holds them
    assert suffix_graphs == ([bucket] if kernels == "native" else [])
    # and generation through the engine reuses it too: the same tokens as a generator that starts cold
    params = SamplingParams(max_tokens=6, temperature=0.0)
    fresh.graphs.session.forget()
    ours, theirs = gen.stream_ids(second + [4], params), fresh.stream_ids(second + [4], params)
    for stream in (ours, theirs):
        for _ in stream:
            pass
    assert ours.result is not None and theirs.result is not None
    assert len(ours.result.token_ids) == 6 and ours.result.token_ids == theirs.result.token_ids


@pytest.mark.parametrize("family", ["llama", "gemma3", "qwen2"])
def test_a_position_has_the_same_logits_however_it_was_batched(q8_files, family):
    """The cause of a warm start answering differently from a cold one: a graph check decoded the last prompt
    position again, and the decode kernels summed in another order than the prefill's. Every row's arithmetic is
    now the same in a prefill of any length and in a decode: bit-identical logits (and so KV rows)."""
    gen = load(q8_files[family], "native", 2)
    whole = gen.graphs.prefill(IDS)
    gen.graphs.prefill(IDS[:-1])
    assert np.array_equal(gen.graphs.decode(IDS[-1], len(IDS) - 1), whole)
    chained = steps(gen, IDS[:3], IDS[3:])[-1]
    assert np.array_equal(chained, whole)
    padded = steps(gen, IDS + [0] * 20, [])[0]  # another prefill bucket: rows 0..11 computed beside 20 more
    gen.graphs.prefill(IDS[:-1])
    assert np.array_equal(gen.graphs.decode(IDS[-1], len(IDS) - 1), whole) and padded.shape == whole.shape


def test_kernel_options_refuse_bad_values():
    for bad in ({"kernels": "fast"}, {"threads": 0}, {"threads": -2}, {"threads": 1000}, {"threads": True},
                {"threads": 2.5}):
        with pytest.raises(GenerationError, match="kernels|threads"):
            KernelOptions(**bad)
    with pytest.raises(GenerationError, match="CPU backend"):
        KernelOptions("native").plan("CL")
    cpu = KernelOptions("auto").plan("CPU")
    assert cpu.native and KernelOptions("auto").plan("CL") == KernelPlan(False, cpu.threads)
    assert KernelOptions("tinygrad", 3).plan("CPU") == KernelPlan(False, 3)
    assert KernelOptions("native", 3).plan("CPU").describe() == "nativex3"


@pytest.mark.parametrize("kernels", ["native", "tinygrad"])
def test_the_planner_counts_the_kv_cache_the_runtime_allocates(q8_files, kernels):
    """One owner for the KV element size (artifact.constants): float16 beside the hand-written attention, float32
    beside tinygrad's; the planner's term is the bytes the blocks hold."""
    from edgegen.device.model_facts import read_model_facts
    from edgegen.device.planner import kv_cache_bytes

    gen = load(q8_files["gemma3"], kernels)
    held = sum(block.cache_kv.nbytes() for block in gen.model.blocks if block.cache_kv is not None)
    assert held == kv_cache_bytes(read_model_facts(q8_files["gemma3"]), 64, "CPU", kernels)


def test_the_session_knows_what_the_cache_holds():
    """runtime.session: the one owner of which stream's tokens the KV cache holds; a stream that lost the cache to
    another is prefilled again, a prompt sharing a prefix reuses it."""
    from edgegen.runtime.session import GenerationSession

    s = GenerationSession()
    a, b = object(), object()
    s.claim(a)
    s.wrote([1, 2, 3])
    assert s.holds(a) and not s.holds(b) and s.shared_prefix([1, 2, 9, 4]) == 2
    assert s.shared_prefix([1, 2, 3]) == 2  # the last token is always computed: its logits are the answer
    s.wrote_token(4, 3)
    assert s.cached_ids == [1, 2, 3, 4]
    s.wrote_token(7, 1)  # a decode at an earlier position: the rows after it are stale
    assert s.cached_ids == [1, 7]
    s.wrote_token(5, 9)  # past what is known: nothing is known
    assert s.cached_ids == []
    s.forget()
    assert not s.holds(a)
