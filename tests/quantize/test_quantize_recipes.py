"""Each recipe end to end on the tiny model: types chosen, errors within bounds, and what the written file holds."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import CHAT_TEMPLATE, tiny_tensors, write_tiny_gguf
from gguf import GGUFReader
from gguf.quants import dequantize

from edgegen.quantize.blocks import Q, packed_nbytes
from edgegen.quantize.budget import MB
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.pipeline import quantize_model
from edgegen.quantize.recipes import RECIPES, get_recipe, outliers
from edgegen.quantize.source import load_source
from edgegen.quantize.writer import estimate_overhead_bytes, write_artifact

# recipe -> (type of a body matrix, bound on every matrix's relative error after the round trip)
EXPECTED = {"f16": (Q.F16, 1e-3), "w8": (Q.Q8_0, 0.01), "w4": (Q.Q4_0, 0.13), "w4a": (Q.Q4_1, 0.12),
            "w4-head8": (Q.Q4_0, 0.13), "w4-mix8": (Q.Q4_0, 0.13)}


def read_back(path):
    r = GGUFReader(path)
    tensors = {t.name: (t.tensor_type, dequantize(np.asarray(t.data), t.tensor_type).reshape(tuple(reversed(
        [int(d) for d in t.shape])))) for t in r.tensors}
    return r, tensors


def test_registry_names_every_recipe():
    assert set(RECIPES) == set(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_recipe_round_trip(name, tiny_gguf, tmp_path):
    source = load_source(tiny_gguf)
    result = quantize_model(source, name)
    out = tmp_path / f"{name}.gguf"
    size = write_artifact(out, source, result)
    assert size == out.stat().st_size
    body_type, bound = EXPECTED[name]
    reader, stored = read_back(out)
    assert set(stored) == set(source.tensors)
    for tname, w in source.tensors.items():
        qtype, deq = stored[tname]
        if w.ndim == 1:
            assert qtype == Q.F32 and np.array_equal(deq, w), tname  # norms stay exact F32
            continue
        err = np.linalg.norm(deq - w) / np.linalg.norm(w)
        assert err < bound, (tname, err)
        assert err == pytest.approx(result.tensors[tname].rel_error, rel=1e-5)
        if tname.startswith("blk.") and tname not in result.promoted:
            assert qtype == body_type, tname
    if name in ("w4-head8", "w4-mix8"):
        assert stored["token_embd.weight"][0] == Q.Q8_0
    # metadata: architecture, hyperparameters and tokenizer carried over; edgegen keys describe the recipe
    f = reader.fields
    assert f["general.architecture"].contents() == "llama"
    assert f["llama.embedding_length"].contents() == 64
    assert f["tokenizer.ggml.tokens"].contents() == source.metadata["tokenizer.ggml.tokens"].value
    assert f["tokenizer.chat_template"].contents() == CHAT_TEMPLATE
    assert f["edgegen.recipe.name"].contents() == name
    assert f["edgegen.source.sha256"].contents() == source.content_sha256
    assert json.loads(f["edgegen.recipe.params"].contents())["weight_type"] == get_recipe(name).weight_type.name
    report = json.loads(f["edgegen.quality.report"].contents())
    assert sum(report["type_counts"].values()) == len(stored)
    assert report["type_counts"][body_type.name] >= 1
    assert f["edgegen.quality.worst_rel_error"].contents() == pytest.approx(max(report["rel_errors"].values()), 1e-4)
    assert not list(tmp_path.glob(".*.tmp"))


def test_content_hash_is_the_source_files_sha256(tiny_gguf):
    import hashlib

    assert load_source(tiny_gguf).content_sha256 == hashlib.sha256(tiny_gguf.read_bytes()).hexdigest()


def test_mixed_recipe_promotes_an_error_outlier(tmp_path):
    tensors = tiny_tensors()
    # One matrix with a few huge weights per block: its 4-bit error is far above the others'.
    w = tensors["blk.1.ffn_gate.weight"]
    w[:, ::32] *= 40
    source = load_source(write_tiny_gguf(tmp_path / "outlier.gguf", tensors))
    result = quantize_model(source, "w4-mix8")
    assert result.promoted == ["blk.1.ffn_gate.weight"]
    assert result.tensors["blk.1.ffn_gate.weight"].qtype == Q.Q8_0
    assert result.tensors["blk.0.ffn_gate.weight"].qtype == Q.Q4_0


def test_outlier_rule():
    errs = {f"t{i}": 0.08 + 0.001 * (i % 5) for i in range(20)}
    assert outliers(errs, 3.5) == []
    errs["bad"] = 0.2
    assert outliers(errs, 3.5) == ["bad"]


def test_budget_fits_and_spends_bytes_where_error_drops_most(tiny_gguf, tmp_path):
    source = load_source(tiny_gguf)
    all_q4 = estimate_overhead_bytes(source) + sum(
        packed_nbytes(w.shape, Q.Q4_0 if w.ndim == 2 else Q.F32) for w in source.tensors.values())
    budget = all_q4 + 20_000
    result = quantize_model(source, "w4", budget_bytes=budget)
    out = tmp_path / "budget.gguf"
    assert write_artifact(out, source, result) <= budget
    types = {n: q.qtype for n, q in result.tensors.items()}
    assert any(t != Q.Q4_0 for n, t in types.items() if source.tensors[n].ndim == 2)  # the slack was used
    w4 = quantize_model(source, "w4")
    loss = sum(q.rel_error ** 2 for q in result.tensors.values())
    assert loss < sum(q.rel_error ** 2 for q in w4.tensors.values())
    # a bigger budget never loses quality
    more = quantize_model(source, "w4", budget_bytes=budget + 100_000)
    assert sum(q.rel_error ** 2 for q in more.tensors.values()) <= loss


def test_budget_too_small_even_at_4_bits(tiny_gguf):
    source = load_source(tiny_gguf)
    with pytest.raises(QuantizeError, match=r"budget 0\.05 MB is too small: even at 4 bits the file needs"):
        quantize_model(source, "w4", budget_bytes=int(0.05 * MB))
