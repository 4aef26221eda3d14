"""The runtime the way services use it: from several threads, two backends in one process, streams abandoned mid-way,
graphs replayed directly or loaded from disk (and checked), and a bounded, private JIT cache."""
from __future__ import annotations

import logging
import os
import stat
import threading

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from hypothesis import given, settings
from hypothesis import strategies as st
from test_runtime_tokenizer import spm_model_file
from tiny_llama import random_weights, write_gguf
from tinygrad import Device, Tensor

from edgegen.runtime import SamplingParams
from edgegen.runtime import jit_cache as store
from edgegen.runtime.engine import TextGenerator
from edgegen.runtime.graphs import GraphState
from edgegen.runtime.native.options import KernelOptions
from edgegen.runtime.tinygrad_seam import captured_graph, graph_buffer_devices, graph_output, write_buffer

GREEDY = SamplingParams(max_tokens=6)
PROMPTS = ([5, 6, 7], list(range(3, 23)), list(range(3, 43)))  # three prefill buckets: 16, 32, 64


@pytest.fixture
def tiny(tmp_path):
    path = tmp_path / "tiny-q8.gguf"
    write_gguf(path, random_weights(seed=5), Q.Q8_0)
    return path


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEGEN_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "jit"


def tokens(gen: TextGenerator, ids: list[int], params: SamplingParams = GREEDY) -> tuple[int, ...]:
    stream = gen.stream_ids(ids, params, ignore_eos=True)
    for _ in stream:
        pass
    return stream.result.token_ids


@pytest.mark.slow
def test_generator_answers_from_any_thread(tiny, private_cache):
    gen = TextGenerator.load(tiny, max_context=64, jit_cache=False)
    expected = [tokens(gen, ids) for ids in PROMPTS]
    results: dict[int, object] = {}

    def worker(i: int) -> None:
        try:
            results[i] = [tokens(gen, ids) for ids in PROMPTS]
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            results[i] = e

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert all(results[i] == expected for i in range(3)), results


def test_kernel_disk_cache_works_from_a_new_thread():
    """tinygrad's one sqlite connection refused other threads (ProgrammingError): an MQTT worker thread compiling a
    kernel for a new prompt length failed. Compile in the main thread first, then a new kernel in another."""
    import edgegen.runtime.tinygrad_seam as tinygrad_seam

    tinygrad_seam.install()
    assert (Tensor([1.0, 2.0], device="CPU") * 3.0).tolist() == [3.0, 6.0]
    seen: list[object] = []

    def compile_elsewhere() -> None:
        try:  # a constant no other test uses: a kernel this process has not compiled yet
            seen.append((Tensor([1.0, 2.0], device="CPU") * 7.3125 + 0.0625).tolist())
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            seen.append(e)

    t = threading.Thread(target=compile_elsewhere)
    t.start()
    t.join(60)
    assert seen == [[7.375, 14.6875]]


def test_abandoned_stream_blocks_nobody_and_resumes_correctly(tiny, private_cache):
    gen = TextGenerator.load(tiny, max_context=64, jit_cache=False)
    params = SamplingParams(max_tokens=8)
    alone = tokens(gen, PROMPTS[1], params)
    first = gen.stream_ids(PROMPTS[1], params, ignore_eos=True)
    it = iter(first)
    next(it, None)  # the consumer reads a little, then goes quiet (holding the stream)
    done: list[tuple[int, ...]] = []
    t = threading.Thread(target=lambda: done.append(tokens(gen, PROMPTS[0])))
    t.start()
    t.join(120)
    assert done and done[0] == tokens(gen, PROMPTS[0]), "a second stream waited for the abandoned one"
    for _ in it:  # the first stream resumes after another used the KV cache: it re-runs its context
        pass
    assert first.result.token_ids == alone


@pytest.mark.slow
def test_two_backends_in_one_process_keep_their_own_devices(tiny, private_cache):
    try:
        Device["CL"]
    except Exception as e:  # noqa: BLE001
        pytest.skip(f"no OpenCL platform here: {e}")
    before = Device.DEFAULT
    cpu = TextGenerator.load(tiny, device="CPU", max_context=64, jit_cache=False,
                             kernels=KernelOptions("tinygrad"))  # the same kernels as CL's: logits to 1e-3
    cl = TextGenerator.load(tiny, device="CL", max_context=64, jit_cache=False)
    assert before == Device.DEFAULT, "loading on a device changed tinygrad's process-wide default"
    assert cl.model.cos.device == "CL" and cpu.model.cos.device == "CPU"
    np.testing.assert_allclose(cl.logits(PROMPTS[1]), cpu.logits(PROMPTS[1]), rtol=1e-3, atol=1e-3)
    assert tokens(cl, PROMPTS[0]) == tokens(cpu, PROMPTS[0])


