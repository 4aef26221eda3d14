"""Tokenizers rebuilt from GGUF metadata with well-kept libraries: the one builder, for the runtime and the quantizer.

- `tokenizer.ggml.model == "gpt2"` (byte-level BPE: SmolLM2, Llama 3, Qwen): Hugging Face `tokenizers`.
- `tokenizer.ggml.model == "llama"` (SentencePiece: Llama 2, TinyLlama, Mistral): `sentencepiece`, from a
  ModelProto assembled from the GGUF vocabulary, scores and token types.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

from gguf.constants import TokenType

from edgegen.runtime.artifact.constants import Key
from edgegen.runtime.errors import ArtifactError

if TYPE_CHECKING:
    from edgegen.runtime.artifact.reader import ModelFile

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL = int(TokenType.NORMAL), int(TokenType.UNKNOWN), int(TokenType.CONTROL)
TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = int(TokenType.USER_DEFINED), int(TokenType.UNUSED), int(TokenType.BYTE)
TOKENIZER_MODELS = ("gpt2", "llama")  # tokenizer.ggml.model values we build: byte-level BPE, SentencePiece

# llama.cpp llama-vocab.cpp: the pre-tokenizer split used for each `tokenizer.ggml.pre` value we support.
# SmolLM2 ("smollm") splits every digit on its own, then applies the GPT-2 regex (same as "starcoder", "refact").
DIGIT_SPLIT_PRE = {"smollm", "starcoder", "refact", "codeshell", "command-r"}
GPT2_PRE = {"default", "gpt-2", "gpt2", None}


class Tokenizer(Protocol):
    bos_id: int | None
    eos_id: int | None
    vocab_size: int

    def encode(self, text: str, add_bos: bool = False) -> list[int]: ...

    def decode(self, ids: list[int]) -> str: ...

    def is_control(self, token_id: int) -> bool: ...

    def stream_decoder(self) -> StreamDecoder: ...


class StreamDecoder(Protocol):
    """Turns generated token ids into text as they arrive, in O(1) tokens of work per step (re-decoding the whole
    sequence at every token is quadratic in max_tokens). The concatenation of every `step` and the final `flush` is
    the tokenizer's `decode` of all ids."""

    def step(self, token_id: int) -> str:
        """The text this token completes; "" while it ends inside a multi-byte UTF-8 sequence."""
        ...

    def flush(self) -> str:
        """Whatever is still held back at the end (an incomplete sequence decodes to U+FFFD)."""
        ...


class TailDecoder:
    """Incremental decoding for any tokenizer by re-decoding a short tail: the tokens of the last emitted piece
    (context, so a SentencePiece word-start space survives) plus the ones not yet emitted. The prefix/read-offset
    scheme of Hugging Face text-generation-inference."""

    def __init__(self, decode: Callable[[list[int]], str]) -> None:
        self._decode = decode
        self._ids: list[int] = []
        self._prefix = self._read = 0  # ids[prefix:read] were emitted last; ids[read:] not yet

    def _pending(self) -> tuple[str, str]:
        return self._decode(self._ids[self._prefix:self._read]), self._decode(self._ids[self._prefix:])

    def step(self, token_id: int) -> str:
        self._ids.append(int(token_id))
        before, after = self._pending()
        if len(after) > len(before) and not after.endswith("\ufffd"):
            self._prefix, self._read = self._read, len(self._ids)
            del self._ids[: self._prefix]  # keep only the tail
            self._read -= self._prefix
            self._prefix = 0
            return after[len(before):]
        return ""

    def flush(self) -> str:
        if self._read == len(self._ids):
            return ""
        before, after = self._pending()
        self._prefix = self._read = len(self._ids)
        return after[len(before):]


class _HFStreamDecoder:
    """`tokenizers.decoders.DecodeStream` (byte-level BPE); at the end, ids it still holds (an unfinished UTF-8
    sequence) are decoded after the last emitted piece's ids, as TailDecoder does."""

    def __init__(self, tok: Any, decode: Callable[[list[int]], str]) -> None:
        from tokenizers.decoders import DecodeStream

        self._tok, self._decode, self._stream = tok, decode, DecodeStream(skip_special_tokens=False)
        self._last: list[int] = []  # ids of the last emitted piece (decoding context)
        self._held: list[int] = []  # ids since then, not yet emitted

    def step(self, token_id: int) -> str:
        self._held.append(int(token_id))
        piece = self._stream.step(self._tok, int(token_id))
        if piece is None:
            return ""
        self._last, self._held = self._held, []
        return piece

    def flush(self) -> str:
        if not self._held:
            return ""
        before, after = self._decode(self._last), self._decode(self._last + self._held)
        self._last, self._held = self._last + self._held, []
        return after[len(before):]


