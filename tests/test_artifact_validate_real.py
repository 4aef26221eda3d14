"""The shipped SmolLM2-135M-Instruct file broken the ways the issue's 125 variants broke it, through the real CLI in a
child process (so a warning printed by any library, a traceback or a signal shows): exit 2 and one line naming the
field; and generated changes to its header through the library. The tiny-model version is test_artifact_validate.py.
"""
from __future__ import annotations

import copy
import math

import gguf_surgery as surgery
import pytest
from cli_helpers import assert_clean_error, edgegen
from gguf import GGUFValueType as V
from hypothesis import HealthCheck, given, settings
from test_artifact_validate import apply, check_consumers, mutations

from edgegen.runtime.artifact.reader import default_model_path

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def smollm2():
    return surgery.read(default_model_path())


def _tokens(parts: surgery.Parts, keep: int) -> None:
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        etype, items = parts.metadata[key][1]
        parts.metadata[key] = (V.ARRAY, (etype, list(items)[:keep]))


def _flip_merge(parts: surgery.Parts) -> None:
    etype, merges = parts.metadata["tokenizer.ggml.merges"][1]
    merges = list(merges)
    merges[4321] = merges[4321][:-1] + chr(ord(merges[4321][-1]) ^ 0x01)  # one flipped bit in one of ~49k strings
    parts.metadata["tokenizer.ggml.merges"] = (V.ARRAY, (etype, merges))


def _relabel(parts: surgery.Parts, from_type: int, to_type: int) -> None:
    next(t for t in parts.tensors if t.type_id == from_type).type_id = to_type


CASES = [
    ("alignment-0", lambda p: p.set("general.alignment", 0, V.UINT32), "'general.alignment' is 0"),
    ("alignment-7", lambda p: p.set("general.alignment", 7, V.UINT32), "'general.alignment' is 7"),
    ("rope-dim-1000", lambda p: p.set("llama.rope.dimension_count", 1000), "'llama.rope.dimension_count' is 1000"),
    ("eps-nan", lambda p: p.set("llama.attention.layer_norm_rms_epsilon", math.nan), "layer_norm_rms_epsilon' is nan"),
    ("rope-base-0", lambda p: p.set("llama.rope.freq_base", 0.0), "'llama.rope.freq_base' is 0.0"),
    ("vocabulary-cut-short", lambda p: _tokens(p, 40000), "'tokenizer.ggml.tokens' has 40000 tokens"),
    ("vocabulary-of-2", lambda p: _tokens(p, 2), "'tokenizer.ggml.tokens' has 2 tokens"),
    ("one-flipped-merge", _flip_merge, "'tokenizer.ggml.merges' entry 4321"),
    ("q4_1-as-q4_0", lambda p: _relabel(p, 3, 2), "has offset"),
    ("f32-as-f16", lambda p: _relabel(p, 0, 1), "has offset"),
    ("offset-plus-1", lambda p: setattr(p.tensors[5], "offset", p.tensors[5].offset + 1), "has offset"),
]


@pytest.mark.parametrize("change,needle", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_the_cli_refuses_each_broken_smollm2_in_one_line(smollm2, tmp_path, change, needle):
    parts = copy.deepcopy(smollm2)
    change(parts)
    bad = surgery.write(parts, tmp_path / "broken.gguf")
    assert_clean_error(edgegen("generate", "--model", str(bad), "--max-tokens", "2", "Hi", timeout=300), needle)
    info = edgegen("info", str(bad), timeout=300)
    assert_clean_error(info, needle)
    if info.stdout:
        assert info.stdout.strip().splitlines()[-1].startswith("runnable here: no (")


@pytest.fixture(scope="module")
def smollm2_file(smollm2, tmp_path_factory):
    return surgery.write(smollm2, tmp_path_factory.mktemp("smollm2") / "smollm2.gguf")  # byte for byte the shipped one


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
def test_generated_changes_to_the_smollm2_header_open_and_describe_cleanly(smollm2, smollm2_file, tmp_path,
                                                                          mutation):
    check_consumers(apply(smollm2_file, tmp_path / "fuzz.gguf", mutation, smollm2), generate=False)
