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


# ---- llama.cpp's pre-tokenizers, one regex family per `tokenizer.ggml.pre` (hand-made expectations) ------------
def split(pre: str | None, text: str) -> list[str]:
    """The pieces the file's pre-tokenizer cuts `text` into, mapped back from GPT-2's byte alphabet."""
    from tokenizers.decoders import ByteLevel

    from edgegen.runtime.artifact.pretokenizer import hf_pre_tokenizer, pre_tokenizer_rule

    pieces = hf_pre_tokenizer(pre_tokenizer_rule(pre)).pre_tokenize_str(text)
    return [ByteLevel().decode([p]) for p, _ in pieces]


@pytest.mark.parametrize("pre, text, pieces", [
    ("gpt-2", "I'm 12345 can't", ["I", "'m", " 12345", " can", "'t"]),  # contractions, digit runs with a space
    ("gpt-2", "WE'LL", ["WE", "'", "LL"]),  # GPT-2's contractions are lower case only
    ("llama-bpe", "WE'LL 12345", ["WE", "'LL", " ", "123", "45"]),  # any case; digits in groups of up to 3
    ("llama3", "a\n\nb", ["a", "\n\n", "b"]),
    ("qwen2", "x 12345", ["x", " ", "1", "2", "3", "4", "5"]),  # one digit each
    ("smollm", "x 123", ["x", " ", "1", "2", "3"]),  # digits alone, then GPT-2's rules
    ("starcoder", "it's 42", ["it", "'s", " ", "4", "2"]),
    ("default", "a+b=1234", ["a", "+", "b", "=", "123", "4"]),  # what a file without `pre` gets
    (None, "a+b=1234", ["a", "+", "b", "=", "123", "4"]),
    ("falcon", "x 1234567", ["x", " ", "123", "456", "7"]),
    ("deepseek-coder", "ab12 中文", ["ab", "1", "2", " ", "中文"]),
    ("deepseek-v3", "abc12345", ["abc", "123", "45"]),
    ("poro-chat", "Hello, world.", ["Hello", ",", " world", "."]),
    ("gpt-4o", "getUserName", ["get", "User", "Name"]),  # case runs
    ("tekken", "iPhone 42", ["i", "Phone", " ", "4", "2"]),
    ("superbpe", "hello world 1234567", ["hello world ", "1", "234", "567"]),  # no word split; digits 3 from the right
    ("kimi-k2", "汉字abc", ["汉字", "abc"]),
    ("qwen35", "e\u0301te\u0301", ["e\u0301te\u0301"]),  # combining marks stay with their letters
    ("qwen2", "e\u0301te\u0301", ["e", "\u0301te", "\u0301"]),  # a mark is punctuation-like: it leads a word
])
def test_pre_tokenizer_families(pre, text, pieces):
    assert split(pre, text) == pieces


def test_every_listed_pre_value_builds():
    from edgegen.runtime.artifact.pretokenizer import PRE_TOKENIZERS, REGEX_FAMILIES, hf_pre_tokenizer

    for pre, rule in PRE_TOKENIZERS.items():
        assert rule.family in REGEX_FAMILIES, pre
        hf_pre_tokenizer(rule).pre_tokenize_str("Hello 123 мир 世界 😀")  # every regex compiles in Onig


def test_unknown_pre_is_an_artifact_error():
    with pytest.raises(ArtifactError, match=r"m.gguf: unknown tokenizer.ggml.pre 'llama9' \(known: .*llama-bpe.*\)"):
        tokenizer_from_metadata(metadata("llama9"), "m.gguf")


def test_ignore_merges_takes_whole_words():
    """llama-bpe uses a piece that is a token as is, merges or not (llama.cpp ignore_merges); qwen2 does not."""
    meta = metadata("llama-bpe") | {"tokenizer.ggml.tokens": TOKENS + ["xyz"],
                                    "tokenizer.ggml.token_type": metadata("x")["tokenizer.ggml.token_type"] + [1]}
    assert tokenizer_from_metadata(meta).encode("xyz", add_bos=False) == [len(TOKENS)]
    meta["tokenizer.ggml.pre"] = "qwen2"
    assert pieces(tokenizer_from_metadata(meta).encode("xyz", add_bos=False)) == ["x", "y", "z"]


