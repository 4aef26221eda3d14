"""artifact.writer writes what gguf-py's reader reads back; artifact.reader keeps each key's GGUF value type."""
from __future__ import annotations

import errno

import gguf
import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from gguf import GGUFReader, GGUFValueType

from edgegen.runtime.artifact import writer
from edgegen.runtime.artifact.reader import dequantize_tensor, open_gguf
from edgegen.runtime.artifact.writer import MetaValue, write_gguf
from edgegen.runtime.errors import ArtifactError

S, U32, F32, ARR = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.FLOAT32, GGUFValueType.ARRAY


def sample_file(tmp_path):
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((8, 64)).astype(np.float32)
    packed = gguf.quants.quantize(matrix, Q.Q8_0)
    metadata = {
        "general.name": MetaValue("tiny", S),
        "llama.block_count": MetaValue(1, U32),
        "llama.rope.freq_base": MetaValue(10000.0, F32),
        "tokenizer.ggml.tokens": MetaValue(["a", "b"], ARR, S),
        "llama.channels": MetaValue.infer([1, 2, 3]),
    }
    tensors = {"w.weight": packed, "norm.weight": np.ones(64, np.float32), "h.weight": matrix.astype(np.float16)}
    path = tmp_path / "m.gguf"
    size = write_gguf(path, "llama", metadata, tensors, {"w.weight": Q.Q8_0})
    return path, size, matrix


def test_written_file_reads_back_with_gguf_py_and_ours(tmp_path):
    path, size, matrix = sample_file(tmp_path)
    assert size == path.stat().st_size
    ref = GGUFReader(path)
    assert {t.name: t.tensor_type for t in ref.tensors} == {"w.weight": Q.Q8_0, "norm.weight": Q.F32,
                                                            "h.weight": Q.F16}
    assert ref.fields["general.architecture"].contents() == "llama"
    mf = open_gguf(path)
    assert mf.architecture == "llama" and mf.metadata["llama.channels"] == [1, 2, 3]
    assert mf.value_types["llama.block_count"] == (U32, None)
    assert mf.value_types["tokenizer.ggml.tokens"] == (ARR, S)
    assert mf.value_types["llama.channels"] == (ARR, GGUFValueType.UINT32)
    assert mf.value_types["llama.rope.freq_base"] == (F32, None)
    w = dequantize_tensor(mf.tensors["w.weight"])
    assert w.shape == (8, 64) and w.dtype == np.float32
    np.testing.assert_allclose(w, matrix, atol=0.02 * np.abs(matrix).max())
    np.testing.assert_array_equal(dequantize_tensor(mf.tensors["h.weight"]), matrix.astype(np.float16))


def test_a_failed_write_leaves_nothing_and_keeps_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"previous")

    def disk_full(self, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gguf.GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(ArtifactError) as info:
        write_gguf(target, "llama", {}, {"x": np.ones(4, np.float32)})
    assert str(info.value) == f"could not write {str(target)!r}: No space left on device"
    assert target.read_bytes() == b"previous" and sorted(p.name for p in tmp_path.iterdir()) == ["m.gguf"]


def test_bad_output_paths(tmp_path):
    with pytest.raises(ArtifactError, match="is a directory"):
        write_gguf(tmp_path, "llama", {}, {})
    with pytest.raises(ArtifactError, match=f"folder {str(tmp_path / 'no')!r} does not exist"):
        write_gguf(tmp_path / "no" / "m.gguf", "llama", {}, {})


def test_meta_value_inference():
    assert MetaValue.infer("x") == MetaValue("x", S)
    assert MetaValue.infer(True) == MetaValue(True, GGUFValueType.BOOL)
    assert MetaValue.infer(7) == MetaValue(7, U32)
    assert MetaValue.infer(-7) == MetaValue(-7, GGUFValueType.INT64)
    assert MetaValue.infer(0.5) == MetaValue(0.5, F32)
    assert MetaValue.infer((1, 2)) == MetaValue([1, 2], ARR, U32)
    with pytest.raises(ArtifactError, match="an empty metadata array has no element type"):
        MetaValue.infer([])
    with pytest.raises(ArtifactError, match="metadata value None of type NoneType has no GGUF type"):
        MetaValue.infer(None)


def test_header_size_bound_covers_the_written_header(tmp_path):
    path, _, _ = sample_file(tmp_path)
    mf = open_gguf(path)
    data_start = min(t.data.ctypes.data for t in mf.tensors.values()) - mf.mapping.ctypes.data
    meta = {k: MetaValue(v, *mf.value_types[k]) for k, v in mf.metadata.items()}
    assert writer.header_size_bytes(meta, {n: t.shape for n, t in mf.tensors.items()}) >= data_start
