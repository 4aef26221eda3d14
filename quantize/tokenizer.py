"""The quantizer's two uses of a tokenizer: calibration text -> ids, and a Hugging Face tokenizer.json -> GGUF fields.

Ids come from the runtime's own tokenizer built from the metadata (artifact.tokenizer), so calibration sees the
tokens generation will. Importing handles byte-level BPE (GPT-2 style, what SmolLM2 and Llama 3 use).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from gguf.constants import TokenType

from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import MetaValue, ModelSource
from edgegen.runtime.artifact.constants import GGUFValueType, Key
from edgegen.runtime.artifact.tokenizer import tokenizer_from_metadata
from edgegen.runtime.errors import ArtifactError

S, U32, I32, ARR = GGUFValueType.STRING, GGUFValueType.UINT32, GGUFValueType.INT32, GGUFValueType.ARRAY


def encode(source: ModelSource, text: str) -> list[int]:
    """Token ids of `text` under the source's tokenizer (no BOS: calibration text is plain continuation)."""
    try:
        tok = tokenizer_from_metadata({k: m.value for k, m in source.metadata.items()}, source.path.name)
    except ArtifactError as e:
        raise QuantizeError(str(e)) from None
    return tok.encode(text, add_bos=False, add_eos=False)  # plain text: no special tokens added


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
        Key.TOKENIZER_MODEL: MetaValue("gpt2", S),
        Key.TOKENIZER_PRE: MetaValue(_pre_name(tj), S),
        Key.TOKENS: MetaValue(tokens, ARR, S),
        Key.TOKEN_TYPE: MetaValue(types, ARR, I32),
        Key.MERGES: MetaValue(merges, ARR, S),
    }
    for key, hf_name in ((Key.BOS_ID, "bos"), (Key.EOS_ID, "eos"), (Key.UNK_ID, "unk"), (Key.PAD_ID, "pad")):
        ident = _special_id(config, tcfg, hf_name, by_content)
        if ident is not None:
            out[key] = MetaValue(ident, U32)
    template = tcfg.get("chat_template")
    if isinstance(template, str):
        out[Key.CHAT_TEMPLATE] = MetaValue(template, S)
    return out


def _pre_name(tj: dict[str, Any]) -> str:
    """llama.cpp's pre-tokenizer name: 'smollm' for digit-splitting byte-level BPE, else 'gpt-2'."""
    pre = json.dumps(tj.get("pre_tokenizer") or {})
    return "smollm" if '"individual_digits": true' in pre else "gpt-2"
