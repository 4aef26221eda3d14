"""The memory planner: will this model file run on that board at this context, and how fast can decode go?

Predicted peak resident memory of an edgegen process, term by term (each mirrors what the runtime allocates):
- weights: the tensor table's packed bytes; the runtime repacks every block into device buffers of the same size
  (runtime/quant.py), F32 norms included.
- mapped file: the runtime reads the GGUF through a memory map, and loading touches every page, so the file's
  bytes stay resident as clean page cache on top of the device copy (measured: RssFile grows by the file size).
  They count in peak RSS, but the kernel can drop them under pressure (after load only a few embedding rows are
  read from the map), so whether a model fits is decided on the total without them.
- KV cache: 2 (K and V) x layers x kv heads x context x head_dim x 4 bytes (float32, models/llama.py), allocated
  for the whole context at load.
- activations: the largest prefill graph's buffers (the prompt up to the largest prefill bucket, 512 tokens): per
  token the residual, q/k/v, attention output, the MLP's two hidden projections, and a row of attention scores.
- runtime: interpreter, numpy, tinygrad, tokenizer, compiled kernels and JIT graphs: a per-backend constant
  calibrated against measured peak RSS (tests/device/test_device_planner.py).

The decode ceiling is memory bandwidth over the bytes one decode step must read: every packed weight (the tied
embedding is the output head, read whole; an untied embedding is only looked up, one row) plus the KV cache.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from device.errors import DeviceError
from device.model_facts import ModelFacts
from device.profiles import BoardProfile

MIB = 1024 * 1024
KV_BYTES = 4  # float32 cache (models/llama.py Block.allocate_cache)
ACT_BYTES = 4  # float32 activations
MAX_PREFILL_TOKENS = 512  # runtime/engine.py PREFILL_BUCKETS: the largest graph a prompt is padded to

# Runtime overhead beyond the terms above, per backend. CPU: measured on this host (2-core AMD EPYC VM, tinygrad
# 0.14, SmolLM2-135M Q4_1 and w8, cold and warm kernel cache): peak RSS minus the modelled terms was 180-300 MiB;
# the figure below is their middle. The others are estimates: tinygrad's process plus a driver context.
RUNTIME_OVERHEAD_BYTES = {
    "CPU": 240 * MIB,
    "CL": 300 * MIB,  # estimate: PoCL/ICD loader and OpenCL compiler on top of the CPU figure
    "CUDA": 550 * MIB,  # estimate: a CUDA context on Jetson takes roughly 300 MiB of unified memory
    "NV": 550 * MIB,
    "METAL": 400 * MIB,  # estimate
}

# Bytes per weight of each quantize recipe (quantize/recipes.py names; GGML block sizes from gguf-py
# GGML_QUANT_SIZES: Q8_0 34 B, Q4_0 18 B, Q4_1 20 B per 32 weights). Matrices take the recipe's type; vectors stay
# F32. `w4-mix8` keeps the embedding/output head at Q8_0; its outlier promotions depend on measured errors and
# are not predicted, so its estimate is a lower bound.
RECIPE_BYTES_PER_WEIGHT: dict[str, tuple[float, float]] = {  # name -> (matrices, embedding/output head)
    "f16": (2.0, 2.0),
    "w8": (34 / 32, 34 / 32),
    "w4-mix8": (18 / 32, 34 / 32),
    "w4a": (20 / 32, 20 / 32),
    "w4": (18 / 32, 18 / 32),
}
HEAD_TENSORS = ("token_embd.weight", "output.weight")


@dataclass(frozen=True)
class MemoryPlan:
    """A prediction for one model on one board at one context; sizes in bytes."""

    model: str
    board: str
    backend: str
    context: int
    weights_bytes: int
    mapped_file_bytes: int
    kv_cache_bytes: int
    activations_bytes: int
    runtime_bytes: int
    total_bytes: int  # predicted peak RSS
    required_bytes: int  # what must fit: the total less the reclaimable mapped file
    usable_bytes: int
    fits: bool
    reason: str
    bytes_per_token: int  # read by one decode step at the full context
    decode_ceiling_tok_s: float  # bandwidth / bytes_per_token
    recipes: dict  # recipe name -> {"weights_bytes", "total_bytes", "required_bytes", "fits", "decode_ceiling_tok_s"}
    suggestion: str

    def to_dict(self) -> dict:
        return asdict(self)


def kv_cache_bytes(m: ModelFacts, context: int) -> int:
    return 2 * m.n_layers * m.n_kv_heads * context * m.head_dim * KV_BYTES


def activation_bytes(m: ModelFacts, context: int) -> int:
    t = min(context, MAX_PREFILL_TOKENS)
    per_token = 2 * m.dim + (m.n_heads + 2 * m.n_kv_heads) * m.head_dim + 2 * m.hidden_dim + m.n_heads * t
    return t * per_token * ACT_BYTES + m.vocab_size * ACT_BYTES


def recipe_weights_bytes(m: ModelFacts, recipe: str) -> int:
    """Packed size of the model's tensors if re-quantized with `recipe` (estimated from parameter counts)."""
    matrix, head = RECIPE_BYTES_PER_WEIGHT[recipe]
    total = 0.0
    for t in m.tensors:
        if t.n_dims < 2:
            total += t.n_elements * 4  # vectors stay F32
        else:
            total += t.n_elements * (head if t.name in HEAD_TENSORS else matrix)
    return int(total)


