"""Facts about edgegen's model file (GGUF): key names, tensor types, block sizes, what the runtime runs, its limits.

The one owner of these facts: the reader, writer, planner, quantizer and runtime import them from here. Key names
and block sizes come from gguf-py's `gguf.constants` (the spec's own table) wherever it has them.
"""
from __future__ import annotations

from collections.abc import Collection

from gguf.constants import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGMLQuantizationType, GGUFValueType, Keys

__all__ = [
    "BLOCK_SIZES", "GGML_QUANT_SIZES", "GGMLQuantizationType", "GGUFValueType", "GGUF_MAGIC", "DEFAULT_ALIGNMENT",
    "SUPPORTED_TYPES", "TEXT_ARCHITECTURES", "IMAGE_ARCHITECTURES", "SUPPORTED_ARCHITECTURES",
    "CONFIG_ARCHITECTURES", "REPACK_EXTRA_BYTES_PER_BLOCK", "arch_key",
]

GGUF_MAGIC = b"GGUF"  # gguf-py's GGUF_MAGIC (0x46554747) as bytes in file order
DEFAULT_ALIGNMENT = GGUF_DEFAULT_ALIGNMENT  # when general.alignment is absent
GGUF_VERSIONS = (2, 3)  # little-endian only; v1 files predate 64-bit counts

# Tensor type -> (weights per block, bytes per block), e.g. Q4_1: (32, 20). gguf-py's table, re-exported.
BLOCK_SIZES: dict[GGMLQuantizationType, tuple[int, int]] = GGML_QUANT_SIZES

# The block types whose dequantization runtime.quant expresses in tinygrad. One tuple: kernels for more types
# (K-quants) are added here and nowhere else.
SUPPORTED_TYPES: tuple[GGMLQuantizationType, ...] = (
    GGMLQuantizationType.F32,
    GGMLQuantizationType.F16,
    GGMLQuantizationType.BF16,
    GGMLQuantizationType.Q8_0,
    GGMLQuantizationType.Q4_0,
    GGMLQuantizationType.Q4_1,
    GGMLQuantizationType.Q5_0,
    GGMLQuantizationType.Q5_1,
    GGMLQuantizationType.Q2_K,
    GGMLQuantizationType.Q3_K,
    GGMLQuantizationType.Q4_K,
    GGMLQuantizationType.Q5_K,
    GGMLQuantizationType.Q6_K,
)
FLOAT_TYPES = (GGMLQuantizationType.F32, GGMLQuantizationType.F16)

# Bytes per block the runtime's linear layers hold beyond the file's: runtime/quant/formats.py unpacks the 12 bytes
# of 6-bit packed scales and mins of Q3_K, Q4_K and Q5_K to one byte each, 16 (docs/QUANT_TYPES.md: Q4_K 148 bytes
# per 256 weights on the device, 144 in the file). Every other type keeps the file's size.
# tests/test_families_tools.py checks these against PackedLinear.size_bytes.
REPACK_EXTRA_BYTES_PER_BLOCK: dict[GGMLQuantizationType, int] = {
    GGMLQuantizationType.Q3_K: 4,
    GGMLQuantizationType.Q4_K: 4,
    GGMLQuantizationType.Q5_K: 4,
}

TEXT_ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "gemma3", "phi3")  # the decoder families
# Our own image models (models/unet.py, models/classifier.py) use the same container.
UNET_ARCHITECTURE = "edgegen-unet"
MAX_GUIDANCE = 20.0  # a U-Net request's or file's classifier-free guidance weight: 0 to this
CLASSIFIER_ARCHITECTURE = "edgegen-mnist-classifier"
IMAGE_ARCHITECTURES: tuple[str, ...] = (UNET_ARCHITECTURE, CLASSIFIER_ARCHITECTURE)
SUPPORTED_ARCHITECTURES: tuple[str, ...] = TEXT_ARCHITECTURES + IMAGE_ARCHITECTURES
# Decoder families whose metadata artifact.config turns into a config (the runtime runs only TEXT_ARCHITECTURES).
CONFIG_ARCHITECTURES: tuple[str, ...] = ("llama", "qwen2", "qwen3", "gemma3", "phi3")


def arch_key(template: str, arch: str) -> str:
    """A gguf-py `{arch}.` key template filled in: arch_key(Key.BLOCK_COUNT, 'llama') -> 'llama.block_count'."""
    return template.format(arch=arch)


