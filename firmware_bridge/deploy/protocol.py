"""The deploy protocol over MQTT (v1): topics and payloads between `edgegen deploy` and a device's agent.

    edgegen/v1/deploy/offers/<device>                 retained offer: the signed manifest, the rollout id (deploy)
    edgegen/v1/deploy/<rollout>/blocks/<device>       block requests {"v":1,"blocks":[i,...]} with Response Topic and
                                                      Correlation Data (device -> deploy)
    edgegen/v1/deploy/<rollout>/data/<device>         one message per block: its bytes, user property block=i,
                                                      the request's Correlation Data (deploy -> device)
    edgegen/v1/devices/<device>/deploy                retained deploy status of the device (device)

The board pulls numbered blocks and asks again for those it is missing, because a pushed model would meet
Mosquitto's silent `message_size_limit` drops and offline queues in broker RAM (docs/DEPLOY.md, Protocol).
Every payload carries `"v": 1`; parsers refuse anything else with DeployError bad_manifest.
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

from edgegen.firmware_bridge import topics
from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.firmware_bridge.deploy.manifest import SignedManifest, parse_json

PROTOCOL_VERSION = 1
DEPLOY_ROOT = f"{topics.ROOT}/deploy"
# A device's deploy status goes through these states; the last four end a deployment.
STATES = ("idle", "queued", "verifying", "preflight", "downloading", "installing", "probation", "committed",
          "failed", "rolled_back", "rejected")
TERMINAL_STATES = ("committed", "failed", "rolled_back", "rejected")
MAX_BLOCKS_PER_REQUEST = 16
MAX_REQUEST_BYTES = 4096  # 16 indices in JSON are far below; anything larger is not a block request
BLOCK_PROPERTY = "block"  # MQTT 5 user property on each data message: the block's index
ERROR_PROPERTY = "error"  # instead of the bytes: why the deploy side cannot serve that block
MAX_OFFER_BYTES = 900 * 1024  # under the shipped broker's max_packet_size (1 MiB), which disconnects a sender above it


def _bad(message: str, **details: Any) -> DeployError:
    return DeployError(DeployCode.BAD_MANIFEST, message, details)


# ---- topics ------------------------------------------------------------------------------------------------------
def offer_topic(device: str) -> str:
    """Retained offer for one device; a newer offer replaces the older one."""
    return f"{DEPLOY_ROOT}/offers/{topics.check_name(device)}"


def blocks_topic(rollout: str, device: str) -> str:
    return f"{DEPLOY_ROOT}/{topics.check_name(rollout, 'rollout id')}/blocks/{topics.check_name(device)}"


def blocks_filter(rollout: str) -> str:
    """What the deploy side subscribes to: every device's block requests for its rollout."""
    return f"{DEPLOY_ROOT}/{topics.check_name(rollout, 'rollout id')}/blocks/+"


def data_topic(rollout: str, device: str) -> str:
    """The Response Topic a device names for its block requests; the deploy side answers nowhere else."""
    return f"{DEPLOY_ROOT}/{topics.check_name(rollout, 'rollout id')}/data/{topics.check_name(device)}"


def data_filter(device: str) -> str:
    return f"{DEPLOY_ROOT}/+/data/{topics.check_name(device)}"


def status_topic(device: str) -> str:
    return f"{topics.device_root(device)}/deploy"


STATUS_FILTER = f"{topics.ROOT}/devices/+/deploy"


def device_of(topic: str) -> str:
    """The last topic level (the device id of blocks/data/offer topics)."""
    return topic.rsplit("/", 1)[-1]


# ---- payloads ----------------------------------------------------------------------------------------------------
def _object(payload: bytes | str, what: str) -> dict[str, Any]:
    obj = parse_json(payload)
    if not isinstance(obj, dict):
        raise _bad(f"{what} must be a JSON object, got {type(obj).__name__}")
    if obj.get("v") != PROTOCOL_VERSION or isinstance(obj.get("v"), bool):
        raise _bad(f"{what} v={obj.get('v')!r} is not supported: expected {PROTOCOL_VERSION}", v=obj.get("v"))
    return obj


