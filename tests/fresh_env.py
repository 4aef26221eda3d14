"""Child processes as a new user starts them: no DEV, a fresh XDG cache, edgegen's own graph cache inside it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def fresh_env(cache: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DEV", "EDGEGEN_CACHE")}
    return {**env, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(REPO), **extra}


def usable_backends() -> list[str]:
    from edgegen.device.backends import probe_backends

    return [r["backend"] for r in probe_backends(("CPU", "CL")) if r["usable"]]


def skip_unless_distinct(backend: str) -> None:
    """A named backend that is not usable, or that is the default one (already run by the default case)."""
    if backend not in usable_backends():
        pytest.skip(f"{backend} is not usable here")
    done = subprocess.run([sys.executable, "-m", "edgegen.runtime.backend"], env=fresh_env(Path("/nonexistent")),
                          cwd=REPO, capture_output=True, text=True, timeout=300, check=True)
    if json.loads(done.stdout)["default_backend"] == backend:
        pytest.skip(f"{backend} is the default backend here: the default case ran it")
