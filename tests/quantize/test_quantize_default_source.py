"""`default` names the shipped model in `edgegen quantize` as it does in `edgegen generate`."""
from __future__ import annotations

import pytest

from edgegen.quantize.source import load_source
from edgegen.runtime.artifact.reader import default_model_path


@pytest.mark.slow
def test_default_source_is_the_shipped_model():
    source = load_source("default")
    assert source.path == default_model_path()
    assert "token_embd.weight" in source.tensors and len(source.tensors) == 272
