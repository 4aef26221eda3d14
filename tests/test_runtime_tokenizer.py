"""Tokenizers rebuilt from GGUF metadata: SentencePiece (llama vocab) and byte-level BPE (gpt2 vocab)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.runtime.artifact.reader import ModelFile
from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.tokenizer import BPETokenizer, SentencePieceTokenizer, load_tokenizer


def spm_model_file() -> ModelFile:
    """A llama.cpp-style SentencePiece vocabulary: control tokens, 256 byte tokens, scored word pieces."""
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    # every word has a merge path (he + llo -> hello, ▁ + hello -> ▁hello); longer pieces score higher
    words = ["▁", "h", "e", "l", "o", "w", "r", "d", "he", "ll", "llo", "hello", "▁hello", "or", "ld", "wor",
             "world", "▁world"]
    pieces += [(w, float(len(w)), 1) for w in words]
    meta = {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [p[0] for p in pieces],
        "tokenizer.ggml.scores": [p[1] for p in pieces],
        "tokenizer.ggml.token_type": [p[2] for p in pieces],
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.add_bos_token": True,
    }
    return ModelFile(Path("spm.gguf"), "llama", meta, {})


def test_sentencepiece_from_gguf_vocabulary():
    mf = spm_model_file()
    tok = load_tokenizer(mf)
    assert isinstance(tok, SentencePieceTokenizer)
    tokens = mf.metadata["tokenizer.ggml.tokens"]
    ids = tok.encode("hello world")
    assert ids[0] == 1  # add_bos_token
    assert [tokens[i] for i in ids[1:]] == ["▁hello", "▁world"]
    assert tok.decode(ids[1:]) == "hello world"
    # characters outside the vocabulary fall back to byte tokens and decode back exactly
    odd = tok.encode("héllo", add_bos=False)
    assert any(tokens[i].startswith("<0x") for i in odd)
    assert tok.decode(odd) == "héllo"
    assert tok.is_control(2) and not tok.is_control(ids[1])


def test_bpe_control_tokens_are_atomic():
    tokens = [chr(c) for c in range(0x21, 0x7F)] + ["<|im_start|>", "<|im_end|>"]
    meta = {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": tokens, "tokenizer.ggml.merges": [],
            "tokenizer.ggml.token_type": [1] * (len(tokens) - 2) + [3, 3], "tokenizer.ggml.pre": "smollm"}
    tok = load_tokenizer(ModelFile(Path("bpe.gguf"), "llama", meta, {}))
    assert isinstance(tok, BPETokenizer)
    ids = tok.encode("<|im_start|>ab<|im_end|>")
    assert ids == [len(tokens) - 2, tokens.index("a"), tokens.index("b"), len(tokens) - 1]
    assert tok.decode(ids) == "<|im_start|>ab<|im_end|>"


@pytest.mark.parametrize("meta,needle", [
    ({}, "carries no tokenizer"),
    ({"tokenizer.ggml.model": "rwkv"}, "unsupported tokenizer model 'rwkv'"),
])
def test_unsupported_tokenizers(meta, needle):
    with pytest.raises(ArtifactError, match=needle):
        load_tokenizer(ModelFile(Path("x.gguf"), "llama", meta, {}))


def test_sentencepiece_special_ids_default_like_llama_cpp():
    """Without bos/eos ids a SentencePiece file gets llama.cpp's 1 and 2 (Llama 2's <s> and </s>) and adds BOS."""
    mf = spm_model_file()
    meta = {k: v for k, v in mf.metadata.items() if not k.endswith(("_token_id", "add_bos_token"))}
    tok = load_tokenizer(ModelFile(Path("spm.gguf"), "llama", meta, {}))
    assert (tok.bos_id, tok.eos_id, tok.add_bos, tok.add_eos) == (1, 2, True, False)
    assert tok.encode("hello")[0] == 1


def test_special_tokens_split_out_before_sentencepiece():
    """Control tokens in the text become their ids and the text after them gets the space prefix again, as in
    llama.cpp (every raw piece after a special token starts a word)."""
    mf = spm_model_file()
    tokens = mf.metadata["tokenizer.ggml.tokens"]
    ids = load_tokenizer(mf).encode("hello</s>world", add_bos=False)
    assert [tokens[i] for i in ids] == ["▁hello", "</s>", "▁world"]


@pytest.fixture(scope="module")
def gemma3():
    from edgegen.runtime.artifact.catalog import model_path
    from edgegen.runtime.artifact.reader import open_gguf

    mf = open_gguf(model_path("gemma3-270m"))
    return load_tokenizer(mf), mf.metadata["tokenizer.ggml.tokens"]


@pytest.mark.parametrize("text, pieces", [
    ("hello world", ["<bos>", "hello", "▁world"]),  # add_bos_token = True, add_space_prefix = False
    ("a    b", ["<bos>", "a", "    ", "b"]),  # a whitespace run is one user-defined token, raw spaces
    ("x\n\n\ny", ["<bos>", "x", "\n\n\n", "y"]),
    ("2024", ["<bos>", "2", "0", "2", "4"]),  # Gemma splits digits
    ("<start_of_turn>user\n", ["<bos>", "<start_of_turn>", "user", "\n"]),  # control and user-defined kept whole
    ("<td>x</td>", ["<bos>", "<td>", "x", "</td>"]),
])
def test_gemma3_tokenizes_like_llama_cpp_spm(gemma3, text, pieces):
    tok, tokens = gemma3
    assert [tokens[i] for i in tok.encode(text)] == pieces


def test_gemma3_byte_fallback(gemma3):
    tok, tokens = gemma3
    ids = tok.encode("\U000f0000", add_bos=False)  # a private-use code point: not in the vocabulary
    assert [tokens[i] for i in ids] == ["<0xF3>", "<0xB0>", "<0x80>", "<0x80>"]
    assert tok.decode(tok.encode("日本 😀 \U000f0000", add_bos=False)) == "日本 😀 \U000f0000"
