"""Token ids agree with llama.cpp's own tokenizer (llama-cpp-python, vocab only) on real and written vocabularies.

llama.cpp is the reference: a GGUF file is what it reads, and `llama_tokenize(add_special=True, parse_special=True)`
is what our `encode(text)` promises (BOS/EOS as the file says, special tokens in the text parsed).
"""
from __future__ import annotations

from pathlib import Path

import gguf
import pytest

from edgegen.runtime.artifact.catalog import model_path
from edgegen.runtime.artifact.reader import default_model_path, open_gguf
from edgegen.runtime.artifact.tokenizer import load_tokenizer

llama_cpp = pytest.importorskip("llama_cpp")

TEXTS = [
    "", "Hello world", " leading space", "trailing space ", "I'm sure they'll say we've can't WON'T",
    "def f(x):\n    return x**2  # square\n\n\tindented\r\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "12345 3.14159 1,000,000 x86_64 2024-01-31 ٣٤ ²½", "日本語のテキスト 中文字符 한국어 텍스트",
    "emoji 😀👍🏽🇫🇷 family 👨‍👩‍👧",
    "café naïve Ünïcödé ångström résumé, decomposed e\u0301te\u0301 नमस्ते",
    "  two  spaces   three\n\n\nnewlines\u00a0nbsp\u3000ideographic", "   ",
    "\t\t\ttabs", "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nhi<|im_end|>",
    "<start_of_turn>user\nhi<end_of_turn>\n<start_of_turn>model\n", "<table><tr><td>x</td></tr></table>",
    "<s>[INST] hi [/INST]</s>", "<|user|>\n  hello<|end|>\n<|assistant|>\n", "getUserName iPhone HTTPServer",
    "\u0000\u0001\u007f control \ufeffbom", "zzqx <tool> oo o 123123",
]
BPE_PRES = ["default", "gpt-2", "llama-bpe", "llama3", "qwen2", "qwen35", "smollm", "starcoder", "refact", "codeshell",
            "command-r", "falcon", "deepseek-llm", "deepseek-coder", "deepseek-v3", "stablelm2", "olmo", "dbrx",
            "smaug-bpe", "poro-chat", "jais", "tekken", "mpt", "phi-2", "bloom", "gpt-4o", "superbpe", "kimi-k2"]
SMOLLM_TOKENS = 4000  # the first tokens of SmolLM2's vocabulary: specials, the 256 bytes, early merges
# pieces that tell the pre-tokenizers apart: digit runs, a piece across a space, a token no merge reaches
EXTRA_MERGES = ["1 2", "12 3", "123 1", "4 5", "Ġ 1", "o Ġ", "oĠ o"]
EXTRA_TOKENS = ["12", "123", "1231", "45", "Ġ1", "oĠ", "oĠo", "zzqx", "<tool>"]


def _hparams(w: gguf.GGUFWriter) -> None:
    w.add_block_count(1)
    w.add_context_length(64)
    w.add_embedding_length(64)
    w.add_feed_forward_length(128)
    w.add_head_count(4)
    w.add_head_count_kv(4)
    w.add_layer_norm_rms_eps(1e-5)


def _finish(w: gguf.GGUFWriter) -> None:
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


@pytest.fixture(scope="module")
def smollm_vocab() -> tuple[list[str], list[int], list[str]]:
    meta = open_gguf(default_model_path()).metadata
    tokens = list(meta["tokenizer.ggml.tokens"][:SMOLLM_TOKENS])
    types = list(meta["tokenizer.ggml.token_type"][:SMOLLM_TOKENS])
    known = set(tokens)
    merges = [m for m in meta["tokenizer.ggml.merges"] if m.replace(" ", "", 1) in known
              and all(p in known for p in m.split(" ", 1))]
    return tokens + EXTRA_TOKENS, types + [1] * (len(EXTRA_TOKENS) - 1) + [4], merges + EXTRA_MERGES


def write_bpe(path: Path, vocab: tuple[list[str], list[int], list[str]], pre: str) -> Path:
    """A byte-level BPE vocabulary (SmolLM2's first tokens plus EXTRA_TOKENS) under a given tokenizer.ggml.pre."""
    tokens, types, merges = vocab
    w = gguf.GGUFWriter(str(path), "llama")
    _hparams(w)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    _finish(w)
    return path


def write_spm(path: Path, add_space_prefix: bool, name: str = "tiny spm") -> Path:
    """A Llama-2-style SentencePiece vocabulary: <unk> <s> </s>, chat-tag control tokens (llama.cpp refuses a
    "Phi-3" file without <|endoftext|>), 256 byte tokens, scored pieces with merge paths, a user-defined token."""
    pieces = [("<unk>", 0.0, 2), ("<s>", 0.0, 3), ("</s>", 0.0, 3), ("<|user|>", 0.0, 3), ("<|end|>", 0.0, 3),
              ("<|assistant|>", 0.0, 3), ("<|endoftext|>", 0.0, 3), ("<tool>", 0.0, 4)]
    pieces += [(f"<0x{b:02X}>", 0.0, 6) for b in range(256)]
    words = ["▁", "h", "e", "l", "o", "w", "r", "d", "i", "1", "2", "3", "he", "ll", "llo", "hello", "▁hello", "or",
             "ld", "wor", "world", "▁world", "▁▁", "12", "▁h", "▁hi", "hi"]
    pieces += [(w, float(len(w)), 1) for w in words]
    w = gguf.GGUFWriter(str(path), "llama")
    _hparams(w)
    w.add_name(name)
    w.add_tokenizer_model("llama")
    w.add_token_list([p[0] for p in pieces])
    w.add_token_scores([p[1] for p in pieces])
    w.add_token_types([p[2] for p in pieces])
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_add_space_prefix(add_space_prefix)
    _finish(w)
    return path


def assert_same_ids(path: Path) -> None:
    reference = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
    ours = load_tokenizer(open_gguf(path))
    for text in TEXTS:
        expected = reference.tokenize(text.encode(), add_bos=True, special=True)
        assert ours.encode(text) == expected, f"{path.name}: {text!r}"


@pytest.mark.parametrize("path", [default_model_path(), model_path("gemma3-270m")], ids=["smollm2", "gemma3"])
def test_shipped_models_tokenize_like_llama_cpp(path):
    """SmolLM2 (byte-level BPE, pre "smollm") and Gemma 3 (SentencePiece, 262k tokens: whitespace runs and HTML
    tags as user-defined tokens, single digits, byte fallback)."""
    assert_same_ids(Path(path))


@pytest.mark.parametrize("pre", BPE_PRES)
def test_each_pre_tokenizer_like_llama_cpp(tmp_path, smollm_vocab, pre):
    assert_same_ids(write_bpe(tmp_path / f"bpe-{pre}.gguf", smollm_vocab, pre))


@pytest.mark.parametrize("add_space_prefix, name", [(True, "tiny spm"), (False, "tiny spm"), (True, "Phi-3 mini")])
def test_sentencepiece_like_llama_cpp(tmp_path, add_space_prefix, name):
    """Space prefix after every special token (Llama 2 style) or none (Gemma), and Phi-3's specials that swallow
    the whitespace after them."""
    assert_same_ids(write_spm(tmp_path / "spm.gguf", add_space_prefix, name))
