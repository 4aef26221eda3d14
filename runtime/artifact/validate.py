"""The one validation pass over an opened model file, run by every consumer before a tensor is read or a kernel built.

`open_gguf` (artifact.reader) already refused what breaks the container: a bad alignment, tensors that overlap,
leave holes, sit unaligned or run past the end, and sizes that do not match their type and shape. This module
checks the facts the runtime reads: the architecture and tensor types it runs, the hyperparameters (via
artifact.config, which refuses NaN, infinities and out-of-range values as it reads them), that the tensors have the
shapes those hyperparameters imply, and that the tokenizer's vocabulary, merges and special ids agree.

    problems = model_problems(mf)      # every problem, for `edgegen info`
    check_model(mf)                    # the first one as an ArtifactError; one notice line for harmless oddities
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegen.models.config import LlamaConfig
from edgegen.runtime.artifact.config import config_from_model_file
from edgegen.runtime.artifact.constants import (
    FLOAT_TYPES,
    IMAGE_ARCHITECTURES,
    SUPPORTED_ARCHITECTURES,
    SUPPORTED_TYPES,
    TEXT_ARCHITECTURES,
    Key,
)
from edgegen.runtime.artifact.pretokenizer import pre_tokenizer_rule
from edgegen.runtime.artifact.tokenizer import TOKENIZER_MODELS, merge_problem, tokenizer_from_metadata
from edgegen.runtime.errors import ArtifactError, shown, shown_name

if TYPE_CHECKING:
    from edgegen.runtime.artifact.reader import ModelFile

log = logging.getLogger(__name__)

# RoPE scaling types the decoder computes: none, and the per-pair frequency factors a file carries as tensors
# (Llama 3.x, Phi-3). Linear and YaRN scaling change every angle; a file asking for them is refused, not run wrong.
ROPE_SCALING_TYPES = ("", "none")
# Special token ids the tokenizer reads (artifact.tokenizer._Specials); one outside the vocabulary is ignored, as
# llama.cpp ignores it, with one notice.
SPECIAL_ID_KEYS = (Key.BOS_ID, Key.EOS_ID, Key.EOT_ID, Key.EOM_ID)
TOKEN_TYPES = range(1, 7)  # gguf.constants.TokenType: NORMAL .. BYTE


def runnable_problems(mf: ModelFile, architectures: tuple[str, ...] = SUPPORTED_ARCHITECTURES,
                      hint: bool = False) -> list[str]:
    """What the runtime cannot run here at all: the architecture, tensor types it has no kernels for, no tensors.
    hint: name the subcommand that runs an architecture the caller does not (for a command's error line)."""
    reasons = []
    if not mf.architecture:
        reasons.append("no general.architecture key")
    elif mf.architecture not in architectures:
        other = ""
        if hint and mf.architecture in IMAGE_ARCHITECTURES:
            other = "; it is an image model: use `edgegen diffuse`"
        elif hint and mf.architecture in TEXT_ARCHITECTURES:
            other = "; it is a text model: use `edgegen generate`"
        reasons.append(f"unsupported architecture {mf.architecture!r}{' here' if hint else ''} "
                       f"(supported: {', '.join(architectures)}){other}")
    unsupported: dict[str, list[str]] = {}
    for t in mf.tensors.values():
        if t.ggml_type not in SUPPORTED_TYPES:
            unsupported.setdefault(t.ggml_type.name, []).append(t.name)
    if unsupported:
        listed = ", ".join(f"{k} ({len(v)} tensors, e.g. {v[0]})" if len(v) > 1 else f"{k} (1 tensor: {v[0]})"
                           for k, v in unsupported.items())
        reasons.append(f"unsupported tensor types {listed} (supported: {', '.join(s.name for s in SUPPORTED_TYPES)})")
    if not mf.tensors:
        reasons.append("the file has no tensors")
    return reasons


def model_problems(mf: ModelFile, architectures: tuple[str, ...] = SUPPORTED_ARCHITECTURES,
                   hint: bool = False) -> list[str]:
    """Every reason the runtime would refuse `mf`, each one line naming the key or tensor; [] if it runs."""
    return runnable_problems(mf, architectures, hint) + malformed_problems(mf)


def malformed_problems(mf: ModelFile) -> list[str]:
    """What is wrong with the file itself, whatever runs it: its data layout (open_gguf(strict=False)), the
    hyperparameters and tensor shapes of a decoder, its tokenizer's vocabulary."""
    problems = list(mf.layout_problems)
    # Norm weights and biases are small float vectors read as they are: a NaN there is every output's NaN. (The
    # matrices are not scanned: that would read the whole file at every start; llama.cpp also checks them only
    # with --check-tensors.)
    problems += [f"tensor {shown_name(t.name)} has non-finite values (NaN or infinity)" for t in mf.tensors.values()
                 if t.ggml_type in FLOAT_TYPES and len(t.shape) == 1 and not np.isfinite(t.data).all()][:1]
    if mf.architecture in TEXT_ARCHITECTURES:
        try:
            cfg = config_from_model_file(mf)
        except ArtifactError as e:
            problems.append(unprefixed(str(e), mf))
        else:
            problems += decoder_problems(mf, cfg)
        problems += tokenizer_problems(mf.metadata)
    return problems


def check_model(mf: ModelFile, architectures: tuple[str, ...] = SUPPORTED_ARCHITECTURES) -> None:
    """Raise the first of model_problems as an ArtifactError naming the file; log harmless oddities as one notice."""
    problems = model_problems(mf, architectures, hint=True)
    if problems:
        raise ArtifactError(f"{mf.path.name}: {problems[0]}")
    notices = tokenizer_notices(mf.metadata)
    if notices:
        log.warning("%s: %s", mf.path.name, "; ".join(notices))


def check_file(mf: ModelFile) -> None:
    """Raise the first of malformed_problems (or of the tokenizer's build) as an ArtifactError naming the file: for
    tools that read any architecture and tensor type (the quantizer's importer, the planner) but must not carry a
    broken file's facts forward."""
    problems = malformed_problems(mf)
    if not problems and (problem := tokenizer_build_problem(mf)):
        problems.append(problem)
    if problems:
        raise ArtifactError(f"{mf.path.name}: {problems[0]}")


def decoder_problems(mf: ModelFile, cfg: LlamaConfig) -> list[str]:
    """The tensors a decoder of `cfg` needs are there with the shapes it implies (numpy order: rows, columns); the
    loader checks every layer's projections again as it packs them."""
    problems = []
    scaling = cfg.rope_scaling.lower()
    if scaling not in ROPE_SCALING_TYPES and cfg.rope_scaling_factor != 1.0:
        problems.append(f"metadata key '{cfg.architecture}.rope.scaling.type' is {cfg.rope_scaling!r} (factor "
                        f"{cfg.rope_scaling_factor:g}): edgegen computes no {cfg.rope_scaling} RoPE scaling")

    def expect(name: str, shape: tuple[int, ...], what: str) -> None:
        t = mf.tensors.get(name)
        if t is None:
            problems.append(f"tensor {name} is missing")
        elif t.shape != shape:
            problems.append(f"tensor {name} has shape {t.shape}, expected {shape} ({what})")

    tokens, embed = mf.metadata.get(Key.TOKENS), mf.tensors.get("token_embd.weight")
    if isinstance(tokens, list) and embed is not None and embed.shape and len(tokens) != embed.shape[0]:
        # llama.cpp sizes token_embd by the token count and refuses any other shape
        problems.append(f"metadata key {Key.TOKENS!r} has {len(tokens)} tokens, but token_embd.weight has "
                        f"{embed.shape[0]} rows (one per token)")
    else:
        expect("token_embd.weight", (cfg.vocab_size, cfg.dim), "vocabulary x embedding length")
    if "output.weight" in mf.tensors:
        expect("output.weight", (cfg.vocab_size, cfg.dim), "vocabulary x embedding length")
    expect("output_norm.weight", (cfg.dim,), "embedding length")
    for layer in range(cfg.n_layers):
        expect(f"blk.{layer}.attn_norm.weight", (cfg.dim,), "embedding length")
        if problems:
            break  # one missing layer is enough to say; a cut-short file would list them all
    extra = [n for n in mf.tensors if n.startswith(f"blk.{cfg.n_layers}.")]
    if extra:
        problems.append(f"tensor {shown_name(extra[0])} belongs to layer {cfg.n_layers}, but metadata key "
                        f"'{cfg.architecture}.block_count' is {cfg.n_layers}")
    return problems


def tokenizer_problems(metadata: Mapping[str, Any]) -> list[str]:
    """Vocabulary, scores, token types, pre-tokenizer and special ids that the tokenizer libraries would refuse or
    misread. Cheap enough for every load (a GGUF array holds one value type, so its first element tells; the
    numbers are checked with numpy; the merges by artifact.tokenizer.merge_problem, one plain pass)."""
    kind = metadata.get(Key.TOKENIZER_MODEL)
    if kind is None:
        return [f"the file carries no tokenizer ({Key.TOKENIZER_MODEL!r} is missing)"]
    if kind not in TOKENIZER_MODELS:
        return [f"metadata key {Key.TOKENIZER_MODEL!r} is {shown(kind)}, expected one of {', '.join(TOKENIZER_MODELS)}"]
    tokens = metadata.get(Key.TOKENS)
    if tokens is None:
        return [f"metadata key {Key.TOKENS!r} is missing"]
    if not isinstance(tokens, list) or not tokens or not isinstance(tokens[0], str):
        return [f"metadata key {Key.TOKENS!r} is not a non-empty list of strings"]
    problems = []
    for key in (Key.SCORES, Key.TOKEN_TYPE):
        values = metadata.get(key)
        if values is not None and (not isinstance(values, list) or len(values) != len(tokens)):
            count = len(values) if isinstance(values, list) else type(values).__name__
            problems.append(f"metadata key {key!r} has {count} entries, expected one per token ({len(tokens)})")
    types = metadata.get(Key.TOKEN_TYPE)
    if isinstance(types, list) and types:
        kinds = np.asarray(types) if not isinstance(types[0], (bool, str)) else None
        bad_at = np.flatnonzero((kinds < TOKEN_TYPES.start) | (kinds >= TOKEN_TYPES.stop)) \
            if kinds is not None and kinds.dtype.kind in "iu" else np.array([0])
        if bad_at.size:
            problems.append(f"metadata key {Key.TOKEN_TYPE!r} has {shown(types[int(bad_at[0])])} at token "
                            f"{int(bad_at[0])}, expected 1-6 (gguf TokenType)")
    scores = metadata.get(Key.SCORES)
    if isinstance(scores, list) and scores and (isinstance(scores[0], (bool, str))
                                                or not np.isfinite(np.asarray(scores, dtype=np.float64)).all()):
        problems.append(f"metadata key {Key.SCORES!r} has a value that is not a finite number")
    if kind == "gpt2":
        try:
            pre_tokenizer_rule(metadata.get(Key.TOKENIZER_PRE), "")
        except ArtifactError as e:
            problems.append(str(e).removeprefix(": "))
        if (problem := merge_problem(metadata.get(Key.MERGES), tokens)) is not None:
            problems.append(problem)
    for key in SPECIAL_ID_KEYS:
        value = metadata.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
            problems.append(f"metadata key {key!r} is {shown(value)}, expected a token id (an integer)")
    return problems


def tokenizer_build_problem(mf: ModelFile) -> str | None:
    """Why the tokenizer libraries refuse a text model's vocabulary (its merges, say), by building it; None if they
    do not. For the tools that do not build one anyway (`edgegen info`, `plan`, the quantizer): the runtime builds
    it right after check_model."""
    if mf.architecture not in TEXT_ARCHITECTURES:
        return None
    try:
        tokenizer_from_metadata(mf.metadata, mf.path.name)
    except ArtifactError as e:
        return unprefixed(str(e), mf)
    return None


def tokenizer_notices(metadata: Mapping[str, Any]) -> list[str]:
    """Harmless oddities, ignored as llama.cpp ignores them: special ids outside the vocabulary."""
    tokens = metadata.get(Key.TOKENS)
    n = len(tokens) if isinstance(tokens, list) else 0
    out = [f"{key} = {metadata[key]} is outside the vocabulary ({n} tokens), ignored" for key in SPECIAL_ID_KEYS
           if isinstance(metadata.get(key), int) and not isinstance(metadata.get(key), bool)
           and not 0 <= metadata[key] < n]
    return out


def unprefixed(message: str, mf: ModelFile) -> str:
    """An ArtifactError's message without the leading file name (the caller adds it once)."""
    prefix = f"{mf.path.name}: "
    return message[len(prefix):] if message.startswith(prefix) else message
