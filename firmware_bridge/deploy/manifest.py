"""The deployment manifest: what a device is asked to install, signed with Ed25519, parsed strictly on the device.

A device verifies the manifest before it fetches a byte (docs/DEPLOY.md): the signature over the canonical JSON
(`json.dumps(sort_keys=True, separators=(",", ":"))` of the manifest's fields), the signing key, the expiry and a
version above the last one it trusted. Every field is type- and range-checked first, so a malformed manifest is
`bad_manifest` and never reaches the code that would act on it.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.firmware_bridge.deploy.keys import key_id as key_id_of

MANIFEST_VERSION = 1
KINDS = ("text", "image")
# 64 KiB blocks: one block is one MQTT response, and Mosquitto discards a message over `message_size_limit` silently
# and disconnects a client whose packet exceeds `max_packet_size` (mosquitto.conf(5)); brokers and small clients
# commonly cap packets at 128-256 KiB (AWS IoT's MQTT file streams: blocks up to 128 KB). 64 KiB leaves room for
# the MQTT header and user properties under a 128 KiB cap while a 1 GB model is still only ~16k requests.
DEFAULT_BLOCK_SIZE = 64 * 1024
MIN_BLOCK_SIZE = 1024
MAX_BLOCK_SIZE = 128 * 1024
DEFAULT_TTL_S = 7 * 24 * 3600  # a signed offer that nobody installed within a week is stale
MAX_TTL_S = 366 * 24 * 3600
MAX_FILE_SIZE = 1 << 40  # 1 TiB: far above any board, small enough that the block list stays bounded
MAX_GOLDEN_TOKENS = 256
MAX_PROMPT_CHARS = 4096
MAX_TENSOR_TYPES = 64
MAX_INT = 2**63 - 1
NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,64}")  # one MQTT topic level, as firmware_bridge.topics.check_name
HEX64 = re.compile(r"[0-9a-f]{64}")
HEX16 = re.compile(r"[0-9a-f]{16}")
SIGNATURE_BYTES = 64  # Ed25519 (RFC 8032)
PLAN_INT_KEYS = ("context", "weights_bytes", "load_transient_bytes", "kv_cache_bytes", "activations_bytes",
                 "total_bytes")


def _bad(message: str, **details: Any) -> DeployError:
    return DeployError(DeployCode.BAD_MANIFEST, message, details)


@dataclass(frozen=True)
class Manifest:
    """One model file to install under `name` (schema v1); sizes in bytes, times in unix seconds."""

    name: str
    version: int
    kind: str  # "text" | "image"
    file_sha256: str
    file_size: int
    block_size: int
    block_sha256: tuple[str, ...]
    architecture: str
    tensor_types: tuple[str, ...]
    created: int
    expires: int
    golden: dict  # text: {prompt, max_tokens, token_ids}; image: {prompt, seed, steps, verdict}
    plan: dict  # the planner's numbers at build time (preflight.plan_numbers)
    baseline_decode_tok_s: float | None
    key_id: str  # the signing key (keys.key_id); covered by the signature
    v: int = MANIFEST_VERSION

    @property
    def n_blocks(self) -> int:
        return len(self.block_sha256)

    def block_range(self, index: int) -> tuple[int, int]:
        """(offset, length) of block `index` in the file; the last block may be short."""
        if not 0 <= index < self.n_blocks:
            raise DeployError(DeployCode.BAD_MANIFEST, f"block {index} out of range: expected 0..{self.n_blocks - 1}",
                              {"block": index, "n_blocks": self.n_blocks})
        offset = index * self.block_size
        return offset, min(self.block_size, self.file_size - offset)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready data (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["block_sha256"], d["tensor_types"] = list(self.block_sha256), list(self.tensor_types)
        return d

    def canonical_bytes(self) -> bytes:
        """The bytes that are signed: sorted keys, no whitespace, UTF-8."""
        return canonical_json(self.to_dict())

    @classmethod
    def from_dict(cls, d: Any) -> Manifest:
        """Strict parse: exactly the schema's fields, each type and range checked; DeployError bad_manifest."""
        return _parse_manifest(d)


