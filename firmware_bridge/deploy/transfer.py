"""A model file being received in numbered blocks: a preallocated partial file plus a persisted bitmap of good blocks.

Crash safety rests on one ordering: a block's bytes are fsync'd in `<sha>.part` before the bitmap that claims them
is written (atomically: temporary file, fsync, rename, fsync of the folder). So after a SIGKILL or a power cut at any
point the bitmap may lag behind the bytes (those blocks are fetched again) but never claims a block that is not on
disk. The bitmap is flushed every `flush_every` blocks or `flush_s` seconds rather than per block, since each flush
costs three fsyncs; the lag only costs re-fetching.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import threading
import time
from pathlib import Path

from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.firmware_bridge.deploy.fsio import fsync_dir, remove_durably, write_atomic
from edgegen.firmware_bridge.deploy.manifest import Manifest

TRANSFERS_DIR = "transfers"
BITMAP_VERSION = 1
HASH_CHUNK = 1 << 20


class PartialFile:
    """The partial download of `manifest`'s file under `state_dir/transfers/`; reopening resumes it.

    Thread-safe: MQTT responses may arrive on the network thread while the agent asks what is missing.
    """

    def __init__(self, state_dir: str | Path, manifest: Manifest, *, flush_every: int = 16, flush_s: float = 1.0):
        self.manifest = manifest
        self.dir = Path(state_dir) / TRANSFERS_DIR
        self.dir.mkdir(parents=True, exist_ok=True)
        sha = manifest.file_sha256
        self.part_path = self.dir / f"{sha}.part"
        self.bitmap_path = self.dir / f"{sha}.bitmap"
        self.final_path = self.dir / f"{sha}.gguf"
        self.flush_every, self.flush_s = max(1, flush_every), flush_s
        self._lock = threading.Lock()
        self._have = bytearray((manifest.n_blocks + 7) // 8)
        self._unflushed = 0
        self._last_flush = time.monotonic()
        self._fd: int | None = None
        if self.final_path.exists():  # finished earlier (a crash after the rename): nothing to receive
            self._have = bytearray(b"\xff" * len(self._have))
            return
        self._open()

    # ---- opening and the bitmap --------------------------------------------------------------------------------
    def _open(self) -> None:
        m = self.manifest
        fresh = not self.part_path.exists() or self.part_path.stat().st_size != m.file_size
        self._fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o644)
        if fresh:
            self._have = bytearray(len(self._have))
            remove_durably(self.bitmap_path)  # a bitmap for a resized part file would lie
            self._preallocate()
        else:
            self._load_bitmap()

    def _preallocate(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, self.manifest.file_size)
        try:  # reserve the blocks now, so a full disk fails before the transfer, not at 99%
            os.posix_fallocate(self._fd, 0, self.manifest.file_size)
        except OSError as e:
            if e.errno == 28:  # ENOSPC
                os.close(self._fd)
                self._fd = None
                self.part_path.unlink(missing_ok=True)
                raise DeployError(DeployCode.NO_SPACE, f"no room for {self.manifest.file_size} bytes in {self.dir}",
                                  {"need_bytes": self.manifest.file_size}) from None
            # EOPNOTSUPP and friends: the filesystem cannot reserve; the sparse file still works
        os.fsync(self._fd)
        fsync_dir(self.dir)

    def _load_bitmap(self) -> None:
        m = self.manifest
        try:
            d = json.loads(self.bitmap_path.read_bytes())
            bits = base64.b64decode(d["bitmap"], validate=True)
            ok = (d.get("v") == BITMAP_VERSION and d.get("file_sha256") == m.file_sha256
                  and d.get("block_size") == m.block_size and d.get("n_blocks") == m.n_blocks
                  and len(bits) == len(self._have))
        except (OSError, ValueError, KeyError, TypeError):
            ok, bits = False, b""
        # Written atomically, so an unreadable bitmap means none was ever flushed (or someone else wrote it):
        # start from nothing rather than trust it.
        self._have = bytearray(bits) if ok else bytearray(len(self._have))

    def _flush_locked(self) -> None:
        if self._fd is None:
            return
        os.fsync(self._fd)  # the bytes first: the bitmap must never claim a block that is not on disk
        m = self.manifest
        doc = {"v": BITMAP_VERSION, "file_sha256": m.file_sha256, "block_size": m.block_size, "n_blocks": m.n_blocks,
               "bitmap": base64.b64encode(bytes(self._have)).decode()}
        write_atomic(self.bitmap_path, json.dumps(doc).encode())
        self._unflushed, self._last_flush = 0, time.monotonic()

    def flush(self) -> None:
        """Persist every block written so far (the agent calls it before it reports progress or stops)."""
        with self._lock:
            if self._unflushed:
                self._flush_locked()

    # ---- blocks ------------------------------------------------------------------------------------------------
    def _has(self, i: int) -> bool:
        return bool(self._have[i >> 3] & (1 << (i & 7)))

    def has(self, index: int) -> bool:
        with self._lock:
            return self._has(index)

    def missing(self) -> list[int]:
        """Indices of the blocks not yet received, in order."""
        with self._lock:
            return [i for i in range(self.manifest.n_blocks) if not self._has(i)]

    def progress(self) -> tuple[int, int]:
        """(blocks received, blocks in all)."""
        with self._lock:
            have = sum(bin(b).count("1") for b in self._have)
        return min(have, self.manifest.n_blocks), self.manifest.n_blocks  # a finished file sets the padding bits

    def write_block(self, index: int, data: bytes) -> bool:
        """Store block `index` if `data` hashes to the manifest's sha256 for it; False (block still missing) if not.

        Raises DeployError bad_state for an index outside the manifest's blocks or a transfer already finished.
        """
        m = self.manifest
        if not isinstance(index, int) or not 0 <= index < m.n_blocks:
            raise DeployError(DeployCode.BAD_STATE, f"block index {index!r} out of range: expected 0..{m.n_blocks - 1}",
                              {"block": index, "n_blocks": m.n_blocks})
        offset, length = m.block_range(index)
        if len(data) != length or hashlib.sha256(data).hexdigest() != m.block_sha256[index]:
            return False
        with self._lock:
            if self._fd is None:
                if self.final_path.exists():
                    return True  # finished already; a late duplicate response
                raise DeployError(DeployCode.BAD_STATE, f"transfer of {m.name} v{m.version} is closed")
            if self._has(index):
                return True
            view = memoryview(data)
            pos = offset
            while view:
                n = os.pwrite(self._fd, view, pos)
                view, pos = view[n:], pos + n
            self._have[index >> 3] |= 1 << (index & 7)
            self._unflushed += 1
            if self._unflushed >= self.flush_every or time.monotonic() - self._last_flush >= self.flush_s:
                self._flush_locked()
        return True

    def complete(self) -> bool:
        """Every block received."""
        return not self.missing()

    # ---- the end -----------------------------------------------------------------------------------------------
    def finish(self) -> Path:
        """Check the whole file's size and sha256, rename it to `<sha>.gguf` and return that path.

        Raises DeployError bad_state while blocks are missing; size_mismatch or hash_mismatch (the blocks whose
        bytes are wrong are marked missing again, so fetching `missing()` repairs the file).
        """
        m = self.manifest
        if self.final_path.exists() and self._fd is None:
            return self.final_path
        with self._lock:
            if not all(self._has(i) for i in range(m.n_blocks)):
                raise DeployError(DeployCode.BAD_STATE, f"transfer of {m.name} v{m.version} is not complete")
            self._flush_locked()
            assert self._fd is not None
            size = os.fstat(self._fd).st_size
            if size != m.file_size:
                self._have = bytearray(len(self._have))
                self._flush_locked()
                raise DeployError(DeployCode.SIZE_MISMATCH, f"partial file is {size} bytes: expected {m.file_size}",
                                  {"size": size, "expected": m.file_size})
            whole = hashlib.sha256()
            bad = []
            for i in range(m.n_blocks):
                offset, length = m.block_range(i)
                block = os.pread(self._fd, length, offset)
                whole.update(block)
                if hashlib.sha256(block).hexdigest() != m.block_sha256[i]:
                    bad.append(i)
            if bad or whole.hexdigest() != m.file_sha256:
                for i in bad:
                    self._have[i >> 3] &= ~(1 << (i & 7)) & 0xFF
                self._flush_locked()
                raise DeployError(DeployCode.HASH_MISMATCH, f"{m.name} v{m.version}: file sha256 "
                                  f"{whole.hexdigest()} expected {m.file_sha256}; {len(bad)} bad blocks",
                                  {"bad_blocks": bad[:32], "n_bad": len(bad)})
            os.close(self._fd)
            self._fd = None
            os.replace(self.part_path, self.final_path)
            fsync_dir(self.dir)
            remove_durably(self.bitmap_path)
        return self.final_path

    def close(self) -> None:
        """Flush and release the file descriptor; the transfer resumes on the next open."""
        with self._lock:
            if self._fd is not None:
                if self._unflushed:
                    self._flush_locked()
                os.close(self._fd)
                self._fd = None

    def discard(self) -> None:
        """Delete the partial file, its bitmap and any finished file (a cancelled or refused deployment)."""
        self.close()
        for p in (self.part_path, self.bitmap_path, self.final_path):
            remove_durably(p)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