def decode_bytes_per_token(m: ModelFacts, weights_bytes: int, context: int) -> int:
    """Bytes one decode step reads at position `context`: the weights (minus an untied embedding) and the KV."""
    embed = next((t for t in m.tensors if t.name == "token_embd.weight"), None)
    untied_embed = embed.n_bytes if embed is not None and not m.tied_embeddings else 0
    return weights_bytes - untied_embed + kv_cache_bytes(m, context)


def check_context(m: ModelFacts, context: int) -> None:
    if context < 1:
        raise DeviceError(f"context must be a positive number of tokens, got {context}")
    if context > m.max_context:
        raise DeviceError(f"context {context} exceeds the model's trained context of {m.max_context} tokens")


def _total(m: ModelFacts, weights: int, mapped: int, context: int, backend: str) -> tuple[int, ...]:
    parts = (weights, mapped, kv_cache_bytes(m, context), activation_bytes(m, context),
             RUNTIME_OVERHEAD_BYTES.get(backend, RUNTIME_OVERHEAD_BYTES["CPU"]))
    return (*parts, sum(parts))


def plan_memory(m: ModelFacts, board: BoardProfile, context: int, file_bytes: int | None = None) -> MemoryPlan:
    """Predict peak memory and the decode ceiling of model `m` on `board` with a KV cache of `context` tokens."""
    check_context(m, context)
    weights = m.weights_bytes
    mapped = weights if file_bytes is None else file_bytes
    weights, mapped, kv, act, runtime, total = _total(m, weights, mapped, context, board.backend)
    usable = board.usable_bytes
    per_token = decode_bytes_per_token(m, weights, context)
    required = total - mapped
    fits = required <= usable
    reason = (f"needs {required / MIB:,.0f} MiB (weights {weights / MIB:,.0f}, KV cache {kv / MIB:,.0f} for "
              f"{context} tokens, activations {act / MIB:,.0f}, runtime {runtime / MIB:,.0f}; plus "
              f"{mapped / MIB:,.0f} MiB of reclaimable mapped file) {'within' if fits else 'but only'} "
              f"{usable / MIB:,.0f} MiB usable on {board.name} ({board.memory_bytes / MIB:,.0f} MiB less "
              f"{board.reserved_bytes / MIB:,.0f} reserved)")
    recipes = {}
    for name in RECIPE_BYTES_PER_WEIGHT:
        w = recipe_weights_bytes(m, name)
        r_total = _total(m, w, w, context, board.backend)[-1]
        recipes[name] = {"weights_bytes": w, "total_bytes": r_total, "required_bytes": r_total - w,
                         "fits": r_total - w <= usable,
                         "decode_ceiling_tok_s": board.bandwidth_bytes_per_s / decode_bytes_per_token(m, w, context)}
    return MemoryPlan(
        model=m.path, board=board.name, backend=board.backend, context=context, weights_bytes=weights,
        mapped_file_bytes=mapped, kv_cache_bytes=kv, activations_bytes=act, runtime_bytes=runtime, total_bytes=total,
        required_bytes=required, usable_bytes=usable, fits=fits, reason=reason, bytes_per_token=per_token,
        decode_ceiling_tok_s=board.bandwidth_bytes_per_s / per_token, recipes=recipes,
        suggestion=_suggest(m, board, context, fits, recipes),
    )


def max_context_that_fits(m: ModelFacts, board: BoardProfile, weights_bytes: int) -> int:
    """Largest context (KV grows linearly) whose prediction fits the board; 0 if not even one token fits."""
    lo, hi = 0, m.max_context
    while lo < hi:  # predicted total grows monotonically with context
        mid = (lo + hi + 1) // 2
        if _total(m, weights_bytes, weights_bytes, mid, board.backend)[-1] - weights_bytes <= board.usable_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _suggest(m: ModelFacts, board: BoardProfile, context: int, fits: bool, recipes: dict) -> str:
    if fits:
        return "fits as is"
    # Recipes in RECIPE_BYTES_PER_WEIGHT run from highest to lowest quality; name the best that fits.
    fitting = [name for name, r in recipes.items() if r["fits"]]
    if fitting:
        return f"re-quantize with recipe {fitting[0]} (fits: {', '.join(fitting)})"
    smallest = min(recipes, key=lambda n: recipes[n]["weights_bytes"])
    ctx = max_context_that_fits(m, board, recipes[smallest]["weights_bytes"])
    if ctx >= 1:
        return f"no recipe fits at context {context}; recipe {smallest} fits with a context of at most {ctx} tokens"
    return f"does not fit: even recipe {smallest} at a 1-token context exceeds the board's usable memory"
