"""Errors the runtime raises for bad input: each names the bad value and what was expected."""


class EdgegenRuntimeError(Exception):
    """Base of the runtime's user-facing errors; the CLI prints the message and exits with `exit_code`."""

    exit_code = 2


class ArtifactError(EdgegenRuntimeError):
    """A model file that is missing, truncated, not GGUF, or uses an unsupported architecture or tensor type."""


class GenerationError(EdgegenRuntimeError):
    """A bad generation request: empty prompt, prompt longer than the context, sampling values out of range."""


class OnnxModelError(EdgegenRuntimeError):
    """An ONNX file or input that edgegen cannot run: not ONNX, opset too old, an unsupported op, a bad input."""
