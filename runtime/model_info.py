"""What a GGUF file holds (architecture, config, tensor types, metadata) and whether the runtime runs it, as a dict."""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from edgegen.runtime.artifact.constants import Key

ARRAY_SUMMARY = "[{} items]"
ARRAY_SUMMARY_RE = re.compile(r"\[\d+ items\]")
MAX_LISTED_ITEMS = 16  # arrays up to this length are shown whole (channel lists); longer ones (vocabularies) by length


def summarize_value(value: Any) -> Any:
    """A metadata value as printed: long arrays (vocabularies, merges) by their length, everything else as is."""
    if isinstance(value, list) and len(value) > MAX_LISTED_ITEMS:
        return ARRAY_SUMMARY.format(len(value))
    return value


def model_config(mf) -> tuple[dict, str | None]:
    """The text model's LlamaConfig fields, else the `<arch>.*` scalar keys; and why a llama config is unreadable."""
    from edgegen.runtime.artifact.reader import TEXT_ARCHITECTURES
    from edgegen.runtime.errors import ArtifactError
    from edgegen.runtime.loader import config_from_gguf

    if mf.architecture in TEXT_ARCHITECTURES:
        try:
            return dict(config_from_gguf(mf).__dict__), None
        except (ArtifactError, KeyError, ValueError, TypeError) as e:  # a key missing, or of the wrong type
            problem = str(e) if isinstance(e, ArtifactError) else f"{mf.path.name}: unreadable config ({e})"
    else:
        problem = None
    prefix = mf.architecture + "."  # our image models, and architectures we cannot run, as `<arch>.<field>` keys
    return {k[len(prefix):]: summarize_value(v) for k, v in mf.metadata.items() if k.startswith(prefix)}, problem


def family_options(config: dict, tensor_names: set[str]) -> list[str]:
    """What sets a decoder apart from plain llama, in words: the config's family options (artifact.config) and what
    the tensors show (biases, fused layers, RoPE factors). Empty for a config that is not a decoder's."""
    if "n_layers" not in config:
        return []
    c = config
    out = [f"head_dim {c['head_dim']}" + (" (not dim / heads)" if c["head_dim"] * c["n_heads"] != c["dim"] else "")]
    rope = f"RoPE {c['rope_pairs']}, base {c['rope_theta']:,.0f}"
    if c["rope_dim"] != c["head_dim"]:
        rope += f", {c['rope_dim']} of {c['head_dim']} dims"
    if any(n in tensor_names for n in ("rope_freqs.weight", "rope_factors_short.weight", "rope_factors_long.weight")):
        rope += ", frequency factors"
    out.append(rope)
    if "blk.0.attn_q.bias" in tensor_names:
        out.append("Q/K/V biases")
    if "blk.0.attn_qkv.weight" in tensor_names:
        out.append("fused attn_qkv")
    if "blk.0.ffn_up.weight" in tensor_names and "blk.0.ffn_gate.weight" not in tensor_names:
        out.append("fused gate+up")
    out += [text for key, text in (("qk_norm", "Q/K norms"), ("post_norms", "post norms")) if c[key]]
    if c["ffn_activation"] != "silu":
        out.append(c["ffn_activation"])
    if c["embedding_scale"] != 1.0:
        out.append(f"embeddings x{c['embedding_scale']:.4g}")
    if c["sliding_window"] and c["sliding_window_pattern"]:
        n = c["sliding_window_pattern"]
        out.append(f"sliding window {c['sliding_window']} on {n - 1} of every {n} layers "
                   f"(RoPE base {c['rope_theta_local']:,.0f} there)")
    if c["final_logit_softcapping"]:
        out.append(f"logit soft-cap {c['final_logit_softcapping']:g}")
    return out


def describe(model: str) -> dict:
    """Everything `edgegen info` prints about the GGUF file `model` (a path or 'default')."""
    from edgegen.runtime.artifact.reader import open_gguf
    from edgegen.runtime.artifact.validate import malformed_problems, runnable_problems, tokenizer_build_problem

    mf = open_gguf(model, strict=False)
    config, _ = model_config(mf)  # its problem is among malformed_problems
    malformed = malformed_problems(mf)
    if not malformed and (problem := tokenizer_build_problem(mf)):  # what the tokenizer library alone refuses
        malformed.append(problem)
    reason = "; ".join(runnable_problems(mf) + malformed) or None  # runnable_reason's, each check run once
    types = Counter(t.ggml_type.name for t in mf.tensors.values())
    bytes_by_type: Counter[str] = Counter()
    for t in mf.tensors.values():
        bytes_by_type[t.ggml_type.name] += t.size_bytes
    n_params = sum(t.n_elements for t in mf.tensors.values())
    return {
        "path": str(mf.path),
        "architecture": mf.architecture or None,
        "name": mf.get(Key.NAME),
        "runnable": reason is None,
        "runnable_reason": reason,
        "problems": malformed,  # what is wrong with the file itself (not only unsupported here): info exits 2
        "config": config,
        "family_options": family_options(config, set(mf.tensors)),
        "parameters": n_params,
        "size_bytes": mf.size_bytes,
        "file_bytes": mf.path.stat().st_size,
        "bits_per_weight": round(8 * mf.size_bytes / max(n_params, 1), 3),
        "tensor_types": dict(types),
        "bytes_by_type": dict(bytes_by_type),
        "tokenizer": mf.get(Key.TOKENIZER_MODEL),
        "vocab_size": len(mf.get(Key.TOKENS) or []),
        "has_chat_template": bool(mf.get(Key.CHAT_TEMPLATE)),
        "metadata": {k: summarize_value(v) for k, v in mf.metadata.items()},
        "tensors": [{"name": t.name, "type": t.ggml_type.name, "shape": list(t.shape), "bytes": t.size_bytes}
                    for t in mf.tensors.values()],
    }
