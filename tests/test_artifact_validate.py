"""Malformed model files, broken the ways real downloads and bad converters break them, are refused with one line
naming the problem by every consumer (the library's open_model, `edgegen info`, `generate`, `plan`), never a
traceback, a numpy warning or a run that prints garbage; files that stay valid still run.

The tiny decoder written by tests/tiny_arch.py (Q4_1 matrices, F32 norms, a BPE vocabulary with one merge) is the
subject here; tests/test_artifact_validate_real.py does the same to the shipped SmolLM2 file's header.
"""
from __future__ import annotations

import contextlib
import copy
import io
import logging
import math
import warnings
from pathlib import Path

import gguf_surgery as surgery
import numpy as np
import pytest
from gguf import GGUFValueType as V
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tiny_arch import random_weights, shape_for, write_gguf

from edgegen.cli import main as cli_main
from edgegen.runtime.artifact.reader import open_model
from edgegen.runtime.errors import ArtifactError, EdgegenRuntimeError
from edgegen.runtime.model_info import describe
from edgegen.runtime.native.source import c_float, quantize_kernel

Q4_1, Q4_0, Q8_0, BF16, F32, F16 = 3, 2, 8, 30, 0, 1


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    from gguf import GGMLQuantizationType as Q

    s = shape_for("llama")
    path = tmp_path_factory.mktemp("valid") / "tiny.gguf"
    write_gguf(path, s, random_weights(s, seed=11), Q.Q4_1)
    return path


def _set(key: str, value, vtype: V | None = None):
    return lambda p: p.set(key, value, vtype)


def _relabel(from_type: int, to_type: int, which: int = 0):
    def change(p: surgery.Parts) -> None:
        [t for t in p.tensors if t.type_id == from_type][which].type_id = to_type
    return change


def _array(key: str, edit):
    def change(p: surgery.Parts) -> None:
        etype, items = p.metadata[key][1]
        p.metadata[key] = (V.ARRAY, (etype, edit(list(items))))
    return change


def _move(index: int, delta: int | None = None, to: int | None = None):
    def change(p: surgery.Parts) -> None:
        p.tensors[index].offset = p.tensors[to].offset if to is not None else p.tensors[index].offset + (delta or 0)
    return change


def _two_tokens(p: surgery.Parts) -> None:
    for key in ("tokenizer.ggml.tokens", "tokenizer.ggml.token_type"):
        _array(key, lambda items: items[:2])(p)
    del p.metadata["tokenizer.ggml.merges"]


