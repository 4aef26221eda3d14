"""The narrow interface the service calls to generate, and its adapter over runtime.engine.TextGenerator.

The service never touches a model: it asks an engine to `check` a request (cheap, before queueing, so a bad prompt
is answered at once) and to `generate` it, streaming text through `emit`. The image engine (the diffusion runtime)
plugs in the same way: the service gets an `ImageEngine` under a model name and answers with a PNG.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import ImageRequest, TextRequest

if TYPE_CHECKING:
    from edgegen.runtime.engine import TextGenerator
    from edgegen.runtime.native.options import KernelOptions


@dataclasses.dataclass(frozen=True)
class TextOutcome:
    text: str
    finish_reason: str  # "stop" | "length" | "cancelled"
    prompt_tokens: int
    completion_tokens: int
    tokens_per_s: float


@dataclasses.dataclass(frozen=True)
class ImageOutcome:
    png: bytes
    finish_reason: str = "stop"


class TextEngine(Protocol):
    def check(self, request: TextRequest) -> None:
        """Raise RequestError (prompt_too_long, invalid_sampling) for a request this engine cannot run."""

    def generate(self, request: TextRequest, cancel: threading.Event, emit: Callable[[str], None]) -> TextOutcome:
        """Run `request`, calling `emit` with each text delta in order; stop early when `cancel` is set."""


class ImageEngine(Protocol):
    def check(self, request: ImageRequest) -> None: ...

    def generate(self, request: ImageRequest, cancel: threading.Event) -> ImageOutcome: ...


class RuntimeTextEngine:
    """A `TextEngine` over `runtime.engine.TextGenerator` (contract: docs/RUNTIME_API.md)."""

    def __init__(self, generator: TextGenerator, slots: int = 1):
        """slots > 1: up to that many requests decode together (runtime.batch, continuous batching); with one,
        concurrent calls take turns (they would otherwise evict each other's KV cache at every step)."""
        self.generator, self.slots = generator, slots
        self._runner = generator.batched(slots) if slots > 1 else generator
        self._turns = threading.Lock() if slots == 1 else None

    @classmethod
    def load(cls, model: str = "default", device: str | None = None, kernels: KernelOptions | None = None,
             slots: int | None = 1) -> RuntimeTextEngine:
        """kernels: runtime.native.options.KernelOptions (`--kernels`/`--threads`), None for the default.
        slots: requests decoded together; None: auto_slots."""
        from edgegen.runtime.backend import resolve_device
        from edgegen.runtime.engine import TextGenerator  # imported here so the protocol and tests never load tinygrad
        from edgegen.runtime.native.options import KernelOptions

        if slots is None:
            slots = auto_slots(model, resolve_device(device), kernels or KernelOptions())
        # Several slots decode with graphs captured from the model (runtime.graphs.allocate_slots): graphs from
        # the JIT cache would be loaded only to be dropped.
        return cls(TextGenerator.load(model, device=device, kernels=kernels, jit_cache=slots == 1), slots)

    def warm_up(self) -> None:
        """Generate a few tokens so tinygrad compiles (and caches) the prefill and decode kernels now; with several
        slots, as many requests at once, so that every batch width's decode graph is captured too."""
        threads = [threading.Thread(target=self.generate, args=(TextRequest(id=f"warm-up-{i}", prompt="Hi",
                                                                             max_tokens=2 * self.slots + 2),
                                                                 threading.Event(), lambda _: None))
                   for i in range(self.slots)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    def _prompt(self, request: TextRequest) -> str | list[dict]:
        return list(request.messages) if request.messages is not None else request.prompt  # type: ignore[return-value]

    def _params(self, request: TextRequest) -> Any:
        """The request's sampling as the runtime takes it. schema.parse_sampling checked the same ranges (the runtime's
        constants), so this refuses nothing a parsed request holds; a request built in code gets invalid_sampling."""
        from edgegen.runtime import GenerationError, SamplingParams

        s = request.sampling
        schema = None if request.json_schema is None else json.dumps(request.json_schema)
        try:
            return SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                  repetition_penalty=s.repetition_penalty, seed=s.seed,
                                  max_tokens=request.max_tokens, stop=s.stop, json_schema=schema)
        except GenerationError as e:
            raise RequestError(ErrorCode.INVALID_SAMPLING, str(e)) from e

    def _text_prompt(self, request: TextRequest) -> str | list[dict]:
        prompt = self._prompt(request)
        if not request.chat and isinstance(prompt, list):
            return "\n".join(m["content"] for m in prompt)
        return prompt

    def _ids(self, request: TextRequest) -> list[int]:
        """The prompt's token ids, by the runtime's one prompt rule (TextGenerator.encode_prompt: the chat template,
        and one token of the context left): prompt_too_long, or invalid_request for messages the template refuses."""
        from edgegen.runtime.errors import GenerationError, PromptTooLong

        try:
            return list(self.generator.encode_prompt(self._text_prompt(request), chat=request.chat))
        except PromptTooLong as e:
            raise RequestError(ErrorCode.PROMPT_TOO_LONG, str(e)) from e
        except GenerationError as e:
            raise RequestError(ErrorCode.INVALID_REQUEST, str(e)) from e

    def check(self, request: TextRequest) -> None:
        """What generate() would refuse, before the request is queued: its sampling, its schema and its prompt."""
        from edgegen.runtime.constrain import SchemaError

        params = self._params(request)
        self._ids(request)
        if params.json_schema is not None:
            try:
                self.generator.grammars.grammar(params.json_schema)  # compiled once, kept for generate()
            except SchemaError as e:
                raise RequestError(ErrorCode.INVALID_REQUEST, str(e)) from e

    def generate(self, request: TextRequest, cancel: threading.Event, emit: Callable[[str], None]) -> TextOutcome:
        ids, params = self._ids(request), self._params(request)
        with self._turns or contextlib.nullcontext():
            stream = self._runner.stream_ids(ids, params, cancel=cancel)
            for piece in stream:
                emit(piece)
        r = stream.result
        assert r is not None  # the stream was read to its end
        return TextOutcome(text=r.text, finish_reason=r.finish_reason, prompt_tokens=r.prompt_tokens,
                           completion_tokens=r.completion_tokens, tokens_per_s=r.decode_tokens_per_s)


def auto_slots(model: str, device: str, kernels: KernelOptions) -> int:
    """Requests to decode together by default: as many as the memory free now holds with the model's KV caches at
    the default context (device.planner), at most AUTO_SLOTS; one where the kernels cannot batch rows without
    changing them (tinygrad's generated kernels: runtime.batch)."""
    import psutil

    from edgegen.device.model_open import open_model_facts
    from edgegen.device.planner import max_parallel_that_fits
    from edgegen.runtime.artifact.constants import AUTO_SLOTS, DEFAULT_MAX_CONTEXT

    if not kernels.plan(device).native:
        return 1
    facts = open_model_facts(model).facts
    context = min(DEFAULT_MAX_CONTEXT, facts.max_context)
    fits = max_parallel_that_fits(facts, psutil.virtual_memory().available, context, device.split(":")[0])
    return max(1, min(AUTO_SLOTS, fits))


class RuntimeImageEngine:
    """An `ImageEngine` over `runtime.diffusion.ImageGenerator`: a digit prompt in, one PNG out."""

    def __init__(self, generator: Any, steps: int | None = None, guidance: float | None = None, scale: int = 4):
        self.generator, self.steps, self.scale = generator, steps, scale
        self.guidance = guidance  # None: the model's own

    @classmethod
    def load(cls, model: str | None = None, device: str | None = None) -> RuntimeImageEngine:
        from edgegen.runtime.diffusion import ImageGenerator, model_path

        return cls(ImageGenerator.load(model_path(model), device=device))

    def warm_up(self) -> None:
        """One short sample so tinygrad compiles the U-Net's kernels before the device announces `online`."""
        self.generate(ImageRequest(id="warm-up", prompt="0", steps=1), threading.Event())
        self.generator.save_graphs()  # before `online`: no request waits for it

    def _params(self, request: ImageRequest) -> Any:
        from edgegen.runtime.diffusion import DiffusionParams, parse_prompt
        from edgegen.runtime.errors import GenerationError

        try:
            parse_prompt(request.prompt)
        except GenerationError as e:
            raise RequestError(ErrorCode.INVALID_REQUEST, str(e)) from e
        params = DiffusionParams(steps=request.steps or self.steps, guidance=self.guidance,
                                 seed=0 if request.seed is None else request.seed)
        try:
            params.validate(self.generator.cfg.timesteps)
        except GenerationError as e:
            raise RequestError(ErrorCode.INVALID_SAMPLING, str(e)) from e
        return params

    def check(self, request: ImageRequest) -> None:
        """A prompt that names no digit, or steps / seed out of range."""
        self._params(request)

    def generate(self, request: ImageRequest, cancel: threading.Event) -> ImageOutcome:
        from edgegen.runtime.diffusion import encode_png, parse_prompt, to_uint8

        params = self._params(request)
        for _step, _total, images in self.generator.sample_iter([parse_prompt(request.prompt)], params):
            if cancel.is_set():
                return ImageOutcome(png=b"", finish_reason="cancelled")
            if images is not None:
                return ImageOutcome(png=encode_png(to_uint8(images[0, 0]), self.scale))
        raise RequestError(ErrorCode.INTERNAL, "the sampler ended without an image")
