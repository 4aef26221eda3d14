"""Tokenizers rebuilt from GGUF metadata with well-kept libraries: the one builder, for the runtime and the quantizer.

- `tokenizer.ggml.model == "gpt2"` (byte-level BPE: SmolLM2, Llama 3, Qwen): Hugging Face `tokenizers`, with
  llama.cpp's pre-tokenizer for the file's `tokenizer.ggml.pre` (artifact.pretokenizer).
- `tokenizer.ggml.model == "llama"` (SentencePiece: Gemma 3, Llama 2, Phi-3): `sentencepiece`, from a ModelProto
  assembled from the GGUF vocabulary, scores and token types, after splitting out special tokens as llama.cpp does.

Both encode like llama.cpp's `llama_tokenize(add_special=True, parse_special=True)`; docs/TOKENIZERS.md says how.
"""
from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from gguf.constants import TokenType

from edgegen.runtime.artifact.constants import Key
from edgegen.runtime.artifact.pretokenizer import PreTokenizerRule, hf_pre_tokenizer, pre_tokenizer_rule
from edgegen.runtime.errors import ArtifactError, shown

if TYPE_CHECKING:
    from edgegen.runtime.artifact.reader import ModelFile

TOKEN_NORMAL, TOKEN_UNKNOWN, TOKEN_CONTROL = int(TokenType.NORMAL), int(TokenType.UNKNOWN), int(TokenType.CONTROL)
TOKEN_USER_DEFINED, TOKEN_UNUSED, TOKEN_BYTE = int(TokenType.USER_DEFINED), int(TokenType.UNUSED), int(TokenType.BYTE)
TOKENIZER_MODELS = ("gpt2", "llama")  # tokenizer.ggml.model values we build: byte-level BPE, SentencePiece
# Token types llama.cpp splits out of the text before tokenizing (llama_vocab::impl::tokenizer_st_partition)
SPECIAL_TYPES = (TOKEN_CONTROL, TOKEN_USER_DEFINED, TOKEN_UNKNOWN)
# llama.cpp's defaults for a SentencePiece file without bos/eos ids (llama_vocab::impl::load: 1 and 2, Llama 2's)
SPM_DEFAULT_BOS, SPM_DEFAULT_EOS = 1, 2

log = logging.getLogger(__name__)


class Tokenizer(Protocol):
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None  # end of turn (tokenizer.ggml.eot_token_id), e.g. Llama 3's <|eot_id|>
    eom_id: int | None  # end of message (tokenizer.ggml.eom_token_id), e.g. Llama 3.1's <|eom_id|>
    add_bos: bool
    add_eos: bool
    vocab_size: int

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None) -> list[int]: ...

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


class _Specials:
    """The file's special ids and flags, read as llama.cpp reads them (llama_vocab::impl::load)."""

    def __init__(self, metadata: Mapping[str, Any], n_tokens: int, add_bos_default: bool, spm: bool,
                 source: str) -> None:
        # BPE files without ids get none: llama.cpp's BPE default (id 11 for both) is a guess we do not copy.
        self.bos_id = _token_id(metadata, Key.BOS_ID, n_tokens, SPM_DEFAULT_BOS if spm else None, source)
        self.eos_id = _token_id(metadata, Key.EOS_ID, n_tokens, SPM_DEFAULT_EOS if spm else None, source)
        self.eot_id = _token_id(metadata, Key.EOT_ID, n_tokens, None, source)
        self.eom_id = _token_id(metadata, Key.EOM_ID, n_tokens, None, source)
        # llama.cpp defaults: SentencePiece adds BOS, never EOS; BPE adds BOS only for some `pre` values
        # (llama-bpe/llama3 and tekken, PreTokenizerRule.add_bos); the file's own flags win.
        self.add_bos = _flag(metadata, Key.ADD_BOS, add_bos_default, source)
        self.add_eos = _flag(metadata, Key.ADD_EOS, False, source)
        for key, flag, ident, id_key in ((Key.ADD_BOS, self.add_bos, self.bos_id, Key.BOS_ID),
                                         (Key.ADD_EOS, self.add_eos, self.eos_id, Key.EOS_ID)):
            if flag and ident is None and key in metadata:  # llama.cpp refuses such a file too
                raise ArtifactError(f"{source}: {key} is true, but {id_key} is not set (expected a token id)")

    def wrap(self, ids: list[int], add_bos: bool | None, add_eos: bool | None) -> list[int]:
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        if (self.add_eos if add_eos is None else add_eos) and self.eos_id is not None:
            ids = ids + [self.eos_id]
        return ids


