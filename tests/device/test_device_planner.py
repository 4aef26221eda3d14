"""The planner's arithmetic, its verdicts on real and oversized models, board profiles, and every bad input."""
from __future__ import annotations

import json

import pytest
from device_helpers import LLAMA7B, SMOLLM2_Q4_1, write_sparse_llama
from gguf import GGMLQuantizationType as Q

from edgegen.device import BOARD_PROFILES, DeviceError, get_profile
from edgegen.device.model_facts import read_model_facts
from edgegen.device.planner import (
    RECIPE_BYTES_PER_WEIGHT,
    kv_cache_bytes,
    max_parallel_that_fits,
    plan_memory,
    recipe_weights_bytes,
)
from edgegen.device.profiles import match_profile

MIB = 1024 * 1024
GIB = 1024 * MIB


@pytest.mark.slow
def test_smollm2_facts_match_its_published_shape():
    m = read_model_facts(SMOLLM2_Q4_1)
    # SmolLM2-135M config.json: hidden 576, 30 layers, 9 heads, 3 KV heads, intermediate 1536, vocab 49152.
    assert (m.dim, m.n_layers, m.n_heads, m.n_kv_heads, m.head_dim, m.hidden_dim, m.vocab_size) == \
        (576, 30, 9, 3, 64, 1536, 49152)
    assert m.tied_embeddings
    assert m.weights_bytes < SMOLLM2_Q4_1.stat().st_size < m.weights_bytes + 4 * MIB  # the rest is the tokenizer


@pytest.mark.slow
def test_kv_cache_is_two_tensors_per_layer_in_the_runtimes_element_size():
    m = read_model_facts(SMOLLM2_Q4_1)
    # K and V, 30 layers, 3 KV heads of 64: float16 beside the CPU kernels (23,040 bytes per token), float32 beside
    # tinygrad's attention (--kernels tinygrad, or another backend)
    assert kv_cache_bytes(m, 1) == 2 * 30 * 3 * 64 * 2
    assert kv_cache_bytes(m, 8192) == 8192 * 23040
    assert kv_cache_bytes(m, 8192, "CPU", "tinygrad") == kv_cache_bytes(m, 8192, "CUDA") == 8192 * 46080


@pytest.mark.slow
def test_recipe_estimates_match_the_block_sizes():
    m = read_model_facts(SMOLLM2_Q4_1)
    matrices = sum(t.n_elements for t in m.tensors if t.n_dims == 2)
    vectors = sum(t.n_elements for t in m.tensors if t.n_dims == 1)
    assert recipe_weights_bytes(m, "w8")[0] == int(matrices * 34 / 32 + vectors * 4)
    assert recipe_weights_bytes(m, "w4")[0] == int(matrices * 18 / 32 + vectors * 4)
    # The largest tensor is the 49152 x 576 embedding.
    assert recipe_weights_bytes(m, "w4")[1] == 49152 * 576 * 18 // 32
    assert recipe_weights_bytes(m, "w4-mix8")[1] == 49152 * 576 * 34 // 32
    # The shipped file is Q4_1 except its Q8_0 embedding: between the all-w4a and all-w8 estimates.
    assert recipe_weights_bytes(m, "w4a")[0] < m.weights_bytes < recipe_weights_bytes(m, "w8")[0]


def test_recipe_names_are_quantize_recipes():
    from edgegen.quantize.recipes import RECIPES

    assert set(RECIPE_BYTES_PER_WEIGHT) <= set(RECIPES)


def test_profiles_state_their_sources():
    for p in BOARD_PROFILES.values():
        assert p.memory_bytes > p.reserved_bytes > 0
        assert p.bandwidth_bytes_per_s > 1e9
        assert p.memory_source and p.bandwidth_source and p.reserved_source
    # Spot checks against the vendors' figures.
    assert get_profile("jetson-orin-nano-8gb").bandwidth_bytes_per_s == 68e9
    assert get_profile("jetson-agx-orin-64gb").bandwidth_bytes_per_s == 204.8e9
    assert get_profile("apple-m2-8gb").bandwidth_bytes_per_s == 100e9
    assert get_profile("rpi5-4gb").memory_bytes == 4 * GIB


