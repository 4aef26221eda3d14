"""From a request's prompt to token ids: the file's chat template, the tokenizer and the one prompt-length rule.

Tinygrad-free, so the MQTT engine's admission check and tests without a model run the same code as generation.
"""
from __future__ import annotations

import logging
from typing import Any

from edgegen.runtime.artifact.constants import Key
from edgegen.runtime.artifact.reader import ModelFile
from edgegen.runtime.chat import render_chat, validate_messages
from edgegen.runtime.errors import GenerationError, PromptTooLong

log = logging.getLogger(__name__)
# Token texts that end a turn in the chat templates of the supported families; generation stops at them
END_OF_TURN = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|end|>", "</s>", "<end_of_turn>")


class PromptEncoder:
    """One model file's prompt rules: its chat template, its tokenizer, its context and end-of-turn ids."""

    def __init__(self, model_file: ModelFile, tokenizer: Any, max_context: int) -> None:
        self.model_file, self.tokenizer, self.max_context = model_file, tokenizer, max_context
        self.chat_template: str | None = model_file.get(Key.CHAT_TEMPLATE)
        self._tokens: list[str] = model_file.get(Key.TOKENS) or []
        self._raw_notice_given = False
        self.end_ids = self._end_of_turn_ids()

    def render_chat(self, messages: list[dict]) -> str:
        """The messages in the file's own template; a file without one (a base model) gets the messages' text as
        it is, joined by blank lines, with a one-line notice, instead of a template it was not trained on."""
        if not self.chat_template:
            if not self._raw_notice_given:
                self._raw_notice_given = True
                log.warning("%s has no chat template (a base model): generating from the raw prompt",
                            self.model_file.path.name)
            return "\n\n".join(m["content"] for m in validate_messages(messages))
        tok = self.tokenizer
        return render_chat(self.chat_template, messages, bos_token=self._token_text(tok.bos_id),
                           eos_token=self._token_text(tok.eos_id))

    def _token_text(self, token_id: int | None) -> str:
        return self._tokens[token_id] if token_id is not None and 0 <= token_id < len(self._tokens) else ""

    def _end_of_turn_ids(self) -> set[int]:
        ids = {i for i, t in enumerate(self._tokens) if t in END_OF_TURN}
        # EOS and the end-of-turn / end-of-message ids the file names (Llama 3.x: <|eot_id|>, <|eom_id|>), as the
        # tokenizer read and checked them from the metadata
        tok = self.tokenizer
        ids.update(int(i) for i in (tok.eos_id, tok.eot_id, tok.eom_id) if i is not None)
        return ids

    def encode(self, prompt: str | list[dict], chat: bool = True) -> list[int]:
        """Token ids for a prompt string or a list of chat messages; GenerationError for an empty prompt or bad
        messages, PromptTooLong for one that leaves no room to generate."""
        if isinstance(prompt, list):
            text = self.render_chat(validate_messages(prompt))
        elif isinstance(prompt, str):
            if not prompt.strip():
                raise GenerationError("the prompt is empty")
            text = self.render_chat([{"role": "user", "content": prompt}]) if chat else prompt
        else:
            raise GenerationError(f"prompt must be a string or a list of messages, not {type(prompt).__name__}")
        ids = self.tokenizer.encode(text)
        self.check_length(len(ids))
        return ids

    def check_length(self, n: int) -> None:
        """The one prompt-length rule: at least one token, and one token of the context left to generate."""
        if n == 0:
            raise GenerationError("the prompt encodes to no tokens")
        if n >= self.max_context:
            raise PromptTooLong(f"the prompt is {n} tokens, longer than the context of {self.max_context} "
                                f"(at least one token must be left to generate)")
