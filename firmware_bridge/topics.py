"""The topic vocabulary of the bridge: every topic lives under one versioned root.

    edgegen/v1/devices/<device>/requests/{text,image,cancel}   per-device requests (device subscribes)
    edgegen/v1/pools/<pool>/requests/{text,image}              fleet requests, read via $share/<pool>/...
    edgegen/v1/pools/<pool>/cancel                             cancel a pool request (every member reads it)
    edgegen/v1/devices/<device>/status                         retained {"state": online|busy|offline}; Last Will
    edgegen/v1/devices/<device>/models                         retained list of the models the device serves
    edgegen/v1/devices/<device>/telemetry                      periodic counters (QoS 0)
    edgegen/v1/devices/<device>/errors                         errors for requests without a usable response topic
    edgegen/v1/clients/<client>/responses                      where `Client` asks for its answers (Response Topic)
"""
from __future__ import annotations

import re

from edgegen.firmware_bridge.errors import ErrorCode, RequestError

ROOT = "edgegen/v1"
KINDS = ("text", "image")
# A device or pool name becomes one topic level and a Mosquitto ACL `%u`: keep it to a safe alphabet.
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


def check_name(name: str, what: str = "device id") -> str:
    """Return `name` if it can be one topic level (letters, digits, `_.-`, up to 64), else raise RequestError."""
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise RequestError(ErrorCode.INVALID_REQUEST,
                           f"{what} {name!r} must be 1-64 characters of letters, digits, '_', '.', '-'")
    return name


def device_root(device: str) -> str:
    return f"{ROOT}/devices/{check_name(device)}"


def device_request(device: str, kind: str) -> str:
    """Per-device request topic; `kind` is "text", "image" or "cancel"."""
    assert kind in (*KINDS, "cancel"), kind
    return f"{device_root(device)}/requests/{kind}"


def pool_request(pool: str, kind: str) -> str:
    assert kind in KINDS, kind
    return f"{ROOT}/pools/{check_name(pool, 'pool')}/requests/{kind}"


def pool_shared_filter(pool: str, kind: str) -> str:
    """Shared-subscription filter: the broker hands each pool request to one member, round-robin (MQTT 5 4.8.2)."""
    return f"$share/{check_name(pool, 'pool')}/{pool_request(pool, kind)}"


def pool_cancel(pool: str) -> str:
    return f"{ROOT}/pools/{check_name(pool, 'pool')}/cancel"


def status(device: str) -> str:
    return f"{device_root(device)}/status"


def models(device: str) -> str:
    return f"{device_root(device)}/models"


def telemetry(device: str) -> str:
    return f"{device_root(device)}/telemetry"


def errors(device: str) -> str:
    return f"{device_root(device)}/errors"


def client_responses(client: str) -> str:
    return f"{ROOT}/clients/{check_name(client, 'client id')}/responses"


def is_publishable(topic: str) -> bool:
    """True if `topic` may be published to: non-empty, no wildcards, not a `$` system topic (MQTT 5 4.7)."""
    return bool(topic) and "+" not in topic and "#" not in topic and not topic.startswith("$") and "\0" not in topic