class BPETokenizer:
    """GPT-2-style byte-level BPE built with `tokenizers` from the GGUF token list and merges."""

    def __init__(self, metadata: Mapping[str, Any], source: str = "model") -> None:
        from tokenizers import AddedToken, decoders, models, pre_tokenizers
        from tokenizers import Tokenizer as HFTokenizer

        tokens: list[str] = _require(metadata, Key.TOKENS, source)
        merges: list[str] = metadata.get(Key.MERGES) or []
        types: list[int] = list(metadata.get(Key.TOKEN_TYPE) or [TOKEN_NORMAL] * len(tokens))
        pre = metadata.get(Key.TOKENIZER_PRE)
        vocab = {tok: i for i, tok in enumerate(tokens)}
        merge_pairs = [(a, b) for a, b in (m.split(" ", 1) for m in merges if " " in m)]
        tok = HFTokenizer(models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False))
        byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
        if pre in DIGIT_SPLIT_PRE:
            tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        elif pre in GPT2_PRE or pre is not None:
            # Other pre-tokenizers (llama-bpe, qwen2, ...) differ in their regex in small ways; GPT-2's is the
            # closest common ground. The mismatch only changes how rare strings split, never what decodes back.
            tok.pre_tokenizer = byte_level
        tok.decoder = decoders.ByteLevel()
        self._control = {i for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED)}
        tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in sorted(self._control)])
        self._tok = tok
        self.vocab_size = len(tokens)
        self.bos_id = metadata.get(Key.BOS_ID)
        self.eos_id = metadata.get(Key.EOS_ID)
        self.add_bos = bool(metadata.get(Key.ADD_BOS, False))

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def stream_decoder(self) -> StreamDecoder:
        return _HFStreamDecoder(self._tok, self.decode)

    def is_control(self, token_id: int) -> bool:
        return token_id in self._control


class SentencePieceTokenizer:
    """SentencePiece built from a ModelProto assembled from the GGUF vocabulary (llama.cpp's `llama` vocab)."""

    def __init__(self, metadata: Mapping[str, Any], source: str = "model") -> None:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        tokens: list[str] = _require(metadata, Key.TOKENS, source)
        scores = list(metadata.get(Key.SCORES) or [0.0] * len(tokens))
        types = list(metadata.get(Key.TOKEN_TYPE) or [TOKEN_NORMAL] * len(tokens))
        proto = pb.ModelProto()
        proto.trainer_spec.model_type = pb.TrainerSpec.BPE
        proto.trainer_spec.vocab_size = len(tokens)
        proto.trainer_spec.byte_fallback = any(t == TOKEN_BYTE for t in types)
        proto.normalizer_spec.name = "identity"
        proto.normalizer_spec.add_dummy_prefix = bool(metadata.get(Key.ADD_PREFIX, True))
        proto.normalizer_spec.remove_extra_whitespaces = False
        proto.normalizer_spec.escape_whitespaces = True
        kinds = {TOKEN_NORMAL: pb.ModelProto.SentencePiece.NORMAL, TOKEN_UNKNOWN: pb.ModelProto.SentencePiece.UNKNOWN,
                 TOKEN_CONTROL: pb.ModelProto.SentencePiece.CONTROL,
                 TOKEN_USER_DEFINED: pb.ModelProto.SentencePiece.USER_DEFINED,
                 TOKEN_UNUSED: pb.ModelProto.SentencePiece.UNUSED, TOKEN_BYTE: pb.ModelProto.SentencePiece.BYTE}
        for piece, score, kind in zip(tokens, scores, types):
            p = proto.pieces.add()
            p.piece, p.score, p.type = piece, float(score), kinds.get(int(kind), pb.ModelProto.SentencePiece.NORMAL)
        self._sp = spm.SentencePieceProcessor(model_proto=proto.SerializeToString())
        self._control = {i for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED)}
        self.vocab_size = len(tokens)
        self.bos_id = metadata.get(Key.BOS_ID)
        self.eos_id = metadata.get(Key.EOS_ID)
        self.add_bos = bool(metadata.get(Key.ADD_BOS, True))

    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = list(self._sp.encode(text))
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(list(ids))

    def stream_decoder(self) -> StreamDecoder:
        return TailDecoder(self.decode)

    def is_control(self, token_id: int) -> bool:
        return token_id in self._control


def _require(metadata: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in metadata:
        raise ArtifactError(f"{source}: metadata key {key!r} is missing")
    return metadata[key]


def tokenizer_from_metadata(metadata: Mapping[str, Any], source: str = "model"
                            ) -> BPETokenizer | SentencePieceTokenizer:
    """The tokenizer a GGUF file's `tokenizer.*` keys describe; `source` names the file in errors."""
    kind = metadata.get(Key.TOKENIZER_MODEL)
    if kind == "gpt2":
        return BPETokenizer(metadata, source)
    if kind == "llama":
        return SentencePieceTokenizer(metadata, source)
    if kind is None:
        raise ArtifactError(f"{source}: the file carries no tokenizer ({Key.TOKENIZER_MODEL} is missing)")
    raise ArtifactError(f"{source}: unsupported tokenizer model {kind!r} (supported: {', '.join(TOKENIZER_MODELS)})")


def load_tokenizer(mf: ModelFile) -> BPETokenizer | SentencePieceTokenizer:
    """The tokenizer of an opened model file (artifact.reader.open_gguf / open_model)."""
    return tokenizer_from_metadata(mf.metadata, mf.path.name)
