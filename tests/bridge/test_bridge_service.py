"""DeviceService without a broker (a recording stand-in for paho): one answer even when handling fails, counters
that threads bump while telemetry reads them, peak RSS units, the answer store's wiring."""
from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from bridge_fakes import FakeTextEngine, RecordingMqtt, request_message

from edgegen.firmware_bridge import service as service_module
from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.counters import Counters
from edgegen.firmware_bridge.errors import ErrorCode
from edgegen.firmware_bridge.service import DeviceService, ServiceConfig
from edgegen.firmware_bridge.workers import RunGate

DEVICE = "dev1"
RESPONSES = topics.client_responses("tester")
KEYS_PER_THREAD = 500  # 2000 keys: a telemetry report of about 40 KB, under its 64 KiB limit
HELLO = b'{"v": 1, "id": "r-1", "prompt": "hello there", "max_tokens": 2}'


def offline(engine: FakeTextEngine | None = None, **config) -> tuple[DeviceService, RecordingMqtt]:
    service = DeviceService(ServiceConfig(DEVICE, **config), BrokerOptions(), {"default": engine or FakeTextEngine()})
    service.transport.client = fake = RecordingMqtt()
    return service, fake


class ExplodingEngine(FakeTextEngine):
    def check(self, request) -> None:
        raise RuntimeError("a bug in the engine's check")


def test_a_failure_inside_accept_still_gets_one_internal_answer_and_the_device_goes_on() -> None:
    service, fake = offline(ExplodingEngine())
    service.transport.receive(request_message(DEVICE, "text", HELLO, RESPONSES, b"c-1", mid=11))
    [answer] = fake.answers()
    body = json.loads(answer.payload)
    assert (answer.topic, answer.properties.CorrelationData) == (RESPONSES, b"c-1")
    assert body["type"] == "error" and body["code"] == ErrorCode.INTERNAL and "device log" in body["message"]
    assert fake.acked == [11] and service.counters["internal_errors"] == 1
    service.text_engines["default"] = FakeTextEngine()  # the same service takes the next request
    service.transport.receive(request_message(DEVICE, "text", HELLO, RESPONSES, b"c-2", mid=12))
    assert len(service.admission.waiting()) == 1


def test_a_failing_answer_store_is_answered_internal_on_the_errors_topic_without_a_response_topic() -> None:
    service, fake = offline()

    def broken_get(topic: str, request_id: str) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    service.admission.answers.get = broken_get  # type: ignore[method-assign]
    payload = b'{"v": 1, "id": "r-1", "prompt": "hi", "reply_to": "edgegen/v1/clients/board/responses"}'
    service.transport.receive(request_message(DEVICE, "text", payload, None, None, mid=5))
    [answer] = fake.answers()
    assert answer.topic == topics.errors(DEVICE) and json.loads(answer.payload)["code"] == ErrorCode.INTERNAL
    assert fake.acked == [5]


def test_a_lone_surrogate_is_answered_invalid_request_naming_the_field() -> None:
    service, fake = offline()
    payload = b'{"v": 1, "id": "x", "prompt": "\\ud800"}'  # valid JSON; the tokenizer raised TypeError on it
    service.transport.receive(request_message(DEVICE, "text", payload, RESPONSES, b"c", mid=3))
    [answer] = fake.answers()
    body = json.loads(answer.payload)
    assert body["code"] == ErrorCode.INVALID_REQUEST and body["id"] == "x"
    assert body["message"].startswith("prompt is not valid Unicode text")
    assert fake.acked == [3] and service.counters["internal_errors"] == 0


