"""Chat templates: the Jinja template a GGUF carries (`tokenizer.chat_template`), rendered as Hugging Face does."""
from __future__ import annotations

import functools

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from edgegen.runtime.errors import GenerationError

ROLES = ("system", "user", "assistant", "tool")


def validate_messages(messages: object) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise GenerationError("messages must be a non-empty list of {role, content} objects")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
            raise GenerationError(f"messages[{i}] must be {{'role': one of {', '.join(ROLES)}, 'content': string}}")
    return messages


def _raise_exception(message: str) -> None:
    raise GenerationError(f"chat template rejected the messages: {message}")


@functools.lru_cache(maxsize=8)
def _compiled(template: str):
    """Each template compiled once: compiling is not free (docs/MEASUREMENTS.md) and a model's template never
    changes."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise_exception
    return env.from_string(template)


def render_chat(template: str, messages: list[dict[str, str]], bos_token: str = "", eos_token: str = "") -> str:
    """Render messages with the model's template (sandboxed: templates come from model files). A file without a
    template gets no invented one: TextGenerator.render_chat passes its raw text instead."""
    try:
        return _compiled(template).render(
            messages=validate_messages(messages), add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token
        )
    except TemplateError as e:
        raise GenerationError(f"chat template failed to render: {e}") from e
