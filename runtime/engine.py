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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
from tinygrad import Device, Tensor, TinyJit, UOp

from models.llama import Llama, LlamaConfig
from runtime.chat import render_chat, validate_messages
from runtime.errors import ArtifactError, GenerationError
from runtime.loader import GGUFWeights, build_llama
from runtime.model_file import ModelFile, open_model
from runtime.quant import embedding_rows
from runtime.sampling import Sampler, SamplingParams, find_stop, holdback
from runtime.tokenizer import load_tokenizer

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


def _resolve_device(device: str | None) -> str:
    if device is None:
        return Device.DEFAULT
    name = device.upper()
    try:
        Device[name]  # opens the backend: fails here if its compiler or driver is missing
    except Exception as e:  # noqa: BLE001 - tinygrad raises many kinds of errors for an unusable backend
        raise ArtifactError(f"tinygrad device {device!r} is not usable here: {type(e).__name__}: {e}") from e
    Device.DEFAULT = name
    return name


class TextGenerator:
    def __init__(self, model_file: ModelFile, model: Llama, weights: GGUFWeights, device: str) -> None:
        self.model_file, self.model, self.weights, self.device = model_file, model, weights, device
        self.config: LlamaConfig = model.cfg
        self.tokenizer = load_tokenizer(model_file)
        self.chat_template: str | None = model_file.get("tokenizer.chat_template")
        self._embedding = model_file.tensors["token_embd.weight"]
        self._lock = threading.Lock()
        self._start = UOp.variable("start_pos", 0, self.config.max_context - 1)
        self._last = UOp.variable("last", 0, max(PREFILL_BUCKETS) - 1)
        self._decode_jit = TinyJit(self._decode_step)
        self._prefill_jits = {b: TinyJit(self._prefill_step) for b in PREFILL_BUCKETS}
        self._end_ids = self._end_of_turn_ids()
        model.allocate_cache(1, device)

    @classmethod
    def load(cls, model: str | os.PathLike = "default", device: str | None = None,
             max_context: int | None = DEFAULT_CONTEXT) -> "TextGenerator":
        """Open and validate the file, then repack its weights for the device. Raises ArtifactError."""
        mf = open_model(model)
        dev = _resolve_device(device)
        if "token_embd.weight" not in mf.tensors:
            raise ArtifactError(f"{mf.path.name}: tensor token_embd.weight is missing")
        llama, weights = build_llama(mf, dev, max_context)
        log.info("loaded %s on %s: %d layers, %d MB packed", mf.path.name, dev, llama.cfg.n_layers,
                 mf.size_bytes // 2**20)
        return cls(mf, llama, weights, dev)

    @property
    def path(self) -> Path:
        return self.model_file.path

    # ---- model steps -------------------------------------------------------------------------------------------
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
        if bucket is None or bucket > self.config.max_context:
            # Longer than every bucket: one exact-size graph (compiled for this length only).
            h = Tensor(self._embed(ids)[None]).realize()
            return self.model(h, 0, logits_at=n - 1).realize().numpy().reshape(-1)
        emb = np.zeros((1, bucket, self.config.dim), dtype=np.float32)
        emb[0, :n] = self._embed(ids)
        return self._prefill_jits[bucket](Tensor(emb).realize(), self._last.bind(n - 1)).numpy().reshape(-1)

    def _decode(self, token: int, pos: int) -> np.ndarray:
        h = Tensor(self._embed([token])[None]).realize()
        return self._decode_jit(h, self._start.bind(pos)).numpy().reshape(-1)

    def logits(self, token_ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of one causal forward pass (T, vocab), for evaluation."""
        ids = list(token_ids)
        if not ids or len(ids) > self.config.max_context:
            raise GenerationError(f"logits() needs 1 to {self.config.max_context} tokens, got {len(ids)}")
        with self._lock:
            h = Tensor(self._embed(ids)[None]).realize()
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
        if not ids:
            raise GenerationError("the prompt encodes to no tokens")
        if len(ids) >= self.config.max_context:
            raise GenerationError(
                f"the prompt is {len(ids)} tokens, longer than the context of {self.config.max_context} "
                f"(at least one token must be left to generate)"
            )
        return ids

    # ---- generation --------------------------------------------------------------------------------------------
    def stream(self, prompt: str | list[dict], params: SamplingParams | None = None, chat: bool = True,
               cancel: threading.Event | None = None) -> TextStream:
        """Validate now (errors raise here, before any compute), then generate lazily as the stream is read."""
        params = (params or SamplingParams()).validate()
        ids = self.encode_prompt(prompt, chat)
        stream = TextStream(iter(()))
        stream._pieces = self._run(ids, params, cancel, stream)
        return stream

    def generate(self, prompt: str | list[dict], params: SamplingParams | None = None, chat: bool = True,
                 cancel: threading.Event | None = None) -> GenerationResult:
        stream = self.stream(prompt, params, chat, cancel)
        for _ in stream:
            pass
        assert stream.result is not None
        return stream.result

    def _run(self, ids: list[int], params: SamplingParams, cancel: threading.Event | None,
             stream: TextStream) -> Iterator[str]:
        with self._lock:
            t0 = time.perf_counter()
            sampler = Sampler(params)
            context, generated = list(ids), []
            emitted, finish, t_first = 0, "length", None
            logits = self._prefill(ids)
            pos = len(ids)
            text = ""
            while True:
                if cancel is not None and cancel.is_set():
                    finish = "cancelled"
                    break
                token = sampler(logits, context)
                if t_first is None:
                    t_first = time.perf_counter()
                if token in self._end_ids:
                    finish = "stop"
                    break
                generated.append(token)
                context.append(token)
                text = self.tokenizer.decode(generated)
                cut = find_stop(text, params.stop)
                if cut >= 0:
                    text, finish = text[:cut], "stop"
                    break
                # Hold back an incomplete UTF-8 sequence and anything that may grow into a stop string.
                safe = len(text) - holdback(text, params.stop)
                while safe > emitted and text[safe - 1] == "\ufffd":
                    safe -= 1
                if safe > emitted:
                    yield text[emitted:safe]
                    emitted = safe
                if len(generated) >= params.max_tokens or pos >= self.config.max_context:
                    finish = "length"
                    break
                logits = self._decode(token, pos)
                pos += 1
            if len(text) > emitted:
                yield text[emitted:]
            t_end = time.perf_counter()
            first = t_first or t_end
            n = len(generated)
            stream.result = GenerationResult(
                text=text, finish_reason=finish, prompt_tokens=len(ids), completion_tokens=n,
                ttft_s=first - t0, decode_tokens_per_s=(n - 1) / (t_end - first) if n > 1 and t_end > first else 0.0,
                total_s=t_end - t0, token_ids=tuple(generated),
            )