# ---- BOS / EOS / EOT / EOM from metadata ---------------------------------------------------------------------
def bare(pre: str, **extra) -> dict:
    meta = {k: v for k, v in metadata(pre).items() if k not in ("tokenizer.ggml.add_bos_token",)}
    return meta | {f"tokenizer.ggml.{k}": v for k, v in extra.items()}


@pytest.mark.parametrize("pre, adds_bos", [("llama-bpe", True), ("tekken", True), ("qwen2", False), ("smollm", False)])
def test_add_bos_default_follows_llama_cpp(pre, adds_bos):
    tok = tokenizer_from_metadata(bare(pre))
    assert tok.add_bos is adds_bos and (tok.encode("x")[0] == 0) is adds_bos


def test_file_flags_win_and_eos_is_appended():
    tok = tokenizer_from_metadata(bare("llama-bpe", add_bos_token=False, add_eos_token=True, eos_token_id=1))
    assert tok.encode("x") == [TOKENS.index("x"), 1]
    assert tok.encode("x", add_bos=True, add_eos=False) == [0, TOKENS.index("x")]


def test_eot_and_eom_ids_are_read():
    tok = tokenizer_from_metadata(bare("llama-bpe", eot_token_id=len(TOKENS) - 2, eom_token_id=len(TOKENS) - 1))
    assert (tok.eot_id, tok.eom_id) == (len(TOKENS) - 2, len(TOKENS) - 1)


def test_out_of_range_special_id_is_ignored_like_llama_cpp():
    tok = tokenizer_from_metadata(bare("qwen2", eos_token_id=10_000))
    assert tok.eos_id is None


@pytest.mark.parametrize("extra, needle", [
    ({"bos_token_id": None, "add_bos_token": True}, "tokenizer.ggml.add_bos_token is true, but "
                                                    "tokenizer.ggml.bos_token_id is not set"),
    ({"bos_token_id": "1"}, "tokenizer.ggml.bos_token_id is '1', expected a token id"),
    ({"add_eos_token": 1}, "tokenizer.ggml.add_eos_token is 1, expected true or false"),
])
def test_bad_special_metadata(extra, needle):
    meta = bare("qwen2", **{k: v for k, v in extra.items() if v is not None})
    if extra.get("bos_token_id", 0) is None:
        del meta["tokenizer.ggml.bos_token_id"]
    with pytest.raises(ArtifactError, match="m.gguf: " + needle.replace(".", r"\.")):
        tokenizer_from_metadata(meta, "m.gguf")


@pytest.mark.parametrize("longest", [5, 118, 119, 300], ids=["short", "118-bytes", "119-bytes", "300-bytes"])
def test_spm_pieces_are_the_bytes_protobuf_writes(longest):
    """The numpy serialization of SentencePiece pieces is byte for byte protobuf's (pieces up to 118 bytes), and
    pieces past that go through protobuf itself; unknown GGUF token types become NORMAL, as before."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from edgegen.runtime.artifact.tokenizer import spm_pieces

    tokens = ["<unk>", "<s>", "▁the", "é", "日本", "", "x" * longest, "<0x0A>"]
    scores = [0.0, -0.0, -1.5, 3.25e-7, -1e30, 2.0, -7.0, 0.0]
    types = [2, 3, 1, 1, 4, 5, 0, 6]  # 0: not a token type SentencePiece has
    proto = pb.ModelProto()
    for piece, score, kind in zip(tokens, scores, types):
        p = proto.pieces.add()
        p.piece, p.score, p.type = piece, score, kind if 1 <= kind <= 6 else 1
    assert spm_pieces(tokens, scores, types) == proto.SerializeToString()
