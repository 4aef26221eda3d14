"""Shared pieces of the bridge tests: an in-process device over FakeTextEngine and a connected client."""
from __future__ import annotations

import contextlib
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

from conftest import spawn
from fake_engine import FakeTextEngine

from firmware_bridge.client import Client
from firmware_bridge.connection import BrokerOptions
from firmware_bridge.service import DeviceService, ServiceConfig


@contextlib.contextmanager
def running_device(options: BrokerOptions, engine: FakeTextEngine | None = None, device_id: str = "dev1",
                   image_engines: dict | None = None, **config) -> Iterator[tuple[DeviceService, FakeTextEngine]]:
    engine = engine or FakeTextEngine()
    service = DeviceService(ServiceConfig(device_id, **config), options, {"default": engine}, image_engines)
    service.start()
    try:
        assert service.wait_connected(10), "device did not connect"
        yield service, engine
    finally:
        service.stop()


@contextlib.contextmanager
def connected_client(options: BrokerOptions, **kwargs) -> Iterator[Client]:
    client = Client(options, timeout_s=30, **kwargs).connect()
    try:
        yield client
    finally:
        client.close()


class ChildProcess:
    """A Python child process (dies with the tests) whose stdout lines, split into words, land in a queue."""

    def __init__(self, args: list[str], first_run_args: list[str] | None = None):
        self.args = args
        self.start(first_run_args)

    def start(self, extra_args: list[str] | None = None) -> None:
        """Start (or start again) with `args` plus `extra_args`."""
        self.lines: queue.Queue[list[str]] = queue.Queue()
        self.proc = spawn(self.args + (extra_args or []), stdout=subprocess.PIPE, text=True)
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()

    @staticmethod
    def _read(stream, lines: queue.Queue) -> None:
        for line in stream:
            lines.put(line.split())

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout_s: float) -> list[str]:
        """The first line (as words) that satisfies `predicate`; AssertionError if none comes within timeout_s."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                words = self.lines.get(timeout=left)
            except queue.Empty:
                break
            if predicate(words):
                return words
        raise AssertionError(f"{self.args} did not print the expected line within {timeout_s:g} s")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=60)
        return self.proc.returncode
