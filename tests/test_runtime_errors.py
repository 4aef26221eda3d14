"""Bad input at the library API and the CLI: one clear error line, exit code 2, no traceback."""
from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_clean_error, edgegen
from gguf import GGMLQuantizationType as Q
from tiny_llama import random_weights, write_gguf

from edgegen.runtime import ArtifactError, GenerationError, SamplingParams
from edgegen.runtime.artifact.constants import SUPPORTED_TYPES
from edgegen.runtime.artifact.reader import open_model


def test_missing_file(tmp_path):
    with pytest.raises(ArtifactError, match="not found"):
        open_model(tmp_path / "nope.gguf")
    assert_clean_error(edgegen("info", str(tmp_path / "nope.gguf")), "model file not found")


def test_not_gguf(tmp_path):
    p = tmp_path / "notes.gguf"
    p.write_text("hello, this is not a model")
    assert_clean_error(edgegen("generate", "--model", str(p), "hi"), "is not a GGUF file")


def test_truncated_file(tmp_path, tiny_q4_path):
    data = tiny_q4_path.read_bytes()
    for cut in (10, len(data) // 3, len(data) - 100):
        p = tmp_path / f"cut{cut}.gguf"
        p.write_bytes(data[:cut])
        with pytest.raises(ArtifactError, match="truncated or corrupt"):
            open_model(p)
    assert_clean_error(edgegen("info", str(p)), "truncated or corrupt")


def test_unsupported_architecture(tmp_path):
    p = tmp_path / "bert.gguf"
    write_gguf(p, random_weights(), Q.F32, architecture="bert")
    with pytest.raises(ArtifactError, match="unsupported architecture 'bert'"):
        open_model(p)


def test_unsupported_tensor_type(tmp_path):
    p = tmp_path / "tq2.gguf"
    extra = ("blk.0.extra.weight", np.ones((32, 256), dtype=np.float32), Q.TQ2_0)  # ternary: not run by edgegen
    write_gguf(p, random_weights(), Q.F32, extra_tensor=extra)
    with pytest.raises(ArtifactError, match="unsupported tensor types TQ2_0"):
        open_model(p)
    assert_clean_error(edgegen("generate", "--model", str(p), "hi"), "blk.0.extra.weight", "TQ2_0")
    # `info` describes the file anyway and says why it cannot run here.
    done = edgegen("info", str(p))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == (
        "runnable here: no (unsupported tensor types TQ2_0 (1 tensor: blk.0.extra.weight) "
        f"(supported: {', '.join(t.name for t in SUPPORTED_TYPES)}))")


@pytest.mark.parametrize("field,value,needle", [
    ("temperature", -1.0, "temperature=-1.0"), ("top_k", -3, "top_k=-3"), ("top_p", 0.0, "top_p=0.0"),
    ("top_p", 1.5, "top_p=1.5"), ("max_tokens", 0, "max_tokens=0"), ("repetition_penalty", 0.0, "repetition_penalty"),
    ("seed", -5, "seed=-5"), ("stop", ("",), "stop="), ("temperature", float("nan"), "temperature=nan"),
])
def test_sampling_out_of_range(field, value, needle):
    with pytest.raises(GenerationError, match=needle.replace("(", r"\(").replace("[", r"\[")):
        SamplingParams(**{field: value})


def test_cli_generate_bad_inputs(tiny_q4_path):
    m = str(tiny_q4_path)
    assert_clean_error(edgegen("generate", "--model", m, "   "), "the prompt is empty")
    assert_clean_error(edgegen("generate", "--model", m, "hi", "--temperature", "-2"), "temperature=-2.0")
    assert_clean_error(edgegen("generate", "--model", m, "hi", "--top-p", "3"), "top_p=3.0")
    assert_clean_error(edgegen("generate", "--model", m, "hi", "--max-tokens", "0"), "max_tokens=0")
    assert_clean_error(edgegen("generate", "--model", m, "x" * 200, "--no-chat", "--context", "16"),
                       "longer than the context of 16")
    assert_clean_error(edgegen("generate", "--model", m, "hi", "--context", "1"), "--context=1 is out of range")


def test_token_id_inputs_are_checked(tiny_q4_path):
    from tiny_llama import VOCAB

    from edgegen.runtime.engine import TextGenerator

    gen = TextGenerator.load(tiny_q4_path, max_context=16, jit_cache=False)
    with pytest.raises(GenerationError, match=rf"token ids must be in \[0, {VOCAB}\), got -1\.\.5"):
        gen.stream_ids([5, -1])
    with pytest.raises(GenerationError, match=rf"token ids must be in \[0, {VOCAB}\), got 3\.\.{VOCAB}"):
        gen.stream_ids([3, VOCAB])
    with pytest.raises(GenerationError, match="the prompt encodes to no tokens"):
        gen.stream_ids([])
    with pytest.raises(GenerationError, match="the prompt is 16 tokens, longer than the context of 16"):
        gen.stream_ids([1] * 16)
    with pytest.raises(GenerationError, match=r"logits\(\) needs 1 to 16 tokens, got 17"):
        gen.logits([1] * 17)


@pytest.mark.slow
def test_cli_generate_and_info_on_tiny_model(tiny_q4_path):
    """The whole CLI path runs: load, prefill, JIT decode, stream, stats."""
    proc = edgegen("generate", "--model", str(tiny_q4_path), "abc", "--no-chat", "--max-tokens", "6", "--stats")
    assert proc.returncode == 0, proc.stderr
    assert '"completion_tokens": ' in proc.stderr
    info = edgegen("info", str(tiny_q4_path), "--json")
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["tensor_types"] == {"Q4_1": 15, "F32": 5}  # 2 layers x 7 matrices + embedding; 5 norms
    assert described["config"]["n_layers"] == 2 and described["tokenizer"] == "gpt2"