@dataclass(frozen=True)
class SignedManifest:
    """A manifest and its Ed25519 signature (base64) by the key `key_id`."""

    manifest: Manifest
    signature_b64: str
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        return {"v": MANIFEST_VERSION, "manifest": self.manifest.to_dict(), "signature": self.signature_b64,
                "key_id": self.key_id}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_dict(cls, d: Any) -> SignedManifest:
        """Strict parse of {"v", "manifest", "signature", "key_id"}; DeployError bad_manifest."""
        _exact_keys(d, {"v", "manifest", "signature", "key_id"}, "signed manifest")
        if _int(d["v"], "v", 1, MAX_INT) != MANIFEST_VERSION:
            raise _bad(f"signed manifest v={d['v']!r} is not supported: expected {MANIFEST_VERSION}", v=d["v"])
        manifest = _parse_manifest(d["manifest"])
        sig = d["signature"]
        if not isinstance(sig, str) or len(sig) > 128:
            raise _bad(f"signature {sig!r:.80} must be a base64 string of {SIGNATURE_BYTES} bytes")
        try:
            raw = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise _bad(f"signature {sig!r:.80} is not valid base64") from None
        if len(raw) != SIGNATURE_BYTES or base64.b64encode(raw).decode() != sig:
            raise _bad(f"signature decodes to {len(raw)} bytes: expected {SIGNATURE_BYTES} in canonical base64")
        kid = _hex(d["key_id"], "key_id", HEX16)
        if kid != manifest.key_id:
            raise _bad(f"key_id {kid!r} differs from the manifest's key_id {manifest.key_id!r}")
        return cls(manifest, sig, kid)

    @classmethod
    def from_json(cls, text: str | bytes) -> SignedManifest:
        """Parse JSON text (duplicate keys, NaN and Infinity refused); DeployError bad_manifest."""
        return cls.from_dict(parse_json(text))


