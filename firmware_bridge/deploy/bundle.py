"""Offline deployment: a bundle (an uncompressed tar of `manifest.json` then `model.gguf`) installed with every check
an MQTT deployment makes.

`install_bundle` runs the device's sequence on a board without a network path: parse and verify the signed manifest
(key, signature, expiry, version above the trusted one), preflight the memory, copy the model through a
PartialFile (every block's sha256, the size, the whole file's sha256), install it in the pending slot, run the
health check, then commit or roll back. The manifest comes first in the tar so that a reader refuses a bad bundle
before it reads the model. One process owns a state folder: stop `edgegen serve` on it before installing.
"""
from __future__ import annotations

import io
import logging
import os
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.firmware_bridge.deploy.fsio import fsync_dir
from edgegen.firmware_bridge.deploy.health import HealthResult, run_health
from edgegen.firmware_bridge.deploy.manifest import Manifest, SignedManifest, verify
from edgegen.firmware_bridge.deploy.preflight import require_fit
from edgegen.firmware_bridge.deploy.slots import DeviceStore
from edgegen.firmware_bridge.deploy.transfer import PartialFile

log = logging.getLogger(__name__)

MANIFEST_MEMBER = "manifest.json"
MODEL_MEMBER = "model.gguf"
MAX_MANIFEST_BYTES = 64 << 20  # a 1 TB model in 64 KiB blocks lists ~16M hashes; anything larger is not ours


def write_bundle(signed: SignedManifest, file: str | Path, out: str | Path) -> Path:
    """Write `out`: a tar of the signed manifest and the model file it describes (written to a temporary first)."""
    out, file = Path(out), Path(file)
    size = file.stat().st_size
    if size != signed.manifest.file_size:
        raise DeployError(DeployCode.SIZE_MISMATCH, f"{file} is {size} bytes, the manifest says "
                          f"{signed.manifest.file_size}", {"size": size, "expected": signed.manifest.file_size})
    tmp = out.with_name(out.name + ".tmp")
    data = signed.to_json().encode()
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo(MANIFEST_MEMBER)
        info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
        tar.addfile(info, io.BytesIO(data))
        info = tarfile.TarInfo(MODEL_MEMBER)
        info.size, info.mtime, info.mode = size, int(time.time()), 0o644
        with open(file, "rb") as f:
            tar.addfile(info, f)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, out)
    fsync_dir(out.parent)
    return out


def _bad_bundle(bundle: Path, why: str) -> DeployError:
    return DeployError(DeployCode.BAD_MANIFEST, f"{bundle} is not an edgegen bundle: {why}", {"bundle": str(bundle)})


def _members(tar: tarfile.TarFile, bundle: Path) -> tuple[tarfile.TarInfo, tarfile.TarInfo]:
    members = tar.getmembers()
    names = [m.name for m in members]
    if names != [MANIFEST_MEMBER, MODEL_MEMBER]:
        raise _bad_bundle(bundle, f"members {names[:5]}, expected [{MANIFEST_MEMBER!r}, {MODEL_MEMBER!r}]")
    if not all(m.isreg() for m in members):
        raise _bad_bundle(bundle, "members must be regular files")
    if members[0].size > MAX_MANIFEST_BYTES:
        raise _bad_bundle(bundle, f"{MANIFEST_MEMBER} is {members[0].size} bytes, at most {MAX_MANIFEST_BYTES}")
    return members[0], members[1]


def read_bundle_manifest(bundle: str | Path) -> SignedManifest:
    """The signed manifest in `bundle`, parsed strictly (not yet verified)."""
    bundle = Path(bundle)
    with _open(bundle) as tar:
        m_info, _ = _members(tar, bundle)
        return _manifest(tar, m_info)


def _open(bundle: Path) -> tarfile.TarFile:
    if not bundle.is_file():
        raise DeployError(DeployCode.BAD_STATE, f"bundle {str(bundle)!r} does not exist", {"bundle": str(bundle)})
    try:
        return tarfile.open(bundle, "r:")
    except (tarfile.TarError, OSError) as e:
        raise _bad_bundle(bundle, f"not a tar file ({e})") from None


def _manifest(tar: tarfile.TarFile, info: tarfile.TarInfo) -> SignedManifest:
    f = tar.extractfile(info)
    assert f is not None  # a regular member
    return SignedManifest.from_json(f.read())


def install_bundle(bundle: str | Path, state_dir: str | Path, public_key: Ed25519PublicKey, *,
                   now: float | None = None, free_bytes: int | None = None, device: str | None = None,
                   min_speed_share: float = 0.5, health: Callable[..., HealthResult] = run_health,
                   track: Callable[[str, dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Verify, preflight, copy, install, health-check and commit the bundle's model; returns the outcome:
    {"ok": True, "name", "version", "path", "fit", "health", "phases_s"}.

    Raises DeployError with the first check that failed (the pending model, if installed, is rolled back first).
    track(phase, numbers) is called as each phase starts: verifying, preflight, copying, installing, probation.
    """
    bundle = Path(bundle)
    store = DeviceStore(state_dir)
    store.on_start()  # a crashed earlier install counts, as at a service start
    phases: dict[str, float] = {}

    def phase(name: str, **numbers: Any) -> None:
        phases[name] = time.perf_counter()
        if track is not None:
            track(name, numbers)

    with _open(bundle) as tar:
        m_info, f_info = _members(tar, bundle)
        phase("verifying")
        signed = _manifest(tar, m_info)
        m = verify(signed, public_key, now=now, trusted_version=store.trusted_version(signed.manifest.name))
        phase("preflight")
        fit = require_fit(m, free_bytes=free_bytes)
        if f_info.size != m.file_size:
            raise DeployError(DeployCode.SIZE_MISMATCH, f"{MODEL_MEMBER} is {f_info.size} bytes, the manifest says "
                              f"{m.file_size}", {"size": f_info.size, "expected": m.file_size})
        phase("copying", blocks=m.n_blocks)
        path = _copy(tar, f_info, Path(state_dir), m)
    phase("installing")
    slot = store.begin_install(m, path)
    phase("probation")
    result = health(slot.path, m, min_speed_share=min_speed_share, device=device)
    if not result.ok:
        store.rollback(m.name, result.code or DeployCode.GOLDEN_FAILED.value, result.numbers)
        raise DeployError(result.code or DeployCode.GOLDEN_FAILED, f"{m.name} v{m.version} failed its health check "
                          f"({result.code}); rolled back", result.numbers)
    store.commit(m.name, result.numbers)
    phase("committed")
    names = list(phases)
    durations = {a: round(phases[b] - phases[a], 3) for a, b in zip(names, names[1:])}
    current = store.current(m.name)
    assert current is not None
    return {"ok": True, "name": m.name, "version": m.version, "path": str(current.path), "fit": fit.to_dict(),
            "health": result.to_dict(), "phases_s": durations}


def _copy(tar: tarfile.TarFile, info: tarfile.TarInfo, state_dir: Path, m: Manifest) -> Path:
    """The model member through a PartialFile: every block hash-checked, then the whole file."""
    f = tar.extractfile(info)
    assert f is not None
    part = PartialFile(state_dir, m, flush_every=256)
    try:
        for i in range(m.n_blocks):
            _, length = m.block_range(i)
            data = f.read(length)
            if not part.has(i) and not part.write_block(i, data):
                part.discard()
                raise DeployError(DeployCode.HASH_MISMATCH, f"{MODEL_MEMBER} block {i} does not hash to the "
                                  f"manifest's sha256", {"block": i})
        return part.finish()
    finally:
        part.close()