class BPETokenizer:
    """GPT-2-style byte-level BPE built with `tokenizers` from the GGUF token list and merges, split first by
    llama.cpp's pre-tokenizer for the file's `tokenizer.ggml.pre`."""

    def __init__(self, metadata: Mapping[str, Any], source: str = "model") -> None:
        from tokenizers import AddedToken, decoders, models
        from tokenizers import Tokenizer as HFTokenizer

        tokens: list[str] = _require(metadata, Key.TOKENS, source)
        merges: list[str] = metadata.get(Key.MERGES) or []
        types: list[int] = list(metadata.get(Key.TOKEN_TYPE) or [TOKEN_NORMAL] * len(tokens))
        self.pre_tokenizer: PreTokenizerRule = pre_tokenizer_rule(metadata.get(Key.TOKENIZER_PRE), source)
        vocab = {tok: i for i, tok in enumerate(tokens)}
        merge_pairs = [pair for pair in map(_merge_pair, merges) if pair is not None]
        if len(merge_pairs) != len(merges):  # llama.cpp asserts every merge has its space
            raise ArtifactError(f"{source}: {merge_problem(merges, tokens)}")
        try:
            tok = HFTokenizer(models.BPE(vocab=vocab, merges=merge_pairs, fuse_unk=False,
                                         ignore_merges=self.pre_tokenizer.ignore_merges))
        except Exception:
            if (problem := merge_problem(merges, tokens)) is None:
                raise
            raise ArtifactError(f"{source}: {problem}") from None
        tok.pre_tokenizer = hf_pre_tokenizer(self.pre_tokenizer)
        tok.decoder = decoders.ByteLevel()
        self._control = {i for i, t in enumerate(types) if t in (TOKEN_CONTROL, TOKEN_USER_DEFINED)}
        special = sorted(i for i, t in enumerate(types) if t in SPECIAL_TYPES)
        tok.add_special_tokens([AddedToken(tokens[i], special=True, normalized=False) for i in special])
        self._tok = tok
        self.vocab_size = len(tokens)
        self._specials = _Specials(metadata, len(tokens), self.pre_tokenizer.add_bos, spm=False, source=source)
        self.bos_id, self.eos_id = self._specials.bos_id, self._specials.eos_id
        self.eot_id, self.eom_id = self._specials.eot_id, self._specials.eom_id
        self.add_bos, self.add_eos = self._specials.add_bos, self._specials.add_eos

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None) -> list[int]:
        """Token ids of `text`, special tokens in it parsed; BOS/EOS as the file says unless given."""
        return self._specials.wrap(self._tok.encode(text, add_special_tokens=False).ids, add_bos, add_eos)

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def stream_decoder(self) -> StreamDecoder:
        return _HFStreamDecoder(self._tok, self.decode)

    def is_control(self, token_id: int) -> bool:
        return token_id in self._control