def test_direct_replay_that_disagrees_with_tinyjit_is_dropped(tiny, private_cache, monkeypatch, caplog):
    from edgegen.runtime import cpu_replay

    # TinyJit's tokens: the direct replays of an unpatched generator are checked against TinyJit's, so equal to them
    reference = tokens(TextGenerator.load(tiny, max_context=64, jit_cache=False), PROMPTS[0])
    original = cpu_replay.CPUReplay.build

    def corrupted_build(jit, inputs, threads=1):
        replay = original(jit, inputs, threads)
        if replay is None:
            return None
        real_call = replay.__call__

        class Broken:
            def __call__(self, var_vals):
                real_call(var_vals)
                out = graph_output(captured_graph(jit))
                write_buffer(out, np.zeros(out.shape, np.float32))

            def result(self):
                return replay.result()

        return Broken()

    monkeypatch.setattr(cpu_replay.CPUReplay, "build", staticmethod(corrupted_build))
    gen = TextGenerator.load(tiny, max_context=64, jit_cache=False)
    with caplog.at_level(logging.WARNING, logger="edgegen.runtime.graphs"):
        got = tokens(gen, PROMPTS[0])
    assert "direct CPU replay disagrees with TinyJit" in caplog.text
    assert gen.graphs.decode_replay is None
    assert got == reference


@pytest.mark.slow
def test_graphs_loaded_from_disk_are_checked_and_a_bad_entry_is_replaced(tiny, private_cache, caplog):
    gen = TextGenerator.load(tiny, max_context=64)
    expected = [tokens(gen, ids) for ids in PROMPTS]  # captures decode + three prefill buckets and saves them
    gen.wait_saved()
    entry = next(private_cache.glob("*.pkl"))

    good = TextGenerator.load(tiny, max_context=64)
    assert good.graphs.from_disk
    tinyjit_calls = []
    jit_class = type(good.graphs.graphs[0].jit)  # tinygrad's TinyJit class (the public name is a factory function)
    original_call = jit_class.__call__

    def counted(self, *args, **kwargs):
        tinyjit_calls.append(self)
        return original_call(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(jit_class, "__call__", counted)
        assert [tokens(good, ids) for ids in PROMPTS] == expected
    states = good.graphs.states()
    assert good.graphs.from_disk and GraphState.LOADED not in states.values(), f"loaded graphs unchecked: {states}"
    assert states["decode"] is GraphState.VERIFIED
    if good.graphs.decode_replay is not None:  # the CPU backend: loaded graphs replay directly, TinyJit never runs
        assert tinyjit_calls == [], f"TinyJit ran {len(tinyjit_calls)} steps of graphs loaded from disk"

    # Corrupt the saved bytes (weights and cache live in the data file): the check must catch it on first use.
    data = next(private_cache.glob("*.bin"))
    raw = bytearray(data.read_bytes())
    rng = np.random.default_rng(0)
    for i in rng.integers(0, len(raw), size=len(raw) // 50):
        raw[i] ^= 0x5A
    data.write_bytes(bytes(raw))
    bad = TextGenerator.load(tiny, max_context=64)
    assert bad.graphs.from_disk
    with caplog.at_level(logging.WARNING, logger="edgegen.runtime.graphs"):
        assert [tokens(bad, ids) for ids in PROMPTS] == expected
    assert "loaded from the JIT cache is not usable" in caplog.text
    assert not bad.graphs.from_disk
    assert entry.exists(), "the recaptured graphs were not saved again"


@pytest.mark.slow
def test_graphs_recaptured_after_a_warm_start_copy_no_weights_from_host(tiny, private_cache):
    """A warm start that needs a graph the cache lacks recaptures from the model: its weights must be built before
    TinyJit captures, or every replay copies them again from host arrays (and the saved graph carries them)."""
    tokens(TextGenerator.load(tiny, max_context=64), PROMPTS[0])  # saves decode + the 16-token prefill
    warm = TextGenerator.load(tiny, max_context=64)
    assert warm.graphs.from_disk
    tokens(warm, PROMPTS[1])  # a 32-token prefill: not in the cache
    assert not warm.graphs.from_disk
    for name in ("decode", "prefill32"):
        graph = warm.graphs.captured(name)
        assert graph is not None
        assert "NPY" not in graph_buffer_devices(graph), "a graph reads host (NPY) buffers: weights built inside it"


def test_cache_key_follows_the_tinygrad_version(tiny, monkeypatch):
    from edgegen.runtime import tinygrad_seam

    store.code_version.cache_clear()
    a = store.cache_key(tiny, "CPU", 64)
    monkeypatch.setattr(tinygrad_seam, "tinygrad_version", lambda: "0.15.0")
    store.code_version.cache_clear()
    b = store.cache_key(tiny, "CPU", 64)
    store.code_version.cache_clear()
    assert a != b
    assert tinygrad_seam.tinygrad_version() != "unknown"


def test_cache_folder_is_private_and_saves_leave_no_partial_files(private_cache, monkeypatch):
    assert store.save("k1", {"decode": np.arange(1000, dtype=np.float32)}) is not None
    assert stat.S_IMODE(private_cache.stat().st_mode) == 0o700
    assert store.load("k1")["decode"].sum() == np.arange(1000).sum()

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store._GraphPickler, "dump", fail)
    assert store.save("k2", {"decode": np.zeros(10)}) is None
    assert sorted(p.name.split("-")[0].split(".")[0] for p in private_cache.iterdir()) == ["k1", "k1"]
    os.chmod(private_cache, 0o777)
    assert store.load("k1") is None, "loaded a pickle from a folder others can write"


def test_cache_is_bounded_with_least_recently_used_eviction(private_cache, monkeypatch):
    monkeypatch.setenv("EDGEGEN_JIT_CACHE_MB", "2.5")
    blob = {"decode": np.ones(2**18, dtype=np.float32)}  # 1 MB each
    for key in ("a", "b"):
        assert store.save(key, blob) is not None
    store.load("a")  # a is now the most recently used
    assert store.save("c", blob) is not None
    assert store.load("b") is None and store.load("a") is not None and store.load("c") is not None
    use = store.usage()
    assert use.entries == 2 and use.size_bytes <= use.limit_bytes == int(2.5 * 2**20)
    assert store.save("huge", {"decode": np.ones(2**20, dtype=np.float32)}) is None  # 4 MB > the bound
    assert store.usage().entries == 2


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2**31), min_size=1, max_size=40))
def test_stream_decoders_equal_a_full_decode(raw_ids):
    from edgegen.runtime.tokenizer import load_tokenizer

    for tok in (_smollm_tokenizer(), load_tokenizer(spm_model_file())):
        ids = [i % tok.vocab_size for i in raw_ids]
        decoder = tok.stream_decoder()
        pieces = [decoder.step(i) for i in ids]
        assert "".join(pieces) + decoder.flush() == tok.decode(ids)
        assert not any(p.endswith("\ufffd") for p in pieces), "an incomplete UTF-8 sequence was streamed"