@pytest.mark.parametrize("model, memory, expected", [
    ("NVIDIA Jetson Orin Nano Developer Kit", int(7.4 * GIB), "jetson-orin-nano-8gb"),
    ("NVIDIA Jetson Orin Nano 4GB", int(3.6 * GIB), "jetson-orin-nano-4gb"),
    ("Jetson AGX Orin", int(61 * GIB), "jetson-agx-orin-64gb"),
    ("Raspberry Pi 5 Model B Rev 1.0", int(3.9 * GIB), "rpi5-4gb"),
    ("Raspberry Pi 5 Model B Rev 1.0", int(7.9 * GIB), "rpi5-8gb"),
    ("Apple M2", 8 * GIB, "apple-m2-8gb"),
    ("Raspberry Pi 4 Model B Rev 1.4", 4 * GIB, None),
    (None, 4 * GIB, None),
])
def test_board_identity_maps_to_a_profile(model, memory, expected):
    p = match_profile(model, memory)
    assert (p.name if p else None) == expected


@pytest.mark.slow
def test_smollm2_fits_a_raspberry_pi_with_room_to_spare():
    plan = plan_memory(read_model_facts(SMOLLM2_Q4_1), get_profile("rpi5-4gb"), 2048)
    assert plan.fits and plan.suggestion == "fits as is"
    assert plan.total_bytes == max(plan.first_start_bytes, plan.cached_start_bytes)
    assert plan.load_transient_bytes == 49152 * 576 * 34 // 32  # the Q8_0 embedding, the largest tensor
    # Decode ceiling: 17.07 GB/s over the weights plus the KV cache at 2048 tokens.
    assert plan.decode_ceiling_tok_s == pytest.approx(4267e6 * 4 / (plan.weights_bytes + plan.kv_cache_bytes))


def test_7b_model_does_not_fit_a_4gb_board_and_says_why(llama7b_q4_path):
    m = read_model_facts(llama7b_q4_path)
    assert (m.dim, m.n_layers, m.max_context) == (LLAMA7B["dim"], LLAMA7B["n_layers"], LLAMA7B["context"])
    plan = plan_memory(m, get_profile("rpi5-4gb"), 4096)
    assert not plan.fits
    assert plan.weights_bytes > 3.5 * GIB and plan.kv_cache_bytes == 2 * GIB  # 2 x 32 x 32 x 4096 x 128 x 2
    assert "but only 3,686 MiB usable on rpi5-4gb" in plan.reason
    assert "does not fit: even recipe w4" in plan.suggestion
    # With twice the memory it fits on the CPU, whose kernels keep a float16 KV cache (2 GiB at 4096 tokens)...
    assert plan_memory(m, get_profile("rpi5-8gb"), 4096).fits
    # ... and on an 8 GB Jetson (CUDA: tinygrad's attention, a float32 cache of 4 GiB) only a shorter context fits:
    # the planner says how short.
    board = get_profile("jetson-orin-nano-8gb")
    plan8 = plan_memory(m, board, 4096)
    assert not plan8.fits and plan8.kv_cache_bytes == 4 * GIB
    assert "recipe w4 fits with a context of at most" in plan8.suggestion
    ctx = int(plan8.suggestion.rsplit("at most ", 1)[1].split()[0])
    assert 0 < ctx < 4096 and plan_memory(m, board, ctx).fits
    assert not plan_memory(m, board, ctx + 1).fits


def test_plan_cli_reports_not_fitting(edgegen, llama7b_q4_path):
    code, out, _ = edgegen("plan", str(llama7b_q4_path), "--board", "jetson-orin-nano-4gb", "--context", "2048")
    assert code == 0
    assert "DOES NOT FIT" in out and "usable on jetson-orin-nano-4gb" in out
    code, out, _ = edgegen("plan", str(llama7b_q4_path), "--board", "jetson-agx-orin-32gb", "--context", "2048",
                           "--json")
    plan = json.loads(out)
    assert plan["fits"] and plan["board_profile"]["bandwidth_bytes_per_s"] == 204.8e9
    assert plan["decode_ceiling_tok_s"] == pytest.approx(204.8e9 / plan["bytes_per_token"])


