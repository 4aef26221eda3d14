"""Text generation on tinygrad: load a GGUF, prefill the prompt, decode token by token, sample, stream text.

The model and its captured decode/prefill graphs live in runtime.graphs; this module is the generation loop.

    gen = TextGenerator.load("default")
    for piece in gen.stream("Why is the sky blue?", SamplingParams(max_tokens=64)):
        print(piece, end="", flush=True)
"""
from __future__ import annotations

import logging
import os
import threading
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from edgegen.models.llama import Llama, LlamaConfig
from edgegen.runtime.artifact.constants import DEFAULT_MAX_CONTEXT
from edgegen.runtime.artifact.reader import ModelFile, open_model
from edgegen.runtime.backend import resolve_device
from edgegen.runtime.constrain import Grammars
from edgegen.runtime.errors import ArtifactError, GenerationError
from edgegen.runtime.graphs import PREFILL_BUCKETS, ModelGraphs
from edgegen.runtime.loader import GGUFWeights, config_from_gguf
from edgegen.runtime.native.options import KernelOptions
from edgegen.runtime.prompt import END_OF_TURN, PromptEncoder
from edgegen.runtime.sampling import SamplingParams
from edgegen.runtime.sequence import GenerationResult, Sequence, TextStream
from edgegen.runtime.tinygrad_seam import TINYGRAD_LOCK
from edgegen.runtime.tokenizer import load_tokenizer

if TYPE_CHECKING:
    from edgegen.runtime.batch import BatchGenerator

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CONTEXT", "END_OF_TURN", "PREFILL_BUCKETS", "GenerationResult", "TextGenerator", "TextStream"]

DEFAULT_CONTEXT = DEFAULT_MAX_CONTEXT  # artifact.constants: the one owner (the planner reads it too)
_PENDING_SAVES: list[threading.Thread] = []  # background writes of the JIT cache (TextGenerator._save_in_background)


