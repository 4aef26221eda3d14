"""The health check before commit: the golden answer, decode speed against the measured baseline, peak memory
against the plan.

The golden check is what no OTA system does for models: a text model must reproduce, token for token, the greedy
ids the deploy side computed from the same file (greedy decoding is deterministic for a given file and backend); an
image model must draw, from the same seed, a digit the evaluation classifier calls what it called at signing. A file
with other weights (a wrong quantization, a corrupt conversion) answers differently and is rolled back. Tinygrad is
imported only inside the functions that load a model.
"""
from __future__ import annotations

import logging
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgegen.device.measure import peak_rss_bytes
from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.firmware_bridge.deploy.preflight import need_from_plan

if TYPE_CHECKING:
    from edgegen.firmware_bridge.deploy.manifest import Manifest

log = logging.getLogger(__name__)

DEFAULT_GOLDEN_PROMPT = "The capital of France is"
DEFAULT_IMAGE_PROMPT = "seven"
DEFAULT_GOLDEN_TOKENS = 16
DEFAULT_IMAGE_STEPS = 10
MIN_SPEED_SHARE = 0.5
SPEED_TOKENS = 32  # decode steps timed for the speed check: enough that one slow step does not decide it
# Measured peak may exceed the plan by this share before it counts as over: the planner's CPU constants are the
# middle of measured peaks that spread about 5% (device/planner.py).
MEMORY_TOLERANCE = 1.15
CLEAR_REFS = Path("/proc/self/clear_refs")
PROC_STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class HealthResult:
    """ok, the DeployCode that failed it (None when ok), and the numbers that decided it."""

    ok: bool
    code: str | None
    numbers: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ---- memory ------------------------------------------------------------------------------------------------------
def _status_bytes(key: str) -> int | None:
    try:
        for line in PROC_STATUS.read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024  # "VmHWM:   123456 kB"
    except (OSError, ValueError, IndexError):
        pass
    return None


def reset_peak_rss() -> int | None:
    """Reset this process's peak RSS (Linux: write 5 to /proc/self/clear_refs) and return the RSS now; None where
    the kernel cannot reset it (then a peak would include earlier loads, and is not compared with the plan)."""
    try:
        CLEAR_REFS.write_text("5")
    except OSError:
        return None
    return _status_bytes("VmRSS")


# ---- loading -----------------------------------------------------------------------------------------------------
def _load(path: str | os.PathLike, kind: str, device: str | None) -> Any:
    if kind == "text":
        from edgegen.runtime.engine import TextGenerator

        return TextGenerator.load(str(path), device=device)
    from edgegen.runtime.diffusion import ImageGenerator

    return ImageGenerator.load(str(path), device=device)


def _generator(engine: Any) -> Any:
    """The runtime generator behind a firmware_bridge engine (RuntimeTextEngine / RuntimeImageEngine) or itself."""
    return getattr(engine, "generator", engine)


def _greedy_ids(gen: Any, prompt: str, max_tokens: int) -> tuple[list[int], float]:
    from edgegen.runtime import SamplingParams

    result = gen.generate(prompt, SamplingParams(temperature=0.0, max_tokens=max_tokens), chat=False)
    return list(result.token_ids), result.decode_tokens_per_s


def _decode_speed(gen: Any, prompt: str) -> float:
    """Decode tok/s over SPEED_TOKENS greedy steps that do not stop at an end-of-turn token."""
    from edgegen.runtime import SamplingParams

    ids = gen.tokenizer.encode(prompt)
    stream = gen.stream_ids(ids, SamplingParams(temperature=0.0, max_tokens=SPEED_TOKENS), ignore_eos=True)
    for _ in stream:
        pass
    return float(stream.result.decode_tokens_per_s)


def _image_verdict(gen: Any, prompt: str, seed: int, steps: int, device: str | None) -> tuple[int, float]:
    """The classifier's digit for the image `gen` draws from `prompt` with `seed`, and its probability."""
    from edgegen.runtime.diffusion import Classifier, DiffusionParams, parse_prompt

    params = DiffusionParams(steps=steps, seed=seed)  # the model's own guidance
    images = None
    for _step, _total, out in gen.sample_iter([parse_prompt(prompt)], params):
        images = out
    assert images is not None
    probs, _ = Classifier(device=device).run(images.reshape(-1, 28, 28))
    verdict = int(probs[0].argmax())
    return verdict, float(probs[0][verdict])


