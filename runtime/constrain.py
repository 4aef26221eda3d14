"""Structured output: each step's allowed tokens from a JSON schema, so that the answer always parses and validates.

llguidance (Microsoft's grammar engine behind Guidance, also used by llama.cpp and vLLM) computes the mask from the
model's own vocabulary: each token's bytes, read from the GGUF token list the same way the tokenizer reads it
(GPT-2 byte-level BPE: the byte-to-character map; SentencePiece: U+2581 for a space and <0xNN> byte tokens). It was
picked over xgrammar (its Python package needs torch) and outlines-core (no JSON Schema keyword warnings to refuse
on) because it installs as one small wheel, takes any tokenizer through its TokenizerWrapper and reports every
keyword it cannot enforce. A schema with any error or such warning is refused with the engine's message, never
half-enforced.
"""
from __future__ import annotations

import functools
import threading
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegen.runtime.artifact.constants import Key
from edgegen.runtime.artifact.reader import ModelFile
from edgegen.runtime.errors import GenerationError

if TYPE_CHECKING:
    from llguidance._lib import JsonCompileOptions

CONTROL, USER_DEFINED, BYTE = 3, 4, 6  # GGUF token types (gguf.constants.TokenType)
MAX_SCHEMA_CHARS = 16_000
# One space after ',' and ':' and no other whitespace: readable, and a model (or a weak one's logits) cannot spend
# its tokens on JSON's optional whitespace and run out before the object is closed
JSON_LAYOUT: JsonCompileOptions = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


class SchemaError(GenerationError):
    """A JSON schema the device cannot enforce (invalid, or a feature the grammar engine does not support)."""


@functools.lru_cache(maxsize=1)
def _gpt2_byte_decoder() -> dict[str, int]:
    """GPT-2's byte-to-printable-character map, inverted (the characters byte-level BPE vocabularies are written in)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars, n = list(printable), 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(printable, chars)}


def token_bytes(model_file: ModelFile) -> tuple[list[bytes], list[int]]:
    """Every token's bytes as generation produces them, and the ids of control tokens (never produced as text)."""
    tokens: list[str] = model_file.get(Key.TOKENS) or []
    types = model_file.get(Key.TOKEN_TYPE) or [1] * len(tokens)
    spm = model_file.get(Key.TOKENIZER_MODEL) == "llama"
    decoder = _gpt2_byte_decoder()
    out, special = [], []
    for i, (text, kind) in enumerate(zip(tokens, types)):
        # control tokens, and user-defined ones that are tags (<start_of_turn>): never text; Gemma's other
        # user-defined tokens (runs of spaces, digits) are text
        if kind == CONTROL or (kind == USER_DEFINED and len(text) > 2 and text[0] == "<" and text[-1] == ">"):
            special.append(i)
            out.append(text.encode())
        elif spm and kind == BYTE and text.startswith("<0x") and text.endswith(">"):
            out.append(bytes([int(text[3:-1], 16)]))
        elif spm:
            out.append(text.replace("\u2581", " ").encode())
        else:
            out.append(bytes(decoder[c] for c in text) if all(c in decoder for c in text) else text.encode())
    return out, special


class _Wrapped:
    """What llguidance.TokenizerWrapper asks of a tokenizer."""

    def __init__(self, model_file: ModelFile, tokenizer: Any, end_ids: list[int]) -> None:
        self.tokens, self.special_token_ids = token_bytes(model_file)
        self.eos_token_id, self.bos_token_id = end_ids[0], tokenizer.bos_id
        self._encode = tokenizer.encode

    def __call__(self, text: str) -> list[int]:
        return list(self._encode(text, add_bos=False, add_eos=False))


class Grammars:
    """One model's grammar engine: its token table (built on first use, about a second) and compiled schemas."""

    def __init__(self, model_file: ModelFile, tokenizer: Any, end_ids: set[int] | tuple, vocab_size: int) -> None:
        self.model_file, self.tokenizer, self.vocab_size = model_file, tokenizer, vocab_size
        self.end_ids = sorted(end_ids)
        self._lock = threading.Lock()
        self._tok: Any = None

    def _llg_tokenizer(self) -> Any:
        import llguidance

        with self._lock:
            if self._tok is None:
                wrapped = llguidance.TokenizerWrapper(_Wrapped(self.model_file, self.tokenizer, self.end_ids))
                self._tok = llguidance.LLTokenizer(wrapped, eos_token=self.end_ids)
            return self._tok

    @functools.lru_cache(maxsize=64)  # noqa: B019 - one Grammars per model, kept as long as the model
    def grammar(self, schema: str) -> str:
        """The compiled grammar of a JSON schema (its JSON text); SchemaError naming what cannot be enforced."""
        import llguidance

        if len(schema) > MAX_SCHEMA_CHARS:
            raise SchemaError(f"the JSON schema has {len(schema)} characters, limit {MAX_SCHEMA_CHARS}")
        try:  # llguidance parses the text itself (SamplingParams made sure it is a JSON object)
            grammar = llguidance.LLMatcher.grammar_from_json_schema(schema, defaults=JSON_LAYOUT)
        except ValueError as e:
            raise SchemaError(f"the JSON schema cannot be used: {e}") from None
        is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, self._llg_tokenizer())
        if is_error or messages:
            raise SchemaError("the JSON schema cannot be enforced: " + "; ".join(m.strip() for m in messages))
        return grammar

    def constraint(self, schema: str) -> Constraint:
        import llguidance

        return Constraint(llguidance.LLMatcher(self._llg_tokenizer(), self.grammar(schema), log_level=0),
                          self.vocab_size)


class Constraint:
    """One sequence's grammar state: the tokens allowed next, and each sampled token consumed."""

    def __init__(self, matcher: Any, vocab_size: int) -> None:
        self.matcher, self.vocab_size = matcher, vocab_size

    def allowed(self) -> np.ndarray:
        """A boolean mask over the model's vocabulary."""
        if self.matcher.is_error():
            raise GenerationError(f"structured output failed: {self.matcher.get_error()}")
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        mask = np.unpackbits(bits, bitorder="little").astype(bool)
        out = np.zeros(self.vocab_size, dtype=bool)
        n = min(self.vocab_size, mask.size)
        out[:n] = mask[:n]
        return out

    def consume(self, token: int) -> None:
        if not self.matcher.consume_token(token):
            raise GenerationError(f"structured output failed: token {token} was not allowed "
                                  f"({self.matcher.get_error()})")
