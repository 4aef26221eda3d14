"""A device process serving FakeTextEngine, for tests that kill devices: prints `ready` and `emit ID SEQ` lines.

--calls-file appends the id of every request the engine generates, so a test can tell a regenerated answer from
a remembered one across processes.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path

from bridge_fakes import FakeTextEngine

from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.service import DeviceService, ServiceConfig, serve

# With EDGEGEN_FAULT=exit-after-answer the first run dies (137) right after a final answer was published and stored,
# before the request is acked: the crash window the answer store exists for.
FAULT_ENV = "EDGEGEN_FAULT"


def exit_after_answer(job) -> None:  # type: ignore[no-untyped-def]
    print(f"exiting before the ack of {job.request.id}", flush=True)
    logging.shutdown()
    os._exit(137)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--device-id", required=True)
    parser.add_argument("--pool")
    parser.add_argument("--delay-s", type=float, default=0.01)
    parser.add_argument("--queue-size", type=int, default=64)
    parser.add_argument("--parallel", type=int, default=1, help="requests run at once (worker threads)")
    parser.add_argument("--state-dir", type=Path, help="where the device remembers its answers")
    parser.add_argument("--calls-file", type=Path, help="append the id of each generated request here")
    parser.add_argument("--stall-at-seq", type=int, help="after emitting this seq of a request, hang (until "
                        "killed): a crash mid-generation at a known point, of every request running")
    args = parser.parse_args()
    hang = threading.Event()

    def report(request_id: str, seq: int) -> None:
        print(f"emit {request_id} {seq}", flush=True)
        if seq == args.stall_at_seq:
            print(f"stalled {request_id} {seq}", flush=True)
            hang.wait()

    engine = FakeTextEngine(delay_s=args.delay_s, on_emit=report)
    if args.calls_file is not None:
        generate = engine.generate

        def recorded(request, cancel, emit):  # type: ignore[no-untyped-def]
            with open(args.calls_file, "a") as f:
                f.write(request.id + "\n")
            return generate(request, cancel, emit)

        engine.generate = recorded  # type: ignore[method-assign]
    config = ServiceConfig(args.device_id, pool=args.pool, queue_size=args.queue_size, state_dir=args.state_dir,
                           parallel=args.parallel)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())

    connected: list[bool] = []

    def ready(service: DeviceService) -> None:
        connected.append(service.is_connected())
        print("ready" if connected[0] else "not connected", flush=True)
        if not connected[0]:
            stop.set()

    serve(config, BrokerOptions("127.0.0.1", args.port), {"default": engine}, stop=stop, ready=ready,
          after_answer=exit_after_answer if os.environ.get(FAULT_ENV) == "exit-after-answer" else None)
    return 0 if connected and connected[0] else 1


if __name__ == "__main__":
    sys.exit(main())
