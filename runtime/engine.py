"""Text generation on tinygrad: load a GGUF, prefill the prompt in one batch, decode under TinyJit, stream text.

    gen = TextGenerator.load("default")
    for piece in gen.stream("Why is the sky blue?", SamplingParams(max_tokens=64)):
        print(piece, end="", flush=True)
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tinygrad import Tensor, TinyJit, UOp

from edgegen.models.llama import Llama, LlamaConfig
from edgegen.runtime import jit_cache as jit_cache_store
from edgegen.runtime.backend import resolve_device
from edgegen.runtime.chat import render_chat, validate_messages
from edgegen.runtime.cpu_replay import CPUReplay
from edgegen.runtime.errors import ArtifactError, GenerationError
from edgegen.runtime.loader import GGUFWeights, build_llama, config_from_gguf
from edgegen.runtime.model_file import ModelFile, open_model
from edgegen.runtime.quant import embedding_rows
from edgegen.runtime.sampling import Sampler, SamplingParams, find_stop, holdback
from edgegen.runtime.tinygrad_seam import TINYGRAD_LOCK, write_buffer
from edgegen.runtime.tokenizer import load_tokenizer

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 1024
# Prompts are padded to one of these lengths so that a handful of prefill graphs serve every prompt (each graph is
# compiled once, then replayed by TinyJit); padded positions write cache rows that decode overwrites before reading.
PREFILL_BUCKETS = (16, 32, 64, 128, 256, 512)
# Token strings that end a turn in the chat formats we know (llama.cpp calls these end-of-generation tokens).
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>", "<end_of_turn>")


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
    """Iterate for text deltas; `result` is set once the iteration has finished."""

    def __init__(self, pieces: Iterator[str]) -> None:
        self._pieces = pieces
        self.result: GenerationResult | None = None

    def __iter__(self) -> Iterator[str]:
        return self._pieces


class TextGenerator:
    """One model on one tinygrad device. Thread-safe: every compute step holds runtime.tinygrad_seam.TINYGRAD_LOCK,
    and no lock is held while a stream waits for its consumer, so a stream abandoned mid-way blocks nobody."""

    def __init__(self, model_file: ModelFile, device: str, max_context: int | None = DEFAULT_CONTEXT,
                 jit_cache: bool = True) -> None:
        self.model_file, self.device = model_file, device
        self.config: LlamaConfig = config_from_gguf(model_file, max_context)
        self.tokenizer = load_tokenizer(model_file)
        self.chat_template: str | None = model_file.get("tokenizer.chat_template")
        self._embedding = model_file.tensors["token_embd.weight"]
        self._lock = TINYGRAD_LOCK
        self._model: Llama | None = None
        self._weights: GGUFWeights | None = None
        self._start = UOp.variable("start_pos", 0, self.config.max_context - 1)
        self._last = UOp.variable("last", 0, max(PREFILL_BUCKETS) - 1)
        self._end_ids = self._end_of_turn_ids()
        # The stream whose tokens the KV cache holds now; another stream that resumes re-runs its context first.
        self._cache_owner: object | None = None
        self._probe_token = int(self.tokenizer.bos_id or 0)
        self._cache_key = jit_cache_store.cache_key(model_file.path, device, self.config.max_context) \
            if jit_cache else None
        with self._lock:
            self._new_graphs()
            self._graphs_from_disk = False
            self._probe: np.ndarray | None = None  # decode logits for the probe token at position 0
            if self._cache_key is not None and (graphs := jit_cache_store.load(self._cache_key)) is not None:
                self._install_graphs(graphs)
            self._saved_graphs = self._captured_names()

    @classmethod
    def load(cls, model: str | os.PathLike = "default", device: str | None = None,
             max_context: int | None = DEFAULT_CONTEXT, jit_cache: bool = True) -> TextGenerator:
        """Open and validate the file, then prepare generation on the device. Raises ArtifactError.

        device: a tinygrad backend name, or None for runtime.backend.default_backend(). jit_cache: reuse
        decode/prefill graphs captured by an earlier process for this file (see runtime.jit_cache); without a cache
        entry the weights are repacked from the GGUF and the graphs captured on first use."""
        mf = open_model(model)
        dev = resolve_device(device)
        if "token_embd.weight" not in mf.tensors:
            raise ArtifactError(f"{mf.path.name}: tensor token_embd.weight is missing")
        gen = cls(mf, dev, max_context, jit_cache)
        if not gen._graphs_from_disk:
            with gen._lock:
                gen.model  # noqa: B018 - repack the weights now, so a bad tensor fails at load, not mid-request
        log.info("loaded %s on %s (%d MB packed, graphs %s)", mf.path.name, dev, mf.size_bytes // 2**20,
                 "from the JIT cache" if gen._graphs_from_disk else "captured on first use")
        return gen

    # ---- the model and its captured graphs ---------------------------------------------------------------------
    @property
    def model(self) -> Llama:
        """The tinygrad model, with weights repacked from the GGUF; built on first use."""
        if self._model is None:
            self._model, self._weights = build_llama(self.model_file, self.device, self.config.max_context)
            self._model.allocate_cache(1, self.device)
            self.model_file.release_pages()
        return self._model

    @property
    def weights(self) -> GGUFWeights:
        self.model  # noqa: B018
        assert self._weights is not None
        return self._weights

    def _new_graphs(self) -> None:
        self._decode_input: Tensor | None = None
        self._replay: CPUReplay | None = None  # direct kernel calls for the decode graph, once it is captured
        self._replay_tried = False
        self._unverified: set[str] = set()  # graphs loaded from disk that have not yet matched the saved probe
        # cnt = 1: capture on the first call. TinyJit's default first call runs the graph eagerly without
        # recording it, which in a fresh process costs as much Python scheduling time as the capture itself.
        self._decode_jit = TinyJit(self._decode_step)
        self._prefill_jits = {b: TinyJit(self._prefill_step) for b in PREFILL_BUCKETS}
        for jit in (self._decode_jit, *self._prefill_jits.values()):
            jit.cnt = 1

    def _install_graphs(self, graphs: dict) -> None:
        if "decode" not in graphs or not isinstance(graphs.get("probe"), np.ndarray):
            return
        self._decode_input = None
        self._decode_jit.captured, self._decode_jit.cnt = graphs["decode"], 2
        for bucket, captured in graphs.get("prefill", {}).items():
            if bucket in self._prefill_jits:
                self._prefill_jits[bucket].captured, self._prefill_jits[bucket].cnt = captured, 2
        self._probe = graphs["probe"]
        self._graphs_from_disk = True
        self._unverified = self._captured_names()

    def _own_graphs(self, reason: str = "the JIT cache lacks a graph needed now") -> None:
        """Graphs loaded from disk own their KV cache and weights; anything that must run the Python model (a
        prefill length with no cached graph, eval) drops them and recaptures from the model, so all share one
        cache."""
        if self._graphs_from_disk:
            log.info("%s: recapturing the graphs from the model", reason)
            self._new_graphs()
            self._graphs_from_disk = False
            self._saved_graphs = set()
            self._cache_owner = None
            self._probe = None  # the next save computes its probe from the recaptured graph, not the loaded file

    def _captured_names(self) -> set[str]:
        names = {"decode"} if self._decode_jit.captured is not None else set()
        return names | {f"prefill{b}" for b, j in self._prefill_jits.items() if j.captured is not None}

    def _save_graphs(self) -> None:
        names = self._captured_names()
        if self._cache_key is None or "decode" not in names or names <= self._saved_graphs:
            return
        if self._probe is None:
            self._probe = self._decode_probe()
        graphs = {"decode": self._decode_jit.captured, "probe": self._probe,
                  "prefill": {b: j.captured for b, j in self._prefill_jits.items() if j.captured is not None}}
        if jit_cache_store.save(self._cache_key, graphs) is not None:
            self._saved_graphs = names

    # ---- checking graphs that skip TinyJit's own path ----------------------------------------------------------
    def _decode_probe(self) -> np.ndarray:
        """Decode logits for the probe token alone at position 0: they depend only on the weights (row 0 of the KV
        cache is written before it is read, and every request rewrites the rows it reads)."""
        self._write_decode_input(self._embed([self._probe_token])[None])  # (1, 1, dim)
        self._cache_owner = None  # the probe rewrote cache row 0
        return self._decode_jit(self._decode_input, self._start.bind(0)).numpy().reshape(-1)

    @staticmethod
    def _same_logits(a: np.ndarray, b: np.ndarray) -> bool:
        """Equal up to float reassociation between kernels (prefill and decode differ in summation order)."""
        if a.shape != b.shape or not np.isfinite(a).all():
            return False
        return int(a.argmax()) == int(b.argmax()) and float(np.abs(a - b).max()) <= 1e-3 * float(np.abs(b).max()) + 1e-3

    def _verify_loaded(self, name: str, run: Callable[[], tuple[np.ndarray, np.ndarray]]) -> np.ndarray | None:
        """First use of a graph loaded from disk: `run()` returns (its result, what TinyJit computed for the same
        input). Agreement returns the result; a mismatch or a crash deletes the cache entry, recaptures from the
        model and returns None."""
        try:
            got, want = run()
            ok, why = self._same_logits(got, want), "its logits differ from TinyJit's"
        except Exception as e:  # noqa: BLE001 - a graph that fails to replay is a bad cache entry, not a bad request
            got, ok, why = None, False, f"replaying it failed ({type(e).__name__}: {e})"
        if ok:
            self._unverified.discard(name)
            return got
        log.warning("the %s graph loaded from the JIT cache is not usable: %s; dropping the cache entry", name, why)
        if self._cache_key is not None:
            jit_cache_store.remove(self._cache_key)
        self._own_graphs("a graph from the JIT cache failed its check")
        return None

    def _checked_disk_prefill(self, ids: list[int], bucket: int) -> np.ndarray | None:
        """A loaded prefill graph's first use: the decode graph (checked against the saved probe first) then
        recomputes the last prompt position from the cache rows the prefill wrote; both must agree. Costs one
        decode step, not a second prefill. None when a check failed and the caller must use the model."""
        assert self._probe is not None
        probe = self._probe
        if "decode" in self._unverified and self._verify_loaded("decode", lambda: (self._decode_probe(), probe)) is None:
            return None
        name = f"prefill{bucket}"
        if name not in self._unverified:
            return self._run_prefill_graph(ids, bucket)
        return self._verify_loaded(name, lambda: (self._run_prefill_graph(ids, bucket),
                                                  self._decode(ids[-1], len(ids) - 1)))

    @property
    def path(self) -> Path:
        return self.model_file.path

    # ---- model steps (callers hold self._lock) -----------------------------------------------------------------
    def _decode_step(self, h: Tensor, start_pos: UOp) -> Tensor:
        return self.model(h, start_pos).realize()  # (1, 1, vocab)

    def _prefill_step(self, h: Tensor, last: UOp) -> Tensor:
        return self.model(h, 0, logits_at=last).realize()  # (1, 1, vocab)

    def _embed(self, ids: list[int]) -> np.ndarray:
        return embedding_rows(self._embedding, ids)  # (T, dim)

    def _prefill(self, ids: list[int]) -> np.ndarray:
        """Run the prompt from position 0 in one batch; return the logits after its last token."""
        n = len(ids)
        bucket = next((b for b in PREFILL_BUCKETS if b >= n), None)
        if bucket is None or bucket > self.config.max_context or self._prefill_jits[bucket].captured is None:
            self._own_graphs()  # this prefill will be captured from the Python model (a no-op unless from disk)
        elif self._graphs_from_disk and (checked := self._checked_disk_prefill(ids, bucket)) is not None:
            return checked
        if bucket is None or bucket > self.config.max_context:
            # Longer than every bucket: one exact-size graph (compiled for this length only).
            h = Tensor(self._embed(ids)[None], device=self.device).realize()
            return self.model(h, 0, logits_at=n - 1).realize().numpy().reshape(-1)
        return self._run_prefill_graph(ids, bucket)

    def _run_prefill_graph(self, ids: list[int], bucket: int) -> np.ndarray:
        emb = np.zeros((1, bucket, self.config.dim), dtype=np.float32)
        emb[0, :len(ids)] = self._embed(ids)
        x = Tensor(emb, device=self.device).realize()
        return self._prefill_jits[bucket](x, self._last.bind(len(ids) - 1)).numpy().reshape(-1)

    def _write_decode_input(self, emb: np.ndarray) -> None:
        if self._decode_input is None:
            # One persistent input buffer: replays read it in place.
            self._decode_input = Tensor(emb, device=self.device).realize()
        else:
            write_buffer(self._decode_input, emb)

    def _decode(self, token: int, pos: int) -> np.ndarray:
        self._write_decode_input(self._embed([token])[None])  # (1, 1, dim)
        if self._replay is not None:
            self._replay({"start_pos": pos})
            return self._decode_jit.captured.ret.numpy().reshape(-1)
        out = self._decode_jit(self._decode_input, self._start.bind(pos)).numpy().reshape(-1)
        if self._decode_jit.captured is not None and not self._replay_tried:
            self._replay_tried = True
            self._replay = CPUReplay.build(self._decode_jit, (self._decode_input, self._start.bind(pos)))
            if self._replay is not None:
                # The same step again through the direct calls (it rewrites the same cache row): both must agree.
                self._replay({"start_pos": pos})
                replayed = self._decode_jit.captured.ret.numpy().reshape(-1)
                if not self._same_logits(replayed, out):
                    log.warning("direct CPU replay disagrees with TinyJit (max |diff| %.3g); using TinyJit",
                                float(np.abs(replayed - out).max()))
                    self._replay = None
        return out

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of one causal forward pass (T, vocab), for evaluation."""
        ids = list(token_ids)
        if not ids or len(ids) > self.config.max_context:
            raise GenerationError(f"logits() needs 1 to {self.config.max_context} tokens, got {len(ids)}")
        with self._lock:
            self._own_graphs()
            self._cache_owner = None
            h = Tensor(self._embed(ids)[None], device=self.device).realize()
            return self.model(h, 0, last_only=False).realize().numpy().reshape(len(ids), -1)

    # ---- prompts -----------------------------------------------------------------------------------------------
    def render_chat(self, messages: list[dict]) -> str:
        tok = self.tokenizer
        bos = self._token_text(tok.bos_id)
        eos = self._token_text(tok.eos_id)
        return render_chat(self.chat_template, messages, bos_token=bos, eos_token=eos)

    def _token_text(self, token_id: int | None) -> str:
        if token_id is None or not 0 <= token_id < len(self.model_file.get("tokenizer.ggml.tokens") or []):
            return ""
        return self.model_file.get("tokenizer.ggml.tokens")[token_id]

    def _end_of_turn_ids(self) -> set[int]:
        tokens = self.model_file.get("tokenizer.ggml.tokens") or []
        ids = {i for i, t in enumerate(tokens) if t in END_OF_TURN}
        if self.tokenizer.eos_id is not None:
            ids.add(int(self.tokenizer.eos_id))
        return ids

    def encode_prompt(self, prompt: str | list[dict], chat: bool = True) -> list[int]:
        """Token ids for a prompt string or a list of chat messages; GenerationError for empty or too long."""
        if isinstance(prompt, list):
            text = self.render_chat(validate_messages(prompt))
        elif isinstance(prompt, str):
            if not prompt.strip():
                raise GenerationError("the prompt is empty")
            text = self.render_chat([{"role": "user", "content": prompt}]) if chat else prompt
        else:
            raise GenerationError(f"prompt must be a string or a list of messages, not {type(prompt).__name__}")
        ids = self.tokenizer.encode(text)
        self._check_prompt_length(len(ids))
        return ids

    def _check_prompt_length(self, n: int) -> None:
        if n == 0:
            raise GenerationError("the prompt encodes to no tokens")
        if n >= self.config.max_context:
            raise GenerationError(
                f"the prompt is {n} tokens, longer than the context of {self.config.max_context} "
                f"(at least one token must be left to generate)"
            )

    # ---- generation --------------------------------------------------------------------------------------------
    def stream(self, prompt: str | list[dict], params: SamplingParams | None = None, chat: bool = True,
               cancel: threading.Event | None = None) -> TextStream:
        """Validate now (errors raise here, before any compute), then generate lazily as the stream is read."""
        params = (params or SamplingParams()).validate()
        return self.stream_ids(self.encode_prompt(prompt, chat), params, cancel)

    def stream_ids(self, ids: list[int], params: SamplingParams | None = None,
                   cancel: threading.Event | None = None, ignore_eos: bool = False) -> TextStream:
        """Generate from exact token ids (benchmarks and evaluation feed the same ids to every runtime).
        ignore_eos: keep going past end-of-turn tokens, so a benchmark always decodes max_tokens."""
        params = (params or SamplingParams()).validate()
        ids = [int(i) for i in ids]
        self._check_prompt_length(len(ids))
        if min(ids) < 0 or max(ids) >= self.config.vocab_size:
            raise GenerationError(f"token ids must be in [0, {self.config.vocab_size}), got {min(ids)}..{max(ids)}")
        stream = TextStream(iter(()))
        stream._pieces = self._run(ids, params, cancel, stream, () if ignore_eos else self._end_ids)
        return stream

    def generate(self, prompt: str | list[dict], params: SamplingParams | None = None, chat: bool = True,
                 cancel: threading.Event | None = None) -> GenerationResult:
        stream = self.stream(prompt, params, chat, cancel)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def _step(self, owner: object, context: list[int], pos: int | None) -> np.ndarray:
        """Logits after `context`: a decode step at `pos` when the KV cache still holds this stream's tokens, else
        (the first step, or another stream ran in between) a prefill of the whole context."""
        with self._lock:
            if pos is None or self._cache_owner is not owner:
                logits = self._prefill(context)
            else:
                logits = self._decode(context[-1], pos)
            self._cache_owner = owner
            return logits

    def _run(self, ids: list[int], params: SamplingParams, cancel: threading.Event | None,
             stream: TextStream, end_ids: set[int] | tuple = ()) -> Iterator[str]:
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
        with self._lock:
            self._save_graphs()
        first = t_first or t_end
        n = len(generated)
        stream.result = GenerationResult(
            text=text, finish_reason=finish, prompt_tokens=len(ids), completion_tokens=n,
            ttft_s=first - t0, decode_tokens_per_s=(n - 1) / (t_end - first) if n > 1 and t_end > first else 0.0,
            total_s=t_end - t0, token_ids=tuple(generated),
        )
