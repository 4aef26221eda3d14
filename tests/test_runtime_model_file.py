"""Our GGUF header parser agrees with gguf-py's reader: every metadata value and every tensor's bytes."""
from __future__ import annotations

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType

from edgegen.runtime.artifact.reader import default_model_path, open_model


def reader_value(field):
    if field.types[0] == GGUFValueType.ARRAY and field.types[1] == GGUFValueType.STRING:
        return [bytes(field.parts[i]).decode("utf-8", errors="replace") for i in field.data]
    v = field.contents()
    return v


@pytest.mark.parametrize("which", ["tiny", pytest.param("smollm2", marks=pytest.mark.slow)])
def test_parser_matches_gguf_reader(which, tiny_q4_path):
    path = tiny_q4_path if which == "tiny" else default_model_path()
    ours, ref = open_model(path), GGUFReader(path)
    keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert sorted(ours.metadata) == sorted(keys)
    for k in keys:
        expected = reader_value(ref.fields[k])
        got = ours.metadata[k]
        if isinstance(expected, float):
            assert got == pytest.approx(expected), k
        else:
            assert got == expected, k
    assert [t.name for t in ref.tensors] == list(ours.tensors)
    for t in ref.tensors:
        mine = ours.tensors[t.name]
        assert mine.ggml_type == t.tensor_type and mine.shape == tuple(reversed(t.shape.tolist()))
        assert np.array_equal(np.asarray(mine.data).view(np.uint8).reshape(-1),
                              np.asarray(t.data).view(np.uint8).reshape(-1))


def _rss_file_kb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("RssFile:"))


def test_release_span_drops_the_pages_of_a_tensor_and_keeps_its_bytes():
    """A tensor's file pages, all touched (as packing it does), leave the resident set when its rows are released;
    reading it again faults the same bytes back. A span outside the mapping, or inside one page, is left alone."""
    mf = open_model(default_model_path())
    data = np.asarray(mf.tensors["token_embd.weight"].data).view(np.uint8).reshape(-1)  # 28 MB, Q8_0
    checksum = int(data.sum(dtype=np.uint64))  # touches every page
    before = _rss_file_kb()
    mf.release_span(data[:100])  # less than a page: nothing whole to drop
    mf.release_span(np.zeros(1 << 20, np.uint8))  # not in the mapping
    assert _rss_file_kb() > before - 1024
    mf.release_span(data)
    assert _rss_file_kb() < before - data.nbytes // 1024 * 3 // 4, "the tensor's pages stayed resident"
    assert int(data.sum(dtype=np.uint64)) == checksum
