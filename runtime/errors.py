"""Errors the runtime raises for bad input: each names the bad value and what was expected."""


class EdgegenRuntimeError(Exception):
    """Base of the runtime's user-facing errors; the CLI prints the message and exits with `exit_code`."""

    exit_code = 2


class ArtifactError(EdgegenRuntimeError):
    """A model file that is missing, truncated, not GGUF, or uses an unsupported architecture or tensor type."""


class GenerationError(EdgegenRuntimeError):
    """A bad generation request: empty prompt, prompt longer than the context, sampling values out of range."""


class PromptTooLong(GenerationError):
    """A prompt with no room left in the model's context (TextGenerator.encode_prompt, stream_ids)."""


class OnnxModelError(EdgegenRuntimeError):
    """An ONNX file or input that edgegen cannot run: not ONNX, opset too old, an unsupported op, a bad input."""


def shown(value: object, limit: int = 60) -> str:
    """A value from a file as an error message quotes it: repr (so control characters and newlines are escaped and
    the message stays one line), cut to `limit` characters: a corrupt file's 'name' may be megabytes of bytes."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def shown_name(name: str) -> str:
    """A tensor or key name as a message prints it: as it is when printable (the usual case, `blk.0.ffn_up.weight`),
    else shown()."""
    return name if name.isprintable() and len(name) <= 64 else shown(name)
