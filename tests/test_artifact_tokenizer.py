"""One tokenizer builder: the quantizer's calibration ids are the runtime tokenizer's (artifact.tokenizer)."""
from __future__ import annotations

from pathlib import Path

import pytest

from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import MetaValue, ModelSource
from edgegen.quantize.tokenizer import encode
from edgegen.runtime.artifact.reader import ModelFile
from edgegen.runtime.artifact.tokenizer import BPETokenizer, tokenizer_from_metadata
from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.tokenizer import load_tokenizer

TOKENS = [chr(c) for c in range(0x21, 0x7F)] + ["12", "<|im_start|>", "<|tool|>"]
CONTROL, USER_DEFINED = 3, 4


def metadata(pre: str) -> dict:
    return {"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.tokens": TOKENS, "tokenizer.ggml.merges": ["1 2"],
            "tokenizer.ggml.token_type": [1] * (len(TOKENS) - 2) + [CONTROL, USER_DEFINED],
            "tokenizer.ggml.pre": pre, "tokenizer.ggml.bos_token_id": 0, "tokenizer.ggml.add_bos_token": True}


def source(meta: dict) -> ModelSource:
    return ModelSource(Path("s.gguf"), "llama", {}, {k: MetaValue(v, None) for k, v in meta.items()}, "0")


def pieces(ids: list[int]) -> list[str]:
    return [TOKENS[i] for i in ids]


@pytest.mark.parametrize("pre, digits", [("smollm", ["1", "2"]), ("starcoder", ["1", "2"]), ("gpt-2", ["12"])])
def test_calibration_ids_are_the_runtime_tokenizers(pre, digits):
    """Digits split by `tokenizer.ggml.pre` (starcoder as smollm), user-defined tokens kept whole, and no BOS for
    calibration text even when the file asks the runtime for one."""
    meta = metadata(pre)
    runtime_tok = load_tokenizer(ModelFile(Path("s.gguf"), "llama", meta, {}))
    assert isinstance(runtime_tok, BPETokenizer)
    text = "x12<|tool|>y<|im_start|>"
    ids = encode(source(meta), text)
    assert ids == runtime_tok.encode(text, add_bos=False)
    assert pieces(ids) == ["x", *digits, "<|tool|>", "y", "<|im_start|>"]
    assert runtime_tok.encode(text)[0] == 0  # the runtime's own default adds the file's BOS


def test_quantizer_tokenizer_errors_are_quantize_errors():
    with pytest.raises(QuantizeError, match=r"s.gguf: unsupported tokenizer model 'rwkv' \(supported: gpt2, llama\)"):
        encode(source({"tokenizer.ggml.model": "rwkv"}), "x")


def test_missing_tokens_name_the_key():
    with pytest.raises(ArtifactError, match="m.gguf: metadata key 'tokenizer.ggml.tokens' is missing"):
        tokenizer_from_metadata({"tokenizer.ggml.model": "gpt2"}, "m.gguf")
