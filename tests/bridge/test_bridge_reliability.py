"""Nothing is lost: a device SIGKILLed mid-generation and restarted, a broker restarted mid-run, and a device that
died between its answer and its ack answers the redelivery from its state folder instead of generating again."""
from __future__ import annotations

import dataclasses
import json
import queue
import threading
import time

from bridge_fake_device import FAULT_ENV
from bridge_fakes import FakeTextEngine, expected_text
from bridge_helpers import ChildProcess, connected_client, running_device

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.connection import BrokerOptions

N_REQUESTS = 36
TOKENS = 8
TOKEN_DELAY_S = 0.01
LINE_TIMEOUT_S = 20.0


def fake_device(port: int, device_id: str, pool: str, stall_at_seq: int | None = None,
                parallel: int = 1) -> ChildProcess:
    """bridge_fake_device.py: prints `ready`, `emit ID SEQ`, and `stalled ID SEQ` when it hangs on purpose."""
    args = ["tests/bridge/bridge_fake_device.py", "--port", str(port), "--device-id", device_id, "--pool", pool,
            "--delay-s", str(TOKEN_DELAY_S), "--parallel", str(parallel)]
    return ChildProcess(args, None if stall_at_seq is None else ["--stall-at-seq", str(stall_at_seq)])


def watch_status(client, device: str) -> queue.Queue:
    states: queue.Queue[str] = queue.Queue()
    topic = topics.status(device)
    client.watch(topic, lambda msg: states.put(json.loads(msg.payload)["state"]))
    return states


def test_pool_device_killed_mid_generation_loses_nothing(broker) -> None:
    options = BrokerOptions("127.0.0.1", broker.port)
    # dev0 hangs after streaming chunk 2 of its first request, so the SIGKILL lands mid-generation every time.
    devices = [fake_device(broker.port, f"dev{i}", "fleet", stall_at_seq=2 if i == 0 else None) for i in range(3)]
    try:
        for d in devices:
            d.wait_for(lambda w: w == ["ready"], LINE_TIMEOUT_S)
        with connected_client(options) as client:
            status = watch_status(client, "dev0")
            streams = {f"req-{i}": client.generate(f"word{i} please", pool="fleet", max_tokens=TOKENS,
                                                   request_id=f"req-{i}") for i in range(N_REQUESTS)}
            # SIGKILL dev0 once the client holds part of one of its answers, then start it again under the same id.
            _, killed_id, _ = devices[0].wait_for(lambda w: w[0] == "stalled", LINE_TIMEOUT_S)
            partial = iter(streams[killed_id])
            pieces = [next(partial), next(partial)]
            devices[0].kill()
            deadline = time.monotonic() + LINE_TIMEOUT_S
            while status.get(timeout=max(0.0, deadline - time.monotonic())) != "offline":
                pass  # the Last Will: a crashed device shows as offline
            devices[0].start()  # the same device id, without the stall
            pieces += list(partial)
            texts = {rid: s.text() for rid, s in streams.items()}
            assert "".join(pieces) == texts[killed_id]
            repeated = {rid: s.repeated_chunks for rid, s in streams.items()}
            served_by = {rid: s.result["device"] for rid, s in streams.items()}
        assert texts == {f"req-{i}": expected_text(f"word{i}", TOKENS) for i in range(N_REQUESTS)}  # 0 lost
        assert served_by[killed_id] == "dev0"  # redelivered to the restarted device's session
        assert repeated[killed_id] >= 2  # its first chunks came twice; the client skipped them (duplicates detected)
        assert set(served_by.values()) == {"dev0", "dev1", "dev2"}
    finally:
        for d in devices:
            d.stop()


