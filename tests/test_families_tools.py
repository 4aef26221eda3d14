"""quantize, eval, info and plan on every decoder family: the tiny random models of tests/tiny_arch.py (and the
shipped Gemma 3 270M file once), checked against tiny_arch's independent numpy forward."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType as Q
from tiny_arch import FAMILIES, VOCAB, Shape, random_weights, reference_logits, shape_for, write_gguf

from edgegen.cli import main as edgegen_main
from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import load_source
from edgegen.runtime.artifact.constants import TEXT_ARCHITECTURES, GGUFValueType, Key
from edgegen.runtime.native.options import KernelOptions

# compared with the float numpy reference: tinygrad's kernels (the default ones quantize activations to 8 bits)
FLOAT_PATH = KernelOptions("tinygrad")

IDS = [5, 17, 42, 3, 88, 60, 7, 7, 31, 90, 12, 44]
# Printable tokens of the tiny vocabulary (one character each): the tokenizer maps this text to one id a character.
TEXT = "".join(chr(0x21 + (7 * i) % 90) for i in range(40))


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = edgegen_main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def family_files(tmp_path_factory) -> dict[str, tuple[Shape, Path, dict[str, np.ndarray]]]:
    """Each family's tiny model as an F32 GGUF: (shape, path, weights)."""
    folder = tmp_path_factory.mktemp("families")
    out = {}
    for family in FAMILIES:
        s = shape_for(family)
        weights = random_weights(s, seed=3)
        write_gguf(folder / f"{family}.gguf", s, weights)
        out[family] = (s, folder / f"{family}.gguf", weights)
    return out


def close(got: np.ndarray, ref: np.ndarray, rel: float) -> float:
    """Largest |got - ref| relative to the largest |ref|; asserts it is at most `rel`."""
    err = float(np.abs(got - ref).max() / np.abs(ref).max())
    assert err <= rel, f"max error {err:.3g} of the logit scale, expected <= {rel}"
    return err


# ---- quantize: the calibration forward, folding, requantizing every family ----------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_forward_matches_the_reference(family_files, family):
    from edgegen.quantize.llama_numpy import config_from_source, forward

    s, path, weights = family_files[family]
    source = load_source(path)
    got = forward(source.tensors, config_from_source(source), IDS)
    close(got, reference_logits(s, weights, IDS), 1e-5)  # float32 vs float64, same arithmetic


@pytest.mark.parametrize("family", FAMILIES)
def test_calibration_folding_keeps_the_float_model(family_files, family, monkeypatch):
    """The searched scales move between norms, columns, rows and biases without changing the float model, for
    fused tensors (phi3), Q/K/V biases (qwen2), Q/K norms, post norms and GELU (gemma3) alike."""
    import edgegen.quantize.calibrate as cal
    from edgegen.quantize.llama_numpy import config_from_source, forward
    from edgegen.quantize.recipes import assign_types, get_recipe

    monkeypatch.setattr(cal, "mean_kl", lambda *a, **k: 0.0)  # never revert: the folding itself is under test
    source = load_source(family_files[family][1])
    types, _ = assign_types(get_recipe("w4"), source.tensors, lambda n, t: 0.0)
    tokens = list(np.random.default_rng(0).integers(0, VOCAB - 2, 200))
    scaled, report = cal.calibrate(source, tokens, types)
    hp = config_from_source(source)
    close(forward(scaled, hp, tokens[:40]), forward(source.tensors, hp, tokens[:40]), 1e-5)
    assert report["error_after"] <= report["error_before"]
    scaled_groups = {g["group"].split(".", 2)[2] for g in report["groups"] if g["alpha"] > 0}
    assert "attn_output" in scaled_groups, report["groups"]  # v's rows (of attn_qkv in phi3) scaled
    if family == "qwen2":  # v's rows were divided by s: so was its bias
        assert any(not np.array_equal(scaled[n], w) for n, w in source.tensors.items() if n.endswith("attn_v.bias"))
    if family == "phi3":
        assert {g["folded_into"] for g in report["groups"]} >= {"blk.0.attn_qkv.weight rows",
                                                                "blk.0.ffn_up.weight rows"}


