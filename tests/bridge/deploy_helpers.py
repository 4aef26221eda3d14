"""Pieces of the deploy tests: tiny model files, keys, signed manifests, `edgegen serve --trust-key` children, and a
watcher of the retained deploy status topics."""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from bridge_helpers import ChildProcess

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.connection import BrokerOptions, make_client
from edgegen.firmware_bridge.deploy import protocol
from edgegen.firmware_bridge.deploy.keys import generate_keypair, load_private_key
from edgegen.firmware_bridge.deploy.manifest import SignedManifest, build_manifest, sign
from edgegen.firmware_bridge.deploy.protocol import Status
from edgegen.firmware_bridge.deploy.server import DeployServer

START_TIMEOUT_S = 120.0
GOLDEN_TOKENS = 4


def write_tiny_model(path: Path, seed: int) -> Path:
    """A 280 KB tiny llama (tests/tiny_arch.py, dim 128, Q8_0): loads and compiles in seconds."""
    from gguf import GGMLQuantizationType as Q
    from tiny_arch import random_weights, shape_for, write_gguf

    shape = dataclasses.replace(shape_for("llama"), dim=128, hidden=256)
    write_gguf(path, shape, random_weights(shape, seed=seed), Q.Q8_0)
    return path


def make_keys(folder: Path) -> tuple[Path, Path]:
    return generate_keypair(folder)


def golden_of(path: Path) -> dict[str, Any]:
    from edgegen.firmware_bridge.deploy.health import golden_for

    return golden_for(path, "text", "!!", max_tokens=GOLDEN_TOKENS)


def signed_manifest(path: Path, name: str, version: int, private_key: Path, golden: dict, *,
                    block_size: int = 4096, **changes: Any) -> SignedManifest:
    """build_manifest + sign; `changes` replace manifest fields before signing (a plan that cannot fit...)."""
    m = build_manifest(path, name, version, golden=golden, block_size=block_size,
                       **{k: changes.pop(k) for k in ("now", "ttl_s") if k in changes})
    if changes:
        m = dataclasses.replace(m, **changes)
    return sign(m, load_private_key(private_key))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def serve(broker_port: int, device_id: str, state_dir: Path, trust_key: Path, model: Path, *,
          pool: str | None = None, env: dict[str, str] | None = None, warm: bool = False) -> ChildProcess:
    """An `edgegen serve --trust-key` child; returns once it printed its start line."""
    args = ["-m", "faulty_edgegen", "-v", "serve", "--broker", f"127.0.0.1:{broker_port}", "--device-id", device_id,
            "--state-dir", str(state_dir), "--trust-key", str(trust_key), "--model", str(model)]
    args += ["--pool", pool] if pool else []
    args += [] if warm else ["--no-warmup"]
    child = ChildProcess(args, first_run_env=env)
    wait_started(child)
    return child


def wait_started(child: ChildProcess) -> None:
    child.wait_for(lambda words: words[:2] == ["edgegen", "serve:"], START_TIMEOUT_S)


class StatusWatcher:
    """Every deploy status and models list the devices publish, as they arrive (retained ones first)."""

    def __init__(self, options: BrokerOptions):
        self.history: dict[str, list[Status]] = {}
        self.models: dict[str, dict] = {}
        self._cv = threading.Condition()
        self._client = make_client(f"deploy-watch-{time.monotonic_ns() % 10**9}", options)
        self._client.on_message = self._on_message
        self._client.on_connect = lambda c, *a: c.subscribe([(protocol.STATUS_FILTER, 1),
                                                             (f"{topics.ROOT}/devices/+/models", 1)])
        self._client.connect(options.host, options.port)
        self._client.loop_start()

    def _on_message(self, client: Any, userdata: Any, msg: Any) -> None:
        if not msg.payload:
            return
        with self._cv:
            if msg.topic.endswith("/models"):
                d = json.loads(msg.payload)
                self.models[d["device"]] = d
            else:
                s = protocol.parse_status(bytes(msg.payload))
                self.history.setdefault(s.device, []).append(s)
            self._cv.notify_all()

    def latest(self, device: str) -> Status | None:
        with self._cv:
            return (self.history.get(device) or [None])[-1]

    def wait(self, device: str, predicate: Callable[[Status], bool], timeout_s: float = 60.0) -> Status:
        """The first status of `device` (from now on, or the latest) that satisfies `predicate`."""
        deadline = time.monotonic() + timeout_s
        with self._cv:
            seen = max(0, len(self.history.get(device, [])) - 1)
            while (left := deadline - time.monotonic()) > 0:
                statuses = self.history.get(device, [])
                for s in statuses[seen:]:
                    if predicate(s):
                        return s
                seen = len(statuses)
                self._cv.wait(left)
        raise AssertionError(f"{device}: no such status within {timeout_s:g} s; last: {self.latest(device)}")

    def wait_models(self, device: str, predicate: Callable[[dict], bool], timeout_s: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout_s
        with self._cv:
            while not (device in self.models and predicate(self.models[device])):
                if not self._cv.wait(max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"{device}: models {self.models.get(device)} within {timeout_s:g} s")
            return self.models[device]

    def close(self) -> None:
        self._client.disconnect()
        self._client.loop_stop()


@contextlib.contextmanager
def watching(options: BrokerOptions) -> Iterator[StatusWatcher]:
    watcher = StatusWatcher(options)
    try:
        yield watcher
    finally:
        watcher.close()


@contextlib.contextmanager
def deploy_server(options: BrokerOptions, signed: SignedManifest, file: Path, **kwargs: Any) -> Iterator[DeployServer]:
    server = DeployServer(options, signed, file, **kwargs).connect()
    try:
        yield server
    finally:
        server.close()