def test_sigkill_with_four_requests_in_flight_answers_each_once_after_restart(broker) -> None:
    """A device running 4 requests at once (each stalled mid-stream) is SIGKILLed and started again: the broker
    redelivers all 4, each answered once, complete."""
    options = BrokerOptions("127.0.0.1", broker.port)
    device = fake_device(broker.port, "dev0", "fleet", stall_at_seq=2, parallel=4)
    try:
        device.wait_for(lambda w: w == ["ready"], LINE_TIMEOUT_S)
        with connected_client(options) as client:
            streams = {f"four-{i}": client.generate(f"word{i} please", device="dev0", max_tokens=TOKENS,
                                                    request_id=f"four-{i}") for i in range(4)}
            stalled = set()
            while len(stalled) < 4:  # all four hang at once: four workers, four requests in flight
                stalled.add(device.wait_for(lambda w: w[:1] == ["stalled"], LINE_TIMEOUT_S)[1])
            device.kill()
            device.start()  # the same device id, without the stall
            texts = {rid: s.text() for rid, s in streams.items()}
            finals = {rid: s.result for rid, s in streams.items()}
        assert stalled == set(streams)
        assert texts == {f"four-{i}": expected_text(f"word{i}", TOKENS) for i in range(4)}
        assert all(r is not None and r["device"] == "dev0" for r in finals.values())
        assert client.late_finals == 0  # one final answer each, no second one after it
    finally:
        device.stop()


def test_broker_restart_mid_generation(broker) -> None:
    options = BrokerOptions("127.0.0.1", broker.port)
    # The client comes back 3 s after the restart, the device after 1 s: the rest of the answer reaches the broker
    # while the client is away, and must wait in the client's saved session.
    slow_client = dataclasses.replace(options, reconnect_min_delay_s=3)
    started = threading.Event()
    engine = FakeTextEngine(delay_s=0.02, on_emit=lambda rid, seq: seq == 3 and started.set())
    with running_device(options, engine) as (service, _), connected_client(slow_client) as client:
        stream = client.generate("survivor", device="dev1", max_tokens=40)
        assert started.wait(10)
        broker.restart()  # SIGTERM: Mosquitto saves sessions; device and client reconnect with backoff
        assert stream.text() == expected_text("survivor", 40)
        assert service.wait_connected(20)
        assert client.generate("after", device="dev1", max_tokens=3).text() == expected_text("after", 3)
        assert engine.calls.count(stream.request_id) == 1  # the redelivered request was answered from memory


def test_answer_stored_before_the_ack_survives_a_crash_and_is_resent_byte_for_byte(broker, tmp_path) -> None:
    options = BrokerOptions("127.0.0.1", broker.port)
    calls = tmp_path / "generated"
    args = ["tests/bridge/bridge_fake_device.py", "--port", str(broker.port), "--device-id", "dev0", "--delay-s",
            str(TOKEN_DELAY_S), "--state-dir", str(tmp_path / "state"), "--calls-file", str(calls)]
    # The first run exits (137) right after publishing and storing its final answer, before acking the request.
    device = ChildProcess(args, first_run_env={FAULT_ENV: "exit-after-answer"})
    try:
        device.wait_for(lambda w: w == ["ready"], LINE_TIMEOUT_S)
        with connected_client(options) as client:
            finals: queue.Queue[tuple[bytes, bytes]] = queue.Queue()

            def on_response(msg) -> None:
                if json.loads(msg.payload)["type"] == "final":
                    finals.put((msg.properties.CorrelationData, bytes(msg.payload)))

            client.watch(client.response_topic, on_response)  # raw payloads, every copy
            client.generate("crash between answer and ack", device="dev0", max_tokens=TOKENS, request_id="once")
            correlation, first = finals.get(timeout=LINE_TIMEOUT_S)
            assert device.proc.wait(timeout=LINE_TIMEOUT_S) == 137  # died before the ack: the broker keeps it
            assert calls.read_text().split() == ["once"]
            device.start()  # the same device id and state folder, no fault: the broker redelivers the request
            device.wait_for(lambda w: w == ["ready"], LINE_TIMEOUT_S)
            again_correlation, again = finals.get(timeout=LINE_TIMEOUT_S)
        assert again == first and again_correlation == correlation  # the stored bytes, timings and all
        assert json.loads(first)["stats"]["total_ms"] > 0 and json.loads(first)["text"] == expected_text(
            "crash", TOKENS)
        assert calls.read_text().split() == ["once"]  # the second process did not generate it again
    finally:
        device.stop()
