"""Will the model fit, before a byte is transferred: the memory planner's terms from the manifest against the free
memory the device has now.

At build time `plan_numbers` records the planner's per-term bytes for the file (edgegen.device.planner: weights as
the runtime holds them, the largest tensor's load transient, KV cache and activations at the planned context). On the
device `check_fit` adds its own backend's runtime overhead (planner.RUNTIME_OVERHEAD_BYTES) to those terms, exactly
as planner.predict_memory does, and compares with MemAvailable, narrowed by a cgroup memory limit where one applies.
The old model keeps serving while the new one loads in the spare slot, so the new model's whole peak must fit in
what is free now.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegen.device.planner import MIB, RUNTIME_OVERHEAD_BYTES, activation_bytes, kv_cache_bytes
from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.runtime.artifact.constants import DEFAULT_MAX_CONTEXT

if TYPE_CHECKING:
    from edgegen.firmware_bridge.deploy.manifest import Manifest

DEFAULT_CONTEXT = DEFAULT_MAX_CONTEXT  # the runtime's default KV cache (artifact.constants)
# Left free beyond the plan: the planner's constants are calibrated peaks (device/planner.py), and a board at 0 bytes
# free OOM-kills whatever allocates next, which may be the service itself.
HEADROOM_BYTES = 32 * MIB
CGROUP_V2 = Path("/sys/fs/cgroup")
CGROUP_V1 = Path("/sys/fs/cgroup/memory")


@dataclass(frozen=True)
class FitResult:
    """The preflight's verdict and the numbers behind it (bytes)."""

    ok: bool
    need_bytes: int  # the planner's peak for this device's backend, plus HEADROOM_BYTES
    free_bytes: int
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def plan_numbers(path: str | Path, kind: str = "text", context: int | None = None, backend: str = "CPU") -> dict:
    """The planner's terms for the model file at `path`, as a manifest records them (manifest.PLAN_INT_KEYS)."""
    from edgegen.device.model_facts import TensorFacts, facts_from_model_file
    from edgegen.device.planner import predict_memory
    from edgegen.runtime.artifact.reader import open_gguf

    mf = open_gguf(str(path))
    if kind == "text":
        facts = facts_from_model_file(mf)
        ctx = min(context or DEFAULT_CONTEXT, facts.max_context)
        weights = facts.device_weights_bytes
        largest = max(t.device_bytes for t in facts.tensors)
        p = predict_memory(facts, weights, largest, ctx, backend)
        kv, act, total = kv_cache_bytes(facts, ctx, backend), activation_bytes(facts, ctx), p["total"]
    else:
        # The planner models decoders only; a U-Net's weights are counted the same way (vectors as float32) and its
        # activations, a few MNIST-sized feature maps, are within the runtime constant.
        tensors = [TensorFacts(t.name, t.n_elements, t.size_bytes, t.ggml_type.name, len(t.shape),
                               t.shape[0] if t.shape else 1) for t in mf.tensors.values()]
        ctx, kv, act = 1, 0, 0
        weights = sum(t.device_bytes for t in tensors)
        largest = max((t.device_bytes for t in tensors), default=0)
        total = need_from_plan({"weights_bytes": weights, "load_transient_bytes": largest, "kv_cache_bytes": 0,
                                "activations_bytes": 0}, backend)
    return {"context": ctx, "weights_bytes": weights, "load_transient_bytes": largest, "kv_cache_bytes": kv,
            "activations_bytes": act, "total_bytes": total, "backend": backend}


def need_from_plan(plan: dict, backend: str) -> int:
    """Predicted peak RSS on `backend` from a manifest's plan terms (planner.predict_memory's arithmetic)."""
    first_overhead, cached_overhead = RUNTIME_OVERHEAD_BYTES.get(backend, RUNTIME_OVERHEAD_BYTES["CPU"])
    resident = plan["weights_bytes"] + plan["kv_cache_bytes"] + plan["activations_bytes"]
    return max(first_overhead + resident + plan["load_transient_bytes"], cached_overhead + resident)


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # cgroup v2 writes "max" for no limit


def cgroup_free_bytes() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2 memory.max - memory.current, or v1), None if none."""
    for limit_file, usage_file in ((CGROUP_V2 / "memory.max", CGROUP_V2 / "memory.current"),
                                   (CGROUP_V1 / "memory.limit_in_bytes", CGROUP_V1 / "memory.usage_in_bytes")):
        limit, usage = _read_int(limit_file), _read_int(usage_file)
        if limit is not None and usage is not None and limit < 1 << 60:  # v1 reports "no limit" as ~2**63
            return max(0, limit - usage)
    return None


def free_memory_bytes() -> int:
    """Memory a new model can take now: MemAvailable (device.host.read_memory), narrowed by a cgroup limit."""
    from edgegen.device.host import read_memory

    available = read_memory()[1]
    cgroup = cgroup_free_bytes()
    return available if cgroup is None else min(available, cgroup)


def check_fit(manifest: Manifest, *, free_bytes: int | None = None, backend: str | None = None,
              headroom_bytes: int = HEADROOM_BYTES) -> FitResult:
    """Does `manifest`'s model fit this device's free memory now? `free_bytes`/`backend` override what is measured
    (backend: the tinygrad DEV it will run on, by default the plan's)."""
    plan = manifest.plan
    backend = backend or plan["backend"]
    peak = need_from_plan(plan, backend)
    need = peak + headroom_bytes
    free = free_memory_bytes() if free_bytes is None else int(free_bytes)
    ok = need <= free
    detail = (f"{manifest.name} v{manifest.version} needs {need / MIB:,.1f} MiB (peak {peak / MIB:,.1f} MiB on "
              f"{backend}: weights {plan['weights_bytes'] / MIB:,.1f}, KV cache {plan['kv_cache_bytes'] / MIB:,.1f} "
              f"for {plan['context']} tokens, activations {plan['activations_bytes'] / MIB:,.1f}, load transient "
              f"{plan['load_transient_bytes'] / MIB:,.1f}; headroom {headroom_bytes / MIB:,.0f}) "
              f"{'within' if ok else 'but only'} {free / MIB:,.1f} MiB free")
    return FitResult(ok, need, free, detail)


def require_fit(manifest: Manifest, **kwargs: Any) -> FitResult:
    """check_fit, raising DeployError wont_fit with the numbers when it does not fit."""
    fit = check_fit(manifest, **kwargs)
    if not fit.ok:
        raise DeployError(DeployCode.WONT_FIT, fit.detail, fit.to_dict())
    return fit
