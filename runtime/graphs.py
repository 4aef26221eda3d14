"""The Llama on one device and its captured decode/prefill graphs: capture, disk cache, and checks before trusting.

Decode runs under TinyJit with a symbolic position, prefill under one TinyJit per padded prompt length. Graphs can
come from the JIT cache on disk (runtime.jit_cache) and every graph can skip TinyJit through direct CPU calls
(runtime.cpu_replay); both skip tinygrad's own path, so each is checked on first use and dropped, with a log line,
when it disagrees. Each graph is one `Graph` with one `GraphState`. Callers hold runtime.tinygrad_seam.TINYGRAD_LOCK
around every method here.
"""
from __future__ import annotations

import enum
import logging
from collections.abc import Callable

import numpy as np
from tinygrad import Tensor, TinyJit, UOp

from edgegen.models.llama import Llama, LlamaConfig
from edgegen.runtime import jit_cache as jit_cache_store
from edgegen.runtime.artifact.constants import PREFILL_BUCKETS
from edgegen.runtime.artifact.reader import ModelFile
from edgegen.runtime.cpu_replay import CPUReplay
from edgegen.runtime.errors import GenerationError
from edgegen.runtime.loader import GGUFWeights, build_llama
from edgegen.runtime.native.options import KernelOptions
from edgegen.runtime.quant import embedding_rows
from edgegen.runtime.session import GenerationSession
from edgegen.runtime.tinygrad_seam import (
    capture_on_first_call,
    captured_graph,
    cpu_view,
    device_tensor,
    install_captured,
    write_buffer,
)

log = logging.getLogger(__name__)
# A suffix this short after a reused prefix runs as decode steps when no suffix prefill graph applies
SUFFIX_DECODE_STEPS = 16
# How far a loaded prefill graph may differ from a decode of its last position with the hand-written kernels
# (a few % of the logit scale after 30 layers, docs/MEASUREMENTS.md; a broken graph is off by the whole scale).
NATIVE_CHECK_REL = 0.1

# Prompts are padded to one of PREFILL_BUCKETS' lengths so that a handful of prefill graphs serve every prompt (each
# graph is compiled once, then replayed by TinyJit); padded positions write cache rows that decode overwrites before
# reading. The lengths live with the artifact's constants because the memory planner sizes memory by them.


def same_logits(a: np.ndarray, b: np.ndarray, rel: float = 1e-3) -> bool:
    """Equal up to float reassociation between kernels (prefill and decode differ in summation order); `rel` of
    the logit scale. With the hand-written kernels a prefill and a decode of the same position may round an
    activation to the other int8 neighbour (their norms sum in another order), which moves logits by about 1%."""
    if a.shape != b.shape or not np.isfinite(a).all():
        return False
    return int(a.argmax()) == int(b.argmax()) and float(np.abs(a - b).max()) <= rel * float(np.abs(b).max()) + 1e-3


class GraphState(enum.Enum):
    """Where one captured graph stands. Captured here: EMPTY -> CAPTURED -> CHECKED. From the JIT cache: LOADED ->
    VERIFIED, or dropped: a loaded graph that fails its check deletes the cache entry and every graph starts again
    EMPTY, captured from the model (loaded graphs own their KV cache and weights, so they go together)."""

    EMPTY = "empty"  # not captured: TinyJit captures it on its first call
    CAPTURED = "captured"  # captured here by TinyJit; its direct CPU replay not yet compared with TinyJit
    CHECKED = "checked"  # captured here; its replay agreed with TinyJit, or there is none and TinyJit runs it
    LOADED = "loaded"  # installed from the JIT cache; its first run builds its replay and checks its results
    VERIFIED = "verified"  # loaded, and its first results matched (the saved probe, then a decode step)


