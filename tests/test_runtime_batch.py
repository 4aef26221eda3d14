"""Continuous batching (runtime.batch): several generations in one model, each in its own KV cache slot, advanced
together by one decode step; a request's tokens are what they would be alone, whatever runs beside it."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q

from edgegen.runtime.engine import TextGenerator
from edgegen.runtime.errors import GenerationError
from edgegen.runtime.graphs import slot_batch_sizes
from edgegen.runtime.native.options import KernelOptions
from edgegen.runtime.sampling import SamplingParams
from tests.tiny_arch import random_weights, shape_for, write_gguf

PROMPTS = [[5, 17, 42], [3, 88, 60, 7, 7, 31, 90], [12, 44, 9, 61, 33, 70, 2, 2, 8, 1, 4], [77, 5] * 10, [1, 2],
           [9, 9, 30, 31, 32]]
# sampled, seeded: the tokens follow the logits' fine structure, not only their argmax (random tiny weights
# repeat one token greedily)
SAMPLED = [SamplingParams(max_tokens=10, temperature=0.9, seed=i, top_k=40) for i in range(len(PROMPTS))]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    out = {}
    for family in ("llama", "gemma3"):  # gemma3: sliding-window layers, post norms, GQA
        s = shape_for(family)
        path = tmp_path_factory.mktemp(family) / f"{family}-q8.gguf"
        write_gguf(path, s, random_weights(s, seed=3), Q.Q8_0)
        out[family] = path
    return out


def load(path, kernels: str = "native") -> TextGenerator:
    return TextGenerator.load(path, "CPU", max_context=64, jit_cache=False, kernels=KernelOptions(kernels, 2))


def alone(path, prompts, params) -> list[tuple[int, ...]]:
    gen = load(path)
    out = []
    for ids, p in zip(prompts, params):
        stream = gen.stream_ids(ids, p)
        for _ in stream:
            pass
        assert stream.result is not None
        out.append(stream.result.token_ids)
    return out


def read_all(streams) -> list[tuple[int, ...]]:
    """Read every stream on its own thread, as the service's workers do."""
    results: list = [None] * len(streams)

    def read(i: int) -> None:
        for _ in streams[i]:
            pass
        results[i] = streams[i].result

    threads = [threading.Thread(target=read, args=(i,)) for i in range(len(streams))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    return results


def test_batch_widths_cover_every_slot_count():
    assert slot_batch_sizes(1) == [1] and slot_batch_sizes(4) == [1, 2, 4] and slot_batch_sizes(6) == [1, 2, 4, 6]


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_a_slot_step_computes_each_row_as_a_decode_alone(files, family):
    """decode_slots' rows are bit for bit the single decode step of the same sequence (the kernels' rows are
    independent; attention per slot), with the sequences at different positions and an idle slot in the batch."""
    gen, ref = load(files[family]), load(files[family])
    gen.graphs.allocate_slots(4)
    prompts = PROMPTS[:3]
    for slot, ids in enumerate(prompts):
        gen.graphs.prefill(ids)
        gen.graphs.copy_to_slot(slot, len(ids))
    fed: list[list[int]] = [[4], [50], [23]]  # the tokens each sequence decodes, one per step
    for step in range(4):
        got = gen.graphs.decode_slots([f[-1] for f in fed] + [0], [len(ids) + step for ids in prompts] + [0])
        for slot, ids in enumerate(prompts):
            ref.graphs.prefill(ids)
            for k, token in enumerate(fed[slot]):
                want = ref.graphs.decode(token, len(ids) + k)
            assert np.array_equal(got[slot], want), f"{family}: slot {slot} step {step}"
            fed[slot].append(int(np.argmax(got[slot])) if step % 2 else (7 * step + slot) % 90)


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_batched_requests_get_the_tokens_they_get_alone(files, family):
    """Six requests of mixed lengths into three slots: they join as slots free up, mid-decode of the others."""
    want = alone(files[family], PROMPTS, SAMPLED)
    batch = load(files[family]).batched(3)
    try:
        streams = [batch.stream_ids(ids, p) for ids, p in zip(PROMPTS, SAMPLED)]
        got = read_all(streams)
    finally:
        batch.close()
    assert [r.token_ids for r in got] == want
    assert all(r.finish_reason == "length" and r.completion_tokens == 10 for r in got)
    assert batch.busy_slots == 0 and batch.waiting == 0  # every slot freed


def test_a_request_joining_mid_decode_and_a_cancelled_one_leave_the_others_alone(files):
    path = files["llama"]
    long = [SamplingParams(max_tokens=24, temperature=0.9, seed=7), SamplingParams(max_tokens=6, temperature=0.9,
                                                                                   seed=8)]
    want = alone(path, [PROMPTS[1], PROMPTS[2]], long)
    batch = load(path).batched(2)
    try:
        first = batch.stream_ids(PROMPTS[1], long[0])
        pieces = iter(first)
        next(pieces)  # the first is decoding ...
        cancel = threading.Event()
        doomed = batch.stream_ids(PROMPTS[3], SamplingParams(max_tokens=40), cancel=cancel)
        cancel.set()  # ... a second is cancelled at once ...
        joined = batch.stream_ids(PROMPTS[2], long[1])  # ... and a third joins when its slot frees
        results = read_all([doomed, joined])
        for _ in pieces:
            pass
    finally:
        batch.close()
    assert results[0].finish_reason == "cancelled" and results[0].completion_tokens < 40
    assert first.result is not None and first.result.token_ids == want[0]
    assert results[1].token_ids == want[1]


def test_a_reader_that_walks_away_frees_its_slot(files):
    batch = load(files["llama"]).batched(1)
    try:
        stream = iter(batch.stream_ids(PROMPTS[0], SamplingParams(max_tokens=40)))
        next(stream)
        stream.close()  # the generator's finally cancels it
        later = batch.stream_ids(PROMPTS[1], SamplingParams(max_tokens=3))
        assert read_all([later])[0].completion_tokens == 3  # the only slot was free again
    finally:
        batch.close()


def test_batching_refuses_what_it_cannot_do(files):
    with pytest.raises(GenerationError, match="hand-written CPU kernels"):
        load(files["llama"], "tinygrad").batched(2)
    with pytest.raises(GenerationError, match="slots must be from 1 to 8"):
        load(files["llama"]).batched(9)
    batch = load(files["llama"]).batched(2)
    batch.close()
    with pytest.raises(GenerationError, match="closed"):
        batch.stream_ids([1, 2], SamplingParams(max_tokens=2))


def test_cancelling_one_sequence_mid_decode_leaves_the_other_untouched(files):
    """A cancel (a deadline in the service sets the same flag) after a few tokens of one sequence: it ends as
    cancelled and frees its slot; the sequence beside it gets the tokens it gets alone."""
    path = files["gemma3"]
    keep = SamplingParams(max_tokens=16, temperature=0.9, seed=3)
    [want] = alone(path, [PROMPTS[4]], [keep])
    batch = load(path).batched(2)
    try:
        cancel = threading.Event()
        doomed = batch.stream_ids(PROMPTS[5], SamplingParams(max_tokens=40, temperature=0.9, seed=4), cancel=cancel)
        kept = batch.stream_ids(PROMPTS[4], keep)
        for seen, _ in enumerate(doomed, 1):
            if seen == 3:
                cancel.set()
        got = kept.finish()
    finally:
        batch.close()
    assert doomed.result is not None and doomed.result.finish_reason == "cancelled"
    assert doomed.result.completion_tokens < 40
    assert got.token_ids == want