@pytest.mark.parametrize("recipe", ["w8", pytest.param("w4", marks=pytest.mark.slow)])  # ~5 s each: one compile
@pytest.mark.parametrize("family", FAMILIES)
def test_quantized_family_runs_in_the_runtime(family_files, family, recipe, tmp_path, capsys):
    """`edgegen quantize` as a user runs it; the runtime's logits of the output match the numpy reference on the
    stored weights (tight) and the float source's (within the recipe's error); every metadata key is kept."""
    from edgegen.runtime.artifact.reader import open_gguf
    from edgegen.runtime.engine import TextGenerator

    s, path, weights = family_files[family]
    out = tmp_path / f"{family}-{recipe}.gguf"
    code, _, err = run(capsys, "quantize", str(path), "--recipe", recipe, "-o", str(out), "--no-progress")
    assert code == 0, err
    src, dst = open_gguf(path), open_gguf(out)
    for key, value in src.metadata.items():
        if key != Key.FILE_TYPE:
            assert dst.metadata[key] == value, key
    matrices = {t.ggml_type.name for t in dst.tensors.values() if len(t.shape) == 2}
    assert matrices == {"Q8_0" if recipe == "w8" else "Q4_0"}
    assert all(t.ggml_type == Q.F32 for t in dst.tensors.values() if len(t.shape) == 1)  # norms, biases, rope_freqs
    got = TextGenerator.load(out, max_context=32, jit_cache=False, kernels=FLOAT_PATH).logits(IDS)
    close(got, reference_logits(s, load_source(out).tensors, IDS), 2e-3)
    ref = reference_logits(s, weights, IDS)
    close(got, ref, 0.03 if recipe == "w8" else 0.3)
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= (1.0 if recipe == "w8" else 0.75)
    try:  # the output also runs in llama.cpp, the reference of every family, where llama-cpp-python is installed
        import llama_cpp
    except ImportError:
        return
    llm = llama_cpp.Llama(model_path=str(out), n_ctx=32, logits_all=True, verbose=False, n_threads=2)
    llm.eval(IDS)
    theirs = np.asarray(llm.scores[: len(IDS)], dtype=np.float64)
    close(got, theirs, 0.02)  # llama.cpp also rounds the activations to 8 bits for its integer dot products
    assert (got.argmax(-1) == theirs.argmax(-1)).mean() >= 0.9


def test_calibrated_quantize_of_a_gemma3_runs(family_files, tmp_path, capsys):
    from edgegen.runtime.engine import TextGenerator

    s, path, weights = family_files["gemma3"]
    text = tmp_path / "calibration.txt"
    text.write_text(TEXT * 8)
    out = tmp_path / "gemma3-w4-cal.gguf"
    code, printed, err = run(capsys, "quantize", str(path), "--recipe", "w4", "-o", str(out), "--calibrate",
                             str(text), "--no-progress")
    assert code == 0, err
    assert "calibration: 320 tokens" in printed
    got = TextGenerator.load(out, max_context=32, jit_cache=False, kernels=FLOAT_PATH).logits(IDS)
    close(got, reference_logits(s, load_source(out).tensors, IDS), 2e-3)


def test_quantize_refuses_an_architecture_the_runtime_cannot_run(tmp_path, capsys, monkeypatch):
    import edgegen.quantize.source as sources
    from edgegen.quantize.import_gguf import load_gguf

    s = Shape("mamba")  # llama-shaped tensors under an architecture name the runtime does not run
    path = tmp_path / "mamba.gguf"
    write_gguf(path, s, random_weights(s))
    monkeypatch.setattr(sources, "load_source", lambda p: pytest.fail("refused only after loading the model"))
    code, out, err = run(capsys, "quantize", str(path), "--recipe", "w8", "-o", str(tmp_path / "out.gguf"))
    expected = (f"{path}: architecture 'mamba' is not one the runtime runs (expected one of: "
                f"{', '.join(TEXT_ARCHITECTURES)}, edgegen-unet, edgegen-mnist-classifier)")
    assert (code, out, err.strip()) == (2, "", f"edgegen quantize: error: {expected}")
    assert not (tmp_path / "out.gguf").exists()
    with pytest.raises(QuantizeError) as e:  # the library path refuses before dequantizing as well
        load_gguf(path)
    assert str(e.value) == expected


# ---- eval: BOS at the start of every window when the vocabulary adds one ------------------------------------------

def with_add_bos(source_path: Path, out: Path, add_bos: bool) -> Path:
    """The tiny model written again (w8) with tokenizer.ggml.add_bos_token set."""
    from edgegen.quantize.pipeline import quantize_model
    from edgegen.quantize.source import MetaValue
    from edgegen.quantize.writer import write_artifact

    source = load_source(source_path)
    source.metadata[Key.ADD_BOS] = MetaValue(add_bos, GGUFValueType.BOOL)
    write_artifact(out, source, quantize_model(source, "w8"))
    return out