# ---- the golden answer, at signing time --------------------------------------------------------------------------
def golden_for(path: str | Path, kind: str = "text", prompt: str | None = None, *, max_tokens: int =
               DEFAULT_GOLDEN_TOKENS, seed: int = 0, steps: int = DEFAULT_IMAGE_STEPS, device: str | None = None,
               engine: Any = None) -> dict[str, Any]:
    """The manifest's golden check for the model file at `path` (or an already loaded `engine` of it):
    text {"prompt", "max_tokens", "token_ids"} (greedy ids), image {"prompt", "seed", "steps", "verdict"}."""
    gen = _generator(engine) if engine is not None else _load(path, kind, device)
    if kind == "text":
        prompt = prompt or DEFAULT_GOLDEN_PROMPT
        ids, _ = _greedy_ids(gen, prompt, max_tokens)
        if not ids:
            raise DeployError(DeployCode.GOLDEN_FAILED, f"{path}: greedy decoding of {prompt!r} ends at once; "
                              "choose a golden prompt the model continues", {"prompt": prompt})
        return {"prompt": prompt, "max_tokens": max_tokens, "token_ids": ids}
    prompt = prompt or DEFAULT_IMAGE_PROMPT
    verdict, _ = _image_verdict(gen, prompt, seed, steps, device)
    return {"prompt": prompt, "seed": seed, "steps": steps, "verdict": verdict}


def measure_baseline(path: str | Path, prompt: str = DEFAULT_GOLDEN_PROMPT, device: str | None = None,
                     engine: Any = None) -> float:
    """Decode tok/s of the text model at `path` on this machine (the manifest's baseline_decode_tok_s)."""
    gen = _generator(engine) if engine is not None else _load(path, "text", device)
    _decode_speed(gen, prompt)  # the first run compiles the kernels
    return _decode_speed(gen, prompt)


# ---- the check on the device -------------------------------------------------------------------------------------
def run_health(engine_or_path: Any, manifest: Manifest, *, min_speed_share: float = MIN_SPEED_SHARE,
               device: str | None = None, backend: str | None = None,
               rss_before_bytes: int | None = None) -> HealthResult:
    """Check a model against `manifest` (a manifest.Manifest): golden answer, decode speed, peak memory.

    engine_or_path: a model file path (loaded here, its memory measured from a reset peak) or a loaded engine /
    generator; for an engine pass `rss_before_bytes` from reset_peak_rss() called before it was loaded, else its
    memory is not compared. backend: the tinygrad DEV the plan is compared for (default: the manifest's plan's).
    Never raises for a bad model: a load failure is code load_failed.
    """
    m = manifest
    numbers: dict[str, Any] = {"name": m.name, "version": m.version}
    if isinstance(engine_or_path, (str, os.PathLike)):
        rss_before_bytes = reset_peak_rss()
        try:
            gen = _load(engine_or_path, m.kind, device)
        except Exception as e:  # noqa: BLE001 - any failure to load the new file is the verdict, never a crash
            numbers["error"] = f"{type(e).__name__}: {e}"
            return HealthResult(False, DeployCode.LOAD_FAILED.value, numbers)
    else:
        gen = _generator(engine_or_path)
    try:
        code = _check(gen, m, numbers, min_speed_share, device)
    except Exception as e:  # noqa: BLE001 - a model that crashes while answering fails its golden check
        numbers["error"] = f"{type(e).__name__}: {e}"
        code = DeployCode.GOLDEN_FAILED.value
    if code is None:
        code = _check_memory(m, numbers, backend, rss_before_bytes)
    result = HealthResult(code is None, code, numbers)
    log.info("health of %s v%s: %s %s", m.name, m.version, code or "ok", numbers)
    return result


def _check(gen: Any, m: Manifest, numbers: dict[str, Any], min_speed_share: float, device: str | None) -> str | None:
    g = m.golden
    if m.kind == "text":
        ids, _ = _greedy_ids(gen, g["prompt"], g["max_tokens"])
        numbers |= {"golden_expected": g["token_ids"], "golden_got": ids}
        if ids != g["token_ids"]:
            first = next((i for i, (a, b) in enumerate(zip(ids, g["token_ids"])) if a != b),
                         min(len(ids), len(g["token_ids"])))
            numbers["golden_first_difference"] = first
            return DeployCode.GOLDEN_FAILED.value
        if m.baseline_decode_tok_s is not None:
            tok_s = _decode_speed(gen, g["prompt"])
            share = tok_s / m.baseline_decode_tok_s
            numbers |= {"decode_tok_s": round(tok_s, 2), "baseline_decode_tok_s": m.baseline_decode_tok_s,
                        "speed_share": round(share, 3), "min_speed_share": min_speed_share}
            if share < min_speed_share:
                return DeployCode.TOO_SLOW.value
        return None
    verdict, prob = _image_verdict(gen, g["prompt"], g["seed"], g["steps"], device)
    numbers |= {"verdict_expected": g["verdict"], "verdict_got": verdict, "verdict_probability": round(prob, 3)}
    return None if verdict == g["verdict"] else DeployCode.GOLDEN_FAILED.value


def _check_memory(m: Manifest, numbers: dict[str, Any], backend: str | None, rss_before: int | None) -> str | None:
    planned = need_from_plan(m.plan, backend or m.plan["backend"])
    numbers["planned_peak_bytes"] = planned
    if rss_before is None:
        numbers["peak_rss_bytes"] = None  # no reset peak to measure from: not compared
        return None
    used = max(0, peak_rss_bytes() - rss_before)
    numbers |= {"peak_rss_bytes": used, "memory_tolerance": MEMORY_TOLERANCE}
    return DeployCode.MEMORY_OVER_PLAN.value if used > planned * MEMORY_TOLERANCE else None
