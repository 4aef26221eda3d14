"""`edgegen info`: what any GGUF file holds (architecture, config, tensor types, metadata) and if it runs here."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgegen.cli.flags import add_json_flag, add_model_argument
from edgegen.runtime.errors import ArtifactError
from edgegen.runtime.model_info import ARRAY_SUMMARY_RE, describe

MAX_VALUE_CHARS = 80  # a metadata value longer than this is cut in the text listing (chat templates, long names)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_argument(p, "a GGUF file")
    add_json_flag(p, "the description")
    p.add_argument("--tensors", action="store_true", help="list every tensor")
    p.add_argument("--metadata", action="store_true", help="list every metadata key (arrays by length)")


def format_info(info: dict, tensors: bool = False, metadata: bool = False) -> str:
    """The description as text, one fact per line, ending with whether the runtime can run the file."""
    cfg, mib = info["config"], 2**20
    lines = [f"file          {info['path']} ({info['file_bytes'] / mib:.2f} MiB)",
             f"architecture  {info['architecture'] or '(none: no general.architecture key)'} ({info['name']})"]
    if "n_layers" in cfg:  # a text model the runtime can read a config of
        lines.append(f"layers        {cfg['n_layers']}  dim {cfg['dim']}  heads {cfg['n_heads']}/{cfg['n_kv_heads']} "
                     f"kv  ffn {cfg['hidden_dim']}  vocab {cfg['vocab_size']}  context {cfg['max_context']}")
        lines.append(f"family        {cfg['architecture']}: " + ", ".join(info["family_options"]))
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
    """Describe the file; a malformed one (not merely unsupported here) is still described, then refused as an error
    (exit 2) naming its first problem, as `generate` would refuse it."""
    info = describe(args.model)
    if args.json:
        drop = {k for k, wanted in (("tensors", args.tensors), ("metadata", args.metadata)) if not wanted}
        print(json.dumps({k: v for k, v in info.items() if k not in drop}, indent=2))
    else:
        print(format_info(info, tensors=args.tensors, metadata=args.metadata))
    if info["problems"]:
        sys.stdout.flush()
        raise ArtifactError(f"{Path(info['path']).name}: {info['problems'][0]}")
    return 0