class Key:
    """The GGUF metadata keys edgegen reads or writes; `{arch}` templates go through arch_key()."""

    ARCHITECTURE = Keys.General.ARCHITECTURE
    ALIGNMENT = Keys.General.ALIGNMENT
    NAME = Keys.General.NAME
    FILE_TYPE = Keys.General.FILE_TYPE
    QUANTIZATION_VERSION = Keys.General.QUANTIZATION_VERSION
    QUANTIZED_BY = Keys.General.QUANTIZED_BY
    # {arch}.* hyperparameters (gguf-py Keys.LLM / Keys.Attention / Keys.Rope)
    CONTEXT_LENGTH = Keys.LLM.CONTEXT_LENGTH
    EMBEDDING_LENGTH = Keys.LLM.EMBEDDING_LENGTH
    BLOCK_COUNT = Keys.LLM.BLOCK_COUNT
    FEED_FORWARD_LENGTH = Keys.LLM.FEED_FORWARD_LENGTH
    VOCAB_SIZE = Keys.LLM.VOCAB_SIZE
    FINAL_LOGIT_SOFTCAPPING = Keys.LLM.FINAL_LOGIT_SOFTCAPPING
    ATTN_LOGIT_SOFTCAPPING = Keys.LLM.ATTN_LOGIT_SOFTCAPPING
    HEAD_COUNT = Keys.Attention.HEAD_COUNT
    HEAD_COUNT_KV = Keys.Attention.HEAD_COUNT_KV
    KEY_LENGTH = Keys.Attention.KEY_LENGTH
    VALUE_LENGTH = Keys.Attention.VALUE_LENGTH
    LAYERNORM_RMS_EPS = Keys.Attention.LAYERNORM_RMS_EPS
    SLIDING_WINDOW = Keys.Attention.SLIDING_WINDOW
    SLIDING_WINDOW_PATTERN = Keys.Attention.SLIDING_WINDOW_PATTERN
    ROPE_DIMENSION_COUNT = Keys.Rope.DIMENSION_COUNT
    ROPE_FREQ_BASE = Keys.Rope.FREQ_BASE
    ROPE_FREQ_BASE_SWA = Keys.Rope.FREQ_BASE_SWA  # gemma3's local (sliding-window) layers
    ROPE_SCALING_TYPE = Keys.Rope.SCALING_TYPE
    ROPE_SCALING_FACTOR = Keys.Rope.SCALING_FACTOR
    ROPE_SCALING_ORIG_CTX_LEN = Keys.Rope.SCALING_ORIG_CTX_LEN
    ROPE_SCALING_ATTN_FACTOR = Keys.Rope.SCALING_ATTN_FACTOR
    # tokenizer.* (gguf-py Keys.Tokenizer)
    TOKENIZER_MODEL = Keys.Tokenizer.MODEL
    TOKENIZER_PRE = Keys.Tokenizer.PRE
    TOKENS = Keys.Tokenizer.LIST
    TOKEN_TYPE = Keys.Tokenizer.TOKEN_TYPE
    SCORES = Keys.Tokenizer.SCORES
    MERGES = Keys.Tokenizer.MERGES
    BOS_ID = Keys.Tokenizer.BOS_ID
    EOS_ID = Keys.Tokenizer.EOS_ID
    UNK_ID = Keys.Tokenizer.UNK_ID
    PAD_ID = Keys.Tokenizer.PAD_ID
    EOT_ID = Keys.Tokenizer.EOT_ID
    EOM_ID = Keys.Tokenizer.EOM_ID
    ADD_BOS = Keys.Tokenizer.ADD_BOS
    ADD_EOS = Keys.Tokenizer.ADD_EOS
    ADD_PREFIX = Keys.Tokenizer.ADD_PREFIX
    CHAT_TEMPLATE = Keys.Tokenizer.CHAT_TEMPLATE


# Runtime limits the memory planner (device/planner.py) models; the runtime allocates by them.
PREFILL_BUCKETS: tuple[int, ...] = (16, 32, 64, 128, 256, 512)  # prompt lengths a prefill graph is padded to
# Sequences one model serves at once (`edgegen serve --parallel`, runtime/batch.py; the planner counts their caches)
MAX_SLOTS = 8
# `--parallel auto` takes at most this many: tinygrad's scheduling of the 8-wide decode graph costs about 280 MB
# more than the 4-wide one on SmolLM2, for no more tokens per second on a 2-core board (docs/MEASUREMENTS.md)
AUTO_SLOTS = 4
MAX_PREFILL_TOKENS = max(PREFILL_BUCKETS)  # the largest prefill graph
# Bytes per cached K or V element (models/llama.py Block.allocate_cache): float16 with the hand-written CPU attention
# (llama.cpp's default cache type), float32 with tinygrad's scaled_dot_product_attention.
KV_BYTES_NATIVE, KV_BYTES_TINYGRAD = 2, 4


def kv_element_bytes(backend: str, kernels: str = "auto") -> int:
    """The KV cache's element size on tinygrad backend `backend` with `--kernels` choice `kernels`: the hand-written
    kernels (auto, the default, and native) run on the CPU backend only (runtime.native.options)."""
    native = backend.split(":")[0] == "CPU" and kernels in ("auto", "native")
    return KV_BYTES_NATIVE if native else KV_BYTES_TINYGRAD


ACTIVATION_BYTES = 4  # float32 activations
DEFAULT_CONTEXT_LENGTH = 2048  # {arch}.context_length when a file lacks it
DEFAULT_MAX_CONTEXT = 1024  # the KV cache the runtime allocates unless asked for another


def rope_factors_tensor(names: Collection[str], context: int, original_context: int | None) -> str | None:
    """The tensor of per-pair RoPE frequency divisors a model uses at `context` tokens, or None: Llama 3.x
    `rope_freqs.weight` (its llama3 scaling, computed by the converter); Phi-3's `rope_factors_long` when the context
    exceeds the original one, else `rope_factors_short` (llama.cpp build_rope_factors). The one rule the runtime
    (runtime/loader.py) and the quantizer's numpy reference (quantize/llama_numpy.py) both follow."""
    if "rope_freqs.weight" in names:
        return "rope_freqs.weight"
    name = "rope_factors_long.weight" if original_context and context > original_context else \
        "rope_factors_short.weight"
    return name if name in names else None