# One case per row of the table: (id, change, text the one error line must contain)
TABLE = [
    ("alignment-0", _set("general.alignment", 0, V.UINT32), "'general.alignment' is 0"),
    ("alignment-7", _set("general.alignment", 7, V.UINT32), "'general.alignment' is 7"),
    ("rope-dim-1000", _set("llama.rope.dimension_count", 1000), "'llama.rope.dimension_count' is 1000"),
    ("rope-dim-odd", _set("llama.rope.dimension_count", 15), "'llama.rope.dimension_count' is 15"),
    ("eps-nan", _set("llama.attention.layer_norm_rms_epsilon", math.nan), "layer_norm_rms_epsilon' is nan"),
    ("eps-negative", _set("llama.attention.layer_norm_rms_epsilon", -1.0), "layer_norm_rms_epsilon' is -1.0"),
    ("rope-base-0", _set("llama.rope.freq_base", 0.0), "'llama.rope.freq_base' is 0.0"),
    ("rope-base-negative", _set("llama.rope.freq_base", -1.0), "'llama.rope.freq_base' is -1.0"),
    ("rope-base-nan", _set("llama.rope.freq_base", math.nan), "'llama.rope.freq_base' is nan"),
    ("rope-base-inf", _set("llama.rope.freq_base", math.inf), "'llama.rope.freq_base' is inf"),
    ("merge-names-missing-token", _array("tokenizer.ggml.merges", lambda m: ["! #"]), "'tokenizer.ggml.merges'"),
    ("merge-result-missing", _array("tokenizer.ggml.tokens", lambda t: t[:-3] + ["x", *t[-2:]]),
     "'tokenizer.ggml.merges' entry 0"),
    ("vocabulary-cut-short", _array("tokenizer.ggml.tokens", lambda t: t[:50]), "'tokenizer.ggml.tokens' has 50"),
    ("vocabulary-of-2", _two_tokens, "'tokenizer.ggml.tokens' has 2 tokens"),
    ("q4_1-as-q4_0", _relabel(Q4_1, Q4_0), "has offset"),
    ("q4_1-as-q8_0", _relabel(Q4_1, Q8_0), "has offset"),
    ("q4_1-as-bf16", _relabel(Q4_1, BF16), "has offset"),
    ("f32-as-f16", _relabel(F32, F16), "has offset"),
    ("last-tensor-smaller-type", lambda p: _shrink_last(p), "bytes follow the last tensor"),
    ("offset-plus-1", _move(3, delta=1), "has offset"),
    ("offset-of-another-tensor", _move(3, to=1), "has offset"),
    ("heads-not-dividing", _set("llama.attention.head_count_kv", 3), "'llama.attention.head_count' is 4"),
    ("yarn-scaling", lambda p: (p.set("llama.rope.scaling.type", "yarn"), p.set("llama.rope.scaling.factor", 4.0)),
     "'llama.rope.scaling.type' is 'yarn'"),
    ("more-layers-than-tensors", _set("llama.block_count", 3), "blk.2.attn_norm.weight is missing"),
    ("fewer-layers-than-tensors", _set("llama.block_count", 1), "belongs to layer 1"),
    ("nan-in-a-norm", lambda p: _poison_norm(p), "non-finite values"),
    ("softcap-negative", _set("llama.final_logit_softcapping", -2.0, V.FLOAT32), "final_logit_softcapping"),
]


def _shrink_last(p: surgery.Parts) -> None:
    last = p.tensors[-1]  # nothing follows it whose offset would tell
    last.type_id = {Q4_1: Q4_0, F32: F16}[last.type_id]


def _poison_norm(p: surgery.Parts) -> None:
    norm = next(t for t in p.tensors if t.name == "output_norm.weight")
    data = bytearray(p.data)
    data[norm.offset:norm.offset + 4] = np.float32(np.nan).tobytes()
    p.data = bytes(data)


def mutate(src: Path, dst: Path, change) -> Path:
    parts = surgery.read(src)
    change(parts)
    return surgery.write(parts, dst)


def run_cli(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli_main(list(argv))
    return code, out.getvalue(), err.getvalue()


def error_lines(stderr: str) -> list[str]:
    return [ln for ln in stderr.splitlines() if ln.strip()]


def test_surgery_round_trips_the_file_byte_for_byte(tiny, tmp_path):
    assert mutate(tiny, tmp_path / "same.gguf", lambda p: None).read_bytes() == tiny.read_bytes()


@pytest.mark.parametrize("change,needle", [c[1:] for c in TABLE], ids=[c[0] for c in TABLE])
def test_each_malformation_is_one_error_line_everywhere(tiny, tmp_path, change, needle):
    bad = mutate(tiny, tmp_path / "bad.gguf", change)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ArtifactError) as refused:
            open_model(bad)
        assert needle in str(refused.value) and str(refused.value).startswith("bad.gguf: ")
        assert "\n" not in str(refused.value)
        for command in (("generate", "--model", str(bad), "--max-tokens", "2", "Hi"), ("info", str(bad)),
                        ("plan", str(bad), "--board", "rpi5-4gb")):
            code, out, err = run_cli(*command)
            assert code == 2, (command, out, err)
            assert len(error_lines(err)) == 1 and needle in err, err  # no warning line before the error
            assert "Traceback" not in err
            if command[0] == "info" and out:  # described as far as it could be read, then the verdict
                assert out.strip().splitlines()[-1].startswith("runnable here: no (") and needle in out