@dataclasses.dataclass(frozen=True)
class Offer:
    """Install `signed` under rollout `rollout`; `min_speed_share` is the health check's speed floor."""

    rollout: str
    signed: SignedManifest
    min_speed_share: float = 0.5

    def to_payload(self) -> bytes:
        payload = json.dumps({"v": PROTOCOL_VERSION, "type": "offer", "rollout": self.rollout,
                              "min_speed_share": self.min_speed_share, "manifest": self.signed.to_dict()},
                             sort_keys=True, separators=(",", ":")).encode()
        if len(payload) > MAX_OFFER_BYTES:
            m = self.signed.manifest
            raise DeployError(DeployCode.BAD_MANIFEST, f"the offer for {m.name} is {len(payload)} bytes, over "
                              f"{MAX_OFFER_BYTES} (a packet over the broker's max_packet_size disconnects its "
                              f"sender): use a larger block size than {m.block_size}",
                              {"offer_bytes": len(payload), "n_blocks": m.n_blocks})
        return payload


def parse_offer(payload: bytes | str) -> Offer:
    """Strict parse of an offer; DeployError bad_manifest (the manifest's own checks included)."""
    obj = _object(payload, "offer")
    keys = {"v", "type", "rollout", "min_speed_share", "manifest"}
    if set(obj) != keys or obj["type"] != "offer":
        raise _bad(f"offer fields {sorted(obj)}: expected {sorted(keys)} with type 'offer'")
    rollout, share = obj["rollout"], obj["min_speed_share"]
    if not isinstance(rollout, str) or not topics._NAME.fullmatch(rollout):
        raise _bad(f"offer rollout {rollout!r:.80} must be 1-64 characters of letters, digits, '_', '.', '-'")
    if not isinstance(share, (int, float)) or isinstance(share, bool) or not 0 <= share <= 1:
        raise _bad(f"offer min_speed_share {share!r:.40} must be a number from 0 to 1")
    return Offer(rollout, SignedManifest.from_dict(obj["manifest"]), float(share))


def encode_block_request(blocks: list[int]) -> bytes:
    assert 0 < len(blocks) <= MAX_BLOCKS_PER_REQUEST, blocks
    return json.dumps({"v": PROTOCOL_VERSION, "blocks": blocks}, separators=(",", ":")).encode()


def parse_block_request(payload: bytes, n_blocks: int) -> list[int]:
    """The block indices asked for; DeployError bad_manifest for anything but 1-16 indices in 0..n_blocks-1."""
    if len(payload) > MAX_REQUEST_BYTES:
        raise _bad(f"block request of {len(payload)} bytes: expected at most {MAX_REQUEST_BYTES}")
    obj = _object(payload, "block request")
    blocks = obj.get("blocks")
    if set(obj) != {"v", "blocks"} or not isinstance(blocks, list) or not 0 < len(blocks) <= MAX_BLOCKS_PER_REQUEST:
        raise _bad(f"block request {obj!r:.120} must be {{'v': 1, 'blocks': [1-{MAX_BLOCKS_PER_REQUEST} indices]}}")
    for i in blocks:
        if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < n_blocks:
            raise _bad(f"block index {i!r:.40} out of range: expected an integer in 0..{n_blocks - 1}", block=i)
    return blocks


@dataclasses.dataclass(frozen=True)
class Status:
    """A device's retained deploy status. progress: {"blocks", "of", "bytes"} while downloading."""

    device: str
    state: str
    rollout: str | None = None
    name: str | None = None
    version: int | None = None
    pool: str | None = None
    progress: dict[str, int] | None = None
    reason: str | None = None  # a DeployCode value when failed, rolled_back or rejected
    message: str | None = None
    numbers: dict[str, Any] = dataclasses.field(default_factory=dict)
    ts: float = 0.0

    @property
    def terminal(self) -> bool:
        return self.state in TERMINAL_STATES

    def to_payload(self) -> bytes:
        assert self.state in STATES, self.state
        d = {"v": PROTOCOL_VERSION, **dataclasses.asdict(self)}
        d["ts"] = round(self.ts or time.time(), 3)
        return json.dumps(d, sort_keys=True, separators=(",", ":"), default=str).encode()


STATUS_FIELDS = {f.name for f in dataclasses.fields(Status)}


def parse_status(payload: bytes) -> Status:
    """Parse a retained status (as the deploy side reads it); DeployError bad_manifest for a malformed one."""
    obj = _object(payload, "status")
    obj.pop("v")
    unknown = set(obj) - STATUS_FIELDS
    if unknown or obj.get("state") not in STATES or not isinstance(obj.get("device"), str):
        raise _bad(f"status {obj!r:.120}: unknown fields {sorted(unknown)} or a state not in {STATES}")
    return Status(**obj)
