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
import time
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgegen.models.llama import Llama, LlamaConfig
from edgegen.runtime.artifact.constants import DEFAULT_MAX_CONTEXT
from edgegen.runtime.artifact.reader import ModelFile, open_model
from edgegen.runtime.backend import resolve_device
from edgegen.runtime.errors import ArtifactError, GenerationError
from edgegen.runtime.graphs import PREFILL_BUCKETS, ModelGraphs
from edgegen.runtime.loader import GGUFWeights, config_from_gguf
from edgegen.runtime.native.options import KernelOptions
from edgegen.runtime.prompt import END_OF_TURN, PromptEncoder
from edgegen.runtime.sampling import Sampler, SamplingParams, find_stop, holdback
from edgegen.runtime.tinygrad_seam import TINYGRAD_LOCK
from edgegen.runtime.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CONTEXT", "END_OF_TURN", "PREFILL_BUCKETS", "GenerationResult", "TextGenerator", "TextStream"]

DEFAULT_CONTEXT = DEFAULT_MAX_CONTEXT  # artifact.constants: the one owner (the planner reads it too)
_PENDING_SAVES: list[threading.Thread] = []  # background writes of the JIT cache (TextGenerator._save_in_background)
# Token strings that end a turn in the chat formats we know (llama.cpp calls these end-of-generation tokens).


@dataclass(frozen=True)
class GenerationResult:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    ttft_s: float  # request start to the first generated token
    decode_tokens_per_s: float  # tokens after the first / time after the first
    total_s: float
    token_ids: tuple[int, ...] = ()

    def as_dict(self) -> dict:
        d = dict(self.__dict__)
        d.pop("token_ids")
        return d


class TextStream:
    """Iterate for text deltas; `result` is set once the iteration has finished (the generation's return value)."""

    def __init__(self, run: Generator[str, None, GenerationResult]) -> None:
        self._run = run
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        self.result = yield from self._run


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
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise GenerationError(f"params must be a SamplingParams, not {type(params).__name__}")
        ids = [int(i) for i in ids]
        self.prompts.check_length(len(ids))
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise GenerationError(f"token ids must be in [0, {self.config.vocab_size}), got {min(ids)}..{max(ids)}")
        return TextStream(self._run(ids, params, cancel, () if ignore_eos else self.prompts.end_ids))

    def generate(self, prompt: str | list[dict], params: SamplingParams | None = None, chat: bool = True,
                 cancel: threading.Event | None = None) -> GenerationResult:
        stream = self.stream(prompt, params, chat, cancel)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

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
        t0 = time.perf_counter()
        owner = object()
        sampler = Sampler(params)
        decoder = self.tokenizer.stream_decoder()
        longest_stop = max((len(s) for s in params.stop), default=0)
        context, generated = list(ids), []
        text, emitted, finish, t_first, stopped = "", 0, "length", None, False
        logits = self._step(owner, context, None)
        pos = len(ids)
        while True:
            if cancel is not None and cancel.is_set():
                finish = "cancelled"
                break
            token = sampler(logits, context)
            if t_first is None:
                t_first = time.perf_counter()
            if token in end_ids:
                finish = "stop"
                break
            generated.append(token)
            context.append(token)
            piece = decoder.step(token)  # "" while the token ends inside a UTF-8 sequence
            if piece:
                text += piece
                # Only the new text and the tail before it can complete a stop string.
                cut = find_stop(text, params.stop, max(0, len(text) - len(piece) - longest_stop + 1))
                if cut >= 0:
                    text, finish, stopped = text[:cut], "stop", True
                    break
                # Hold back anything that may grow into a stop string.
                safe = len(text) - holdback(text, params.stop)
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
            if len(generated) >= params.max_tokens or pos >= self.config.max_context:
                finish = "length"
                break
            logits = self._step(owner, context, pos)
            pos += 1
        if not stopped and (tail := decoder.flush()):
            text += tail
            if (cut := find_stop(text, params.stop, max(0, len(text) - len(tail) - longest_stop + 1))) >= 0:
                text, finish = text[:cut], "stop"
        if len(text) > emitted:
            yield text[emitted:]
        t_end = time.perf_counter()
        first = t_first or t_end
        n = len(generated)
        self._save_in_background()
        return GenerationResult(
            text=text, finish_reason=finish, prompt_tokens=len(ids), completion_tokens=n,
            ttft_s=first - t0, decode_tokens_per_s=(n - 1) / (t_end - first) if n > 1 and t_end > first else 0.0,
            total_s=t_end - t0, token_ids=tuple(generated),
        )

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
