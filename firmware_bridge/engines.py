"""The narrow interface the service calls to generate, and its adapter over runtime.engine.TextGenerator.

The service never touches a model: it asks an engine to `check` a request (cheap, before queueing, so a bad prompt
is answered at once) and to `generate` it, streaming text through `emit`. The image engine (the diffusion runtime)
plugs in the same way: the service gets an `ImageEngine` under a model name and answers with a PNG.
"""
from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, Protocol

from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.schema import ImageRequest, TextRequest


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

    def __init__(self, generator: Any):
        self.generator = generator

    @classmethod
    def load(cls, model: str = "default", device: str | None = None, kernels: Any = None) -> RuntimeTextEngine:
        """kernels: runtime.native.options.KernelOptions (`--kernels`/`--threads`), None for the default."""
        from edgegen.runtime.engine import TextGenerator  # imported here so the protocol and tests never load tinygrad

        return cls(TextGenerator.load(model, device=device, kernels=kernels))

    def warm_up(self) -> None:
        """Generate a few tokens so tinygrad compiles (and caches) the prefill and decode kernels now."""
        self.generate(TextRequest(id="warm-up", prompt="Hi", max_tokens=4), threading.Event(), lambda _: None)

    def _prompt(self, request: TextRequest) -> str | list[dict]:
        return list(request.messages) if request.messages is not None else request.prompt  # type: ignore[return-value]

    def _params(self, request: TextRequest) -> Any:
        """The request's sampling as the runtime takes it. schema.parse_sampling checked the same ranges (the runtime's
        constants), so this refuses nothing a parsed request holds; a request built in code gets invalid_sampling."""
        from edgegen.runtime import GenerationError, SamplingParams

        s = request.sampling
        try:
            return SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                  repetition_penalty=s.repetition_penalty, seed=s.seed,
                                  max_tokens=request.max_tokens, stop=s.stop)
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
        """What generate() would refuse, before the request is queued: its sampling and its prompt."""
        self._params(request)
        self._ids(request)

    def generate(self, request: TextRequest, cancel: threading.Event, emit: Callable[[str], None]) -> TextOutcome:
        stream = self.generator.stream_ids(self._ids(request), self._params(request), cancel=cancel)
        for piece in stream:
            emit(piece)
        r = stream.result
        return TextOutcome(text=r.text, finish_reason=r.finish_reason, prompt_tokens=r.prompt_tokens,
                           completion_tokens=r.completion_tokens, tokens_per_s=r.decode_tokens_per_s)


class RuntimeImageEngine:
    """An `ImageEngine` over `runtime.diffusion.ImageGenerator`: a digit prompt in, one PNG out."""

    def __init__(self, generator: Any, steps: int = 20, guidance: float | None = None, scale: int = 4):
        from edgegen.runtime.diffusion import DEFAULT_GUIDANCE

        self.generator, self.steps, self.scale = generator, steps, scale
        self.guidance = DEFAULT_GUIDANCE if guidance is None else guidance

    @classmethod
    def load(cls, model: str | None = None, device: str | None = None) -> RuntimeImageEngine:
        from edgegen.runtime.diffusion import DEFAULT_UNET, ImageGenerator

        return cls(ImageGenerator.load(model or DEFAULT_UNET, device=device))

    def warm_up(self) -> None:
        """One short sample so tinygrad compiles the U-Net's kernels before the device announces `online`."""
        self.generate(ImageRequest(id="warm-up", prompt="0", steps=1), threading.Event())

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