def test_info_describes_a_file_whose_tensors_overlap_and_says_why_it_cannot_run(tiny, tmp_path):
    bad = mutate(tiny, tmp_path / "overlap.gguf", _move(3, to=1))
    info = describe(bad)
    assert info["runnable"] is False and info["config"]["n_layers"] == 2
    assert info["problems"][0].startswith(f"tensor {surgery.read(tiny).tensors[3].name} has offset")


def test_unusual_but_valid_files_run_with_one_notice_at_most(tiny, tmp_path, caplog):
    odd = mutate(tiny, tmp_path / "odd.gguf", lambda p: (p.set("tokenizer.ggml.bos_token_id", 500),
                                                          p.set("tokenizer.ggml.eos_token_id", 900),
                                                          p.set("llama.context_length", 1 << 30)))
    with caplog.at_level(logging.WARNING):
        code, out, err = run_cli("generate", "--model", str(odd), "--no-chat", "--max-tokens", "2", "Hi")
    assert code == 0, err
    notices = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(notices) == 1 and "bos_token_id = 500 is outside the vocabulary" in notices[0], notices
    code, out, err = run_cli("info", str(odd))
    assert code == 0 and out.strip().endswith("runnable here: yes"), (out, err)


def test_non_finite_logits_end_the_request_with_an_error(tiny, tmp_path):
    """A NaN in a matrix's scale is not scanned at load (that would read the whole file): the sampler refuses the
    logits it produces instead of printing whatever argmax picks."""
    def poison(p: surgery.Parts) -> None:
        t = next(t for t in p.tensors if t.name == "blk.0.attn_output.weight")
        data = bytearray(p.data)
        for block in range(64 * 64 // 32):  # every Q4_1 block's f16 scale
            data[t.offset + 20 * block:t.offset + 20 * block + 2] = np.float16(np.inf).tobytes()
        p.data = bytes(data)

    bad = mutate(tiny, tmp_path / "inf-scales.gguf", poison)
    code, out, err = run_cli("generate", "--model", str(bad), "--kernels", "tinygrad", "--no-chat", "--max-tokens",
                             "2", "Hi")
    assert code == 2 and len(error_lines(err)) == 1 and "non-finite logits" in err, err


# ---- the native kernels' C source ------------------------------------------------------------------------------

@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_any_finite_float32_renders_as_the_exact_c_literal(value):
    literal = c_float(value, "x")
    assert literal.endswith("f") and float.fromhex(literal[:-1]) == float(np.float32(value))


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 1e39])
def test_non_finite_constants_are_refused_before_any_source_is_built(value):
    with pytest.raises(ValueError, match="the RMSNorm epsilon is"):
        quantize_kernel(1, 64, 1, pre="rms", eps=value)


def test_two_epsilons_never_share_a_kernel_name():
    names = {quantize_kernel(1, 64, 1, pre="rms", eps=e)[0] for e in (1e-5, 1.2e-5, 1e-6)}
    assert len(names) == 3


# ---- generated inputs --------------------------------------------------------------------------------------------

NUMERIC_KEYS = ["general.alignment", "llama.block_count", "llama.context_length", "llama.embedding_length",
                "llama.feed_forward_length", "llama.attention.head_count", "llama.attention.head_count_kv",
                "llama.attention.key_length", "llama.rope.dimension_count", "llama.rope.freq_base",
                "llama.attention.layer_norm_rms_epsilon", "llama.vocab_size", "tokenizer.ggml.bos_token_id",
                "tokenizer.ggml.eos_token_id"]
VALUES = st.one_of(st.integers(-2, 2**33), st.sampled_from([0, 1, 2, 3, 7, 16, 63, 64, 65, 96, 1 << 31]),
                   st.floats(allow_nan=True, allow_infinity=True), st.booleans(), st.text(max_size=4))


