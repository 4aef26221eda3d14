"""Password + ACL (the shipped acl.example) and TLS with client certificates, on a real Mosquitto."""
from __future__ import annotations

import threading

import pytest
from bridge_fakes import expected_text
from bridge_helpers import PASSWORDS, connected_client, running_device

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.connection import BrokerOptions, make_client
from edgegen.firmware_bridge.errors import ErrorCode, RequestError

NOT_AUTHORIZED = 0x87


def login(broker, user: str | None, password: str | None = None) -> BrokerOptions:
    return BrokerOptions("127.0.0.1", broker.port, username=user,
                         password=password if password is not None else PASSWORDS.get(user or ""))


def puback_reason(options: BrokerOptions, client_id: str, topic: str) -> int:
    """Publish once at QoS 1 as `options` and return the PUBACK reason code the broker sent."""
    client = make_client(client_id, options)
    connected, acked = threading.Event(), threading.Event()
    reasons: list[int] = []
    client.on_connect = lambda c, u, f, rc, p: connected.set()
    client.on_publish = lambda c, u, mid, rc, p: (reasons.append(rc.value), acked.set())
    client.connect(options.host, options.port)
    client.loop_start()
    try:
        assert connected.wait(10)
        client.publish(topic, b'{"v": 1, "state": "online"}', qos=1)
        assert acked.wait(10)
    finally:
        client.disconnect()
        client.loop_stop()
    return reasons[0]


def test_acl_lets_each_party_do_its_job(auth_broker) -> None:
    with running_device(login(auth_broker, "dev1"), pool="fleet"), \
            connected_client(login(auth_broker, "alice"), client_id="alice-1") as client:
        assert client.generate("allowed", device="dev1", max_tokens=3).text() == expected_text("allowed", 3)
        assert client.generate("pooled", pool="fleet", max_tokens=2).text() == expected_text("pooled", 2)


@pytest.mark.parametrize("user,password", [(None, None), ("alice", "wrong"), ("mallory", "x")])
def test_unauthenticated_client_is_refused(auth_broker, user, password) -> None:
    with pytest.raises(RequestError) as err, connected_client(login(auth_broker, user, password)):
        pass
    assert err.value.code == ErrorCode.NOT_AUTHORIZED


def test_device_publishing_outside_its_subtree_gets_puback_0x87(auth_broker) -> None:
    dev1 = login(auth_broker, "dev1")
    assert puback_reason(dev1, "dev1", topics.status("dev1")) < 0x80  # 0x10: accepted, no subscribers
    assert puback_reason(dev1, "dev1", topics.status("dev2")) == NOT_AUTHORIZED
    assert puback_reason(dev1, "dev1", topics.device_request("dev2", "text")) == NOT_AUTHORIZED
    assert puback_reason(login(auth_broker, "alice"), "alice-1", topics.status("dev1")) == NOT_AUTHORIZED


def test_client_reports_a_refused_publish(auth_broker) -> None:
    with connected_client(login(auth_broker, "dev2"), client_id="dev2") as client:
        with pytest.raises(RequestError) as err:
            client.generate("not mine", device="dev1")
        assert err.value.code == ErrorCode.NOT_AUTHORIZED


def test_tls_with_client_certificates(tls_broker, tls_files) -> None:
    tls = BrokerOptions("127.0.0.1", tls_broker.port, cafile=tls_files["cafile"], certfile=tls_files["certfile"],
                        keyfile=tls_files["keyfile"])
    with running_device(tls), connected_client(tls) as client:
        assert client.generate("secret", device="dev1", max_tokens=2).text() == expected_text("secret", 2)
    no_client_cert = BrokerOptions("127.0.0.1", tls_broker.port, cafile=tls_files["cafile"])
    with pytest.raises(RequestError) as err, connected_client(no_client_cert):
        pass
    assert err.value.code == ErrorCode.CONNECTION_FAILED
    plain = BrokerOptions("127.0.0.1", tls_broker.port)
    with pytest.raises(RequestError) as err, connected_client(plain):
        pass
    assert err.value.code == ErrorCode.CONNECTION_FAILED
