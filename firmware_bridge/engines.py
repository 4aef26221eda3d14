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
        from edgegen.runtime import GenerationError, SamplingParams

        s = request.sampling
        params = SamplingParams(temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                                repetition_penalty=s.repetition_penalty, seed=s.seed, max_tokens=request.max_tokens,
                                stop=s.stop)
        try:
            params.validate()
        except GenerationError as e:
            raise RequestError(ErrorCode.INVALID_SAMPLING, str(e)) from e
        return params

    def _text_prompt(self, request: TextRequest) -> str | list[dict]:
        prompt = self._prompt(request)
        if not request.chat and isinstance(prompt, list):
            return "\n".join(m["content"] for m in prompt)
        return prompt

    def check(self, request: TextRequest) -> None:
        """Sampling ranges, and a prompt whose text alone exceeds the context; cheap (no chat template render)."""
        self._params(request)
        prompt = self._text_prompt(request)
        text = prompt if isinstance(prompt, str) else "\n".join(m["content"] for m in prompt)
        n_tokens, context = len(self.generator.tokenizer.encode(text)), self.generator.config.max_context
        if n_tokens >= context:
            raise RequestError(ErrorCode.PROMPT_TOO_LONG, f"prompt is at least {n_tokens} tokens, the model's "
                               f"context is {context}")

    def _rendered_tokens(self, prompt: str | list[dict], chat: bool) -> int:
        from edgegen.runtime import GenerationError

        try:
            if isinstance(prompt, list) or chat:
                messages = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
                prompt = self.generator.render_chat(messages)
            return len(self.generator.tokenizer.encode(prompt))
        except GenerationError:
            return 0

    def generate(self, request: TextRequest, cancel: threading.Event, emit: Callable[[str], None]) -> TextOutcome:
        from edgegen.runtime import GenerationError

        prompt = self._text_prompt(request)
        try:
            stream = self.generator.stream(prompt, self._params(request), chat=request.chat, cancel=cancel)
        except GenerationError as e:
            # check() counted the text alone; the chat template adds tokens, or refused the messages.
            code = ErrorCode.PROMPT_TOO_LONG if self._rendered_tokens(prompt, request.chat) >= \
                self.generator.config.max_context else ErrorCode.INVALID_REQUEST
            raise RequestError(code, str(e)) from e
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