_SMOLLM: list = []


def _smollm_tokenizer():
    from edgegen.runtime.artifact.reader import open_model
    from edgegen.runtime.tokenizer import load_tokenizer

    if not _SMOLLM:
        _SMOLLM.append(load_tokenizer(open_model("default")))
    return _SMOLLM[0]


def test_tail_decoder_work_per_token_stays_constant():
    from edgegen.runtime.tokenizer import TailDecoder, load_tokenizer

    tok = load_tokenizer(spm_model_file())
    lengths: list[int] = []

    def decode(ids: list[int]) -> str:
        lengths.append(len(ids))
        return tok.decode(ids)

    decoder = TailDecoder(decode)
    ids = tok.encode("hello world " * 200, add_bos=False)
    text = "".join(decoder.step(i) for i in ids) + decoder.flush()
    assert text == tok.decode(ids)
    assert max(lengths) <= 3, f"decoded slices of up to {max(lengths)} tokens for {len(ids)} tokens"


def test_graphs_are_saved_after_the_answer_not_before(tiny, private_cache, monkeypatch):
    """Writing the JIT cache (a pickle of the graphs) happens on its own thread once the answer is complete: a
    request that captured new graphs does not wait for it."""
    from edgegen.runtime.graphs import ModelGraphs

    release, saving = threading.Event(), threading.Event()
    original = ModelGraphs.save

    def slow_save(self):
        saving.set()
        release.wait(60)
        original(self)

    monkeypatch.setattr(ModelGraphs, "save", slow_save)
    gen = TextGenerator.load(tiny, max_context=64)
    stream = gen.stream_ids(PROMPTS[0], GREEDY, ignore_eos=True)
    for _ in stream:  # the whole answer arrives while the save is held back
        pass
    assert stream.result is not None and len(stream.result.token_ids) == GREEDY.max_tokens
    assert saving.wait(60) and not list(private_cache.glob("*.pkl"))
    release.set()
    gen.wait_saved(60)
    assert list(private_cache.glob("*.pkl"))