class SentencePieceTokenizer:
    """SentencePiece built from a ModelProto assembled from the GGUF vocabulary (llama.cpp's `llama` vocab).

    Special tokens (control, user-defined, unknown) are split out of the text first, longest first, as llama.cpp's
    tokenizer_st_partition does: Gemma 3 keeps whitespace runs and HTML tags as user-defined tokens with raw spaces,
    which SentencePiece would never see after it escapes spaces to U+2581. Each remaining piece gets the dummy prefix
    space when the file asks for one; llama.cpp adds it to exactly these pieces (the first, and any after a special).
    """

    def __init__(self, metadata: Mapping[str, Any], source: str = "model") -> None:
        import sentencepiece as spm
        from sentencepiece import sentencepiece_model_pb2 as pb

        tokens: list[str] = _require(metadata, Key.TOKENS, source)
        scores = list(metadata.get(Key.SCORES) or [0.0] * len(tokens))
        types = list(metadata.get(Key.TOKEN_TYPE) or [TOKEN_NORMAL] * len(tokens))
        if TOKEN_UNKNOWN not in types and tokens:
            # SentencePiece refuses a vocabulary without an unknown piece ("unk is not defined"); llama.cpp needs no
            # type for it and takes tokenizer.ggml.unknown_token_id, 0 by default
            unk = metadata.get(Key.UNK_ID)
            types[unk if isinstance(unk, int) and not isinstance(unk, bool) and 0 <= unk < len(tokens) else 0] = \
                TOKEN_UNKNOWN
        proto = pb.ModelProto()
        proto.trainer_spec.model_type = pb.TrainerSpec.BPE
        proto.trainer_spec.vocab_size = len(tokens)
        proto.trainer_spec.byte_fallback = any(t == TOKEN_BYTE for t in types)
        proto.normalizer_spec.name = "identity"
        # llama.cpp's SPM default is a space prefix; Gemma 3 says add_space_prefix = False
        proto.normalizer_spec.add_dummy_prefix = _flag(metadata, Key.ADD_PREFIX, True, source)
        proto.normalizer_spec.remove_extra_whitespaces = False
        proto.normalizer_spec.escape_whitespaces = True
        # the pieces (field 1) serialized apart and put before the rest: serialized messages concatenate as a merge
        self._sp = spm.SentencePieceProcessor(model_proto=spm_pieces(tokens, scores, types) + proto.SerializeToString())
        kind = np.asarray(types, dtype=np.int64)
        self._control = set(np.flatnonzero(np.isin(kind, (TOKEN_CONTROL, TOKEN_USER_DEFINED))).tolist())
        special = np.flatnonzero(np.isin(kind, list(SPECIAL_TYPES))).tolist()
        self._partition = _SpecialPartition(tokens, special, _rstrip_ids(metadata, tokens, special))
        self.vocab_size = len(tokens)
        self._specials = _Specials(metadata, len(tokens), True, spm=True, source=source)
        self.bos_id, self.eos_id = self._specials.bos_id, self._specials.eos_id
        self.eot_id, self.eom_id = self._specials.eot_id, self._specials.eom_id
        self.add_bos, self.add_eos = self._specials.add_bos, self._specials.add_eos

    def encode(self, text: str, add_bos: bool | None = None, add_eos: bool | None = None) -> list[int]:
        """Token ids of `text`, special tokens in it parsed; BOS/EOS as the file says unless given."""
        ids: list[int] = []
        for part in self._partition.split(text):
            if isinstance(part, int):
                ids.append(part)
            else:
                ids.extend(self._sp.encode(part))
        return self._specials.wrap(ids, add_bos, add_eos)

    def decode(self, ids: list[int]) -> str:
        return self._sp.decode(list(ids))

    def stream_decoder(self) -> StreamDecoder:
        return TailDecoder(self.decode)

    def is_control(self, token_id: int) -> bool:
        return token_id in self._control