@pytest.mark.parametrize("add_bos", [True, False])
def test_eval_starts_every_window_with_bos_when_the_vocabulary_adds_one(family_files, tmp_path, capsys, add_bos):
    from edgegen.quantize.evaluate import log_softmax, sliding_windows

    s, path, _ = family_files["gemma3"]
    model = with_add_bos(path, tmp_path / f"gemma3-bos-{add_bos}.gguf", add_bos)
    (tmp_path / "text.txt").write_text(TEXT)
    code, out, err = run(capsys, "eval", str(model), "--text", str(tmp_path / "text.txt"), "--window", "12",
                         "--stride", "6", "--json", "--no-progress",
                         "--kernels", "tinygrad")  # float activations, as the reference computes
    assert code == 0, err
    result = json.loads(out)
    bos = VOCAB - 2  # tiny_arch's BOS id
    ids = ([bos] if add_bos else []) + [ord(c) - 0x21 for c in TEXT]
    stored = load_source(model).tensors
    nll, scored = 0.0, 0
    for w in sliding_windows(len(ids), 12, 6):  # llama-perplexity's rule, computed here from the reference forward
        fed = ids[w.start:w.end]
        if add_bos:
            fed[0] = bos
        lp = log_softmax(reference_logits(s, stored, fed))
        nll -= sum(lp[t - 1 - w.start, ids[t]] for t in range(w.first_target, w.end))
        scored += w.end - w.first_target
    assert result["tokens_scored"] == scored == len(ids) - 1
    assert result["perplexity"] == pytest.approx(np.exp(nll / scored), rel=2e-3)


