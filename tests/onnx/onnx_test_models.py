"""Small ONNX graphs built with onnx.helper for the quantizer and runner tests, and MiniLM test inputs."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SENTENCES = Path(__file__).with_name("sentences.txt")
SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"


def model_from(nodes, inputs, outputs, inits, opset: int = 18,
               domains: dict[str, int] | None = None) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, [numpy_helper.from_array(a, n) for n, a in inits.items()])
    opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, v) for d, v in (domains or {}).items()]
    return helper.make_model(graph, opset_imports=opsets, ir_version=8 if opset < 21 else 10)


def float_input(name: str, *dims) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, list(dims))


def linear_model(k: int, n: int, op: str = "MatMul", opset: int = 18, seed: int = 0) -> onnx.ModelProto:
    """y = x @ W + b with W of (k, n) as MatMul, or as Gemm with transB=1 (W stored (n, k))."""
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (k, n)).astype(np.float32)
    b = rng.normal(0, 0.1, (n,)).astype(np.float32)
    if op == "MatMul":
        nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"], name="proj"),
                 helper.make_node("Add", ["xw", "b"], ["y"])]
        inits = {"W": w, "b": b}
    else:
        nodes = [helper.make_node("Gemm", ["x", "W", "b"], ["y"], name="proj", transB=1)]
        inits = {"W": np.ascontiguousarray(w.T), "b": b}
    return model_from(nodes, [float_input("x", "batch", k)], [float_input("y", "batch", n)], inits, opset)


def conv_model(c: int, m: int, seed: int = 0) -> onnx.ModelProto:
    rng = np.random.default_rng(seed)
    w = rng.normal(0, 0.05, (m, c, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "W"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    return model_from(nodes, [float_input("x", 1, c, 8, 8)], [float_input("y", 1, m, 8, 8)], {"W": w})


def embedding_model(vocab: int, dim: int, n: int, seed: int = 0) -> onnx.ModelProto:
    """ids -> Gather(table) -> MatMul(W): an embedding table and a weight."""
    rng = np.random.default_rng(seed)
    inits = {"table": rng.normal(0, 1, (vocab, dim)).astype(np.float32),
             "W": rng.normal(0, 0.05, (dim, n)).astype(np.float32)}
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "W"], ["y"], name="proj")]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, ["batch", "seq"])
    return model_from(nodes, [ids], [float_input("y", "batch", "seq", n)], inits)


def custom_op_model() -> onnx.ModelProto:
    """A valid graph with an op no runtime here implements, in a node named 'mystery_node'."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("FancyActivation", ["r"], ["y"], name="mystery_node", domain="com.example")]
    return model_from(nodes, [float_input("x", 1, 4)], [float_input("y", 1, 4)], {}, domains={"com.example": 1})


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, str(path))
    return path


def minilm_feeds(sentences: list[str]) -> dict[str, np.ndarray]:
    """Token ids and attention mask from the model's own tokenizer.json (the export script's tokenizer)."""
    sys.path.insert(0, str(SCRIPTS))
    from export_minilm_onnx import tokenize

    return tokenize(sentences)


def ort_run(path: Path, feeds: dict[str, np.ndarray], optimize: bool = True) -> list[np.ndarray]:
    """onnxruntime's CPU outputs; optimize=False runs the graph exactly as written (no fusions that requantize)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    if not optimize:
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"]).run(None, feeds)


def load_script(name: str):
    """A module from scripts/ (they are not a package): the exporters the repo ships."""
    from importlib import util

    path = Path(__file__).resolve().parents[2] / "scripts" / f"{name}.py"
    spec = util.spec_from_file_location(name, path)
    module = util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
