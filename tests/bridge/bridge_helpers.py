"""Shared pieces of the bridge tests: TLS files, an in-process device, a connected client, child processes."""
from __future__ import annotations

import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from bridge_fakes import FakeTextEngine
from local_broker import die_with_parent

from edgegen.firmware_bridge.client import Client
from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.service import DeviceService, ServiceConfig

REPO = Path(__file__).resolve().parents[2]
PASSWORDS = {"dev0": "pw-dev0", "dev1": "pw-dev1", "dev2": "pw-dev2", "alice": "pw-alice"}  # users of acl.example


def make_tls_files(folder: Path) -> dict[str, str]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made with the openssl CLI."""
    folder.mkdir(parents=True, exist_ok=True)

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=folder, check=True, capture_output=True)

    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "2",
        "-subj", "/CN=edgegen test CA")
    extensions = {"server": "subjectAltName=IP:127.0.0.1,DNS:localhost", "client": "extendedKeyUsage=clientAuth"}
    for name, ext in extensions.items():
        run("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
            "-subj", f"/CN=edgegen-{name}")
        (folder / f"{name}.ext").write_text(ext + "\n")
        run("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    return {k: str(folder / f) for k, f in (("cafile", "ca.crt"), ("server_cert", "server.crt"),
                                            ("server_key", "server.key"), ("certfile", "client.crt"),
                                            ("keyfile", "client.key"))}



def spawn(args: list[str], env: dict[str, str] | None = None, **kwargs) -> subprocess.Popen:
    """A child Python process that dies with the test process; `env` adds to the test's environment."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(map(str, (Path(__file__).parent, REPO / "benchmarks"))),
           **(env or {})}
    return subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, preexec_fn=die_with_parent, **kwargs)


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

    def __init__(self, args: list[str], first_run_args: list[str] | None = None,
                 first_run_env: dict[str, str] | None = None):
        self.args = args
        self.start(first_run_args, first_run_env)

    def start(self, extra_args: list[str] | None = None, env: dict[str, str] | None = None) -> None:
        """Start (or start again) with `args` plus `extra_args`, and `env` added to the environment."""
        self.lines: queue.Queue[list[str]] = queue.Queue()
        self.proc = spawn(self.args + (extra_args or []), env=env, stdout=subprocess.PIPE, text=True)
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