# ---- info and plan ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", FAMILIES)
def test_info_and_plan_of_every_family(family_files, family, capsys):
    s, path, weights = family_files[family]
    code, out, _ = run(capsys, "info", str(path), "--json")
    info = json.loads(out)
    assert code == 0 and info["runnable"] and info["architecture"] == s.arch
    assert info["config"]["head_dim"] == s.head_dim and info["family_options"][0].startswith(f"head_dim {s.head_dim}")
    expected = {"qwen2": "Q/K/V biases", "qwen3": "Q/K norms", "phi3": "fused attn_qkv", "gemma3": "sliding window 5",
                "llama3": "frequency factors", "llama": "RoPE interleaved"}[family]
    code, text, _ = run(capsys, "info", str(path))
    family_line = next(line for line in text.splitlines() if line.startswith("family"))
    assert family_line.startswith(f"family        {s.arch}: head_dim") and expected in family_line
    code, out, _ = run(capsys, "plan", str(path), "--board", "rpi5-4gb", "--context", "64", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["verdict"] == "fits"
    # K and V of every layer (sliding-window ones too) at the file's head size, float16 (the CPU kernels' cache)
    assert plan["kv_cache_bytes"] == 2 * s.n_layers * s.n_kv_heads * 64 * s.head_dim * 2
    assert plan["weights_bytes"] == sum(w.nbytes for w in weights.values())  # all F32: as in the file


# gguf-py only dequantizes K-quants: their blocks are random bytes with the f16 scales at these offsets (ggml-common.h
# block_<type>) made finite and small, as tests/test_runtime_quant_types.py builds them.
RAW_SCALES = {Q.Q4_K: (0, 2), Q.Q5_K: (0, 2), Q.Q6_K: (208,), Q.Q3_K: (108,), Q.Q2_K: (80, 82)}


def write_typed_model(path: Path, qtype: Q, monkeypatch) -> Shape:
    """A tiny llama whose rows hold whole 256-weight super-blocks, every matrix stored as `qtype`."""
    import gguf

    s = Shape("llama", dim=256, n_heads=4, n_kv_heads=2, head_dim=64, hidden=512)
    real, rng = gguf.quants.quantize, np.random.default_rng(0)

    def quantize(arr: np.ndarray, t: Q) -> np.ndarray:
        if t not in RAW_SCALES:
            return real(arr, t)
        block, size = gguf.GGML_QUANT_SIZES[t]
        out, nb = arr.shape[0], arr.shape[1] // block
        raw = rng.integers(0, 256, (out, nb, size), dtype=np.uint8)
        for at in RAW_SCALES[t]:
            raw[:, :, at : at + 2] = rng.uniform(-0.01, 0.01, (out, nb)).astype(np.float16).view(np.uint8).reshape(
                out, nb, 2)
        return raw.reshape(out, -1)

    monkeypatch.setattr(gguf.quants, "quantize", quantize)  # tiny_arch.write_gguf packs through it
    write_gguf(path, s, random_weights(s), qtype)
    monkeypatch.setattr(gguf.quants, "quantize", real)
    return s


@pytest.mark.parametrize("qtype", [Q.Q2_K, Q.Q3_K, Q.Q4_K, Q.Q5_K, Q.Q6_K, Q.Q8_0, Q.Q4_0, Q.Q5_0, Q.Q5_1, Q.BF16])
def test_device_bytes_are_what_the_runtime_allocates(tmp_path, qtype, monkeypatch):
    """The planner's per-tensor device size against the runtime's packed layer: K-quants with unpacked scales take
    4 bytes more per 256 weights (Q3_K, Q4_K, Q5_K); every other type keeps the file's size."""
    from edgegen.device.model_facts import read_model_facts
    from edgegen.runtime.artifact.reader import open_gguf
    from edgegen.runtime.quant import pack_linear

    path = tmp_path / f"{qtype.name}.gguf"
    write_typed_model(path, qtype, monkeypatch)
    name = "blk.0.ffn_down.weight"
    info = open_gguf(path).tensors[name]
    facts = next(t for t in read_model_facts(path).tensors if t.name == name)
    assert facts.device_bytes == pack_linear(info, "CPU").size_bytes
    extra = 4 * info.n_elements // 256 if qtype in (Q.Q3_K, Q.Q4_K, Q.Q5_K) else 0
    assert facts.device_bytes == facts.n_bytes + extra


def test_plan_counts_k_quant_weights_at_their_device_size(tmp_path, capsys, monkeypatch):
    from edgegen.device.model_facts import read_model_facts

    path = tmp_path / "q4_k.gguf"
    write_typed_model(path, Q.Q4_K, monkeypatch)
    m = read_model_facts(path)
    q4k = sum(t.n_elements for t in m.tensors if t.type_name == "Q4_K")
    assert q4k > 0 and m.device_weights_bytes == m.weights_bytes + 4 * q4k // 256
    code, out, _ = run(capsys, "plan", str(path), "--board", "rpi5-4gb", "--context", "64", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["weights_bytes"] == m.device_weights_bytes
    assert plan["bytes_per_token"] == m.device_weights_bytes + plan["kv_cache_bytes"]  # tied embedding: read whole


@pytest.mark.slow
def test_info_and_plan_of_the_gemma3_file(capsys):
    from edgegen.device.model_facts import read_model_facts
    from edgegen.runtime.artifact.catalog import model_path

    path = model_path("gemma3-270m")
    code, out, _ = run(capsys, "info", str(path))
    assert code == 0 and out.splitlines()[-1] == "runnable here: yes"
    assert "layers        18  dim 640  heads 4/1 kv  ffn 2048  vocab 262144  context 32768" in out
    assert ("family        gemma3: head_dim 256 (not dim / heads), RoPE halves, base 1,000,000, Q/K norms, post norms, "
            "gelu_tanh, embeddings x25.3, sliding window 512 on 5 of every 6 layers (RoPE base 10,000 there)") in out
    code, out, _ = run(capsys, "plan", str(path), "--board", "rpi5-4gb", "--json")
    plan = json.loads(out)
    assert code == 0 and plan["verdict"] == "fits"
    assert plan["kv_cache_bytes"] == 2 * 18 * 1 * 1024 * 256 * 2  # 18 MiB of float16 at head_dim 256 (dim/heads: 160)
    m = read_model_facts(path)
    q4k = sum(t.n_elements for t in m.tensors if t.type_name == "Q4_K")
    vectors_f32 = all(t.type_name == "F32" for t in m.tensors if t.n_dims == 1)
    assert vectors_f32 and plan["weights_bytes"] == m.weights_bytes + 4 * q4k // 256 > m.weights_bytes


@pytest.mark.parametrize("family", ["qwen2", "gemma3", "phi3"])
def test_serve_engine_answers_every_family(family_files, family):
    """The MQTT service's text engine over a family file: a request with messages (no chat template in these files:
    the raw text) streams the tokens the runtime generates."""
    import json
    import threading

    from edgegen.firmware_bridge.engines import RuntimeTextEngine
    from edgegen.firmware_bridge.schema import parse_request

    _, path, _ = family_files[family]
    engine = RuntimeTextEngine.load(str(path), device="CPU")
    payload = {"v": 1, "id": "r-1", "messages": [{"role": "user", "content": "abc"}], "max_tokens": 4,
               "sampling": {"temperature": 0.0}}
    request = parse_request("text", json.dumps(payload).encode())
    engine.check(request)
    pieces: list[str] = []
    out = engine.generate(request, threading.Event(), pieces.append)
    assert out.completion_tokens >= 1 and out.finish_reason in ("length", "stop")
    assert "".join(pieces) == out.text