class Graph:
    """One captured step (decode, the prefill of one bucket, a suffix prefill of one bucket) and its state."""

    def __init__(self, name: str, step: Callable[..., Tensor]) -> None:
        self.name = name
        self.jit = capture_on_first_call(TinyJit(step))
        self.state = GraphState.EMPTY
        self.replay: CPUReplay | None = None  # its direct CPU calls, once built and trusted
        self.saved = False  # the JIT cache holds this capture

    @property
    def captured(self) -> object | None:
        """tinygrad's captured graph, or None before the capture."""
        return captured_graph(self.jit)

    def install(self, captured: object) -> None:
        install_captured(self.jit, captured)
        self.state, self.saved = GraphState.LOADED, True


def slot_batch_sizes(n: int) -> list[int]:
    """Batch decode graphs for n slots: 1, 2, 4, .. up to n (the step runs the smallest that covers the busy
    slots; few graphs, and few idle rows computed)."""
    sizes = [1]
    while sizes[-1] < n:
        sizes.append(min(2 * sizes[-1], n))
    return sizes


class ModelGraphs:
    """The model (weights repacked on first use), its KV cache, and the decode/prefill graphs that run it."""

    def __init__(self, model_file: ModelFile, device: str, config: LlamaConfig, probe_token: int,
                 jit_cache: bool = True, options: KernelOptions | None = None) -> None:
        self.model_file, self.device, self.config = model_file, device, config
        self.options = options or KernelOptions()
        self.plan = self.options.plan(device)  # resolved once, passed down whole
        self.native, self.threads = self.plan.native, self.plan.threads
        self._embedding = model_file.tensors["token_embd.weight"]
        self._model: Llama | None = None
        self._weights: GGUFWeights | None = None
        self._start = UOp.variable("start_pos", 0, config.max_context - 1)
        self._last = UOp.variable("last", 0, max(PREFILL_BUCKETS) - 1)
        # Which stream's tokens the KV cache holds, and which tokens (prompt reuse: a request that starts with them
        # prefills only the rest): the session owns these facts; the steps below record what they wrote.
        self.session = GenerationSession()
        self.probe_token = probe_token
        self._cache_key = jit_cache_store.cache_key(model_file.path, device, config.max_context,
                                                    self.plan.describe()) \
            if jit_cache else None
        self.probe: np.ndarray | None = None  # decode logits for the probe token at position 0
        self._new_graphs()
        if self._cache_key is not None and (saved := jit_cache_store.load(self._cache_key)) is not None:
            self._install_graphs(saved)
        if not self.from_disk:
            self.model  # noqa: B018 - the weights, built now: not inside the first capture (_step_model)

    # ---- the model ---------------------------------------------------------------------------------------------
    @property
    def model(self) -> Llama:
        """The tinygrad model, with weights repacked from the GGUF; built on first use."""
        if self._model is None:
            self._model, self._weights = build_llama(self.model_file, self.device, self.config.max_context,
                                                     self.plan)
            self._model.allocate_cache(1, self.device)
            self.model_file.release_pages()
        return self._model

    @property
    def built_model(self) -> Llama | None:
        """The model if it was built already, without building it (None while graphs loaded from disk serve)."""
        return self._model

    @property
    def weights(self) -> GGUFWeights:
        self.model  # noqa: B018
        assert self._weights is not None
        return self._weights

    def embed(self, ids: list[int]) -> np.ndarray:
        return embedding_rows(self._embedding, ids)  # (T, dim)

    # ---- graph lifecycle ---------------------------------------------------------------------------------------
    def _new_graphs(self) -> None:
        self._decode = Graph("decode", self._decode_step)
        self._prefills = {b: Graph(f"prefill{b}", self._prefill_step) for b in PREFILL_BUCKETS}
        # prefill after a reused prefix: the same step from a symbolic position (the native attention kernel only)
        self._suffixes = {b: Graph(f"suffix{b}", self._suffix_step) for b in PREFILL_BUCKETS}
        self._inputs: dict[object, Tensor] = {}  # "decode" and each bucket's persistent input (replays read them)
        self.session.forget()  # new graphs own new buffers: the cache holds nothing known

    @property
    def graphs(self) -> list[Graph]:
        return [self._decode, *self._prefills.values(), *self._suffixes.values()]

    def states(self) -> dict[str, GraphState]:
        """Each graph's state by name ("decode", "prefill32", "suffix16", ...)."""
        return {g.name: g.state for g in self.graphs}

    def captured(self, name: str) -> object | None:
        """The captured tinygrad graph called `name`, or None."""
        return next(g.captured for g in self.graphs if g.name == name)

    @property
    def from_disk(self) -> bool:
        """The graphs in use came from the JIT cache (the model's weights need not be built)."""
        return self._decode.state in (GraphState.LOADED, GraphState.VERIFIED)

    @property
    def decode_replay(self) -> CPUReplay | None:
        """The decode graph's direct CPU calls, once built and trusted."""
        return self._decode.replay

    def prefill_replay(self, bucket: int) -> CPUReplay | None:
        """The prefill graph of `bucket` tokens' direct CPU calls, once it ran (benchmarks/profile_decode.py)."""
        graph = self._prefills.get(bucket)
        return None if graph is None else graph.replay

    def _install_graphs(self, saved: dict) -> None:
        if "decode" not in saved or not isinstance(saved.get("probe"), np.ndarray):
            return
        self._decode.install(saved["decode"])
        for kind, graphs in (("prefill", self._prefills), ("suffix", self._suffixes)):
            for bucket, captured in saved.get(kind, {}).items():
                if bucket in graphs:
                    graphs[bucket].install(captured)
        self.probe = saved["probe"]

    def own_graphs(self, reason: str = "the JIT cache lacks a graph needed now") -> None:
        """Graphs loaded from disk own their KV cache and weights; anything that must run the Python model (a
        prefill length with no cached graph, eval) drops them and recaptures from the model, so all share one
        cache."""
        if self.from_disk:
            log.info("%s: recapturing the graphs from the model", reason)
            self._new_graphs()
            self.model  # noqa: B018 - the weights, built now: not inside the capture that follows (_step_model)
            self.probe = None  # the next save computes its probe from the recaptured graph, not the loaded file

    def saved_all(self) -> bool:
        """Whether save() has nothing new to write (cheap: no pickling)."""
        return (self._cache_key is None or self._decode.captured is None
                or all(g.saved for g in self.graphs if g.captured is not None))

    def save(self) -> None:
        """Write the captured graphs to the JIT cache when there is something new to save (after a generation)."""
        if self.saved_all():
            return
        assert self._cache_key is not None
        if self.probe is None:
            self.probe = self._decode_probe()
        kept = [g for g in self.graphs if g.captured is not None]
        saved = {"decode": self._decode.captured, "probe": self.probe,
                 "prefill": {b: c for b, g in self._prefills.items() if (c := g.captured) is not None},
                 "suffix": {b: c for b, g in self._suffixes.items() if (c := g.captured) is not None}}
        if jit_cache_store.save(self._cache_key, saved) is not None:
            for g in kept:
                g.saved = True

    # ---- running a graph, and checking graphs that skip TinyJit's own path -------------------------------------
    def _run(self, g: Graph, args: tuple, values: dict, want: Callable[[], np.ndarray] | None = None
             ) -> np.ndarray | None:
        """Run `g` on `args` (its symbolic variables also as `values`). EMPTY: TinyJit captures it, then its direct
        replay is built and compared with TinyJit (CHECKED). LOADED: its replay is built without a TinyJit run and
        its result compared with `want()` (VERIFIED), or the graphs are dropped and None returned."""
        if g.state is GraphState.LOADED:
            return self._first_loaded_run(g, args, values, want)
        if g.replay is not None:
            g.replay(values)
            return g.replay.result()
        out = g.jit(*args).numpy().reshape(-1)
        if g.state is GraphState.EMPTY and g.captured is not None:
            g.state = GraphState.CAPTURED
            out = self._check_replay(g, args, values, out)
        return out

    def _check_replay(self, g: Graph, args: tuple, values: dict, out: np.ndarray) -> np.ndarray:
        """A graph TinyJit has just captured and run on `args` (giving `out`): its direct replay runs the same step
        once more (rewriting the same cache rows with the same values) and is kept if it agrees; if not, TinyJit runs
        the step again, since the replay wrote those rows, and its logits are returned."""
        g.state = GraphState.CHECKED
        if (replay := CPUReplay.build(g.jit, args, self.threads)) is None:
            return out
        replay(values)
        replayed = replay.result()
        if same_logits(replayed, out):
            g.replay = replay
            return out
        log.warning("direct CPU replay disagrees with TinyJit on %s (max |diff| %.3g); using TinyJit", g.name,
                    float(np.abs(replayed - out).max()))
        return g.jit(*args).numpy().reshape(-1)

    def _first_loaded_run(self, g: Graph, args: tuple, values: dict, want: Callable[[], np.ndarray] | None
                          ) -> np.ndarray | None:
        """A loaded graph's first run, through its direct replay built without a TinyJit run (that skips about 1 s
        of TinyJit's Python dispatch at a warm start; the graph that saved it had its replay checked when it was
        captured), checked against `want()`: TinyJit's result for the same input. Agreement: VERIFIED. A mismatch
        or a crash deletes the cache entry, recaptures from the model and returns None."""
        assert want is not None, f"the first run of the loaded graph {g.name} needs something to check it against"
        try:
            g.replay = CPUReplay.build(g.jit, args, self.threads)
            if g.replay is not None:
                g.replay(values)
                got = g.replay.result()
            else:
                got = g.jit(*args).numpy().reshape(-1)
            ok = same_logits(got, want(), NATIVE_CHECK_REL if self.native else 1e-3)
            why = "its logits differ from TinyJit's"
        except Exception as e:  # noqa: BLE001 - a graph that fails to replay is a bad cache entry, not a bad request
            got, ok, why = None, False, f"replaying it failed ({type(e).__name__}: {e})"
        if ok:
            g.state = GraphState.VERIFIED
            return got
        log.warning("the %s graph loaded from the JIT cache is not usable: %s; dropping the cache entry", g.name, why)
        if self._cache_key is not None:
            jit_cache_store.remove(self._cache_key)
        self.own_graphs("a graph from the JIT cache failed its check")
        return None

    def _decode_probe(self) -> np.ndarray | None:
        """Decode logits for the probe token alone at position 0: they depend only on the weights (row 0 of the KV
        cache is written before it is read, and every request rewrites the rows it reads). A loaded decode graph is
        checked against the saved probe here: None if it failed."""
        x = self._input(self._inputs, "decode", self.embed([self.probe_token])[None])  # (1, 1, dim)
        self.session.forget()  # the probe rewrote cache row 0
        saved = self.probe
        return self._run(self._decode, (x, self._start.bind(0)), {"start_pos": 0},
                         want=None if saved is None else (lambda: saved))

    def _verified_decode(self) -> bool:
        """The decode graph can be trusted: checked against the saved probe first if it was loaded."""
        return self._decode.state is not GraphState.LOADED or self._decode_probe() is not None

    # ---- model steps -------------------------------------------------------------------------------------------
    def _step_model(self) -> Llama:
        """The model, for a step TinyJit may be capturing. Its weights must have been built before: a weight
        realized inside a capture becomes a copy from its host array that every replay repeats and the pickled graph
        carries (docs/MEASUREMENTS.md)."""
        if self._model is None:
            raise GenerationError("internal error: a graph step ran before the model was built")
        return self._model

    def _decode_step(self, h: Tensor, start_pos: UOp) -> Tensor:
        return self._step_model()(h, start_pos).realize()  # (1, 1, vocab)

    def _prefill_step(self, h: Tensor, last: UOp) -> Tensor:
        return self._step_model()(h, 0, logits_at=last).realize()  # (1, 1, vocab)

    def _suffix_step(self, h: Tensor, start_pos: UOp, last: UOp) -> Tensor:
        return self._step_model()(h, start_pos, logits_at=last).realize()  # (1, 1, vocab)

    def prefill_reusing(self, ids: list[int]) -> np.ndarray:
        """The logits after `ids`, computing only what the KV cache does not hold yet: the tokens after the longest
        prefix shared with the cache's tokens (a fixed system prompt over MQTT is prefilled once). Falls back to a
        whole prefill when nothing is shared."""
        shared = self.session.shared_prefix(ids)
        rest = ids[shared:]
        bucket = next((b for b in PREFILL_BUCKETS if b >= len(rest)), None)
        if shared == 0:
            return self.prefill(ids)
        logits: np.ndarray | None = None
        if (self.native and bucket is not None and shared + bucket <= self.config.max_context and len(rest) > 1
                and (not self.from_disk or self._suffixes[bucket].captured is not None)):
            logits = self._run_batch(self._suffixes[bucket], ids, rest, bucket, {"start_pos": self._start.bind(shared)})
            if logits is None:  # a loaded graph failed its check and was dropped: the model prefills it
                return self.prefill(ids)
        elif len(rest) <= SUFFIX_DECODE_STEPS:
            for i, token in enumerate(rest):
                logits = self.decode(token, shared + i)
        else:
            return self.prefill(ids)
        assert logits is not None
        self.session.wrote(ids)
        return logits

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Run the prompt from position 0 in one batch; return the logits after its last token."""
        n = len(ids)
        bucket = next((b for b in PREFILL_BUCKETS if b >= n), None)
        if bucket is None or bucket > self.config.max_context or self._prefills[bucket].captured is None:
            self.own_graphs()  # this prefill will be captured from the Python model (a no-op unless from disk)
        elif (logits := self._run_batch(self._prefills[bucket], ids, ids, bucket, {})) is not None:
            self.session.wrote(ids)
            return logits
        if bucket is None or bucket > self.config.max_context:
            # Longer than every bucket: one exact-size graph (compiled for this length only).
            h = Tensor(self.embed(ids)[None], device=self.device).realize()
            self.session.wrote(ids)
            return self.model(h, 0, logits_at=n - 1).realize().numpy().reshape(-1)
        logits = self._run_batch(self._prefills[bucket], ids, ids, bucket, {})
        assert logits is not None  # graphs captured here are not dropped
        self.session.wrote(ids)
        return logits

    def _run_batch(self, g: Graph, ids: list[int], rest: list[int], bucket: int, variables: dict
                   ) -> np.ndarray | None:
        """Run a batched graph (a prefill, or a suffix after a reused prefix) on `rest`, the last tokens of `ids`,
        padded to `bucket`. A loaded graph's first run is checked: the decode graph (against the saved probe first)
        recomputes the last prompt position from the cache rows the batch wrote, and both must agree; that costs
        one decode step, not a second prefill. None when a check failed and the caller must use the model."""
        if g.state is GraphState.LOADED and not self._verified_decode():
            return None
        emb = np.zeros((1, bucket, self.config.dim), dtype=np.float32)
        emb[0, :len(rest)] = self.embed(rest)
        x = self._input(self._inputs, bucket, emb)
        bound = {**variables, "last": self._last.bind(len(rest) - 1)}
        values = {k: v.unbind()[1] for k, v in bound.items()}
        return self._run(g, (x, *bound.values()), values, want=lambda: self.decode(ids[-1], len(ids) - 1))

    def _input(self, buffers: dict[object, Tensor], key: object, emb: np.ndarray) -> Tensor:
        """The persistent input buffer of a graph (`key` in `buffers`) holding `emb`: made on first use, then
        written in place, since a captured graph and its direct replay read that very buffer."""
        if (x := buffers.get(key)) is None:
            x = buffers[key] = device_tensor(emb, self.device)
        else:
            write_buffer(x, emb)
        return x

    def decode(self, token: int, pos: int) -> np.ndarray:
        """One token at position `pos` (the KV cache holds the positions before it); the logits after it."""
        if not self._verified_decode():
            raise GenerationError("the decode graph from the JIT cache failed its check; prefill again")
        self.session.wrote_token(token, pos)
        x = self._input(self._inputs, "decode", self.embed([token])[None])  # (1, 1, dim)
        out = self._run(self._decode, (x, self._start.bind(pos)), {"start_pos": pos})
        assert out is not None  # a verified or captured decode graph is never dropped
        return out

    # ---- several sequences decoded together (runtime.batch) -------------------------------------------------------
    def allocate_slots(self, n: int) -> None:
        """KV caches for `n` sequences beside the batch-1 cache that prefill writes, and decode graphs over the
        first 1, 2, 4, .. of them. Needs the model itself: graphs loaded from disk are recaptured."""
        self.own_graphs("decoding several sequences at once needs the model")
        self.model.allocate_slots(n)
        self._slot_pos = [UOp.variable(f"pos{i}", 0, self.config.max_context - 1) for i in range(n)]
        self._batches = {b: Graph(f"batch{b}", self._batch_step) for b in slot_batch_sizes(n)}
        self._batch_inputs: dict[object, Tensor] = {}  # kept apart: new graphs (_new_graphs) keep the batch ones

    def _batch_step(self, h: Tensor, *starts: UOp) -> Tensor:
        return self._step_model().decode_slots(h, list(starts)).realize()  # (b, 1, vocab)

    def copy_to_slot(self, slot: int, rows: int) -> None:
        """Positions 0..rows-1 of the batch-1 cache (where a prompt was just prefilled) copied into `slot`'s cache:
        on the CPU straight between the buffers' memory (a tinygrad copy of the whole caches costs far more than
        the prompt's rows), elsewhere whole."""
        pairs = [(b.cache_kv, b.slot_caches[slot]) for b in self.model.blocks if b.cache_kv is not None]
        if self.device.split(":")[0] != "CPU":
            Tensor.realize(*[dst.assign(src) for src, dst in pairs])
            return
        for src, dst in pairs:  # (2, 1, kv_heads, context, head_dim)
            shape = tuple(int(d) for d in src.shape[:-1]) + (-1,)
            a, b = cpu_view(src).reshape(shape), cpu_view(dst).reshape(shape)
            b[:, :, :, :rows] = a[:, :, :, :rows]

    def decode_slots(self, tokens: list[int], positions: list[int]) -> np.ndarray:
        """Logits (b, vocab) after tokens[i] written at positions[i] of slot i's cache, for slots 0..b-1; b must
        be one of slot_batch_sizes (idle slots get any token at position 0: their cache is copied anew before
        use)."""
        b = len(tokens)
        g = self._batches[b]
        x = self._input(self._batch_inputs, b, self.embed(tokens)[:, None])  # (b, 1, dim)
        bound = [self._slot_pos[i].bind(p) for i, p in enumerate(positions)]
        out = self._run(g, (x, *bound), {f"pos{i}": p for i, p in enumerate(positions)})
        assert out is not None  # graphs captured here are not dropped
        return out.reshape(b, -1)

    def forward(self, ids: list[int]) -> np.ndarray:
        """Next-token logits at every position of one causal pass from position 0, outside the graphs (T, vocab)."""
        self.own_graphs()
        self.session.forget()
        h = Tensor(self.embed(ids)[None], device=self.device).realize()
        return self.model(h, 0, last_only=False).realize().numpy().reshape(len(ids), -1)
