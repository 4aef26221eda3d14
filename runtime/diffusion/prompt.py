"""Digit prompts for the MNIST diffusion model: '7', 'seven', 'a 7', 'the number seven' -> 7."""
from __future__ import annotations

from edgegen.runtime.errors import GenerationError

DIGIT_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")


def parse_prompt(prompt: str) -> int:
    """The digit a prompt asks for: '7', 'seven', 'Seven', 'a 7', 'digit seven', 'the number 7' -> 7."""
    words = [w for w in str(prompt).strip().lower().split() if w not in ("a", "an", "the")]
    if words and words[0] in ("digit", "number"):
        words = words[1:]
    if len(words) == 1:
        w = words[0]
        if len(w) == 1 and "0" <= w <= "9":  # not str.isdigit(): it accepts '²', which int() refuses
            return int(w)
        if w in DIGIT_WORDS:
            return DIGIT_WORDS.index(w)
    raise GenerationError(f"prompt {prompt!r} is not a digit: expected 0-9 or a word zero..nine (e.g. '7' or 'seven')")