class TextGenerator:
    """One model on one tinygrad device. Thread-safe: every compute step holds runtime.tinygrad_seam.TINYGRAD_LOCK,
    and no lock is held while a stream waits for its consumer, so a stream abandoned mid-way blocks nobody."""

    def __init__(self, model_file: ModelFile, device: str, max_context: int | None = DEFAULT_CONTEXT,
                 jit_cache: bool = True, kernels: KernelOptions | None = None) -> None:
        self.model_file, self.device = model_file, device
        self.config: LlamaConfig = config_from_gguf(model_file, max_context)
        self.tokenizer = load_tokenizer(model_file)
        self._lock = TINYGRAD_LOCK
        self.prompts = PromptEncoder(model_file, self.tokenizer, self.config.max_context)
        self.grammars = Grammars(model_file, self.tokenizer, self.prompts.end_ids, self.config.vocab_size)
        self._saver: threading.Thread | None = None
        with self._lock:
            self.graphs = ModelGraphs(model_file, device, self.config, int(self.tokenizer.bos_id or 0), jit_cache,
                                      kernels)

    @classmethod
    def load(cls, model: str | os.PathLike = "default", device: str | None = None,
             max_context: int | None = DEFAULT_CONTEXT, jit_cache: bool = True,
             kernels: KernelOptions | None = None) -> TextGenerator:
        """Open and validate the file, then prepare generation on the device. Raises ArtifactError.

        device: a tinygrad backend name, or None for runtime.backend.default_backend(). jit_cache: reuse
        decode/prefill graphs captured by an earlier process for this file (see runtime.jit_cache); without a cache
        entry the weights are repacked from the GGUF and the graphs captured on first use. kernels: which CPU kernels
        and how many threads (runtime.native.options; default: hand-written kernels on every core the process may
        use)."""
        for saver in list(_PENDING_SAVES):  # a cache entry this process is still writing is read whole
            saver.join()
        _PENDING_SAVES[:] = [t for t in _PENDING_SAVES if t.is_alive()]
        mf = open_model(model)
        dev = resolve_device(device)
        if "token_embd.weight" not in mf.tensors:
            raise ArtifactError(f"{mf.path.name}: tensor token_embd.weight is missing")
        # Without cached graphs this repacks the weights (ModelGraphs): a bad tensor fails at load, not mid-request.
        gen = cls(mf, dev, max_context, jit_cache, kernels)
        log.info("loaded %s on %s (%d MB packed, graphs %s)", mf.path.name, dev, mf.size_bytes // 2**20,
                 "from the JIT cache" if gen.graphs.from_disk else "captured on first use")
        return gen

    # ---- the model and its captured graphs (runtime.graphs) ---------------------------------------------------
    @property
    def model(self) -> Llama:
        """The tinygrad model, with weights repacked from the GGUF; built on first use."""
        return self.graphs.model

    @property
    def weights(self) -> GGUFWeights:
        return self.graphs.weights

    @property
    def path(self) -> Path:
        return self.model_file.path

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of one causal forward pass (T, vocab), for evaluation."""
        ids = list(token_ids)
        if not ids or len(ids) > self.config.max_context:
            raise GenerationError(f"logits() needs 1 to {self.config.max_context} tokens, got {len(ids)}")
        with self._lock:
            return self.graphs.forward(ids)

    # ---- prompts (runtime.prompt: one owner of the chat template and the prompt-length rule) --------------------
    @property
    def chat_template(self) -> str | None:
        return self.prompts.chat_template

    def render_chat(self, messages: list[dict]) -> str:
        return self.prompts.render_chat(messages)

    def encode_prompt(self, prompt: str | list[dict], chat: bool = True) -> list[int]:
        """Token ids for a prompt string or a list of chat messages; GenerationError for empty, PromptTooLong for
        too long (runtime.prompt.PromptEncoder)."""
        return self.prompts.encode(prompt, chat)

    # ---- generation --------------------------------------------------------------------------------------------
    def stream(self, prompt: str | list[dict], params: SamplingParams | None = None, chat: bool = True,
               cancel: threading.Event | None = None) -> TextStream:
        """Validate now (errors raise here, before any compute), then generate lazily as the stream is read."""
        return self.stream_ids(self.encode_prompt(prompt, chat), params, cancel)

    def stream_ids(self, ids: list[int], params: SamplingParams | None = None,
                   cancel: threading.Event | None = None, ignore_eos: bool = False) -> TextStream:
        """Generate from exact token ids (benchmarks and evaluation feed the same ids to every runtime).
        ignore_eos: keep going past end-of-turn tokens, so a benchmark always decodes max_tokens."""
        ids, params = self.checked_ids(ids, params)
        return TextStream(self._run(ids, params, cancel, () if ignore_eos else self.prompts.end_ids))

    def checked_ids(self, ids: list[int], params: SamplingParams | None) -> tuple[list[int], SamplingParams]:
        """Token ids and sampling a generation can start from (the prompt rule, the vocabulary); GenerationError."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise GenerationError(f"params must be a SamplingParams, not {type(params).__name__}")
        ids = [int(i) for i in ids]
        self.prompts.check_length(len(ids))
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise GenerationError(f"token ids must be in [0, {self.config.vocab_size}), got {min(ids)}..{max(ids)}")
        if params.json_schema is not None:
            self.grammars.grammar(params.json_schema)  # SchemaError now, before any compute
        return ids, params

    def sequence(self, ids: list[int], params: SamplingParams, end_ids: set[int] | tuple) -> Sequence:
        """The text side of one generation from `ids` (its grammar when params.json_schema asks for one)."""
        constraint = None if params.json_schema is None else self.grammars.constraint(params.json_schema)
        return Sequence(ids, params, self.tokenizer, end_ids, self.config.max_context, constraint)

    def batched(self, slots: int) -> BatchGenerator:
        """This model serving up to `slots` generations at once (runtime.batch: continuous batching, each
        generation's tokens the same as alone). Allocates the slots' KV caches; one per generator."""
        from edgegen.runtime.batch import BatchGenerator

        return BatchGenerator(self, slots)

    @property
    def lock(self) -> Any:
        """The compute lock every step holds (runtime.tinygrad_seam.TINYGRAD_LOCK)."""
        return self._lock

    def generate(self, prompt: str | list[dict], params: SamplingParams | None = None, chat: bool = True,
                 cancel: threading.Event | None = None) -> GenerationResult:
        return self.stream(prompt, params, chat, cancel).finish()

    def _step(self, owner: object, context: list[int], pos: int | None) -> np.ndarray:
        """Logits after `context`: a decode step at `pos` when the KV cache still holds this stream's tokens, else
        (the first step, or another stream ran in between) a prefill of what the cache does not already hold (a
        prompt that starts like the previous one reuses that prefix: runtime.graphs.prefill_reusing)."""
        session = self.graphs.session
        with self._lock:
            if pos is None or not session.holds(owner):
                logits = self.graphs.prefill_reusing(context)
            else:
                logits = self.graphs.decode(context[-1], pos)
            session.claim(owner)
            return logits

    def _run(self, ids: list[int], params: SamplingParams, cancel: threading.Event | None,
             end_ids: set[int] | tuple = ()) -> Generator[str, None, GenerationResult]:
        owner = object()
        seq = self.sequence(ids, params, end_ids)
        logits = self._step(owner, seq.context, None)
        while True:
            piece = seq.cancel() if cancel is not None and cancel.is_set() else seq.advance(logits)
            if piece:
                yield piece
            if seq.done:
                break
            logits = self._step(owner, seq.context, seq.pos)
            seq.stepped()
        self._save_in_background()
        return seq.result()

    def _save_in_background(self) -> None:
        """Write newly captured graphs to the JIT cache (a pickle of ~100 MB) on a thread of its own, so that the
        request that captured them is answered first. Not a daemon: a CLI process finishes the write before it
        exits. The thread takes the compute lock, like every step."""
        if self.graphs.saved_all():
            return

        def save() -> None:
            with self._lock:
                self.graphs.save()

        self._saver = threading.Thread(target=save, name="edgegen-jit-save")
        _PENDING_SAVES.append(self._saver)
        self._saver.start()

    def wait_saved(self, timeout: float | None = None) -> None:
        """Block until a background write of the JIT cache (after a generation) has finished."""
        if self._saver is not None:
            self._saver.join(timeout)