def test_counters_hammered_from_threads_while_telemetry_snapshots_them() -> None:
    """The telemetry thread spreads the counters into its report while workers add new keys: with a bare Counter
    that dies with "dictionary changed size during iteration", and telemetry stops for good."""
    service, fake = offline(telemetry_interval_s=1e-6)
    service.transport.connected.set()
    died: list[BaseException | None] = []
    hook, threading.excepthook = threading.excepthook, lambda args: died.append(args.exc_value)
    stop = threading.Event()

    def bump(t: int) -> None:
        i = 0
        while not stop.is_set() or i < 10 * KEYS_PER_THREAD:
            service.counters.add("shared")
            if i % 10 == 0 and i < 10 * KEYS_PER_THREAD:
                service.counters.add(f"k{t}-{i // 10}")  # a new key: the dict grows under the reporter
            i += 1

    reporter = threading.Thread(target=service.run_telemetry, daemon=True)
    workers = [threading.Thread(target=bump, args=(t,)) for t in range(4)]
    try:
        reporter.start()
        for w in workers:
            w.start()
        def reports_sent() -> int:
            return sum(p.topic == topics.telemetry(DEVICE) for p in list(fake.published))

        # at least half a second of hammering, and on a loaded machine until the reporter has sent 10 reports
        start, snapshots = time.monotonic(), 0
        while time.monotonic() < start + 0.5 or (reports_sent() <= 10 and time.monotonic() < start + 30):
            snapshot = service.counters.snapshot()
            assert all(v >= 1 for v in snapshot.values())
            snapshots += 1
        stop.set()
        for w in workers:
            w.join()
        assert reporter.is_alive() and not died, died
    finally:
        stop.set()
        service.transport.stopping.set()
        reporter.join(5)
        threading.excepthook = hook
    counts = service.counters.snapshot()
    assert len(counts) == 4 * KEYS_PER_THREAD + 1 and counts["shared"] >= 4 * 10 * KEYS_PER_THREAD
    reports = [json.loads(p.payload) for p in fake.published if p.topic == topics.telemetry(DEVICE)]
    assert len(reports) > 10 and snapshots > 10
    assert 0 < reports[-1]["shared"] <= counts["shared"]


def test_counters_read_zero_for_an_unknown_name() -> None:
    c = Counters()
    c.add("served", 2)
    assert (c["served"], c["busy"], c.snapshot()) == (2, 0, {"served": 2})


def test_peak_rss_has_one_owner() -> None:
    """The service reports the peak RSS device.measure measures (VmHWM: getrusage's ru_maxrss survives execve)."""
    from edgegen.device import measure
    from edgegen.firmware_bridge.deploy import health

    assert service_module.peak_rss_bytes is measure.peak_rss_bytes is health.peak_rss_bytes


def test_the_service_keeps_its_answers_where_the_config_says(tmp_path: Path) -> None:
    service, _ = offline(state_dir=tmp_path / "state", remembered_answers=3, remembered_answer_bytes=500)
    store = service.admission.answers
    assert store.path == tmp_path / "state" / "answers.sqlite3" and (store.max_answers, store.max_bytes) == (3, 500)
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    in_memory, _ = offline()
    assert in_memory.admission.answers.path is None and in_memory.admission.answers.max_bytes == 64 * 1024 * 1024


def test_the_run_gate_lets_requests_run_together_and_a_swap_wait_for_all_of_them() -> None:
    gate = RunGate()
    entered, release = threading.Barrier(3), threading.Event()
    order: list[str] = []

    def run(name: str) -> None:
        with gate.running():
            entered.wait(5)  # three requests inside at once
            release.wait(5)
            order.append(name)

    runners = [threading.Thread(target=run, args=(f"r{i}",)) for i in range(3)]
    for t in runners:
        t.start()
    time.sleep(0.2)
    assert gate.busy == 3

    def swap() -> None:
        with gate.alone():
            order.append("swap")

    swapper = threading.Thread(target=swap)
    swapper.start()
    time.sleep(0.2)
    assert order == []  # the swap waits for the running requests
    release.set()
    swapper.join(5)
    for t in runners:
        t.join(5)
    assert order[-1] == "swap" and sorted(order[:3]) == ["r0", "r1", "r2"] and gate.busy == 0


def test_telemetry_names_the_slots_and_the_queue_bound() -> None:
    service, _ = offline(parallel=3, queue_size=5)
    report = service.report()
    assert (report["slots"], report["busy_slots"], report["queue_size"], report["queue_depth"]) == (3, 0, 5, 0)