def test_plan_cli_suggests_a_recipe_when_the_file_is_too_big(edgegen, tmp_path):
    # An OpenLLaMA-3B-shaped model stored as F16 (~6.4 GB) misses an 8 GB Orin Nano, but its 8-bit form fits.
    path = write_sparse_llama(tmp_path / "f16.gguf", Q.F16, dim=3200, n_layers=26, n_heads=32, n_kv_heads=32,
                              hidden=8640, vocab=32000, context=2048)
    code, out, _ = edgegen("plan", str(path), "--board", "jetson-orin-nano-8gb", "--context", "1024", "--json")
    assert code == 0
    plan = json.loads(out)
    assert not plan["fits"]
    assert not plan["recipes"]["f16"]["fits"] and plan["recipes"]["w8"]["fits"]
    assert plan["suggestion"].startswith("re-quantize with recipe w8")


@pytest.mark.parametrize("argv, message", [
    (["--board", "pi-zero"], "unknown board 'pi-zero': expected one of jetson-orin-nano-4gb"),
    (["--board", "rpi5-4gb", "--context", "0"], "--context must be a positive number of tokens, got 0"),
    (["--board", "rpi5-4gb", "--context", "-5"], "--context must be a positive number of tokens, got -5"),
    (["--board", "rpi5-4gb", "--context", "100000"], "context 100000 exceeds the model's trained context of 8192"),
])
def test_plan_bad_input(edgegen, argv, message):
    code, out, err = edgegen("plan", str(SMOLLM2_Q4_1), *argv)
    assert code == 2 and out == ""
    assert err.startswith("edgegen plan: error: ") and message in err
    assert len(err.strip().splitlines()) == 1


def test_plan_missing_and_non_gguf_files(edgegen, tmp_path):
    code, out, err = edgegen("plan", str(tmp_path / "nope.gguf"), "--board", "rpi5-4gb")
    assert (code, out, err) == (2, "", f"edgegen plan: error: model file not found: {tmp_path / 'nope.gguf'}\n")
    (tmp_path / "notes.txt").write_text("not a model")
    code, out, err = edgegen("plan", str(tmp_path / "notes.txt"), "--board", "rpi5-4gb")
    assert (code, out) == (2, "")
    assert err == (f"edgegen plan: error: {tmp_path / 'notes.txt'} is not a GGUF file (starts with b'not ', "
                   f"expected b'GGUF')\n")


def test_plan_json_verdicts(edgegen, llama7b_q4_path):
    code, out, _ = edgegen("plan", str(llama7b_q4_path), "--board", "rpi5-4gb", "--json")
    plan = json.loads(out)
    assert code == 0 and (plan["verdict"], plan["fits"], plan["memory_fits"]) == ("does_not_fit", False, False)
    assert plan["cannot_run_reason"] is None
    code, out, _ = edgegen("plan", str(llama7b_q4_path), "--board", "jetson-agx-orin-32gb", "--json")
    assert code == 0 and json.loads(out)["verdict"] == "fits"


def test_plan_of_a_file_the_runtime_cannot_run_that_is_also_too_big(edgegen, tmp_path):
    """A 7B IQ4_XS file: re-quantizing fixes the types, but no recipe fits 4 GB at 4096 tokens; the advice says
    both."""
    path = write_sparse_llama(tmp_path / "llama7b-iq4_xs.gguf", Q.IQ4_XS, **LLAMA7B)
    code, out, _ = edgegen("plan", str(path), "--board", "rpi5-4gb", "--context", "4096")
    assert code == 0
    lines = out.splitlines()
    assert ("verdict:  cannot run here: unsupported tensor types IQ4_XS (226 tensors, e.g. token_embd.weight) "
            "(supported: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)") in lines
    assert any(line.startswith("          memory alone: DOES NOT FIT: needs ") for line in lines)
    assert ("advice:   re-quantize to tensor types the runtime runs; does not fit: even recipe w4 at a 1-token "
            "context exceeds the board's usable memory") in lines


