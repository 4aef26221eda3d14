"""GGUF metadata -> LlamaConfig through artifact.config, the one path the runtime, the quantizer and the planner use."""
from __future__ import annotations

from pathlib import Path

import gguf
import numpy as np
import pytest
from tiny_llama import TOKENS, VOCAB

from edgegen.models.config import LlamaConfig
from edgegen.runtime.artifact.config import config_from_metadata, config_from_model_file
from edgegen.runtime.artifact.reader import open_gguf
from edgegen.runtime.errors import ArtifactError

IDS = [5, 17, 42, 3, 88, 60, 7]


def llama_metadata(arch: str = "llama", **extra) -> dict:
    base = {"general.architecture": arch, f"{arch}.embedding_length": 64, f"{arch}.block_count": 2,
            f"{arch}.feed_forward_length": 128, f"{arch}.attention.head_count": 4, f"{arch}.context_length": 64}
    return base | {k.format(arch=arch): v for k, v in extra.items()}


def test_llama_defaults_are_neutral():
    cfg = config_from_metadata(llama_metadata(), "m.gguf", embedding_rows=96)
    assert cfg == LlamaConfig(dim=64, n_layers=2, n_heads=4, n_kv_heads=4, hidden_dim=128, vocab_size=96,
                              norm_eps=1e-5, rope_theta=10000.0, max_context=64, head_dim=16)
    assert (cfg.rope_dim, cfg.rope_theta_local, cfg.rope_scaling, cfg.sliding_window, cfg.sliding_window_pattern,
            cfg.final_logit_softcapping) == (16, 10000.0, "none", 0, 0, 0.0)


def test_family_keys_are_read_and_no_family_is_refused():
    meta = llama_metadata("qwen3", **{"{arch}.attention.key_length": 32, "{arch}.attention.head_count_kv": 2,
                                      "{arch}.rope.freq_base": 1e6, "{arch}.attention.layer_norm_rms_epsilon": 1e-6,
                                      "{arch}.rope.scaling.type": "yarn", "{arch}.rope.scaling.factor": 4.0,
                                      "{arch}.rope.scaling.original_context_length": 32768})
    cfg = config_from_metadata(meta, "q.gguf", embedding_rows=96)
    assert (cfg.architecture, cfg.head_dim, cfg.n_kv_heads, cfg.rope_theta, cfg.norm_eps) == ("qwen3", 32, 2, 1e6, 1e-6)
    assert (cfg.rope_scaling, cfg.rope_scaling_factor, cfg.rope_scaling_original_context) == ("yarn", 4.0, 32768)
    for arch in ("qwen2", "phi3"):
        assert config_from_metadata(llama_metadata(arch), "x.gguf", 96).architecture == arch


def test_gemma3_gets_llama_cpps_fixed_sliding_window_facts():
    meta = llama_metadata("gemma3", **{"{arch}.attention.sliding_window": 512, "{arch}.rope.freq_base": 1e6,
                                       "{arch}.final_logit_softcapping": 30.0})
    cfg = config_from_metadata(meta, "g.gguf", 96)
    assert (cfg.sliding_window, cfg.sliding_window_pattern, cfg.rope_theta, cfg.rope_theta_local) == \
        (512, 6, 1e6, 10000.0)
    assert cfg.final_logit_softcapping == 30.0
    stated = config_from_metadata(meta | {"gemma3.rope.freq_base_swa": 5e4}, "g.gguf", 96)
    assert stated.rope_theta_local == 5e4


def test_vocab_and_context():
    meta = llama_metadata() | {"tokenizer.ggml.tokens": ["a"] * 90}
    assert config_from_metadata(meta, "m.gguf", 96).vocab_size == 90  # the tokenizer before the embedding rows
    assert config_from_metadata(meta | {"llama.vocab_size": 80}, "m.gguf", 96).vocab_size == 80
    assert config_from_metadata(meta, "m.gguf", max_context=16).max_context == 16
    assert config_from_metadata(meta, "m.gguf", max_context=4096).max_context == 64  # at most the trained context
    no_context = {k: v for k, v in meta.items() if k != "llama.context_length"}
    assert config_from_metadata(no_context, "m.gguf").max_context == 2048


@pytest.mark.parametrize("change, message", [
    ({"llama.attention.head_count": None}, "m.gguf: metadata key 'llama.attention.head_count' is missing"),
    ({"general.architecture": None}, "m.gguf: metadata key 'general.architecture' is missing"),
    ({"llama.block_count": 0}, "m.gguf: metadata key 'llama.block_count' is 0, expected a positive integer"),
    ({"llama.block_count": "2"}, "m.gguf: metadata key 'llama.block_count' is '2', expected a positive integer"),
    ({"llama.attention.key_length": -1},
     "m.gguf: metadata key 'llama.attention.key_length' is -1, expected an integer >= 0"),
    ({"llama.rope.freq_base": "big"},
     "m.gguf: metadata key 'llama.rope.freq_base' is 'big', expected a finite number > 0"),
])
def test_bad_metadata_names_the_key_and_value(change, message):
    meta = {k: v for k, v in (llama_metadata() | change).items() if v is not None}
    with pytest.raises(ArtifactError) as info:
        config_from_metadata(meta, "m.gguf", 96)
    assert str(info.value) == message


