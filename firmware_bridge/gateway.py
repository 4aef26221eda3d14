"""`edgegen gateway`: OpenAI's HTTP API in front of a fleet. Each HTTP request becomes an MQTT 5 request (Response
Topic, Correlation Data: firmware_bridge.client) to a device or a pool, its chunks come back as server-sent events,
and device errors become HTTP statuses (openai_api.error_body: busy 429, unknown model 404, bad request 400).

The gateway keeps no state another gateway would need: what the devices serve comes from their retained models and
status topics, so several gateways can run behind any load balancer, the broker being the shared part. A request's
`model` is "MODEL" (sent to --pool when one is given, else to an online device announcing MODEL, in turn),
"pool:POOL/MODEL" or "device:ID/MODEL". A client that disconnects cancels its request on the device.
"""
from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.admission import Admitted, Job
from edgegen.firmware_bridge.client import Client
from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.errors import ErrorCode, RequestError
from edgegen.firmware_bridge.http_api import Channel
from edgegen.firmware_bridge.schema import TextRequest

log = logging.getLogger(__name__)
FLEET = f"{topics.ROOT}/devices/+"


@dataclasses.dataclass
class _Device:
    state: str = "offline"
    text: tuple[str, ...] = ()
    telemetry: dict[str, Any] = dataclasses.field(default_factory=dict)


class Fleet:
    """What the devices announce (retained models and status, periodic telemetry), kept up to date by the broker."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.devices: dict[str, _Device] = {}
        self._turn = itertools.count()

    def watch(self, client: Client) -> None:
        for leaf, handle in (("models", self._on_models), ("status", self._on_status), ("telemetry", self._on_tel)):
            client.watch(f"{FLEET}/{leaf}", self._handler(handle))

    def _handler(self, handle: Callable[[_Device, dict], None]) -> Callable[[Any], None]:
        return lambda msg: self._on(msg, handle)

    def _on(self, msg: Any, handle: Callable[[_Device, dict], None]) -> None:
        device = msg.topic.split("/")[3]
        try:
            body = json.loads(msg.payload)
        except ValueError:
            return
        if isinstance(body, dict):
            with self._lock:
                handle(self.devices.setdefault(device, _Device()), body)

    @staticmethod
    def _on_models(d: _Device, body: dict) -> None:
        d.text = tuple(m for m in body.get("text", []) if isinstance(m, str))

    @staticmethod
    def _on_status(d: _Device, body: dict) -> None:
        d.state = str(body.get("state", "offline"))

    @staticmethod
    def _on_tel(d: _Device, body: dict) -> None:
        d.telemetry = body

    def models(self) -> list[str]:
        with self._lock:
            return sorted({m for d in self.devices.values() if d.state != "offline" for m in d.text})

    def pick(self, model: str) -> str:
        """An online device announcing `model`, in turn; RequestError: unknown_model (no device announces it) or
        connection_failed (those that do are offline, or no device has announced anything yet: 503; a gateway
        started a moment ago may not have the retained announcements yet)."""
        with self._lock:
            known = bool(self.devices)
            serving = sorted(n for n, d in self.devices.items() if model in d.text)
            online = [n for n in serving if self.devices[n].state != "offline"]
        if not serving and not known:  # nothing heard from any device yet (or ever): unavailable, not unknown
            raise RequestError(ErrorCode.CONNECTION_FAILED, "no device of the fleet has announced itself")
        if not serving:
            raise RequestError(ErrorCode.UNKNOWN_MODEL, f"no device of the fleet serves model {model!r}")
        if not online:
            raise RequestError(ErrorCode.CONNECTION_FAILED, f"every device serving {model!r} is offline")
        return online[next(self._turn) % len(online)]

    def collect(self) -> Iterator[Metric]:
        """Each device's telemetry as labelled gauges (edgegen_device_<key>{device=...}), and whether it is up."""
        with self._lock:
            devices = {n: (d.state, dict(d.telemetry)) for n, d in self.devices.items()}
        up = GaugeMetricFamily("edgegen_device_up", "1 when the device's status is not offline", labels=["device"])
        families: dict[str, GaugeMetricFamily] = {}
        for name, (state, tel) in sorted(devices.items()):
            up.add_metric([name], 0.0 if state == "offline" else 1.0)
            for key, value in tel.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key not in ("v", "ts"):
                    family = families.setdefault(key, GaugeMetricFamily(f"edgegen_device_{key}",
                                                                        f"device telemetry {key}", labels=["device"]))
                    family.add_metric([name], float(value))
        yield up
        yield from families.values()


class Gateway:
    """The http_api.Host of a gateway: requests go to the fleet over MQTT."""

    device = "gateway"

    def __init__(self, broker: BrokerOptions, pool: str | None = None, client_id: str | None = None,
                 timeout_s: float = 600.0) -> None:
        self.pool = topics.check_name(pool, "pool") if pool is not None else None
        self.client = Client(broker, client_id=client_id, timeout_s=timeout_s)
        self.fleet = Fleet()
        self._registry = CollectorRegistry()
        self._registry.register(self.fleet)

    def start(self) -> Gateway:
        self.client.connect()
        self.fleet.watch(self.client)
        return self

    def stop(self) -> None:
        self.client.close()

    def text_models(self) -> list[str]:
        return self.fleet.models()

    def metrics_text(self) -> bytes:
        return generate_latest(self._registry)

    def _target(self, model: str) -> tuple[str | None, str | None, str]:
        """(device, pool, model name on the device) for an API `model`."""
        for prefix in ("pool:", "device:"):
            if model.startswith(prefix) and "/" in model:
                where, name = model[len(prefix):].split("/", 1)
                return (None, where, name) if prefix == "pool:" else (where, None, name)
        if self.pool is not None:
            return None, self.pool, model
        return self.fleet.pick(model), None, model

    def submit(self, request: TextRequest, replies: Channel) -> Admitted:
        try:
            device, pool, model = self._target(request.model)
        except RequestError as e:
            return Admitted("refused", error=e)
        job = Job(("gateway", request.id), request, "", None, [], time.monotonic(), None)
        threading.Thread(target=self._relay, args=(job, dataclasses.replace(request, model=model), device, pool,
                                                   replies), name=f"gateway-{request.id}", daemon=True).start()
        return Admitted("queued", job)

    def _relay(self, job: Job, request: TextRequest, device: str | None, pool: str | None, out: Channel) -> None:
        """Publish the request, pass its chunks and final (or error) to the HTTP handler; a cancel (the client
        left) is sent on to the device."""
        stop = threading.Event()

        def forward_cancel() -> None:
            if job.cancel.wait() and not stop.is_set():
                try:
                    self.client.cancel(request.id, device=device, pool=pool)
                except RequestError as e:
                    log.info("could not cancel %s: %s", request.id, e)

        try:
            stream = self.client.publish_request(topics.device_request(device, "text") if device else
                                                 topics.pool_request(pool or "", "text"), request)
            threading.Thread(target=forward_cancel, daemon=True).start()
            for piece in stream:
                out.messages.put({"type": "chunk", "text": piece})
            out.messages.put(stream.result or {"type": "error", "code": "internal", "message": "no final answer"})
        except RequestError as e:
            out.messages.put({"type": "error", "code": e.code, "message": e.message})
        finally:
            stop.set()
            job.cancel.set()  # ends the cancel forwarder (stop is set: it sends nothing)
