"""`edgegen generate` as a new user runs it: fresh processes, empty caches, prompts of different lengths, each usable
backend and the default one. The first bug report of a fresh install lived exactly here (a graph loaded from the
disk cache crashed on replay; the cache grew without bound)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
from fresh_env import REPO, fresh_env, skip_unless_distinct

# The prompts of the report (two lengths, each twice), then a longer one in another prefill bucket.
PROMPTS = ["What is the capital of France?", "What is the capital of France?", "Hi", "Hi",
           "Explain in one sentence why the sky looks blue on a clear day, and why sunsets look red."]


def edgegen(env: dict[str, str], *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgegen.cli", *args], env=env, cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.mark.slow
@pytest.mark.parametrize("backend", [None, "CPU", "CL"], ids=["default", "CPU", "CL"])
def test_generate_again_and_again_from_an_empty_cache(tmp_path, backend):
    if backend is not None:
        skip_unless_distinct(backend)
    env = fresh_env(tmp_path / "xdg", EDGEGEN_JIT_CACHE_MB="1000")
    flags = [] if backend is None else ["--device", backend]
    answers = []
    for prompt in PROMPTS:
        done = edgegen(env, "generate", *flags, "--max-tokens", "6", prompt)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "Traceback" not in done.stderr and "warning generated" not in done.stderr, done.stderr[-3000:]
        assert done.stdout.strip(), f"no answer to {prompt!r}"
        answers.append(done.stdout.strip())
    assert answers[0] == answers[1] and answers[2] == answers[3], "greedy answers changed between processes"
    # The graph cache is bounded and reported.
    report = json.loads(subprocess.run([sys.executable, "-m", "edgegen.runtime.backend"], env=env, cwd=REPO,
                                       capture_output=True, text=True, timeout=300, check=True).stdout)
    cache = report["jit_cache"]
    assert 0 < cache["size_bytes"] <= cache["limit_bytes"] == 1000 * 2**20, cache
    if backend is None:
        assert report["default_backend"] in ("CPU", "CL", "CUDA", "NV", "METAL")
