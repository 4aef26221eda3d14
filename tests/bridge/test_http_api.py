"""OpenAI's HTTP API on a device (`edgegen serve --http`): the `openai` client and raw HTTP against a DeviceService
with no broker at all (HTTP needs none), a fake engine, the same queue and workers as MQTT."""
from __future__ import annotations

import contextlib
import http.client
import json
import socket
import threading
import time
from collections.abc import Iterator

import openai
import pytest
from bridge_fakes import FakeTextEngine, expected_text

from edgegen.firmware_bridge.connection import BrokerOptions
from edgegen.firmware_bridge.http_api import HttpApi
from edgegen.firmware_bridge.service import DeviceService, ServiceConfig


def unused_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def device(engine: FakeTextEngine | None = None, keys: set[str] | None = None,
           **config) -> Iterator[tuple[DeviceService, HttpApi, FakeTextEngine]]:
    engine = engine or FakeTextEngine()
    service = DeviceService(ServiceConfig("dev1", **config), BrokerOptions("127.0.0.1", unused_port()),
                            {"default": engine, "other": FakeTextEngine()})
    service.start()  # the MQTT side keeps trying a broker that is not there; HTTP does not need it
    api = HttpApi(service, ("127.0.0.1", 0), keys).start()
    try:
        yield service, api, engine
    finally:
        api.stop()
        service.stop()


def client_for(api: HttpApi, key: str = "none") -> openai.OpenAI:
    host, port = api.address
    return openai.OpenAI(base_url=f"http://{host}:{port}/v1", api_key=key, max_retries=0, timeout=30)


def raw(api: HttpApi, method: str, path: str, body: object = None,
        headers: dict | None = None) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection(*api.address, timeout=30)
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    conn.request(method, path, data, {"Content-Type": "application/json", **(headers or {})})
    r = conn.getresponse()
    out = r.status, dict(r.getheaders()), r.read()
    conn.close()
    return out


def test_chat_completion_whole_and_streamed_through_the_openai_client() -> None:
    with device() as (_, api, engine):
        client = client_for(api)
        whole = client.chat.completions.create(model="default", messages=[{"role": "user", "content": "delta wave"}],
                                               max_tokens=5)
        assert whole.choices[0].message.content == expected_text("delta", 5)
        assert whole.choices[0].finish_reason == "length" and whole.object == "chat.completion"
        assert whole.usage is not None and whole.usage.completion_tokens == 5 and whole.usage.total_tokens >= 5
        pieces, finishes, usage = [], [], None
        for chunk in client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": "river bend"}], max_tokens=7, stream=True,
                stream_options={"include_usage": True}):
            if chunk.usage is not None:
                usage = chunk.usage
            for choice in chunk.choices:
                pieces.append(choice.delta.content or "")
                finishes.append(choice.finish_reason)
        assert "".join(pieces) == expected_text("river", 7) and finishes[-1] == "length"
        assert usage is not None and usage.completion_tokens == 7
        assert len(engine.calls) == 2  # the same engine, through the service's queue and workers


def test_completions_models_health_and_metrics() -> None:
    with device() as (_, api, _):
        client = client_for(api)
        out = client.completions.create(model="other", prompt="stone path", max_tokens=3)
        assert out.choices[0].text == expected_text("stone", 3) and out.object == "text_completion"
        assert sorted(m.id for m in client.models.list()) == ["default", "other"]
        status, _, body = raw(api, "GET", "/health")
        assert status == 200 and json.loads(body)["status"] == "ok"
        status, headers, body = raw(api, "GET", "/metrics")
        text = body.decode()
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert 'edgegen_requests_total{outcome="served"} 1.0' in text
        assert "edgegen_generated_tokens_total 3.0" in text and "edgegen_time_to_first_token_seconds_count 1.0" in text
        assert "edgegen_slots 1.0" in text and "edgegen_queue_depth 0.0" in text


