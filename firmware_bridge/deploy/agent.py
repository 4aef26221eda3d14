"""The device side of a deployment: offer -> verify -> preflight -> pull blocks -> install -> warm -> health -> swap
between requests -> commit (or roll back), each step reported on the retained deploy status topic.

The agent shares the service's MQTT connection (one client id, one ACL user) and runs one deployment at a time on
its own thread; paho's network thread only queues offers and blocks. Everything it does is idempotent against the
state folder, so an offer seen again (a reconnect, a restarted device, a resumed rollout) picks up where the last
attempt stopped: the partial file resumes from its bitmap, a pending slot goes straight to probation, a committed
version is reported committed, a rolled-back version is reported rolled back without retrying it.

Fault injection is a hook: `on_step(step)` is called at "probation" (the new model is installed in the pending slot,
before its health check) and at "swap" (the health check passed, before the commit and the swap); the crash tests
pass one that kills the process there (tests/bridge/faulty_edgegen.py).
"""
from __future__ import annotations

import collections
import dataclasses
import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import paho.mqtt.client as mqtt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from edgegen.firmware_bridge.deploy import protocol
from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.firmware_bridge.deploy.fsio import write_atomic
from edgegen.firmware_bridge.deploy.health import reset_peak_rss, run_health
from edgegen.firmware_bridge.deploy.manifest import Manifest, verify
from edgegen.firmware_bridge.deploy.preflight import FitResult, require_fit
from edgegen.firmware_bridge.deploy.protocol import Offer, Status
from edgegen.firmware_bridge.deploy.slots import DeviceStore
from edgegen.firmware_bridge.deploy.transfer import PartialFile
from edgegen.firmware_bridge.engines import ImageEngine, TextEngine
from edgegen.firmware_bridge.mqtt_transport import ConnectHook

log = logging.getLogger(__name__)
WINDOW_BLOCKS = 64  # blocks in flight (4 MiB of 64 KiB blocks): hides the round trip behind the transfer
BATCH_BLOCKS = 8  # blocks asked for in one request
FLUSH_BYTES = 4 << 20  # persist the bitmap every 4 MiB received (or every second): a crash re-fetches at most that
REQUEST_TIMEOUT_S = 3.0  # a block not answered by then is asked for again (lost at QoS 0, or a broker restart)
STALL_S = 300.0  # no good block for this long: the deployment fails `timeout` (the partial file stays for a retry)
MAX_BAD_FETCHES = 5  # a block that arrives bad this many times is not going to arrive good
MAX_FINISH_ROUNDS = 3  # whole-file checks that may send bad blocks back to be fetched again
PROGRESS_EVERY_S = 0.5
ROLLED_BACK_FILE = "rolled-back.json"  # in the state folder: versions never to retry, with why


class DeployHost(Protocol):
    """What the agent needs of the service it deploys to (firmware_bridge.service.DeviceService)."""

    device: str
    pool: str | None
    client: mqtt.Client

    def is_connected(self) -> bool: ...

    def add_hook(self, hook: ConnectHook) -> None:
        """Call hook.on_connect(client) at every connect and hook.stop() when the service stops."""

    def leave_pool(self) -> None: ...

    def join_pool(self) -> None: ...

    def swap_engine(self, kind: str, name: str, engine: TextEngine | ImageEngine) -> None: ...