def test_bad_context_and_missing_vocabulary():
    with pytest.raises(ArtifactError, match="context length must be at least 1, got 0"):
        config_from_metadata(llama_metadata(), "m.gguf", 96, max_context=0)
    with pytest.raises(ArtifactError, match=r"m.gguf: no vocabulary size \('llama.vocab_size'"):
        config_from_metadata(llama_metadata(), "m.gguf")


# A llama whose attention heads are wider than dim / n_heads (as Qwen3 and Gemma 3 are): attention.key_length.
DIM, HEADS, KV_HEADS, HEAD_DIM, HIDDEN, LAYERS = 64, 4, 2, 32, 128, 2


def write_wide_head_llama(path: Path) -> None:
    rng = np.random.default_rng(7)

    def w(*shape: int, scale: float = 0.08) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(LAYERS)
    writer.add_context_length(32)
    writer.add_embedding_length(DIM)
    writer.add_feed_forward_length(HIDDEN)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_key_length(HEAD_DIM)
    writer.add_value_length(HEAD_DIM)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(TOKENS)
    writer.add_token_types([1] * (VOCAB - 2) + [3, 3])
    writer.add_token_merges([])
    tensors = {"token_embd.weight": w(VOCAB, DIM, scale=0.5), "output_norm.weight": 1 + w(DIM, scale=0.1)}
    for i in range(LAYERS):
        p = f"blk.{i}."
        tensors |= {p + "attn_norm.weight": 1 + w(DIM, scale=0.1), p + "ffn_norm.weight": 1 + w(DIM, scale=0.1),
                    p + "attn_q.weight": w(HEADS * HEAD_DIM, DIM), p + "attn_k.weight": w(KV_HEADS * HEAD_DIM, DIM),
                    p + "attn_v.weight": w(KV_HEADS * HEAD_DIM, DIM),
                    p + "attn_output.weight": w(DIM, HEADS * HEAD_DIM),
                    p + "ffn_gate.weight": w(HIDDEN, DIM), p + "ffn_up.weight": w(HIDDEN, DIM),
                    p + "ffn_down.weight": w(DIM, HIDDEN)}
    for name, arr in tensors.items():
        writer.add_tensor(name, arr)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@pytest.mark.slow
def test_key_length_is_one_fact_for_runtime_calibration_and_planner(tmp_path):
    """The calibration forward (quantize.llama_numpy) and the tinygrad runtime agree on logits of a model whose
    head size is not dim / n_heads; the planner sizes its KV cache by the same head size."""
    from edgegen.device.model_facts import read_model_facts
    from edgegen.quantize.import_gguf import load_gguf
    from edgegen.quantize.llama_numpy import config_from_source, forward
    from edgegen.runtime.engine import TextGenerator

    path = tmp_path / "wide-heads.gguf"
    write_wide_head_llama(path)
    source = load_gguf(path)
    calib_cfg = config_from_source(source)
    assert calib_cfg.head_dim == HEAD_DIM != DIM // HEADS
    assert calib_cfg == config_from_model_file(open_gguf(path))
    assert read_model_facts(path).head_dim == HEAD_DIM
    ref = forward(source.tensors, calib_cfg, IDS)  # (T, vocab)
    got = TextGenerator.load(path, max_context=32).logits(IDS)
    assert got.shape == ref.shape == (len(IDS), VOCAB)
    np.testing.assert_allclose(got, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())


def test_one_rope_factor_rule_for_the_runtime_and_the_numpy_reference():
    from edgegen.runtime.artifact.constants import rope_factors_tensor

    phi3 = {"rope_factors_long.weight", "rope_factors_short.weight"}
    assert rope_factors_tensor({"rope_freqs.weight", *phi3}, 8192, 4096) == "rope_freqs.weight"  # Llama 3.x first
    assert rope_factors_tensor(phi3, 8192, 4096) == "rope_factors_long.weight"  # past the original context
    assert rope_factors_tensor(phi3, 4096, 4096) == rope_factors_tensor(phi3, 1024, None) == \
        "rope_factors_short.weight"
    assert rope_factors_tensor({"rope_factors_short.weight"}, 8192, 4096) is None  # the long ones are missing
    assert rope_factors_tensor(set(), 1024, None) is None