@st.composite
def mutations(draw):
    kind = draw(st.sampled_from(["flip", "truncate", "fact", "type", "offset", "array"]))
    if kind == "flip":
        return kind, draw(st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
                                   min_size=1, max_size=4))
    if kind == "truncate":
        return kind, draw(st.floats(0, 1, exclude_max=True))
    if kind == "fact":
        return kind, (draw(st.sampled_from(NUMERIC_KEYS)), draw(VALUES))
    if kind == "type":
        return kind, (draw(st.integers(0, 19)), draw(st.sampled_from([0, 1, 2, 3, 6, 7, 8, 10, 12, 14, 30, 99])))
    if kind == "offset":
        return kind, (draw(st.integers(0, 19)), draw(st.integers(-64, 64)))
    return kind, (draw(st.sampled_from(["tokenizer.ggml.tokens", "tokenizer.ggml.token_type",
                                        "tokenizer.ggml.merges"])), draw(st.integers(0, 100)))


def apply(src: Path, dst: Path, mutation, parts: surgery.Parts | None = None) -> Path:
    """`src` changed by `mutation` (from mutations()), written to `dst`; `parts`: src already read (a copy is
    changed), which saves re-parsing a large file per example."""
    kind, arg = mutation
    parts = surgery.read(src) if parts is None else copy.deepcopy(parts)
    if kind in ("flip", "truncate"):
        raw = bytearray(src.read_bytes())
        if kind == "flip":
            header = len(surgery.header(parts))  # the flips land in the header: that is where the facts are
            for where, mask in arg:
                raw[int(where * header)] ^= mask
        else:
            raw = raw[: int(arg * len(raw))]
        dst.write_bytes(bytes(raw))
        return dst
    if kind == "fact":
        key, value = arg
        vtype = V.STRING if isinstance(value, str) else V.BOOL if isinstance(value, bool) else \
            V.FLOAT64 if isinstance(value, float) else V.UINT64 if value >= 2**32 else V.INT32 if value < 0 else None
        parts.set(key, value, vtype)
    elif kind == "type":
        parts.tensors[arg[0] % len(parts.tensors)].type_id = arg[1]
    elif kind == "offset":
        tensor = parts.tensors[arg[0] % len(parts.tensors)]
        tensor.offset = max(0, tensor.offset + arg[1])
    else:
        key, keep = arg
        etype, items = parts.metadata[key][1]
        parts.metadata[key] = (V.ARRAY, (etype, list(items)[:keep]))
    return surgery.write(parts, dst)


def check_consumers(path: Path, generate: bool) -> None:
    """open_model and describe either accept the file or raise one ArtifactError line naming the file; an accepted
    file generates (when asked) without a warning; nothing else escapes."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a numpy RuntimeWarning is a failure
        try:
            open_model(path)
        except ArtifactError as e:
            assert "\n" not in str(e) and path.name in str(e), str(e)
            accepted = False
        else:
            accepted = True
        try:
            info = describe(path)
        except ArtifactError as e:
            assert "\n" not in str(e) and not accepted, str(e)
        else:
            assert info["runnable"] == accepted, info["runnable_reason"]
        if accepted and generate:
            from edgegen.runtime import SamplingParams
            from edgegen.runtime.engine import TextGenerator

            try:
                gen = TextGenerator.load(path, max_context=64, jit_cache=False)
                text = gen.generate("Hi", SamplingParams(max_tokens=2), chat=False).text
                assert isinstance(text, str)
            except EdgegenRuntimeError as e:  # e.g. non-finite logits from flipped weight bytes: one line
                assert "\n" not in str(e)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
def test_generated_malformations_open_and_describe_cleanly(tiny, tmp_path, mutation):
    check_consumers(apply(tiny, tmp_path / "fuzz.gguf", mutation), generate=False)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mutation=mutations())
def test_generated_files_that_stay_valid_still_generate(tiny, tmp_path, mutation):
    check_consumers(apply(tiny, tmp_path / "fuzz.gguf", mutation), generate=True)
