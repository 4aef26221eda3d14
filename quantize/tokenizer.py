"""GGUF tokenizer fields <-> Hugging Face `tokenizers` objects (byte-level BPE, `tokenizer.ggml.model = gpt2`).

The quantizer needs a tokenizer twice: to turn calibration text into ids, and to import a Hugging Face folder's
tokenizer.json into GGUF fields. Only byte-level BPE (GPT-2 style, what SmolLM2 and Llama 3 use) is handled.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gguf import GGUFValueType, TokenType
from tokenizers import Tokenizer, decoders, models, pre_tokenizers

from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import MetaValue, ModelSource

S, U32, I32, ARR = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.ARRAY


def tokenizer_from_metadata(metadata: dict[str, MetaValue]) -> Tokenizer:
    """A `tokenizers.Tokenizer` equal to a GGUF file's gpt2 tokenizer (control tokens are special tokens)."""
    model = metadata["tokenizer.ggml.model"].value
    if model != "gpt2":
        raise QuantizeError(f"tokenizer model {model!r} is not supported (expected byte-level BPE, 'gpt2')")
    tokens = list(metadata["tokenizer.ggml.tokens"].value)
    merges = [tuple(m.split(" ", 1)) for m in metadata["tokenizer.ggml.merges"].value]
    tok = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges, fuse_unk=False))
    pre = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if metadata.get("tokenizer.ggml.pre", MetaValue("", S)).value == "smollm":
        pre.insert(0, pre_tokenizers.Digits(individual_digits=True))  # SmolLM splits every digit
    tok.pre_tokenizer = pre_tokenizers.Sequence(pre)
    tok.decoder = decoders.ByteLevel()
    types = metadata.get("tokenizer.ggml.token_type")
    if types is not None:
        tok.add_special_tokens([t for t, ty in zip(tokens, types.value) if ty == TokenType.CONTROL])
    return tok


def encode(source: ModelSource, text: str) -> list[int]:
    """Token ids of `text` under the source's tokenizer (no BOS: calibration text is plain continuation)."""
    return tokenizer_from_metadata(source.metadata).encode(text).ids


def _special_id(model_cfg: dict[str, Any], tok_cfg: dict[str, Any], name: str, tokens_by_content: dict[str, int]
                ) -> int | None:
    """bos/eos/pad/unk id from tokenizer_config.json (a token string) or config.json (an id)."""
    value = tok_cfg.get(f"{name}_token")
    if isinstance(value, dict):
        value = value.get("content")
    if isinstance(value, str) and value in tokens_by_content:
        return tokens_by_content[value]
    ident = model_cfg.get(f"{name}_token_id")
    return int(ident) if isinstance(ident, int) else None


def metadata_from_hf_tokenizer(folder: Path, config: dict[str, Any]) -> dict[str, MetaValue]:
    """GGUF tokenizer fields from a folder's tokenizer.json (+ tokenizer_config.json for specials and template).

    Mirrors llama.cpp's convert_hf_to_gguf.py for BPE vocabularies: tokens in id order, added tokens typed CONTROL
    when special else USER_DEFINED, merges as "a b" strings.
    """
    path = folder / "tokenizer.json"
    if not path.is_file():
        raise QuantizeError(f"{folder}: no tokenizer in the source (tokenizer.json is missing)")
    try:
        tj = json.loads(path.read_text(encoding="utf-8"))
        model = tj["model"]
    except (ValueError, KeyError) as e:
        raise QuantizeError(f"{path}: not a Hugging Face tokenizer.json ({e})") from e
    if model.get("type") != "BPE":
        raise QuantizeError(f"{path}: tokenizer type {model.get('type')!r} is not supported (expected 'BPE')")
    vocab: dict[str, int] = dict(model["vocab"])
    for added in tj.get("added_tokens", []):
        vocab[added["content"]] = added["id"]
    n = max(config.get("vocab_size", 0), max(vocab.values()) + 1)
    tokens = [f"[PAD{i}]" for i in range(n)]
    types = [int(TokenType.UNUSED)] * n
    for t, i in vocab.items():
        tokens[i], types[i] = t, int(TokenType.NORMAL)
    for added in tj.get("added_tokens", []):
        types[added["id"]] = int(TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    cfg_path = folder / "tokenizer_config.json"
    tcfg = json.loads(cfg_path.read_text(encoding="utf-8")) if cfg_path.is_file() else {}
    by_content = {t: i for i, t in enumerate(tokens)}
    out = {
        "tokenizer.ggml.model": MetaValue("gpt2", S),
        "tokenizer.ggml.pre": MetaValue(_pre_name(tj), S),
        "tokenizer.ggml.tokens": MetaValue(tokens, ARR, S),
        "tokenizer.ggml.token_type": MetaValue(types, ARR, I32),
        "tokenizer.ggml.merges": MetaValue(merges, ARR, S),
    }
    for name in ("bos", "eos", "unknown", "padding"):
        hf_name = {"unknown": "unk", "padding": "pad"}.get(name, name)
        ident = _special_id(config, tcfg, hf_name, by_content)
        if ident is not None:
            out[f"tokenizer.ggml.{name}_token_id"] = MetaValue(ident, U32)
    template = tcfg.get("chat_template")
    if isinstance(template, str):
        out["tokenizer.chat_template"] = MetaValue(template, S)
    return out


def _pre_name(tj: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name: 'smollm' for digit-splitting byte-level BPE, else 'gpt-2'."""
    pre = json.dumps(tj.get("pre_tokenizer") or {})
    return "smollm" if '"individual_digits": true' in pre else "gpt-2"
