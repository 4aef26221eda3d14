"""Broker connection options and a paho-mqtt 2.x MQTT 5 client configured the way docs/ARCHITECTURE.md measured."""
from __future__ import annotations

import dataclasses
import logging
import socket
import ssl

import paho.mqtt.client as mqtt

from edgegen.firmware_bridge.errors import ErrorCode, RequestError

log = logging.getLogger(__name__)
DEFAULT_PORT = 1883


@dataclasses.dataclass(frozen=True)
class BrokerOptions:
    """Where the broker is and how to authenticate; TLS is on when any of the TLS files is given."""

    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    username: str | None = None
    password: str | None = None
    cafile: str | None = None
    certfile: str | None = None
    keyfile: str | None = None
    keepalive_s: int = 30
    reconnect_min_delay_s: int = 1
    reconnect_max_delay_s: int = 30

    @property
    def tls(self) -> bool:
        return any((self.cafile, self.certfile, self.keyfile))


def parse_broker(text: str) -> tuple[str, int]:
    """'HOST:PORT' or 'HOST' -> (host, port); RequestError(invalid_request) for anything else."""
    return parse_address(text, "--broker", DEFAULT_PORT)


def parse_address(text: str, flag: str, default_port: int | None = None) -> tuple[str, int]:
    """'HOST:PORT' (or 'HOST' when there is a default port) -> (host, port); RequestError naming `flag` else."""
    if ":" in text:
        host, _, port_text = text.rpartition(":")
    else:
        host, port_text = text, "" if default_port is None else str(default_port)
    if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise RequestError(ErrorCode.INVALID_REQUEST, f"{flag} {text!r} must be HOST:PORT with a port in 1-65535")
    return host, int(port_text)


def _set_nodelay(client: mqtt.Client, userdata: object, sock: socket.socket | ssl.SSLSocket | object) -> None:
    # Nagle's algorithm + delayed ACK cost ~90 ms per QoS 1 round trip instead of ~1 ms (docs/ARCHITECTURE.md, MQTT).
    if isinstance(sock, socket.socket):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def make_client(client_id: str, options: BrokerOptions, manual_ack: bool = False) -> mqtt.Client:
    """An MQTT 5 paho client with TCP_NODELAY, credentials, TLS and reconnect backoff set; not yet connected."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5,
                         manual_ack=manual_ack)
    client.on_socket_open = _set_nodelay
    if options.username is not None:
        client.username_pw_set(options.username, options.password)
    if options.tls:
        try:
            client.tls_set(ca_certs=options.cafile, certfile=options.certfile, keyfile=options.keyfile,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
        except (OSError, ssl.SSLError) as e:
            raise RequestError(ErrorCode.INVALID_REQUEST, f"cannot load TLS files ({e})") from e
    client.reconnect_delay_set(options.reconnect_min_delay_s, options.reconnect_max_delay_s)
    return client


PUBLISH_WAIT_S = 10.0


def wait_published(info: mqtt.MQTTMessageInfo, timeout_s: float = PUBLISH_WAIT_S) -> bool:
    """Wait for the broker's PUBACK of a QoS 1 publish; False when not connected (paho keeps the message and resends
    it after a reconnect) or not acknowledged in time."""
    if info.rc == mqtt.MQTT_ERR_NO_CONN:
        return False
    try:
        info.wait_for_publish(timeout_s)
    except (RuntimeError, ValueError):
        return False
    return info.is_published()
