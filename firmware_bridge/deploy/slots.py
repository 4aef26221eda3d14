"""The device's model slots: per model name a `current`, a `previous` and a `pending` model, and the last version
it trusted, kept in one `state.json` under the state folder.

Every change writes the new state atomically (fsio.write_atomic) before it deletes a file the old state referenced,
and puts a file in place (fsync'd) before the state that references it: a crash at any point leaves a state whose
files are on disk, so a name always has its old model or its new one. Files no state references (left by a crash
between the two steps) are deleted by `on_start`. A pending model that never committed is a crash marker: each start
that finds it counts one, and after `max_crashes` the store rolls it back (a board that never marks the new model
good must not keep retrying it, nor silently keep it).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.firmware_bridge.deploy.fsio import fsync_dir, remove_durably, write_atomic
from edgegen.firmware_bridge.deploy.manifest import Manifest

log = logging.getLogger(__name__)

STATE_VERSION = 1
STATE_FILE = "state.json"
MODELS_DIR = "models"
MAX_CRASHES = 2  # starts that find the same pending model before it is rolled back
SLOT_NAMES = ("current", "previous", "pending")


@dataclass(frozen=True)
class Slot:
    """One installed model file; `path` is absolute, `manifest` the Manifest.to_dict it was installed from."""

    name: str
    version: int
    path: Path
    file_sha256: str
    kind: str
    installed: int  # unix s
    manifest: dict | None = None
    crashes: int = 0  # starts that found this slot still pending

    def to_dict(self, root: Path) -> dict[str, Any]:
        return {"version": self.version, "file": str(self.path.relative_to(root)), "file_sha256": self.file_sha256,
                "kind": self.kind, "installed": self.installed, "manifest": self.manifest, "crashes": self.crashes}

    @classmethod
    def from_dict(cls, name: str, d: dict[str, Any], root: Path) -> Slot:
        return cls(name=name, version=int(d["version"]), path=root / d["file"], file_sha256=str(d["file_sha256"]),
                   kind=str(d["kind"]), installed=int(d["installed"]), manifest=d.get("manifest"),
                   crashes=int(d.get("crashes", 0)))

    def info(self) -> dict[str, Any]:
        """What status messages and `models()` show of a slot."""
        return {"version": self.version, "path": str(self.path), "file_sha256": self.file_sha256, "kind": self.kind,
                "installed": self.installed}


class DeviceStore:
    """The slots of every model name under `state_dir` (one process owns a state folder at a time)."""

    def __init__(self, state_dir: str | Path, *, max_crashes: int = MAX_CRASHES):
        self.root = Path(state_dir)
        self.models_dir = self.root / MODELS_DIR
        self.models_dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.root / STATE_FILE
        self.max_crashes = max_crashes
        self._lock = threading.RLock()
        self._state = self._load()

    # ---- persistence -------------------------------------------------------------------------------------------
    def _load(self) -> dict[str, Any]:
        if not self.state_path.exists():
            return {"v": STATE_VERSION, "models": {}}
        try:
            state = json.loads(self.state_path.read_bytes())
            if state.get("v") != STATE_VERSION or not isinstance(state.get("models"), dict):
                raise ValueError(f"v={state.get('v')!r}, expected {STATE_VERSION}")
            for name, entry in state["models"].items():  # parse every slot now, not at the first use
                for key in SLOT_NAMES:
                    if entry.get(key) is not None:
                        Slot.from_dict(name, entry[key], self.root)
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise DeployError(DeployCode.BAD_STATE, f"{self.state_path} is unreadable: {e}",
                              {"path": str(self.state_path)}) from None
        return state

    def _save(self) -> None:
        write_atomic(self.state_path, json.dumps(self._state, indent=1, sort_keys=True).encode())

    def _entry(self, name: str) -> dict[str, Any]:
        return self._state["models"].setdefault(name, {"current": None, "previous": None, "pending": None,
                                                       "trusted_version": None, "last_event": None})

    def _slot(self, name: str, key: str) -> Slot | None:
        entry = self._state["models"].get(name)
        if entry is None or entry.get(key) is None:
            return None
        return Slot.from_dict(name, entry[key], self.root)

    def _referenced(self) -> set[Path]:
        return {self.root / e[k]["file"] for e in self._state["models"].values() for k in SLOT_NAMES if e.get(k)}

    def _delete_unreferenced(self, *paths: Path | None) -> None:
        keep = self._referenced()
        for p in paths:
            if p is not None and p not in keep:
                remove_durably(p)

    # ---- queries -----------------------------------------------------------------------------------------------
    def current(self, name: str) -> Slot | None:
        """The committed model serving under `name`, or None."""
        with self._lock:
            return self._slot(name, "current")

    def previous(self, name: str) -> Slot | None:
        with self._lock:
            return self._slot(name, "previous")

    def pending(self, name: str) -> Slot | None:
        """The installed model waiting for its health check and commit, or None."""
        with self._lock:
            return self._slot(name, "pending")

    def trusted_version(self, name: str) -> int | None:
        """The highest version ever committed under `name` (manifest.verify refuses anything not above it)."""
        with self._lock:
            entry = self._state["models"].get(name)
            return None if entry is None else entry.get("trusted_version")

    def models(self) -> dict[str, dict[str, Any]]:
        """Every name: {"current", "previous", "pending" (each Slot.info() or None), "trusted_version",
        "last_event"}."""
        with self._lock:
            out = {}
            for name, entry in sorted(self._state["models"].items()):
                info: dict[str, Any] = {k: (s.info() if (s := self._slot(name, k)) else None) for k in SLOT_NAMES}
                info["trusted_version"] = entry.get("trusted_version")
                info["last_event"] = entry.get("last_event")
                out[name] = info
            return out

    # ---- changes -----------------------------------------------------------------------------------------------
    def begin_install(self, manifest: Manifest, file: str | Path) -> Slot:
        """Move (or copy, across filesystems) the verified `file` into the store as `manifest.name`'s pending slot.

        The current model keeps serving; a pending model left from an earlier attempt is replaced. Raises
        DeployError downgrade for a version not above the trusted one, bad_state for a missing file.
        """
        src = Path(file)
        if not src.is_file():
            raise DeployError(DeployCode.BAD_STATE, f"model file {str(src)!r} does not exist", {"path": str(src)})
        with self._lock:
            trusted = self.trusted_version(manifest.name)
            if trusted is not None and manifest.version <= trusted:
                raise DeployError(DeployCode.DOWNGRADE, f"{manifest.name} v{manifest.version} is not newer than "
                                  f"v{trusted}", {"version": manifest.version, "trusted_version": trusted})
            folder = self.models_dir / manifest.name
            folder.mkdir(parents=True, exist_ok=True)
            dest = folder / f"v{manifest.version}-{manifest.file_sha256[:16]}.gguf"
            if src.resolve() != dest.resolve():
                self._place(src, dest)
            entry = self._entry(manifest.name)
            old_pending = self._slot(manifest.name, "pending")
            # The same model installed again (a resumed deployment) keeps its crash count: it is the same suspect.
            same = old_pending is not None and (old_pending.version, old_pending.file_sha256) == \
                (manifest.version, manifest.file_sha256)
            slot = Slot(manifest.name, manifest.version, dest, manifest.file_sha256, manifest.kind, int(time.time()),
                        manifest.to_dict(), old_pending.crashes if same and old_pending else 0)
            entry["pending"] = slot.to_dict(self.root)
            entry["last_event"] = {"event": "pending", "version": manifest.version, "ts": int(time.time())}
            self._save()
            self._delete_unreferenced(old_pending.path if old_pending else None)
            return slot

    def _place(self, src: Path, dest: Path) -> None:
        """Put `src` at `dest` durably: a rename on the same filesystem, else a copy to a temporary and a rename."""
        try:
            os.replace(src, dest)
        except OSError as e:
            if e.errno != 18:  # EXDEV: across filesystems (a bundle extracted to /tmp)
                raise
            tmp = dest.with_name(dest.name + ".tmp")
            with open(src, "rb") as fin, open(tmp, "wb") as fout:
                shutil.copyfileobj(fin, fout, 1 << 20)
                fout.flush()
                os.fsync(fout.fileno())
            os.replace(tmp, dest)
            src.unlink()
        else:
            fsync_dir(src.parent)
            fd = os.open(dest, os.O_RDONLY)  # a rename does not flush the data: make sure it is on disk
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(dest.parent)

    def commit(self, name: str, numbers: dict[str, Any] | None = None) -> Slot:
        """Make the pending model current (the old current becomes previous) and trust its version.

        `numbers`: the health check's, kept in `last_event`. Raises DeployError bad_state when nothing is pending.
        """
        with self._lock:
            pending = self._slot(name, "pending")
            if pending is None:
                raise DeployError(DeployCode.BAD_STATE, f"{name} has no pending model to commit", {"name": name})
            entry = self._entry(name)
            dropped = self._slot(name, "previous")
            entry["previous"] = entry["current"]
            entry["current"] = dataclasses.replace(pending, crashes=0).to_dict(self.root)
            entry["pending"] = None
            entry["trusted_version"] = max(pending.version, entry.get("trusted_version") or 0)
            entry["last_event"] = {"event": "committed", "version": pending.version, "ts": int(time.time()),
                                   "numbers": numbers or {}}
            self._save()
            self._delete_unreferenced(dropped.path if dropped else None)
            return self._slot(name, "current")  # type: ignore[return-value]

    def rollback(self, name: str, reason: str, numbers: dict[str, Any] | None = None) -> Slot | None:
        """Drop the pending model; with none pending, go back from current to previous. Returns what now serves.

        `reason`: a DeployCode value, kept in `last_event`. Raises DeployError bad_state when there is nothing to
        roll back to (no pending model and no previous one).
        """
        with self._lock:
            pending, current = self._slot(name, "pending"), self._slot(name, "current")
            entry = self._state["models"].get(name)
            if entry is None or (pending is None and self._slot(name, "previous") is None):
                raise DeployError(DeployCode.BAD_STATE, f"{name} has no pending or previous model to roll back to",
                                  {"name": name})
            if pending is not None:
                entry["pending"], dropped, version = None, pending.path, pending.version
            else:  # a committed model found bad later: the previous one serves again; trust stays where it was
                assert current is not None
                entry["current"], entry["previous"] = entry["previous"], None
                dropped, version = current.path, current.version
            entry["last_event"] = {"event": "rolled_back", "version": version, "reason": str(reason),
                                   "ts": int(time.time()), "numbers": numbers or {}}
            if entry["current"] is None and entry["previous"] is None and entry["trusted_version"] is None:
                del self._state["models"][name]  # a first install that failed: the name was never served
            self._save()
            self._delete_unreferenced(dropped)
            return self._slot(name, "current")

    def on_start(self) -> list[dict[str, Any]]:
        """Call once at each service start: counts a crash for every pending model, rolls back those that reached
        `max_crashes` (reason crashed_in_probation), deletes unreferenced files. Returns what it did, per name:
        {"name", "version", "action": "retry" | "rolled_back", "crashes"}."""
        actions = []
        with self._lock:
            for name in sorted(self._state["models"]):
                pending = self._slot(name, "pending")
                if pending is None:
                    continue
                crashes = pending.crashes + 1
                if crashes >= self.max_crashes or not pending.path.is_file():
                    self._state["models"][name]["pending"]["crashes"] = crashes
                    self.rollback(name, DeployCode.CRASHED_IN_PROBATION, {"crashes": crashes})
                    actions.append({"name": name, "version": pending.version, "action": "rolled_back",
                                    "crashes": crashes})
                else:
                    self._state["models"][name]["pending"]["crashes"] = crashes
                    self._save()
                    actions.append({"name": name, "version": pending.version, "action": "retry", "crashes": crashes})
            self._clean_orphans()
        for a in actions:
            log.warning("pending %s v%s after %d crashed start(s): %s", a["name"], a["version"], a["crashes"],
                        a["action"])
        return actions

    def _clean_orphans(self) -> None:
        keep = self._referenced()
        for p in self.models_dir.glob("*/*"):
            if p.is_file() and p not in keep:
                remove_durably(p)
        for d in self.models_dir.iterdir():
            if d.is_dir() and not any(d.iterdir()):
                d.rmdir()
        (self.root / (STATE_FILE + ".tmp")).unlink(missing_ok=True)