def spm_pieces(tokens: Sequence[str], scores: Sequence[float], types: Sequence[int]) -> bytes:
    """ModelProto's `pieces` field serialized, as protobuf writes it: per piece a length-delimited SentencePiece
    (piece: field 1, score: float field 2, type: field 3; a GGUF token type is the same enum, NORMAL where unknown).

    Written with numpy, not through the protobuf classes: setting a large vocabulary's pieces one by one (Gemma 3's
    262k) is a noticeable share of every start, and this is much faster (docs/MEASUREMENTS.md). A piece over 118
    bytes (a multi-byte length) takes the protobuf path for the whole vocabulary."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    raw = [t.encode("utf-8") for t in tokens]
    n = np.fromiter(map(len, raw), dtype=np.int64, count=len(raw))
    kind = np.asarray(types, dtype=np.int64)
    kind = np.where((kind >= TOKEN_NORMAL) & (kind <= TOKEN_BYTE), kind, TOKEN_NORMAL)
    if n.size and n.max() > 118:
        proto = pb.ModelProto()
        for piece, score, k in zip(tokens, scores, kind.tolist()):
            p = proto.pieces.add()
            p.piece, p.score, p.type = piece, float(score), k
        return proto.SerializeToString()
    # one record: 0x0a, len(m), m = [0x0a, len(piece), piece, 0x15, score (4 bytes), 0x18, type]: 11 + len(piece)
    size = n + 11
    start = np.concatenate(([0], np.cumsum(size)[:-1]))
    out = np.empty(int(size.sum()), dtype=np.uint8)
    out[start], out[start + 1], out[start + 2], out[start + 3] = 0x0A, n + 9, 0x0A, n
    blob = np.frombuffer(b"".join(raw), dtype=np.uint8)
    out[np.repeat(start + 4 - np.concatenate(([0], np.cumsum(n)[:-1])), n) + np.arange(blob.size)] = blob
    tail = start + 4 + n
    out[tail] = 0x15
    score_bytes = np.asarray(scores, dtype="<f4").view(np.uint8).reshape(-1, 4)
    for i in range(4):
        out[tail + 1 + i] = score_bytes[:, i]
    out[tail + 5], out[tail + 6] = 0x18, kind
    return out.tobytes()


class _SpecialPartition:
    """Splits text into raw pieces and special-token ids the way llama.cpp's tokenizer_st_partition does: each
    special token in turn, longest first, is cut out of every raw piece left; `rstrip` ids swallow the whitespace
    after them."""

    def __init__(self, tokens: Sequence[str], special_ids: Sequence[int], rstrip_ids: set[int]) -> None:
        order = sorted((i for i in special_ids if tokens[i]), key=lambda i: (-len(tokens[i]), i))
        self._specials = [(tokens[i], i) for i in order]
        self._rstrip = rstrip_ids

    def split(self, text: str) -> list[str | int]:
        parts: list[str | int] = [text] if text else []
        for piece, ident in [(piece, ident) for piece, ident in self._specials if piece in text]:
            out: list[str | int] = []
            for p in parts:
                if isinstance(p, int) or piece not in p:
                    out.append(p)
                    continue
                chunks = p.split(piece)
                for k, chunk in enumerate(chunks):
                    if k:
                        out.append(ident)
                        if ident in self._rstrip:
                            chunk = chunk.lstrip(" \t\n\v\f\r")  # C isspace, as llama.cpp
                    if chunk:
                        out.append(chunk)
            parts = out
        return parts


def _rstrip_ids(metadata: Mapping[str, Any], tokens: Sequence[str], special_ids: Sequence[int]) -> set[int]:
    """Special tokens that swallow the whitespace after them: llama.cpp sets this for models named Phi-3 (all
    specials and </s>, not <unk>, <s>, <|endoftext|>), whose chat template puts a newline after each tag."""
    name = str(metadata.get(Key.NAME) or "").lower()
    if "phi-3" not in name and "phi3" not in name:
        return set()
    index = {t: i for i, t in enumerate(tokens)}
    ids = set(special_ids) | {index[t] for t in ("</s>",) if t in index}
    return ids - {index[t] for t in ("<unk>", "<s>", "<|endoftext|>") if t in index}


def _merge_pair(merge: str) -> tuple[str, str] | None:
    """A GGUF merge "a b" as a pair; llama.cpp splits at the first space after the first character."""
    cut = merge.find(" ", 1)
    return (merge[:cut], merge[cut + 1:]) if cut > 0 else None


def merge_problem(merges: Any, tokens: Sequence[str]) -> str | None:
    """The first merge byte-level BPE (Hugging Face `tokenizers`) would refuse, named by its entry: one that is not
    two tokens separated by a space, or whose halves or their join are not in the vocabulary (the library says only
    "Token ... out of vocabulary", naming no file and no key). None if every merge is sound."""
    if merges is None:
        return None
    if not isinstance(merges, list) or (merges and not isinstance(merges[0], str)):  # a GGUF array has one type
        return f"metadata key {Key.MERGES!r} is not a list of strings"
    vocab = set(tokens)
    for i, merge in enumerate(merges):  # runs at every load of a BPE model: the plain loop is the fast one
        cut = merge.find(" ", 1)  # _merge_pair's split
        left, right = merge[:cut], merge[cut + 1:]
        if cut > 0 and left in vocab and right in vocab and left + right in vocab:
            continue
        if cut <= 0:
            return f"metadata key {Key.MERGES!r} entry {i} ({shown(merge)}) is not two tokens separated by a space"
        part = next(p for p in (left, right, left + right) if p not in vocab)
        return (f"metadata key {Key.MERGES!r} entry {i} ({shown(merge)}) names {shown(part)}, which is not in "
                f"{Key.TOKENS!r}")
    return None


def _token_id(metadata: Mapping[str, Any], key: str, n_tokens: int, default: int | None, source: str) -> int | None:
    """A special token id from the file; like llama.cpp, an id outside the vocabulary is ignored."""
    if default is not None and default >= n_tokens:
        default = None
    if key not in metadata:
        return default
    value = metadata[key]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ArtifactError(f"{source}: {key} is {shown(value)}, expected a token id (an integer)")
    if not 0 <= value < n_tokens:  # artifact.validate.check_model gave the one notice for it
        log.debug("%s: %s = %d is outside the vocabulary (%d tokens), using %s", source, key, value, n_tokens,
                  default)
        return default
    return value


def _flag(metadata: Mapping[str, Any], key: str, default: bool, source: str) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, bool):
        raise ArtifactError(f"{source}: {key} is {shown(value)}, expected true or false")
    return value


def _require(metadata: Mapping[str, Any], key: str, source: str) -> Any:
    if key not in metadata:
        raise ArtifactError(f"{source}: metadata key {key!r} is missing")
    return metadata[key]


def tokenizer_from_metadata(metadata: Mapping[str, Any], source: str = "model"
                            ) -> BPETokenizer | SentencePieceTokenizer:
    """The tokenizer a GGUF file's `tokenizer.*` keys describe; `source` names the file in errors."""
    kind = metadata.get(Key.TOKENIZER_MODEL)
    builders: dict[str, type[BPETokenizer] | type[SentencePieceTokenizer]] = {
        "gpt2": BPETokenizer, "llama": SentencePieceTokenizer}
    if kind in builders:
        try:
            return builders[kind](metadata, source)
        except ArtifactError:
            raise
        except Exception as e:  # noqa: BLE001 - the libraries raise bare Exception/RuntimeError on a bad vocabulary
            detail = " ".join(str(e).split()) or type(e).__name__
            raise ArtifactError(f"{source}: the tokenizer in {Key.TOKENS!r} and the keys beside it cannot be built "
                                f"({'tokenizers' if kind == 'gpt2' else 'sentencepiece'}: {detail})") from None
    if kind is None:
        raise ArtifactError(f"{source}: the file carries no tokenizer ({Key.TOKENIZER_MODEL} is missing)")
    raise ArtifactError(f"{source}: unsupported tokenizer model {shown(kind)} "
                        f"(supported: {', '.join(TOKENIZER_MODELS)})")


def load_tokenizer(mf: ModelFile) -> BPETokenizer | SentencePieceTokenizer:
    """The tokenizer of an opened model file (artifact.reader.open_gguf / open_model)."""
    return tokenizer_from_metadata(mf.metadata, mf.path.name)
