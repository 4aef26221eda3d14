"""Tokenizers rebuilt from GGUF metadata: SentencePiece (llama vocab) and byte-level BPE (gpt2 vocab)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.artifact.reader import ModelFile
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
