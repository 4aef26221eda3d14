"""`edgegen info`: a model file's architecture, hyperparameters, tokenizer and tensor types."""
from __future__ import annotations

import argparse
import json
from collections import Counter


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file, or 'default'")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--tensors", action="store_true", help="list every tensor")


def describe(model: str) -> dict:
    from runtime.loader import config_from_gguf
    from runtime.model_file import SUPPORTED_ARCHITECTURES, TEXT_ARCHITECTURES, open_model

    mf = open_model(model, architectures=SUPPORTED_ARCHITECTURES)
    if mf.architecture in TEXT_ARCHITECTURES:
        config = dict(config_from_gguf(mf).__dict__)
    else:  # our image models keep their config as `<arch>.<field>` keys
        prefix = mf.architecture + "."
        config = {k[len(prefix):]: v for k, v in mf.metadata.items() if k.startswith(prefix)}
    types = Counter(t.ggml_type.name for t in mf.tensors.values())
    bytes_by_type = Counter()
    for t in mf.tensors.values():
        bytes_by_type[t.ggml_type.name] += t.size_bytes
    n_params = sum(t.n_elements for t in mf.tensors.values())
    return {
        "path": str(mf.path),
        "architecture": mf.architecture,
        "name": mf.get("general.name"),
        "config": config,
        "parameters": n_params,
        "size_bytes": mf.size_bytes,
        "bits_per_weight": round(8 * mf.size_bytes / max(n_params, 1), 3),
        "tensor_types": dict(types),
        "bytes_by_type": dict(bytes_by_type),
        "tokenizer": mf.get("tokenizer.ggml.model"),
        "vocab_size": len(mf.get("tokenizer.ggml.tokens") or []),
        "has_chat_template": bool(mf.get("tokenizer.chat_template")),
        "tensors": [{"name": t.name, "type": t.ggml_type.name, "shape": list(t.shape), "bytes": t.size_bytes}
                    for t in mf.tensors.values()],
    }


def run(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if not args.tensors:
        info_out = {k: v for k, v in info.items() if k != "tensors"}
    else:
        info_out = info
    if args.json:
        print(json.dumps(info_out, indent=2))
        return 0
    cfg = info["config"]
    print(f"file          {info['path']}")
    print(f"architecture  {info['architecture']} ({info['name']})")
    if "n_layers" not in cfg:  # an image model
        print("config        " + ", ".join(f"{k} {v}" for k, v in cfg.items()))
        print(f"parameters    {info['parameters'] / 1e6:.2f} M in {info['size_bytes'] / 2**20:.2f} MiB "
              f"({info['bits_per_weight']} bits/weight)")
        print("tensor types  " + ", ".join(f"{k}: {v}" for k, v in sorted(info["tensor_types"].items())))
        return 0
    print(f"layers        {cfg['n_layers']}  dim {cfg['dim']}  heads {cfg['n_heads']}/{cfg['n_kv_heads']} kv  "
          f"ffn {cfg['hidden_dim']}  vocab {cfg['vocab_size']}  context {cfg['max_context']}")
    print(f"parameters    {info['parameters'] / 1e6:.1f} M in {info['size_bytes'] / 2**20:.1f} MiB "
          f"({info['bits_per_weight']} bits/weight)")
    print(f"tokenizer     {info['tokenizer']} ({info['vocab_size']} tokens), chat template: "
          f"{'yes' if info['has_chat_template'] else 'no'}")
    print("tensor types  " + ", ".join(f"{k}: {v} ({info['bytes_by_type'][k] / 2**20:.1f} MiB)"
                                       for k, v in sorted(info["tensor_types"].items())))
    if args.tensors:
        for t in info["tensors"]:
            print(f"  {t['name']:32s} {t['type']:5s} {'x'.join(map(str, t['shape'])):>12s} {t['bytes']:>10d} B")
    return 0