def canonical_json(d: dict[str, Any]) -> bytes:
    return json.dumps(d, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _bad(f"key {k!r} appears twice")
        out[k] = v
    return out


def _no_constant(name: str) -> Any:
    raise _bad(f"{name} is not a JSON number")


def parse_json(text: str | bytes) -> Any:
    """json.loads that refuses duplicate keys and NaN/Infinity, and reports any failure as bad_manifest."""
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_no_constant)
    except DeployError:
        raise
    except (ValueError, TypeError, RecursionError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _bad(f"manifest is not valid JSON: {e}") from None


# ---- field checks ------------------------------------------------------------------------------------------------
def _exact_keys(d: Any, keys: set[str], what: str) -> None:
    if not isinstance(d, dict):
        raise _bad(f"{what} must be a JSON object, got {type(d).__name__}")
    missing, extra = keys - d.keys(), d.keys() - keys
    if missing or extra:
        raise _bad(f"{what} fields: missing {sorted(missing)}, unknown {sorted(extra)[:5]}",
                   missing=sorted(missing), unknown=sorted(extra)[:5])


def _int(value: Any, name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not lo <= value <= hi:
        raise _bad(f"{name}={value!r:.80} must be an integer in [{lo}, {hi}]", field=name)
    return value


def _str(value: Any, name: str, max_len: int, pattern: re.Pattern | None = None) -> str:
    if not isinstance(value, str) or not 0 < len(value) <= max_len or (pattern and not pattern.fullmatch(value)):
        expected = f"matching {pattern.pattern}" if pattern else f"1-{max_len} characters"
        raise _bad(f"{name}={value!r:.80} must be a string {expected}", field=name)
    if "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):  # lone surrogates cannot be UTF-8
        raise _bad(f"{name} contains a NUL or a lone surrogate", field=name)
    return value


def _hex(value: Any, name: str, pattern: re.Pattern) -> str:
    n = 64 if pattern is HEX64 else 16
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise _bad(f"{name}={value!r:.80} must be {n} lowercase hex digits", field=name)
    return value


def _list(value: Any, name: str, max_len: int, item: Callable[[Any, str], Any]) -> tuple:
    if not isinstance(value, list) or len(value) > max_len:
        raise _bad(f"{name} must be a list of at most {max_len} items, got {type(value).__name__}", field=name)
    return tuple(item(v, f"{name}[{i}]") for i, v in enumerate(value))


def _golden(d: Any, kind: str) -> dict[str, Any]:
    if kind == "text":
        _exact_keys(d, {"prompt", "max_tokens", "token_ids"}, "golden (text)")
        max_tokens = _int(d["max_tokens"], "golden.max_tokens", 1, MAX_GOLDEN_TOKENS)
        ids = _list(d["token_ids"], "golden.token_ids", max_tokens, lambda v, n: _int(v, n, 0, 2**31 - 1))
        if not ids:
            raise _bad("golden.token_ids is empty: expected the greedy ids of at least one token")
        return {"prompt": _str(d["prompt"], "golden.prompt", MAX_PROMPT_CHARS), "max_tokens": max_tokens,
                "token_ids": list(ids)}
    _exact_keys(d, {"prompt", "seed", "steps", "verdict"}, "golden (image)")
    return {"prompt": _str(d["prompt"], "golden.prompt", MAX_PROMPT_CHARS),
            "seed": _int(d["seed"], "golden.seed", 0, MAX_INT), "steps": _int(d["steps"], "golden.steps", 1, 1000),
            "verdict": _int(d["verdict"], "golden.verdict", 0, 9)}


def _plan(d: Any) -> dict[str, Any]:
    _exact_keys(d, {*PLAN_INT_KEYS, "backend"}, "plan")
    out: dict[str, Any] = {k: _int(d[k], f"plan.{k}", 1 if k == "context" else 0, MAX_INT) for k in PLAN_INT_KEYS}
    out["backend"] = _str(d["backend"], "plan.backend", 16, re.compile(r"[A-Z0-9_]{1,16}"))
    return out


MANIFEST_FIELDS = {f.name for f in dataclasses.fields(Manifest)}


def _parse_manifest(d: Any) -> Manifest:
    _exact_keys(d, MANIFEST_FIELDS, "manifest")
    if _int(d["v"], "v", 1, MAX_INT) != MANIFEST_VERSION:
        raise _bad(f"manifest v={d['v']!r} is not supported: expected {MANIFEST_VERSION}", v=d["v"])
    kind = d["kind"]
    if kind not in KINDS:
        raise _bad(f"kind={kind!r:.40} must be one of {', '.join(KINDS)}", field="kind")
    size = _int(d["file_size"], "file_size", 1, MAX_FILE_SIZE)
    block_size = _int(d["block_size"], "block_size", MIN_BLOCK_SIZE, MAX_BLOCK_SIZE)
    n_blocks = math.ceil(size / block_size)
    if not isinstance(d["block_sha256"], list) or len(d["block_sha256"]) != n_blocks:
        got = len(d["block_sha256"]) if isinstance(d["block_sha256"], list) else type(d["block_sha256"]).__name__
        raise _bad(f"block_sha256 has {got} entries: expected ceil({size} / {block_size}) = {n_blocks}",
                   field="block_sha256", expected=n_blocks)
    blocks = _list(d["block_sha256"], "block_sha256", n_blocks, lambda v, n: _hex(v, n, HEX64))
    created = _int(d["created"], "created", 0, MAX_INT)
    expires = _int(d["expires"], "expires", 0, MAX_INT)
    if not created < expires <= created + MAX_TTL_S:
        raise _bad(f"expires={expires} must be after created={created} by at most {MAX_TTL_S} s", field="expires")
    baseline = d["baseline_decode_tok_s"]
    if baseline is not None and (not isinstance(baseline, (int, float)) or isinstance(baseline, bool)
                                 or not math.isfinite(baseline) or not 0 < baseline <= 1e6):
        raise _bad(f"baseline_decode_tok_s={baseline!r:.40} must be null or a number in (0, 1e6]",
                   field="baseline_decode_tok_s")
    return Manifest(
        v=MANIFEST_VERSION, name=_str(d["name"], "name", 64, NAME_RE),
        version=_int(d["version"], "version", 1, MAX_INT), kind=kind,
        file_sha256=_hex(d["file_sha256"], "file_sha256", HEX64), file_size=size, block_size=block_size,
        block_sha256=blocks, architecture=_str(d["architecture"], "architecture", 64, re.compile(r"[a-z0-9_.-]+")),
        tensor_types=_list(d["tensor_types"], "tensor_types", MAX_TENSOR_TYPES,
                           lambda v, n: _str(v, n, 16, re.compile(r"[A-Z0-9_]+"))),
        created=created, expires=expires, golden=_golden(d["golden"], kind), plan=_plan(d["plan"]),
        baseline_decode_tok_s=None if baseline is None else float(baseline), key_id=_hex(d["key_id"], "key_id", HEX16),
    )


# ---- building, signing, verifying --------------------------------------------------------------------------------
def hash_blocks(path: str | Path, block_size: int = DEFAULT_BLOCK_SIZE) -> tuple[str, int, tuple[str, ...]]:
    """(file sha256, size, sha256 per block) of the file at `path`, read once."""
    whole, blocks, size = hashlib.sha256(), [], 0
    with open(path, "rb") as f:
        while chunk := f.read(block_size):
            whole.update(chunk)
            blocks.append(hashlib.sha256(chunk).hexdigest())
            size += len(chunk)
    return whole.hexdigest(), size, tuple(blocks)


def build_manifest(path: str | Path, name: str, version: int, *, golden: dict, block_size: int = DEFAULT_BLOCK_SIZE,
                   ttl_s: int = DEFAULT_TTL_S, baseline: float | None = None, kind: str | None = None,
                   context: int | None = None, now: int | None = None) -> Manifest:
    """An unsigned manifest for the model file at `path` (its hashes, header facts and planner numbers).

    golden: health.golden_for's result; baseline: measured decode tok/s on the reference board, or None.
    kind: "text" or "image", by default from the file's architecture. Raises DeployError bad_manifest for a bad
    argument, the artifact package's ArtifactError for a file it cannot read.
    """
    from edgegen.firmware_bridge.deploy.preflight import plan_numbers
    from edgegen.runtime.artifact.constants import IMAGE_ARCHITECTURES
    from edgegen.runtime.artifact.reader import open_gguf

    mf = open_gguf(str(path))
    kind = kind or ("image" if mf.architecture in IMAGE_ARCHITECTURES else "text")
    file_sha, size, blocks = hash_blocks(path, block_size)
    created = int(time.time()) if now is None else int(now)
    types = sorted({t.ggml_type.name for t in mf.tensors.values()})
    d = {"v": MANIFEST_VERSION, "name": name, "version": version, "kind": kind, "file_sha256": file_sha,
         "file_size": size, "block_size": block_size, "block_sha256": list(blocks), "architecture": mf.architecture,
         "tensor_types": types, "created": created, "expires": created + ttl_s, "golden": golden,
         "plan": plan_numbers(path, kind, context), "baseline_decode_tok_s": baseline, "key_id": "0" * 16}
    return _parse_manifest(d)  # the device's own parser: a manifest we would refuse is never signed


def sign(manifest: Manifest, private_key: Ed25519PrivateKey) -> SignedManifest:
    """Set the manifest's key_id to the signer's and sign its canonical JSON."""
    kid = key_id_of(private_key.public_key())
    m = dataclasses.replace(manifest, key_id=kid)
    signature = private_key.sign(m.canonical_bytes())
    return SignedManifest(m, base64.b64encode(signature).decode(), kid)


def verify(signed: SignedManifest, public_key: Ed25519PublicKey, *, now: float | None = None,
           trusted_version: int | None = None) -> Manifest:
    """The manifest if it is signed by `public_key`, unexpired at `now` and newer than `trusted_version`.

    Raises DeployError untrusted_key (another key signed it), bad_signature, expired or downgrade, in that order of
    checks after the signature (nothing in an unverified manifest is trusted, its expiry included).
    """
    m = signed.manifest
    trusted = key_id_of(public_key)
    try:
        public_key.verify(base64.b64decode(signed.signature_b64), m.canonical_bytes())
    except InvalidSignature:
        if signed.key_id != trusted:
            raise DeployError(DeployCode.UNTRUSTED_KEY, f"manifest signed by key {signed.key_id}, this device trusts "
                              f"only {trusted}", {"key_id": signed.key_id, "trusted_key_id": trusted}) from None
        raise DeployError(DeployCode.BAD_SIGNATURE, f"signature of {m.name} v{m.version} does not verify with key "
                          f"{trusted}", {"key_id": trusted}) from None
    now = time.time() if now is None else now
    if now >= m.expires:
        raise DeployError(DeployCode.EXPIRED, f"manifest for {m.name} v{m.version} expired at {m.expires}, now is "
                          f"{int(now)}", {"expires": m.expires, "now": int(now)})
    if trusted_version is not None and m.version <= trusted_version:
        raise DeployError(DeployCode.DOWNGRADE, f"{m.name} v{m.version} is not newer than v{trusted_version}, the "
                          "last version this device trusted",
                          {"version": m.version, "trusted_version": trusted_version})
    return m
