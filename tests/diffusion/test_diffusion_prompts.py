"""Image prompts: any text either names a digit 0-9 or is refused with GenerationError, never another exception."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgegen.runtime.diffusion import parse_prompt
from edgegen.runtime.errors import GenerationError


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20) | st.sampled_from(["²", "٣", "7", " seven ", "a 7", "digit nine", "١٢"]))
def test_any_prompt_is_a_digit_or_a_clear_error(prompt):
    try:
        digit = parse_prompt(prompt)
    except GenerationError as e:
        assert "is not a digit" in str(e)
    else:
        assert 0 <= digit <= 9


@pytest.mark.parametrize("prompt", ["²", "٣", "⁷", "77"])
def test_non_ascii_digits_are_refused(prompt):
    with pytest.raises(GenerationError, match="is not a digit"):
        parse_prompt(prompt)
