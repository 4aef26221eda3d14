"""The runtime's default backend and JIT cache use, as `edgegen device` shows them, asked of a child process."""
from __future__ import annotations

import json
import subprocess
import sys

from edgegen.device.backends import child_env


def runtime_report(timeout_s: float) -> dict:
    """The runtime's default backend and JIT cache use, from a child process (a broken driver must not take this
    command down, as in the backend probes)."""
    try:
        done = subprocess.run([sys.executable, "-m", "edgegen.runtime.backend"], env=child_env(), capture_output=True,
                              text=True, timeout=timeout_s, check=False)
        return json.loads(done.stdout.strip().splitlines()[-1])
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:g} s"}
    except (IndexError, json.JSONDecodeError):
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exited with code {done.returncode}: {tail}"}
