"""`edgegen info`: what any GGUF file holds (architecture, config, tensor types, metadata) and if it runs here."""
from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from typing import Any

MAX_VALUE_CHARS = 80  # a metadata value longer than this is cut in the text listing (chat templates, long names)
ARRAY_SUMMARY = "[{} items]"
ARRAY_SUMMARY_RE = re.compile(r"\[\d+ items\]")
MAX_LISTED_ITEMS = 16  # arrays up to this length are shown whole (channel lists); longer ones (vocabularies) by length


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="GGUF file, or 'default' (the shipped SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--metadata", action="store_true", help="list every metadata key (arrays by length)")


def summarize_value(value: Any) -> Any:
    """A metadata value as printed: long arrays (vocabularies, merges) by their length, everything else as is."""
    if isinstance(value, list) and len(value) > MAX_LISTED_ITEMS:
        return ARRAY_SUMMARY.format(len(value))
    return value


def model_config(mf) -> tuple[dict, str | None]:
    """The text model's LlamaConfig fields, else the `<arch>.*` scalar keys; and why a llama config is unreadable."""
    from edgegen.runtime.errors import ArtifactError
    from edgegen.runtime.loader import config_from_gguf
    from edgegen.runtime.model_file import TEXT_ARCHITECTURES

    if mf.architecture in TEXT_ARCHITECTURES:
        try:
            return dict(config_from_gguf(mf).__dict__), None
        except (ArtifactError, KeyError, ValueError, TypeError) as e:  # a key missing, or of the wrong type
            problem = str(e) if isinstance(e, ArtifactError) else f"{mf.path.name}: unreadable config ({e})"
    else:
        problem = None
    prefix = mf.architecture + "."  # our image models, and architectures we cannot run, as `<arch>.<field>` keys
    return {k[len(prefix):]: summarize_value(v) for k, v in mf.metadata.items() if k.startswith(prefix)}, problem


def describe(model: str) -> dict:
    """Everything `edgegen info` prints about the GGUF file `model` (a path or 'default')."""
    from edgegen.runtime.model_file import open_gguf, runnable_reason

    mf = open_gguf(model)
    config, config_problem = model_config(mf)
    reason = "; ".join(r for r in (runnable_reason(mf), config_problem) if r) or None
    types = Counter(t.ggml_type.name for t in mf.tensors.values())
    bytes_by_type: Counter[str] = Counter()
    for t in mf.tensors.values():
        bytes_by_type[t.ggml_type.name] += t.size_bytes
    n_params = sum(t.n_elements for t in mf.tensors.values())
    return {
        "path": str(mf.path),
        "architecture": mf.architecture or None,
        "name": mf.get("general.name"),
        "runnable": reason is None,
        "runnable_reason": reason,
        "config": config,
        "parameters": n_params,
        "size_bytes": mf.size_bytes,
        "file_bytes": mf.path.stat().st_size,
        "bits_per_weight": round(8 * mf.size_bytes / max(n_params, 1), 3),
        "tensor_types": dict(types),
        "bytes_by_type": dict(bytes_by_type),
        "tokenizer": mf.get("tokenizer.ggml.model"),
        "vocab_size": len(mf.get("tokenizer.ggml.tokens") or []),
        "has_chat_template": bool(mf.get("tokenizer.chat_template")),
        "metadata": {k: summarize_value(v) for k, v in mf.metadata.items()},
        "tensors": [{"name": t.name, "type": t.ggml_type.name, "shape": list(t.shape), "bytes": t.size_bytes}
                    for t in mf.tensors.values()],
    }


def format_info(info: dict, tensors: bool = False, metadata: bool = False) -> str:
    """The description as text, one fact per line, ending with whether the runtime can run the file."""
    cfg, mib = info["config"], 2**20
    lines = [f"file          {info['path']} ({info['file_bytes'] / mib:.2f} MiB)",
             f"architecture  {info['architecture'] or '(none: no general.architecture key)'} ({info['name']})"]
    if "n_layers" in cfg:  # a text model the runtime can read a config of
        lines.append(f"layers        {cfg['n_layers']}  dim {cfg['dim']}  heads {cfg['n_heads']}/{cfg['n_kv_heads']} "
                     f"kv  ffn {cfg['hidden_dim']}  vocab {cfg['vocab_size']}  context {cfg['max_context']}")
    elif cfg:
        lines.append("config        " + ", ".join(f"{k} {v}" for k, v in cfg.items()))
    lines.append(f"parameters    {info['parameters'] / 1e6:.2f} M in {info['size_bytes'] / mib:.2f} MiB "
                 f"({info['bits_per_weight']} bits/weight)")
    if info["tokenizer"]:
        lines.append(f"tokenizer     {info['tokenizer']} ({info['vocab_size']} tokens), chat template: "
                     f"{'yes' if info['has_chat_template'] else 'no'}")
    lines.append("tensor types  " + (", ".join(f"{k}: {v} ({info['bytes_by_type'][k] / mib:.2f} MiB)"
                                               for k, v in sorted(info["tensor_types"].items())) or "none"))
    lines.append(f"metadata      {len(info['metadata'])} keys" + ("" if metadata else " (--metadata lists them)"))
    if metadata:
        for key, value in info["metadata"].items():
            quote = isinstance(value, str) and not ARRAY_SUMMARY_RE.fullmatch(value)
            text = repr(value) if quote else str(value)
            cut = text if len(text) <= MAX_VALUE_CHARS else text[: MAX_VALUE_CHARS - 3] + "..."
            lines.append(f"  {key} = {cut}")
    if tensors:
        for t in info["tensors"]:
            lines.append(f"  {t['name']:32s} {t['type']:5s} {'x'.join(map(str, t['shape'])):>12s} {t['bytes']:>10d} B")
    lines.append("runnable here: yes" if info["runnable"] else f"runnable here: no ({info['runnable_reason']})")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    info = describe(args.model)
    if args.json:
        drop = {k for k, wanted in (("tensors", args.tensors), ("metadata", args.metadata)) if not wanted}
        print(json.dumps({k: v for k, v in info.items() if k not in drop}, indent=2))
        return 0
    print(format_info(info, tensors=args.tensors, metadata=args.metadata))
    return 0
