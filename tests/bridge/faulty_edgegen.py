"""`python faulty_edgegen.py ARGS...`: the edgegen command with test-only faults injected through the library's
hooks, named by environment variables that only this launcher reads (library code reads none):

- EDGEGEN_DEPLOY_FAULT=exit-in-probation | exit-at-swap: `serve`'s deploy agent kills the process (exit 137) at that
  step (firmware_bridge.deploy.agent, on_step).
- EDGEGEN_DEPLOY_SERVER_FAULT=corrupt-every-N,slow-blocks-N: `deploy` corrupts or slows the blocks it serves
  (firmware_bridge.deploy.server, faults).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

from edgegen.cli import main

DEPLOY_FAULT_ENV = "EDGEGEN_DEPLOY_FAULT"
SERVER_FAULT_ENV = "EDGEGEN_DEPLOY_SERVER_FAULT"
STEPS = {"exit-in-probation": "probation", "exit-at-swap": "swap"}
START_LINE_S = 2.0


def exit_at(step: str) -> Callable[[str], None]:
    def hook(now: str) -> None:
        if now == step:
            # a restarted device reaches probation within milliseconds of connecting (the retained offer): let its
            # start line out first, as the tests wait for it before they wait for the crash
            time.sleep(START_LINE_S)
            logging.getLogger("faulty_edgegen").warning("fault: exiting at %s", step)
            logging.shutdown()
            os._exit(137)
    return hook


def hooks(argv: list[str]) -> dict[str, Any]:
    command = next((a for a in argv if not a.startswith("-")), None)
    if command == "serve" and (fault := os.environ.get(DEPLOY_FAULT_ENV)):
        return {"on_deploy_step": exit_at(STEPS[fault])}
    if command == "deploy" and (spec := os.environ.get(SERVER_FAULT_ENV)):
        from edgegen.firmware_bridge.deploy.server import parse_faults

        return {"faults": parse_faults(spec)}
    return {}


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], **hooks(sys.argv[1:])))
