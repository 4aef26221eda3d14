"""The deploy side of a rollout: publish signed offers, serve the blocks devices ask for, follow their retained
status, and roll out in stages (canary, waves, stop after --max-failed failures).

    server = DeployServer(BrokerOptions("127.0.0.1", 1883), signed, "model.gguf").connect()
    try:
        report = server.run(["dev1", "dev2"], canary=1)      # report["exit_code"]: 0 when every target committed
    finally:
        server.close()

Blocks are served from the network thread straight out of the file (pread), each as one QoS 0 message on the
requesting device's data topic: a lost one is asked for again by the device, so the broker never has to queue a
model in RAM for a device that went away (docs/DEPLOY.md, Protocol).

Fault injection for tests is a constructor argument, `faults` (parse_faults('corrupt-every-7,slow-blocks-15')):
corrupt-every-N flips a byte in every Nth block served (the device must fetch those again); slow-blocks-N sleeps N ms
before each block (so tests can kill things mid-transfer).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.connection import BrokerOptions, make_client, wait_published
from edgegen.firmware_bridge.deploy import protocol
from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.firmware_bridge.deploy.manifest import SignedManifest
from edgegen.firmware_bridge.deploy.protocol import Offer, Status

log = logging.getLogger(__name__)
_FAULT = re.compile(r"(corrupt-every|slow-blocks)-(\d+)")
CONNECT_TIMEOUT_S = 10.0
# Exit codes of a rollout (and of `edgegen deploy`); 2 stays bad input, as for every edgegen command.
EXIT_COMMITTED = 0
EXIT_FAILED = 3  # the rollout ran to its end, but some targets failed, rolled back or were rejected
EXIT_STOPPED = 4  # failures passed --max-failed (a failing canary): the remaining targets were never offered
EXIT_TIMEOUT = 5  # some targets did not finish in time (offline, or slower than --timeout-s)
EXIT_CODES = {EXIT_COMMITTED: "committed", EXIT_FAILED: "failed", EXIT_STOPPED: "stopped", EXIT_TIMEOUT: "timeout"}


def new_rollout_id() -> str:
    """A fresh rollout id: one topic level, sortable by time."""
    return f"r{int(time.time())}-{uuid.uuid4().hex[:8]}"


def parse_faults(text: str | None) -> dict[str, int]:
    """'corrupt-every-7,slow-blocks-20' -> {'corrupt-every': 7, 'slow-blocks': 20}; ValueError for anything else."""
    faults: dict[str, int] = {}
    for item in filter(None, (text or "").split(",")):
        match = _FAULT.fullmatch(item.strip())
        if match is None:
            raise ValueError(f"{item!r} is not a known fault (corrupt-every-N, slow-blocks-N)")
        faults[match[1]] = int(match[2])
    return faults


@dataclasses.dataclass
class Target:
    """What the deploy side knows of one device in the rollout."""

    device: str
    wave: int
    state: str = "waiting"  # not offered yet; then "offered", then the device's own states; "skipped", "timeout"
    reason: str | None = None
    message: str | None = None
    progress: dict[str, int] | None = None
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    offered_s: float | None = None
    finished_s: float | None = None

    @property
    def done(self) -> bool:
        return self.state in protocol.TERMINAL_STATES

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("device")
        d["elapsed_s"] = (round(self.finished_s - self.offered_s, 3)
                          if self.finished_s is not None and self.offered_s is not None else None)
        d.pop("offered_s"), d.pop("finished_s")
        return d


class DeployServer:
    """One rollout of `signed` (whose file is `file`) over the broker; `track(device, target)` sees every change."""

    def __init__(self, broker: BrokerOptions, signed: SignedManifest, file: str | Path, *,
                 rollout_id: str | None = None, min_speed_share: float = 0.5, client_id: str | None = None,
                 track: Callable[[Target], None] | None = None, faults: dict[str, int] | None = None):
        self.broker, self.signed, self.manifest = broker, signed, signed.manifest
        self.rollout = topics.check_name(rollout_id or new_rollout_id(), "rollout id")
        self.offer = Offer(self.rollout, signed, min_speed_share)
        self._offer_payload = self.offer.to_payload()  # checks its size now, before anything is published
        self.file = Path(file)
        try:
            self._fd = os.open(self.file, os.O_RDONLY)
        except OSError as e:
            raise DeployError(DeployCode.BAD_STATE, f"cannot read the model file {str(file)!r}: {e.strerror}",
                              {"path": str(file)}) from None
        self.track = track
        self.faults = faults or {}
        self.targets: dict[str, Target] = {}
        self.statuses: dict[str, Status] = {}  # the latest status of every device seen, any rollout
        self.blocks_served = self.bytes_served = 0
        self._served_count = 0
        self._cv = threading.Condition()
        self._ready = threading.Event()
        self._subscribe_mid: int | None = None
        self.client = make_client(topics.check_name(client_id or f"edgegen-deploy-{self.rollout}"[:64], "client id"),
                                  broker)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.message_callback_add(protocol.blocks_filter(self.rollout), self._on_blocks)
        self.client.message_callback_add(protocol.STATUS_FILTER, self._on_status)

    # -- connection ------------------------------------------------------------------------------------------------
    def connect(self) -> DeployServer:
        self.client.connect_async(self.broker.host, self.broker.port, self.broker.keepalive_s)
        self.client.loop_start()
        if not self._ready.wait(CONNECT_TIMEOUT_S):
            self.close()
            raise DeployError(DeployCode.TIMEOUT, f"cannot connect to the broker at {self.broker.host}:"
                              f"{self.broker.port} within {CONNECT_TIMEOUT_S:g} s")
        return self

    def close(self) -> None:
        """Clear the retained offers of this rollout (a device that comes back later finds nothing), disconnect."""
        infos = [self.client.publish(protocol.offer_topic(t.device), b"", qos=1, retain=True)
                 for t in self.targets.values() if t.offered_s is not None]
        for info in infos:
            wait_published(info)
        self.client.disconnect()
        self.client.loop_stop()
        os.close(self._fd)

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            log.error("broker refused the deploy connection: %s", reason_code)
            return
        # In on_connect, so a broker restart restores them; block requests sent meanwhile are asked for again.
        _, self._subscribe_mid = client.subscribe([(protocol.blocks_filter(self.rollout), 1),
                                                   (protocol.STATUS_FILTER, 1)])

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, reason_codes: list, properties: Any) -> None:
        if mid == self._subscribe_mid:
            refused = [str(rc) for rc in reason_codes if rc.is_failure]
            if refused:
                log.error("broker refused the deploy subscriptions: %s", refused)
            self._ready.set()

    # -- serving blocks (paho's network thread) ---------------------------------------------------------------------
    def _on_blocks(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        device = protocol.device_of(msg.topic)
        response_topic = getattr(msg.properties, "ResponseTopic", None)
        target = self.targets.get(device)
        if target is None or target.offered_s is None or response_topic != protocol.data_topic(self.rollout, device):
            # Only offered targets get blocks, and only on their own data topic: never reflected elsewhere.
            log.warning("block request on %s (response topic %r) ignored: not an offered target's", msg.topic,
                        response_topic)
            return
        try:
            blocks = protocol.parse_block_request(bytes(msg.payload), self.manifest.n_blocks)
        except DeployError as e:
            log.warning("bad block request from %s: %s", device, e)
            return
        correlation = getattr(msg.properties, "CorrelationData", None)
        for i in blocks:
            offset, length = self.manifest.block_range(i)
            data = os.pread(self._fd, length, offset)
            data = self._inject(data)
            props = Properties(PacketTypes.PUBLISH)
            props.UserProperty = [(protocol.BLOCK_PROPERTY, str(i))]
            props.ContentType = "application/octet-stream"
            if correlation is not None:
                props.CorrelationData = correlation
            client.publish(response_topic, data, qos=0, properties=props)
            self.blocks_served += 1
            self.bytes_served += len(data)

    def _inject(self, data: bytes) -> bytes:
        if not self.faults:
            return data
        self._served_count += 1
        if self.faults.get("slow-blocks"):
            time.sleep(self.faults["slow-blocks"] / 1000)
        every = self.faults.get("corrupt-every")
        if every and self._served_count % every == 0 and data:
            return bytes([data[0] ^ 0xFF]) + data[1:]
        return data

    # -- following the devices --------------------------------------------------------------------------------------
    def _on_status(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if not msg.payload:
            return
        try:
            status = protocol.parse_status(bytes(msg.payload))
        except DeployError as e:
            log.warning("unreadable deploy status on %s: %s", msg.topic, e)
            return
        with self._cv:
            self.statuses[status.device] = status
            target = self.targets.get(status.device)
            if target is None or status.rollout != self.rollout or target.offered_s is None or target.done:
                self._cv.notify_all()
                return
            target.state, target.reason, target.message = status.state, status.reason, status.message
            target.progress, target.numbers = status.progress, status.numbers
            if target.done:
                target.finished_s = time.monotonic()
            self._cv.notify_all()
        if self.track is not None:
            self.track(target)

    def discover(self, pool: str, wait_s: float = 2.0) -> list[str]:
        """Members of `pool`: devices whose retained deploy status names it (agents publish one at every start)."""
        topics.check_name(pool, "pool")
        time.sleep(wait_s)  # retained statuses arrive right after the subscription; give them a moment
        with self._cv:
            return sorted(d for d, s in self.statuses.items() if s.pool == pool)

    # -- the rollout -------------------------------------------------------------------------------------------------
    def _offer(self, target: Target) -> None:
        with self._cv:
            target.state, target.offered_s = "offered", time.monotonic()
        info = self.client.publish(protocol.offer_topic(target.device), self._offer_payload, qos=1, retain=True)
        if not wait_published(info):
            log.warning("the offer to %s is not acknowledged yet; paho resends it after a reconnect", target.device)
        if self.track is not None:
            self.track(target)

    def run(self, devices: list[str], *, canary: int = 0, wave: int = 0, max_failed: int = 0,
            timeout_s: float = 3600.0) -> dict[str, Any]:
        """Roll out to `devices`: the first `canary` alone, then waves of `wave` (0: all the rest at once), each wave
        waiting until its devices finish or `timeout_s` passes; stops once more than `max_failed` have failed.
        Returns the report (report()); its "exit_code" is one of EXIT_CODES."""
        if not devices or len(set(devices)) != len(devices):
            raise DeployError(DeployCode.BAD_MANIFEST, f"targets {devices!r}: expected one or more distinct device ids")
        for d in devices:
            topics.check_name(d)
        if min(canary, wave, max_failed) < 0 or timeout_s <= 0:
            raise DeployError(DeployCode.BAD_MANIFEST, f"canary={canary}, wave={wave}, max_failed={max_failed}, "
                              f"timeout_s={timeout_s}: expected counts >= 0 and a timeout > 0")
        rest = list(devices)
        groups = [rest[:canary]] if canary else []
        rest = rest[canary:]
        size = wave or len(rest) or 1
        groups += [rest[i:i + size] for i in range(0, len(rest), size)]
        self.targets = {d: Target(d, n) for n, group in enumerate(groups) for d in group}
        self._started = time.monotonic()
        failed, self.stopped = 0, False
        for n, group in enumerate(groups):
            for d in group:
                self._offer(self.targets[d])
            deadline = time.monotonic() + timeout_s
            with self._cv:
                while not all(self.targets[d].done for d in group) and (left := deadline - time.monotonic()) > 0:
                    self._cv.wait(min(left, 1.0))
                for d in group:
                    t = self.targets[d]
                    if not t.done:
                        t.state, t.reason = "timeout", DeployCode.TIMEOUT.value
                    failed += t.state != "committed"
            if failed > max_failed:
                self.stopped = n + 1 < len(groups)  # stopped only if targets are left that were never offered
                break
        for t in self.targets.values():
            if t.state == "waiting":
                t.state = "skipped"
        return self.report()

    def report(self) -> dict[str, Any]:
        """The rollout's outcome as JSON-ready data."""
        states = [t.state for t in self.targets.values()]
        if getattr(self, "stopped", False):
            code = EXIT_STOPPED
        elif "timeout" in states:
            code = EXIT_TIMEOUT
        elif any(s != "committed" for s in states):
            code = EXIT_FAILED
        else:
            code = EXIT_COMMITTED
        m = self.manifest
        return {"v": protocol.PROTOCOL_VERSION, "rollout": self.rollout, "name": m.name, "version": m.version,
                "file_sha256": m.file_sha256, "file_size": m.file_size, "blocks": m.n_blocks,
                "result": EXIT_CODES[code], "exit_code": code,
                "elapsed_s": round(time.monotonic() - getattr(self, "_started", time.monotonic()), 3),
                "blocks_served": self.blocks_served, "bytes_served": self.bytes_served,
                "targets": {d: t.to_dict() for d, t in self.targets.items()}}


