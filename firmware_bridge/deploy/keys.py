"""Ed25519 key pairs for signing deployment manifests: PEM files, the private one readable by its owner only."""
from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError

PRIVATE_NAME = "deploy-key.pem"
PUBLIC_NAME = "deploy-key.pub.pem"


def key_id(public_key: Ed25519PublicKey) -> str:
    """A short name for a public key: the first 16 hex digits of the sha256 of its 32 raw bytes."""
    raw = public_key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def _write_new(path: Path, data: bytes, mode: int) -> None:
    # O_EXCL: never overwrite a key (a lost private key strands every device that trusts it); the mode is set at
    # creation, so the private key is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.chmod(path, mode)  # the umask may have narrowed the public key's mode; the private one stays 0600


def generate_keypair(directory: str | Path) -> tuple[Path, Path]:
    """Write a new Ed25519 pair as `deploy-key.pem` (PKCS#8, 0600) and `deploy-key.pub.pem` in `directory`.

    Raises DeployError bad_state if either file already exists (nothing is written then).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    priv_path, pub_path = d / PRIVATE_NAME, d / PUBLIC_NAME
    for p in (priv_path, pub_path):
        if p.exists():
            raise DeployError(DeployCode.BAD_STATE, f"{p} already exists: refusing to overwrite a key",
                              {"path": str(p)})
    key = Ed25519PrivateKey.generate()
    _write_new(priv_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                            serialization.NoEncryption()), 0o600)
    _write_new(pub_path, key.public_key().public_bytes(serialization.Encoding.PEM,
                                                       serialization.PublicFormat.SubjectPublicKeyInfo), 0o644)
    return priv_path, pub_path


def _load(path: str | Path, what: str, pem: str, parse: Callable[[bytes], object], kind: type) -> Any:
    """The `what` (of class `kind`) that `parse` reads from the PEM file at `path`; DeployError for a missing file,
    bytes that are not `pem`, or another kind of key."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise DeployError(DeployCode.BAD_STATE, f"cannot read the {what} {str(path)!r}: {e.strerror}",
                          {"path": str(path)}) from None
    try:
        key = parse(data)
    except (ValueError, TypeError) as e:
        raise DeployError(DeployCode.BAD_STATE, f"{str(path)!r} is not {pem}: {e}", {"path": str(path)}) from None
    if not isinstance(key, kind):
        raise DeployError(DeployCode.BAD_STATE, f"{str(path)!r} holds a {type(key).__name__}: expected Ed25519",
                          {"path": str(path)})
    return key


def load_private_key(path: str | Path) -> Ed25519PrivateKey:
    """The Ed25519 private key in the PEM file at `path`; DeployError for a missing file or another kind of key."""
    return _load(path, "private key", "an unencrypted PEM private key",
                 lambda d: serialization.load_pem_private_key(d, None), Ed25519PrivateKey)


def load_public_key(path: str | Path) -> Ed25519PublicKey:
    """The Ed25519 public key in the PEM file at `path`; DeployError for a missing file or another kind of key."""
    return _load(path, "public key", "a PEM public key", serialization.load_pem_public_key, Ed25519PublicKey)