@pytest.mark.parametrize("body,status,needle", [
    ({"model": "nope", "messages": [{"role": "user", "content": "hi"}]}, 404, "unknown_model"),
    ({"model": "default", "messages": [{"role": "user", "content": "hi"}], "n": 2}, 400, "n=2"),
    ({"model": "default", "messages": [{"role": "user", "content": "hi"}], "logit_bias": {"1": 5}}, 400, "logit_bias"),
    ({"model": "default", "messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "xml"}}, 400, "response_format"),
    ({"model": "default", "messages": [{"role": "user", "content": "hi"}],
      "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, 400, "response_format"),
    ({"model": "default", "messages": "hi"}, 400, "messages"),
    ({"model": "default", "messages": []}, 400, "missing_prompt"),
    ({"model": "default", "messages": [{"role": "user", "content": "x" * 2000}]}, 400, "prompt_too_long"),
    ({"model": "default", "messages": [{"role": "user", "content": "hi"}], "temperature": 99}, 400, "sampling"),
    ({"model": "default", "messages": [{"role": "user", "content": "hi"}], "wat": 1}, 400, "wat"),
    (b"{not json", 400, "invalid_json"),
    ([1, 2], 400, "JSON object"),
])
def test_bad_requests_get_openai_errors_and_the_device_goes_on(body, status, needle) -> None:
    with device() as (_, api, _):
        got, _, payload = raw(api, "POST", "/v1/chat/completions", body)
        error = json.loads(payload)["error"]
        assert got == status and needle in json.dumps(error), error
        assert set(error) >= {"message", "type", "code"}
        ok, _, _ = raw(api, "POST", "/v1/chat/completions",
                       {"model": "default", "messages": [{"role": "user", "content": "fine"}], "max_tokens": 2})
        assert ok == 200


def test_busy_is_429_with_retry_after() -> None:
    slow = FakeTextEngine(delay_s=0.5)
    with device(slow, queue_size=1) as (_, api, _):
        body = {"model": "default", "messages": [{"role": "user", "content": "slow"}], "max_tokens": 4}
        results: list[int] = []
        threads = [threading.Thread(target=lambda: results.append(raw(api, "POST", "/v1/chat/completions", body)[0]))
                   for _ in range(2)]
        for t in threads:
            t.start()
            time.sleep(0.2)  # the first runs, the second waits in the queue of one
        status, headers, payload = raw(api, "POST", "/v1/chat/completions", body)
        for t in threads:
            t.join()
        assert status == 429 and headers["Retry-After"] == "1" and json.loads(payload)["error"]["code"] == "busy"
        assert results == [200, 200]


def test_a_client_that_disconnects_cancels_its_generation() -> None:
    slow = FakeTextEngine(delay_s=0.05)
    with device(slow) as (service, api, _):
        sock = socket.create_connection(api.address)
        body = json.dumps({"model": "default", "messages": [{"role": "user", "content": "long"}],
                           "max_tokens": 400, "stream": True}).encode()
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
        got = b""
        while b"data: " not in got:  # it streams ...
            more = sock.recv(4096)
            assert more, got
            got += more
        sock.close()  # ... and the client leaves
        deadline = time.monotonic() + 10
        while service.counters["cancelled"] < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert service.counters["cancelled"] == 1  # stopped long before 400 tokens (20 s at this pace)


def test_api_keys_are_checked() -> None:
    with device(keys={"s3cret"}) as (_, api, _):
        with pytest.raises(openai.AuthenticationError):
            client_for(api, "wrong").models.list()
        assert [m.id for m in client_for(api, "s3cret").models.list()] == ["default", "other"]
        assert raw(api, "GET", "/health")[0] == 200  # liveness needs no key


# ---- the gateway: the same API in front of a fleet, over a real Mosquitto ----------------------------------------
@contextlib.contextmanager
def gateway(port: int, **kw) -> Iterator[HttpApi]:
    from edgegen.firmware_bridge.gateway import Gateway

    gw = Gateway(BrokerOptions("127.0.0.1", port), **kw).start()
    api = HttpApi(gw, ("127.0.0.1", 0)).start()
    try:
        yield api
    finally:
        api.stop()
        gw.stop()


def wait_models(client: openai.OpenAI, want: list[str]) -> None:
    deadline = time.monotonic() + 10
    while sorted(m.id for m in client.models.list()) != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sorted(m.id for m in client.models.list()) == want


def test_the_gateway_serves_a_fleet_and_maps_its_errors(broker) -> None:
    from bridge_helpers import running_device

    options = BrokerOptions("127.0.0.1", broker.port)
    with running_device(options, device_id="dev1") as (_, e1), running_device(options, device_id="dev2") as (_, e2), \
            gateway(broker.port) as api:
        client = client_for(api)
        wait_models(client, ["default"])
        for word in ("amber", "birch", "cedar", "dune"):  # plain model names go to the online devices in turn
            out = client.chat.completions.create(model="default", messages=[{"role": "user", "content": word}],
                                                 max_tokens=3)
            assert out.choices[0].message.content == expected_text(word, 3)
        assert len(e1.calls) == 2 and len(e2.calls) == 2
        streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="device:dev2/default", messages=[{"role": "user", "content": "fjord"}], max_tokens=4,
            stream=True) if c.choices)
        assert streamed == expected_text("fjord", 4) and e2.calls[-1].startswith("chatcmpl-")
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.NotFoundError):  # the device itself refuses an unknown model
            client.chat.completions.create(model="device:dev1/nope", messages=[{"role": "user", "content": "x"}])
        with pytest.raises(openai.BadRequestError):
            client.chat.completions.create(model="default", messages=[{"role": "user", "content": "x"}],
                                           temperature=50)
    with gateway(broker.port) as api:  # both devices stopped: their status is offline
        status, _, payload = raw(api, "POST", "/v1/chat/completions",
                                 {"model": "default", "messages": [{"role": "user", "content": "x"}]})
        assert status == 503 and json.loads(payload)["error"]["code"] == "connection_failed"
        metrics = raw(api, "GET", "/metrics")[2].decode()
        assert 'edgegen_device_up{device="dev1"} 0.0' in metrics


def test_the_gateway_in_front_of_a_pool_survives_a_device_killed_mid_stream(broker) -> None:
    """Two devices in a pool behind the gateway; one is SIGKILLed while it streams and started again: every HTTP
    stream still gets its whole answer (the broker redelivers to the restarted device), none hangs."""
    from test_bridge_reliability import fake_device

    devices = [fake_device(broker.port, f"dev{i}", "fleet", stall_at_seq=2 if i == 0 else None) for i in range(2)]
    try:
        for d in devices:
            d.wait_for(lambda w: w == ["ready"], 20)
        with gateway(broker.port, pool="fleet") as api:
            client = client_for(api)
            texts: dict[str, str] = {}

            def ask(word: str) -> None:
                chunks = client.chat.completions.create(model="default", messages=[{"role": "user", "content": word}],
                                                        max_tokens=8, stream=True, temperature=0.5, top_p=0.9,
                                                        seed=3, stop=["never-there"])
                texts[word] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

            words = [f"w{i}" for i in range(6)]
            threads = [threading.Thread(target=ask, args=(w,)) for w in words]
            for t in threads:
                t.start()
            devices[0].wait_for(lambda w: w[:1] == ["stalled"], 20)
            devices[0].kill()
            devices[0].start()  # the same device id, without the stall
            for t in threads:
                t.join(60)
            assert not any(t.is_alive() for t in threads), "an HTTP stream hangs"
        assert texts == {w: expected_text(w, 8) for w in words}
    finally:
        for d in devices:
            d.stop()
