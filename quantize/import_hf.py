"""Import a Hugging Face-style Llama folder (config.json, *.safetensors, tokenizer.json) in GGUF names and layout.

Names and the Q/K row permutation follow llama.cpp's convert_hf_to_gguf.py (LlamaModel), so the result is what
that converter would write: GGUF keeps Q and K rows in the order its interleaved-pair RoPE expects.
"""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import numpy as np

from edgegen.quantize.errors import QuantizeError
from edgegen.quantize.source import MetaValue, ModelSource, check_tokenizer, sha256_files
from edgegen.quantize.tokenizer import metadata_from_hf_tokenizer
from edgegen.runtime.artifact.constants import GGUFValueType, Key, arch_key

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")
_LAYER_NAMES = {
    "input_layernorm.weight": "attn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight",
    "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight",
    "self_attn.o_proj.weight": "attn_output.weight",
    "post_attention_layernorm.weight": "ffn_norm.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight",
    "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight",
}
_GLOBAL_NAMES = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
                 "lm_head.weight": "output.weight"}
_SKIPPED = re.compile(r".*rotary_emb\.inv_freq$")  # recomputed by every runtime; llama.cpp's converter drops it too
_SUPPORTED_ARCHS = ("LlamaForCausalLM",)
ARCH = "llama"  # the GGUF architecture these folders become


def permute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF -> GGUF row order of a Q or K projection (convert_hf_to_gguf.py, LlamaModel.permute)."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, n_head: int) -> np.ndarray:
    """GGUF -> HF row order: the inverse of permute_qk."""
    return w.reshape(n_head, w.shape[0] // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_name(hf_name: str) -> str | None:
    """GGUF name of an HF tensor, None for a tensor to skip; QuantizeError for a name this importer does not know."""
    if _SKIPPED.match(hf_name):
        return None
    if hf_name in _GLOBAL_NAMES:
        return _GLOBAL_NAMES[hf_name]
    m = _LAYER.fullmatch(hf_name)
    if m and m.group(2) in _LAYER_NAMES:
        return f"blk.{m.group(1)}.{_LAYER_NAMES[m.group(2)]}"
    raise QuantizeError(f"unsupported tensor {hf_name!r} (expected Llama-family names such as "
                        f"model.layers.0.self_attn.q_proj.weight)")


def _read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """All tensors of one file as float32 (bf16 widened by hand: numpy has no bfloat16)."""
    from safetensors import safe_open

    out: dict[str, np.ndarray] = {}
    with open(path, "rb") as f:
        header_len = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(header_len))
    base = 8 + header_len
    with safe_open(path, framework="numpy") as st:
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] == "BF16":
                start, end = info["data_offsets"]
                raw = np.fromfile(path, dtype=np.uint16, count=(end - start) // 2, offset=base + start)
                out[name] = (raw.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
            elif info["dtype"] in ("F32", "F16", "F64"):
                out[name] = st.get_tensor(name).astype(np.float32)
            else:
                raise QuantizeError(f"{path}: tensor {name!r} has dtype {info['dtype']} (expected F32, F16 or BF16)")
    return out


def _hparams(folder: Path, cfg: dict[str, Any]) -> dict[str, MetaValue]:
    u32, f32 = GGUFValueType.UINT32, GGUFValueType.FLOAT32

    def k(template: str) -> str:
        return arch_key(template, ARCH)

    try:
        n_head = int(cfg["num_attention_heads"])
        keys = {
            k(Key.CONTEXT_LENGTH): MetaValue(int(cfg.get("max_position_embeddings", 2048)), u32),
            k(Key.EMBEDDING_LENGTH): MetaValue(int(cfg["hidden_size"]), u32),
            k(Key.BLOCK_COUNT): MetaValue(int(cfg["num_hidden_layers"]), u32),
            k(Key.FEED_FORWARD_LENGTH): MetaValue(int(cfg["intermediate_size"]), u32),
            k(Key.HEAD_COUNT): MetaValue(n_head, u32),
            k(Key.HEAD_COUNT_KV): MetaValue(int(cfg.get("num_key_value_heads", n_head)), u32),
            k(Key.ROPE_FREQ_BASE): MetaValue(float(cfg.get("rope_theta", 10000.0)), f32),
            k(Key.LAYERNORM_RMS_EPS): MetaValue(float(cfg.get("rms_norm_eps", 1e-5)), f32),
            k(Key.VOCAB_SIZE): MetaValue(int(cfg["vocab_size"]), u32),
            k(Key.ROPE_DIMENSION_COUNT): MetaValue(int(cfg.get("head_dim", cfg["hidden_size"] // n_head)), u32),
        }
        if cfg.get("head_dim") is not None:  # as convert_hf_to_gguf.py: a stated head size may differ from dim/heads
            keys[k(Key.KEY_LENGTH)] = MetaValue(int(cfg["head_dim"]), u32)
            keys[k(Key.VALUE_LENGTH)] = MetaValue(int(cfg["head_dim"]), u32)
    except KeyError as e:
        raise QuantizeError(f"{folder / 'config.json'}: missing {e.args[0]!r}") from None
    if cfg.get("rope_scaling"):
        raise QuantizeError(f"{folder / 'config.json'}: rope_scaling {cfg['rope_scaling']!r} is not supported")
    return keys


def load_hf_folder(folder: Path) -> ModelSource:
    """Read config.json, every *.safetensors and tokenizer.json of `folder`."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise QuantizeError(f"{folder}: no config.json (expected a Hugging Face model folder)")
    cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    archs = cfg.get("architectures") or [cfg.get("model_type")]
    if not any(a in _SUPPORTED_ARCHS for a in archs):
        raise QuantizeError(
            f"{cfg_path}: architecture {archs} is not supported (expected {', '.join(_SUPPORTED_ARCHS)})")
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise QuantizeError(f"{folder}: no *.safetensors files")
    metadata = {Key.ARCHITECTURE: MetaValue(ARCH, GGUFValueType.STRING),
                Key.NAME: MetaValue(folder.name, GGUFValueType.STRING)}
    metadata.update(_hparams(folder, cfg))
    metadata.update(metadata_from_hf_tokenizer(folder, cfg))
    check_tokenizer(folder, metadata)
    n_head = metadata[arch_key(Key.HEAD_COUNT, ARCH)].value
    n_kv = metadata[arch_key(Key.HEAD_COUNT_KV, ARCH)].value
    tensors: dict[str, np.ndarray] = {}
    for f in files:
        for hf_name, w in _read_safetensors(f).items():
            name = gguf_name(hf_name)
            if name is None:
                continue
            if name.endswith("attn_q.weight"):
                w = permute_qk(w, n_head)
            elif name.endswith("attn_k.weight"):
                w = permute_qk(w, n_kv)
            tensors[name] = np.ascontiguousarray(w, dtype=np.float32)
    tied = cfg.get("tie_word_embeddings") and "output.weight" in tensors
    if tied and np.array_equal(tensors["output.weight"], tensors["token_embd.weight"]):
        del tensors["output.weight"]  # tied: the runtime reuses token_embd, as llama.cpp does
    hashed = [cfg_path, *(p for p in (folder / "tokenizer.json", folder / "tokenizer_config.json") if p.is_file()),
              *files]
    return ModelSource(path=folder, architecture=ARCH, tensors=tensors, metadata=metadata,
                       content_sha256=sha256_files(hashed, root=folder))