class DeployAgent:
    """Accept deployments signed by `trust_key` for the device `service` runs; models live in `store`.

    load_engine(kind, path) returns a loaded engine with warm_up(), as the service serves them. start_actions: what
    store.on_start() returned at this start (its rollbacks are remembered, so their offers are not retried).
    """

    def __init__(self, service: DeployHost, store: DeviceStore, trust_key: Ed25519PublicKey,
                 load_engine: Callable[[str, Path], Any],
                 *, backend: str | None = None, start_actions: list[dict[str, Any]] | None = None,
                 on_step: Callable[[str], None] | None = None):
        self.service, self.store, self.key, self.load_engine = service, store, trust_key, load_engine
        self._rolled_back_path = store.root / ROLLED_BACK_FILE
        self._rolled_back = self._load_rolled_back()
        for action in start_actions or []:
            if action["action"] == "rolled_back":
                self._remember_rollback(action["name"], action["version"], DeployCode.CRASHED_IN_PROBATION.value,
                                        {"crashes": action["crashes"]})
        self.backend = backend
        self.device: str = service.device
        self.pool: str | None = service.pool
        self.client: mqtt.Client = service.client
        self._offers: queue.Queue[Offer] = queue.Queue()
        self._data: queue.Queue[tuple[str, int, bytes, str | None]] = queue.Queue()
        self._stopping = threading.Event()
        self._busy = threading.Event()  # a deployment is running
        self._status: Status | None = None
        self._status_lock = threading.Lock()
        self._refusing = True  # a DeployError now is a refusal (before any transfer), later a failure
        self._on_step = on_step or (lambda step: None)
        self.client.message_callback_add(protocol.offer_topic(self.device), self._on_offer)
        self.client.message_callback_add(protocol.data_filter(self.device), self._on_data)
        self._thread = threading.Thread(target=self._loop, name=f"edgegen-deploy-{self.device}", daemon=True)
        service.add_hook(self)

    def start(self) -> None:
        self._thread.start()

    # -- versions rolled back: never retried, reported again when offered again ------------------------------------
    def _load_rolled_back(self) -> dict[str, Any]:
        try:
            data = json.loads(self._rolled_back_path.read_bytes())
            return data if isinstance(data, dict) else {}
        except (OSError, ValueError):
            return {}  # none yet (written atomically, so never half a file)

    def _remember_rollback(self, name: str, version: int, reason: str | None, numbers: dict[str, Any]) -> None:
        # DeviceStore forgets a name whose first install rolled back; the retained offer would bring it back.
        self._rolled_back[name] = {"version": version, "reason": reason, "numbers": numbers}
        write_atomic(self._rolled_back_path, json.dumps(self._rolled_back, default=str).encode())

    def _rollback(self, m: Manifest, status: Status, reason: str, numbers: dict[str, Any]) -> None:
        self.store.rollback(m.name, reason, numbers)
        self._remember_rollback(m.name, m.version, reason, numbers)
        self._publish(_with(status, "rolled_back", reason=reason, numbers=numbers))

    # -- the service's hooks (paho's network thread) ----------------------------------------------------------------
    def on_connect(self, client: mqtt.Client) -> None:
        """Subscribe to our offers and block data; publish our status (`idle` at the first connect)."""
        with self._status_lock:
            if self._status is None:
                self._status = Status(self.device, "idle", pool=self.pool)
            status = self._status
        client.publish(protocol.status_topic(self.device), status.to_payload(), qos=1, retain=True)
        client.subscribe([(protocol.offer_topic(self.device), SubscribeOptions(qos=1)),
                          (protocol.data_filter(self.device), SubscribeOptions(qos=1))])

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=10)

    def _ack(self, msg: mqtt.MQTTMessage) -> None:
        if msg.qos > 0:
            self.client.ack(msg.mid, msg.qos)  # the service's client acks by hand

    def _on_offer(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.payload:  # an empty retained message clears the offer: nothing to do
                offer = protocol.parse_offer(bytes(msg.payload))
                self._offers.put(offer)
                if not self._busy.is_set():  # else the running deployment's status stays until it ends
                    m = offer.signed.manifest
                    self._publish(Status(self.device, "queued", rollout=offer.rollout, name=m.name,
                                         version=m.version, pool=self.pool))
        except DeployError as e:
            log.warning("offer on %s refused: %s", msg.topic, e)
            self._publish(Status(self.device, "rejected", pool=self.pool, reason=e.code, message=e.message))
        finally:
            self._ack(msg)

    def _on_data(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        try:
            props = dict(getattr(msg.properties, "UserProperty", None) or [])
            block = int(props.get(protocol.BLOCK_PROPERTY, "-1"))
            rollout = msg.topic.split("/")[-3]
            self._data.put((rollout, block, bytes(msg.payload), props.get(protocol.ERROR_PROPERTY)))
        except ValueError:
            log.warning("block message on %s without a block index; ignored", msg.topic)
        finally:
            self._ack(msg)

    # -- status ------------------------------------------------------------------------------------------------------
    def _publish(self, status: Status) -> None:
        with self._status_lock:
            self._status = status
        log.info("deploy %s %s v%s: %s %s", status.rollout, status.name, status.version, status.state,
                 status.reason or "")
        self.client.publish(protocol.status_topic(self.device), status.to_payload(), qos=1, retain=True)

    # -- the deployment thread ---------------------------------------------------------------------------------------
    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                offer = self._offers.get(timeout=0.5)
            except queue.Empty:
                continue
            m = offer.signed.manifest
            status = Status(self.device, "verifying", rollout=offer.rollout, name=m.name, version=m.version,
                            pool=self.pool)
            self._busy.set()
            try:
                self._deploy(offer, status)
            except DeployError as e:
                if e.code == DeployCode.CANCELLED and self._stopping.is_set():
                    return  # the service stops: the offer is retained, the next start resumes it
                state = "rejected" if self._refusing else "failed"  # refused before a byte moved, or failed after
                self._publish(_with(status, state, reason=e.code, message=e.message, numbers=e.details))
            except Exception as e:  # a bug must not end the agent: report it and take the next offer
                log.exception("deployment of %s v%s failed", m.name, m.version)
                self._publish(_with(status, "failed", reason=DeployCode.BAD_STATE.value, message=str(e)))
            finally:
                self._busy.clear()

    def _deploy(self, offer: Offer, status: Status) -> None:
        self._refusing = True
        self._publish(status)
        # The signature first: nothing in an unverified manifest is trusted, not even its name.
        m = verify(offer.signed, self.key)
        current, entry = self.store.current(m.name), self.store.models().get(m.name, {})
        if current is not None and current.version == m.version and current.file_sha256 == m.file_sha256:
            event = entry.get("last_event") or {}
            self._publish(_with(status, "committed", numbers=event.get("numbers") or {}))
            return
        before = self._rolled_back.get(m.name)
        if before is not None and before["version"] == m.version:
            # Rolled back before (a failed health check, or crashes in probation): never retried automatically.
            self._publish(_with(status, "rolled_back", reason=before["reason"], numbers=before["numbers"]))
            return
        verify(offer.signed, self.key, trusted_version=self.store.trusted_version(m.name))
        self._publish(_with(status, "preflight"))
        fit = require_fit(m, backend=self.backend)
        self._refusing = False
        phases: dict[str, float] = {}
        pending = self.store.pending(m.name)
        if pending is None or pending.version != m.version or pending.file_sha256 != m.file_sha256:
            path = self._pull(offer, m, status, phases)
            self._publish(_with(status, "installing"))
            started = time.perf_counter()
            self.store.begin_install(m, path)
            phases["install_s"] = round(time.perf_counter() - started, 3)
        self._probation(offer, m, status, phases, fit)

    def _pull(self, offer: Offer, m: Manifest, status: Status, phases: dict[str, float]) -> Path:
        """Fetch the missing blocks, a window of them in flight, until the whole file checks; return its path."""
        started = time.perf_counter()
        # Each bitmap flush costs three fsyncs: by bytes, not blocks, so small blocks do not flush more often.
        part = PartialFile(self.store.root, m, flush_every=max(16, FLUSH_BYTES // m.block_size))
        try:
            puller = _Puller(self, offer, m, part, status)
            for rounds in range(1, MAX_FINISH_ROUNDS + 1):
                puller.fetch_missing()
                self._publish(_with(status, "verifying", progress=puller.progress()))
                phases.setdefault("transfer_s", round(time.perf_counter() - started, 3))
                checked = time.perf_counter()
                try:
                    path = part.finish()
                except DeployError as e:
                    if e.code != DeployCode.HASH_MISMATCH or rounds == MAX_FINISH_ROUNDS:
                        raise
                    log.warning("%s; fetching the bad blocks again", e)  # finish() marked them missing
                    continue
                phases["verify_s"] = round(time.perf_counter() - checked, 3)
                phases["blocks_refetched"] = puller.refetched
                return path
            raise AssertionError("unreachable")
        finally:
            part.close()

    def _probation(self, offer: Offer, m: Manifest, status: Status, phases: dict[str, float], fit: FitResult) -> None:
        """Load and warm the pending model beside the serving one, health-check it, then commit and swap it in."""
        self._publish(_with(status, "probation"))
        self.service.leave_pool()  # the pool keeps answering on the other members while this one is busy
        try:
            self._on_step("probation")
            slot = self.store.pending(m.name)
            assert slot is not None
            rss_before = reset_peak_rss()
            started = time.perf_counter()
            try:
                engine = self.load_engine(m.kind, slot.path)
                phases["load_s"] = round(time.perf_counter() - started, 3)
                started = time.perf_counter()
                engine.warm_up()  # compiles the kernels now, not on the first request after the swap
                phases["warm_up_s"] = round(time.perf_counter() - started, 3)
            except Exception as e:  # any failure to load the new model is its verdict
                log.exception("loading %s v%s failed", m.name, m.version)
                numbers = {"error": f"{type(e).__name__}: {e}", "phases_s": phases}
                self._rollback(m, status, DeployCode.LOAD_FAILED.value, numbers)
                return
            started = time.perf_counter()
            health = run_health(engine, m, min_speed_share=offer.min_speed_share, backend=self.backend,
                                rss_before_bytes=rss_before)
            phases["health_s"] = round(time.perf_counter() - started, 3)
            numbers = {**health.numbers, "phases_s": phases, "fit": fit.to_dict()}
            if not health.ok:
                self._rollback(m, status, health.code or DeployCode.GOLDEN_FAILED.value, numbers)
                return
            self._on_step("swap")
            self.store.commit(m.name, numbers)
            self.service.swap_engine(m.kind, m.name, engine)
            self._publish(_with(status, "committed", numbers=numbers))
        finally:
            self.service.join_pool()


class _Puller:
    """The request/response loop of one transfer: keeps WINDOW_BLOCKS blocks asked for, asks again for the lost
    (no answer in REQUEST_TIMEOUT_S) and the bad (wrong hash or size) ones."""

    def __init__(self, agent: DeployAgent, offer: Offer, m: Manifest, part: PartialFile, status: Status):
        self.agent, self.offer, self.m, self.part, self.status = agent, offer, m, part, status
        self.request_topic = protocol.blocks_topic(offer.rollout, agent.device)
        self.response_topic = protocol.data_topic(offer.rollout, agent.device)
        self.bad: collections.Counter[int] = collections.Counter()
        self.refetched = 0
        self._drain()

    def _drain(self) -> None:
        while True:  # blocks of an earlier attempt that arrived late: not ours to count
            try:
                self.agent._data.get_nowait()
            except queue.Empty:
                return

    def progress(self) -> dict[str, int]:
        have, total = self.part.progress()
        return {"blocks": have, "of": total, "bytes": min(have * self.m.block_size, self.m.file_size)}

    def _request(self, blocks: list[int]) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.response_topic
        props.CorrelationData = uuid.uuid4().bytes
        self.agent.client.publish(self.request_topic, protocol.encode_block_request(blocks), qos=1, properties=props)

    def fetch_missing(self) -> None:
        agent, part = self.agent, self.part
        todo: collections.deque[int] = collections.deque(part.missing())
        in_flight: dict[int, float] = {}
        last_good = last_report = time.monotonic()
        agent._publish(_with(self.status, "downloading", progress=self.progress()))
        while todo or in_flight:
            if agent._stopping.is_set():
                raise DeployError(DeployCode.CANCELLED, "the service is stopping")
            now = time.monotonic()
            for i, sent in list(in_flight.items()):
                if now - sent > REQUEST_TIMEOUT_S:
                    del in_flight[i]
                    todo.append(i)
            if agent.service.is_connected():
                while todo and len(in_flight) < WINDOW_BLOCKS:
                    batch: list[int] = []
                    while todo and len(batch) < min(BATCH_BLOCKS, WINDOW_BLOCKS - len(in_flight)):
                        i = todo.popleft()
                        if i not in in_flight and not part.has(i) and i not in batch:
                            batch.append(i)
                    if batch:
                        self._request(batch)
                        in_flight.update((i, now) for i in batch)
            try:
                rollout, i, data, error = agent._data.get(timeout=0.2)
            except queue.Empty:
                if now - last_good > STALL_S:
                    raise DeployError(DeployCode.TIMEOUT, f"no block of {self.m.name} v{self.m.version} arrived in "
                                      f"{STALL_S:g} s", self.progress()) from None
                continue
            if rollout != self.offer.rollout or not 0 <= i < self.m.n_blocks or part.has(i):
                continue
            in_flight.pop(i, None)
            if error is None and part.write_block(i, data):
                last_good = time.monotonic()
            else:
                self._bad_block(i, data, error)
                todo.appendleft(i)
            if time.monotonic() - last_report > PROGRESS_EVERY_S:
                last_report = time.monotonic()
                agent._publish(_with(self.status, "downloading", progress=self.progress()))
        part.flush()

    def _bad_block(self, i: int, data: bytes, error: str | None) -> None:
        self.bad[i] += 1
        self.refetched += 1
        _, length = self.m.block_range(i)
        short = error is None and len(data) != length
        why = error or (f"{len(data)} bytes, expected {length}" if short else "its sha256 differs from the manifest's")
        log.info("block %d of %s arrived bad (%s); asking again", i, self.m.name, why)
        if self.bad[i] >= MAX_BAD_FETCHES:
            code = DeployCode.SIZE_MISMATCH if short else DeployCode.HASH_MISMATCH
            raise DeployError(code, f"block {i} of {self.m.name} v{self.m.version} arrived bad {self.bad[i]} times "
                              f"({why})", {"block": i, "size": len(data), "expected": length, "error": error})


def _with(status: Status, state: str, **changes: Any) -> Status:
    """`status` in `state`, stamped now; progress, reason, message and numbers only as given."""
    base: dict[str, Any] = {"progress": None, "reason": None, "message": None, "numbers": {}}
    return dataclasses.replace(status, state=state, ts=time.time(), **{**base, **changes})


def load_engine(kind: str, path: Path, device: str | None = None, kernels: Any = None, slots: int = 1) -> Any:
    """A service engine for an installed model file: RuntimeTextEngine (with `slots` requests at once) or
    RuntimeImageEngine (loads tinygrad)."""
    from edgegen.firmware_bridge.engines import RuntimeImageEngine, RuntimeTextEngine

    if kind == "text":
        return RuntimeTextEngine.load(str(path), device=device, kernels=kernels, slots=slots)
    return RuntimeImageEngine.load(str(path), device=device)


def installed_engines(store: DeviceStore, device: str | None = None, warm: bool = True,
                      kernels: Any = None, slots: int = 1) -> dict[str, dict[str, Any]]:
    """{"text": {name: engine}, "image": {...}} for every committed model in `store` (call after store.on_start)."""
    out: dict[str, dict[str, Any]] = {"text": {}, "image": {}}
    for name in store.models():
        slot = store.current(name)
        if slot is None:
            continue
        engine = load_engine(slot.kind, slot.path, device, kernels, slots)
        if warm:
            engine.warm_up()
        out[slot.kind][name] = engine
    return out
