"""The memory planner: will this model file run on that board at this context, and how fast can decode go?

The runtime starts one of two ways (runtime/jit_cache.py), and the planner predicts the peak RSS of each:
- first start, no cached graphs: every GGUF tensor is repacked from the memory map into device buffers, the map's
  pages released after each one (ModelFile.release_pages); the decode and prefill graphs are captured, then
  saved to the JIT cache with their buffer bytes streamed to a side file.
- cached start: the graphs are unpickled, each buffer copied from the side file's map and its pages released.
Either way one copy of the weights stays resident. Terms, each mirroring what the runtime allocates:
- weights: the tensor table's bytes as the runtime holds them (ModelFacts.device_weights_bytes): repacking keeps
  the file's size except for Q3_K / Q4_K / Q5_K, whose packed scales are unpacked (4 bytes more per 256 weights,
  docs/QUANT_TYPES.md), and vectors, widened to float32.
- load transient (first start only): the tensor being repacked, resident twice for a moment (its mapped pages
  and its repacked arrays): the largest tensor's bytes.
- KV cache: 2 (K and V) x layers x kv heads x context x head_dim x 2 or 4 bytes (float16 beside the CPU kernels,
  float32 beside tinygrad's attention: artifact.constants.kv_element_bytes, models/llama.py), allocated
  for the whole context at load, every layer, sliding-window ones included. head_dim is the file's
  attention.key_length where it states one (Qwen 3, Gemma 3: not dim / heads). Serving N sequences at once
  (`--parallel N`, runtime/batch.py) adds N caches beside the one prompts are prefilled into: kv_caches(N).
- activations: the largest prefill graph's buffers (the prompt up to MAX_PREFILL_TOKENS, the largest bucket): per
  token the residual, q/k/v, attention output, the MLP's two hidden projections, and a row of attention scores.
- runtime: interpreter, numpy, tinygrad, tokenizer, kernels and captured graphs; a per-backend constant for each
  start path, calibrated against measured peak RSS (tests/device/test_device_real_model.py).

The decode ceiling is memory bandwidth over the bytes one decode step must read: every packed weight (the tied
embedding is the output head, read whole; an untied embedding is only looked up, one row) plus the KV cache.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from edgegen.device.errors import DeviceError
from edgegen.device.model_facts import ModelFacts
from edgegen.device.profiles import BoardProfile
from edgegen.runtime.artifact.constants import (
    ACTIVATION_BYTES,
    BLOCK_SIZES,
    MAX_PREFILL_TOKENS,
    MAX_SLOTS,
    GGMLQuantizationType,
    kv_element_bytes,
)

T = GGMLQuantizationType

MIB = 1024 * 1024
ACT_BYTES = ACTIVATION_BYTES  # float32 activations

# Runtime overhead beyond the terms above, per backend, for (first start, cached start). CPU: calibrated against the
# peak RSS (VmHWM) of SmolLM2-135M Q4_1 and its w8 re-quantization with the default (hand-written) kernels at the
# default context (tests/device/test_device_real_model.py): each constant is the middle of those peaks less the
# modelled terms (the peaks and the tinygrad-kernel path's extra: docs/MEASUREMENTS.md). Other backends are
# estimates: the CPU figures with tinygrad's kernels plus a driver context.
RUNTIME_OVERHEAD_BYTES: dict[str, tuple[int, int]] = {
    "CPU": (88 * MIB, 100 * MIB),
    "CL": (200 * MIB, 200 * MIB),  # estimate: ICD loader and the OpenCL compiler on top of the CPU figures
    "CUDA": (450 * MIB, 440 * MIB),  # estimate: a CUDA context on Jetson takes roughly 300 MiB of unified memory
    "NV": (450 * MIB, 440 * MIB),
    "METAL": (310 * MIB, 300 * MIB),  # estimate
}

# The tensor types of each quantize recipe (quantize/recipes.py names), as (matrices, embedding/output head);
# vectors stay F32. `w4-mix8` keeps the embedding/output head at Q8_0; its outlier promotions depend on measured
# errors and are not predicted, so its estimate is a lower bound.
RECIPE_TYPES: dict[str, tuple[GGMLQuantizationType, GGMLQuantizationType]] = {
    "f16": (T.F16, T.F16),
    "w8": (T.Q8_0, T.Q8_0),
    "w4-mix8": (T.Q4_0, T.Q8_0),
    "w4a": (T.Q4_1, T.Q4_1),
    "w4": (T.Q4_0, T.Q4_0),
}


def bytes_per_weight(qtype: GGMLQuantizationType) -> float:
    """Packed bytes per weight of a GGML type, from the block table (Q4_1: 20 B per 32 weights)."""
    block, type_size = BLOCK_SIZES[qtype]
    return type_size / block


RECIPE_BYTES_PER_WEIGHT: dict[str, tuple[float, float]] = {  # name -> (matrices, embedding/output head)
    name: (bytes_per_weight(matrix), bytes_per_weight(head)) for name, (matrix, head) in RECIPE_TYPES.items()
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
    load_transient_bytes: int
    kv_cache_bytes: int  # every cache: kv_caches(parallel) of them
    activations_bytes: int
    runtime_bytes: int  # first-start overhead
    first_start_bytes: int  # predicted peak RSS without cached graphs
    cached_start_bytes: int  # predicted peak RSS with graphs from the JIT cache
    total_bytes: int  # predicted peak RSS: the larger of the two, and what must fit
    usable_bytes: int
    memory_fits: bool  # total_bytes <= usable_bytes
    fits: bool  # memory fits and the runtime can run the file
    verdict: str  # "fits", "does_not_fit" (memory) or "cannot_run" (the runtime refuses the file)
    cannot_run_reason: str | None  # why the runtime refuses the file
    reason: str  # the memory arithmetic behind memory_fits
    bytes_per_token: int  # read by one decode step at the full context
    decode_ceiling_tok_s: float  # bandwidth / bytes_per_token
    recipes: dict  # recipe name -> {"weights_bytes", "total_bytes", "fits", "decode_ceiling_tok_s"}
    suggestion: str
    parallel: int = 1  # sequences served at once

    def to_dict(self) -> dict:
        return asdict(self)


def kv_cache_bytes(m: ModelFacts, context: int, backend: str = "CPU", kernels: str = "auto") -> int:
    """Keys and values of every layer for `context` positions, in the element size the runtime allocates there."""
    return 2 * m.n_layers * m.n_kv_heads * context * m.head_dim * kv_element_bytes(backend, kernels)


def kv_caches(parallel: int) -> int:
    """KV caches the runtime allocates to serve `parallel` sequences at once: one, or the batch-1 cache that
    prompts are prefilled into plus one per slot (runtime/graphs.py allocate_slots)."""
    return 1 if parallel <= 1 else parallel + 1


def activation_bytes(m: ModelFacts, context: int) -> int:
    t = min(context, MAX_PREFILL_TOKENS)
    per_token = 2 * m.dim + (m.n_heads + 2 * m.n_kv_heads) * m.head_dim + 2 * m.hidden_dim + m.n_heads * t
    return t * per_token * ACT_BYTES + m.vocab_size * ACT_BYTES


def recipe_weights_bytes(m: ModelFacts, recipe: str) -> tuple[int, int]:
    """Packed size of the model's tensors if re-quantized with `recipe`, and of its largest tensor (estimated from
    parameter counts)."""
    matrix, head = RECIPE_BYTES_PER_WEIGHT[recipe]
    sizes = [t.n_elements * 4 if t.n_dims < 2 else t.n_elements * (head if t.name in HEAD_TENSORS else matrix)
             for t in m.tensors]  # vectors stay F32
    return int(sum(sizes)), int(max(sizes))


def decode_bytes_per_token(m: ModelFacts, weights_bytes: int, context: int, backend: str = "CPU") -> int:
    """Bytes one decode step reads at position `context`: the weights (minus an untied embedding) and the KV."""
    embed = next((t for t in m.tensors if t.name == "token_embd.weight"), None)
    untied_embed = embed.device_bytes if embed is not None and not m.tied_embeddings else 0
    return weights_bytes - untied_embed + kv_cache_bytes(m, context, backend)


def check_context(m: ModelFacts, context: int) -> None:
    if context < 1:
        raise DeviceError(f"context must be a positive number of tokens, got {context}")
    if context > m.max_context:
        raise DeviceError(f"context {context} exceeds the model's trained context of {m.max_context} tokens")


def predict_memory(m: ModelFacts, weights: int, largest_tensor: int, context: int, backend: str,
                   parallel: int = 1) -> dict[str, int]:
    """Every term of the prediction and both start paths (see the module docstring)."""
    first_overhead, cached_overhead = RUNTIME_OVERHEAD_BYTES.get(backend, RUNTIME_OVERHEAD_BYTES["CPU"])
    kv, act = kv_cache_bytes(m, context, backend) * kv_caches(parallel), activation_bytes(m, context)
    resident = weights + kv + act
    first = first_overhead + resident + largest_tensor
    cached = cached_overhead + resident
    return {"weights": weights, "transient": largest_tensor, "kv": kv, "act": act, "runtime": first_overhead,
            "first": first, "cached": cached, "total": max(first, cached)}


def plan_memory(m: ModelFacts, board: BoardProfile, context: int, cannot_run: str | None = None,
                requantize_fixes: bool = False, parallel: int = 1) -> MemoryPlan:
    """Predict peak memory and the decode ceiling of model `m` on `board` with a KV cache of `context` tokens per
    sequence and `parallel` sequences served at once.

    `cannot_run`: why the runtime refuses the file (architecture, tensor types), which overrides the memory verdict;
    `requantize_fixes`: re-quantizing with `edgegen quantize` would remove that reason (only the types stop it).
    """
    check_context(m, context)
    if not 1 <= parallel <= MAX_SLOTS:
        raise DeviceError(f"parallel must be from 1 to {MAX_SLOTS} sequences, got {parallel}")
    weights = m.device_weights_bytes
    p = predict_memory(m, weights, max(t.device_bytes for t in m.tensors), context, board.backend, parallel)
    usable = board.usable_bytes
    per_token = decode_bytes_per_token(m, weights, context, board.backend)
    memory_fits = p["total"] <= usable
    fits = memory_fits and cannot_run is None
    verdict = "cannot_run" if cannot_run is not None else "fits" if fits else "does_not_fit"
    caches = f"{kv_caches(parallel)} x {context}" if parallel > 1 else f"{context}"
    reason = (f"needs {p['total'] / MIB:,.0f} MiB (weights {weights / MIB:,.0f}, KV cache {p['kv'] / MIB:,.0f} "
              f"for {caches} tokens, activations {p['act'] / MIB:,.0f}, load transient "
              f"{p['transient'] / MIB:,.0f}, runtime {p['runtime'] / MIB:,.0f}) "
              f"{'within' if memory_fits else 'but only'} {usable / MIB:,.0f} MiB usable on {board.name} "
              f"({board.memory_bytes / MIB:,.0f} MiB less {board.reserved_bytes / MIB:,.0f} reserved)")
    recipes = {}
    for name in RECIPE_BYTES_PER_WEIGHT:
        w, largest = recipe_weights_bytes(m, name)
        r = predict_memory(m, w, largest, context, board.backend, parallel)
        recipes[name] = {"weights_bytes": w, "total_bytes": r["total"], "fits": r["total"] <= usable,
                         "decode_ceiling_tok_s": board.bandwidth_bytes_per_s / decode_bytes_per_token(m, w, context)}
    return MemoryPlan(
        model=m.path, board=board.name, backend=board.backend, context=context, weights_bytes=weights,
        load_transient_bytes=p["transient"], kv_cache_bytes=p["kv"], activations_bytes=p["act"],
        runtime_bytes=p["runtime"], first_start_bytes=p["first"], cached_start_bytes=p["cached"],
        total_bytes=p["total"], usable_bytes=usable, memory_fits=memory_fits, fits=fits, verdict=verdict,
        cannot_run_reason=cannot_run, reason=reason, bytes_per_token=per_token,
        decode_ceiling_tok_s=board.bandwidth_bytes_per_s / per_token, recipes=recipes,
        suggestion=_suggest(m, board, context, memory_fits, recipes, cannot_run, requantize_fixes), parallel=parallel,
    )


def max_parallel_that_fits(m: ModelFacts, usable_bytes: int, context: int, backend: str = "CPU") -> int:
    """Most sequences (at most MAX_SLOTS) that `usable_bytes` hold at `context` tokens each; 0 if not even one."""
    weights, largest = m.device_weights_bytes, max(t.device_bytes for t in m.tensors)
    fitting = [n for n in range(1, MAX_SLOTS + 1)
               if predict_memory(m, weights, largest, context, backend, n)["total"] <= usable_bytes]
    return max(fitting, default=0)


def max_context_that_fits(m: ModelFacts, board: BoardProfile, recipe: str) -> int:
    """Largest context (KV grows linearly) whose prediction with `recipe` fits the board; 0 if none does."""
    weights, largest = recipe_weights_bytes(m, recipe)
    lo, hi = 0, m.max_context
    while lo < hi:  # predicted total grows monotonically with context
        mid = (lo + hi + 1) // 2
        if predict_memory(m, weights, largest, mid, board.backend)["total"] <= board.usable_bytes:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _suggest(m: ModelFacts, board: BoardProfile, context: int, fits: bool, recipes: dict,
             cannot_run: str | None = None, requantize_fixes: bool = False) -> str:
    if cannot_run is not None and not requantize_fixes:
        return "none: re-quantizing cannot remove what stops the runtime (see the verdict)"
    if cannot_run is not None:
        fitting = [name for name, r in recipes.items() if r["fits"]]
        if fitting:
            return (f"re-quantize to tensor types the runtime runs: `edgegen quantize` with recipe {fitting[0]} "
                    f"(fits: {', '.join(fitting)})")
        return "re-quantize to tensor types the runtime runs; " + _suggest(m, board, context, False, recipes)
    if fits:
        return "fits as is"
    # Recipes in RECIPE_BYTES_PER_WEIGHT run from highest to lowest quality; name the best that fits.
    fitting = [name for name, r in recipes.items() if r["fits"]]
    if fitting:
        return f"re-quantize with recipe {fitting[0]} (fits: {', '.join(fitting)})"
    smallest = min(recipes, key=lambda n: recipes[n]["weights_bytes"])
    ctx = max_context_that_fits(m, board, smallest)
    if ctx >= 1:
        return f"no recipe fits at context {context}; recipe {smallest} fits with a context of at most {ctx} tokens"
    return f"does not fit: even recipe {smallest} at a 1-token context exceeds the board's usable memory"
