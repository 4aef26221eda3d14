"""The answered-request memory: final answers by (response topic, request id), in SQLite, bounded in count and bytes.

A redelivered or repeated request is answered from here instead of being generated twice (docs/ARCHITECTURE.md, MQTT).
With a state folder the store is a file, so the memory survives a restart: the service commits an answer before it
acks the request, and a device killed between the two answers the broker's redelivery from disk. Without one
(tests, library use) it is an in-memory database with the same bounds. Either way SQLite holds the only copy: a
hit reads the payloads back, so 1024 remembered PNG answers do not sit in the process's RAM.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
from pathlib import Path

log = logging.getLogger(__name__)
FILE_NAME = "answers.sqlite3"
DEFAULT_MAX_ANSWERS = 1024
DEFAULT_MAX_BYTES = 64 * 1024 * 1024

# What a finished request was answered with, beyond its chunks: (payload, content type) messages, final one last.
Answer = tuple[tuple[bytes, str], ...]

# One row per answer: its messages concatenated in `payload`, their content types and lengths in `parts` (JSON).
_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- insertion order: the oldest is evicted first
    topic TEXT NOT NULL,
    request_id TEXT NOT NULL,
    parts TEXT NOT NULL,
    payload BLOB NOT NULL,
    size_bytes INTEGER NOT NULL,
    UNIQUE (topic, request_id)
)"""


class AnswerStore:
    """Remembered answers, oldest evicted first beyond `max_answers` answers or `max_bytes` payload bytes.

    One connection serves every thread (paho's network thread reads, the worker writes), used under a lock.
    """

    def __init__(self, path: Path | None = None, max_answers: int = DEFAULT_MAX_ANSWERS,
                 max_bytes: int = DEFAULT_MAX_BYTES):
        if max_answers < 0 or max_bytes < 0:
            raise ValueError(f"bounds must be >= 0, got {max_answers} answers and {max_bytes} bytes")
        self.path, self.max_answers, self.max_bytes = path, max_answers, max_bytes
        self._lock = threading.Lock()
        self._db = sqlite3.connect(":memory:" if path is None else str(path), check_same_thread=False,
                                   isolation_level=None)  # autocommit; put() opens its own transaction
        if path is not None:
            # WAL: a commit is one append to the log. synchronous=FULL fsyncs it, so an acked answer survives a power
            # cut too, not only a crash of the process; in WAL mode NORMAL may lose the last commits on power loss
            # (sqlite.org/wal.html; sqlite.org/pragma.html#pragma_synchronous).
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute(_SCHEMA)
        self._count, self._bytes = self._db.execute("SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM answers"
                                                    ).fetchone()
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            self._evict()  # the bounds may have shrunk since the file was written
            self._db.execute("COMMIT")

    @classmethod
    def open(cls, state_dir: Path | None, max_answers: int = DEFAULT_MAX_ANSWERS,
             max_bytes: int = DEFAULT_MAX_BYTES) -> AnswerStore:
        """The store in `state_dir` (created 0700 if missing), or an in-memory one when `state_dir` is None."""
        if state_dir is None:
            return cls(None, max_answers, max_bytes)
        state_dir = Path(state_dir)
        if not state_dir.exists():
            state_dir.mkdir(mode=0o700, parents=True)  # answers hold users' prompts' outputs: owner only
        return cls(state_dir / FILE_NAME, max_answers, max_bytes)

    def __len__(self) -> int:
        with self._lock:
            return self._count

    @property
    def size_bytes(self) -> int:
        """Total payload bytes held."""
        with self._lock:
            return self._bytes

    def get(self, topic: str, request_id: str) -> Answer | None:
        with self._lock:
            row = self._db.execute("SELECT parts, payload FROM answers WHERE topic = ? AND request_id = ?",
                                   (topic, request_id)).fetchone()
        if row is None:
            return None
        parts, payload = json.loads(row[0]), bytes(row[1])
        out, start = [], 0
        for content_type, size in parts:
            out.append((payload[start:start + size], content_type))
            start += size
        return tuple(out)

    def put(self, topic: str, request_id: str, answer: Answer) -> None:
        """Remember `answer`, committed when this returns; one larger than `max_bytes` alone is not kept."""
        size = sum(len(payload) for payload, _ in answer)
        parts = json.dumps([[content_type, len(payload)] for payload, content_type in answer])
        blob = b"".join(payload for payload, _ in answer)
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                old = self._db.execute("DELETE FROM answers WHERE topic = ? AND request_id = ? RETURNING size_bytes",
                                       (topic, request_id)).fetchone()
                if old is not None:
                    self._count, self._bytes = self._count - 1, self._bytes - old[0]
                if size > self.max_bytes or self.max_answers == 0:
                    log.warning("answer to %s is %d bytes, over the store's bound of %d: not remembered",
                                request_id, size, self.max_bytes)
                else:
                    self._db.execute("INSERT INTO answers (topic, request_id, parts, payload, size_bytes) "
                                     "VALUES (?, ?, ?, ?, ?)", (topic, request_id, parts, blob, size))
                    self._count, self._bytes = self._count + 1, self._bytes + size
                    self._evict()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                self._count, self._bytes = self._db.execute(
                    "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0) FROM answers").fetchone()
                raise

    def _evict(self) -> None:
        """Drop the oldest answers until both bounds hold; inside the caller's transaction, under the lock."""
        while self._count > self.max_answers or self._bytes > self.max_bytes:
            seq, size = self._db.execute("SELECT seq, size_bytes FROM answers ORDER BY seq LIMIT 1").fetchone()
            self._db.execute("DELETE FROM answers WHERE seq = ?", (seq,))
            self._count, self._bytes = self._count - 1, self._bytes - size

    def close(self) -> None:
        with self._lock:
            self._db.close()