@pytest.mark.parametrize("qtype,extra", [(Q.Q4_K, 4), (Q.Q5_K, 4), (Q.Q3_K, 4), (Q.Q6_K, 0), (Q.Q2_K, 0)])
def test_k_quant_weights_are_planned_at_their_device_size(edgegen, tmp_path, qtype, extra):
    """A 7B K-quant file runs; Q3_K / Q4_K / Q5_K weights take 4 bytes more per 256 on the device than in the file
    (their packed scales are unpacked at load, docs/QUANT_TYPES.md), Q6_K and Q2_K the file's size."""
    path = write_sparse_llama(tmp_path / f"llama7b-{qtype.name}.gguf", qtype, **LLAMA7B)
    m = read_model_facts(path)
    matrices = sum(t.n_elements for t in m.tensors if t.n_dims == 2)
    vectors = sum(t.n_bytes for t in m.tensors if t.n_dims == 1)
    assert m.device_weights_bytes == m.weights_bytes + extra * matrices // 256
    code, out, _ = edgegen("plan", str(path), "--board", "jetson-agx-orin-32gb", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["verdict"] == "fits" and plan["cannot_run_reason"] is None
    block, size = {Q.Q4_K: (256, 144), Q.Q5_K: (256, 176), Q.Q3_K: (256, 110), Q.Q6_K: (256, 210),
                   Q.Q2_K: (256, 84)}[qtype]
    assert plan["weights_bytes"] == matrices // block * (size + extra) + vectors
    # untied 7B: one decode step reads every weight but the embedding table (one row of it)
    embed = next(t for t in m.tensors if t.name == "token_embd.weight")
    assert plan["bytes_per_token"] == plan["weights_bytes"] - embed.device_bytes + plan["kv_cache_bytes"]


def test_read_model_facts_names_bad_files(tmp_path):
    """The library reader (the model-file package's) refuses bad files with one DeviceError naming the file."""
    (tmp_path / "notes.txt").write_text("not a model")
    (tmp_path / "dir.gguf").mkdir()
    whole = write_sparse_llama(tmp_path / "whole.gguf", Q.Q4_0, n_layers=1, dim=256, hidden=512, vocab=64)
    (tmp_path / "cut.gguf").write_bytes(whole.read_bytes()[:300])
    cases = {
        "nope.gguf": f"model file '{tmp_path / 'nope.gguf'}' does not exist",
        "dir.gguf": f"model path '{tmp_path / 'dir.gguf'}' is not a file",
        "notes.txt": f"'{tmp_path / 'notes.txt'}' is not a GGUF file (starts with b'not ', expected b'GGUF')",
        "cut.gguf": f"{tmp_path / 'cut.gguf'} is truncated or corrupt: needs 4 bytes at offset 300, file has 300",
    }
    for name, message in cases.items():
        with pytest.raises(DeviceError) as info:
            read_model_facts(tmp_path / name)
        assert str(info.value).startswith(message), str(info.value)


def test_get_profile_error_is_a_device_error():
    with pytest.raises(DeviceError, match="unknown board 'x'") as info:
        get_profile("x")
    assert type(info.value).exit_code == 2


def test_parallel_sequences_add_their_kv_caches(llama7b_q4_path, edgegen):
    """`--parallel N` (runtime/batch.py): N slot caches beside the one prompts are prefilled into."""
    m = read_model_facts(llama7b_q4_path)
    board = get_profile("jetson-agx-orin-32gb")
    one, four = plan_memory(m, board, 1024), plan_memory(m, board, 1024, parallel=4)
    assert four.kv_cache_bytes == 5 * one.kv_cache_bytes and four.total_bytes - one.total_bytes == \
        4 * one.kv_cache_bytes
    assert four.parallel == 4 and "5 x 1024 tokens" in four.reason
    most = max_parallel_that_fits(m, board.usable_bytes, 4096, board.backend)
    assert 1 <= most <= 8
    if most < 8:
        assert not plan_memory(m, board, 4096, parallel=most + 1).memory_fits
    assert plan_memory(m, board, 4096, parallel=most).memory_fits
    assert max_parallel_that_fits(m, 1, 1024) == 0
    with pytest.raises(DeviceError, match="parallel must be from 1 to 8"):
        plan_memory(m, board, 1024, parallel=9)
    code, out, _ = edgegen("plan", str(llama7b_q4_path), "--board", "jetson-agx-orin-32gb", "--parallel", "4",
                           "--json")
    assert code == 0 and json.loads(out)["kv_cache_bytes"] == plan_memory(m, board, 1024, parallel=4).kv_cache_bytes
    code, _, err = edgegen("plan", str(llama7b_q4_path), "--board", "rpi5-4gb", "--parallel", "0")
    assert code == 2 and "parallel must be from 1 to 8" in err
