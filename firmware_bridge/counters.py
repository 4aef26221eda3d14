"""Event counters that several threads bump and the telemetry thread reads, behind one lock."""
from __future__ import annotations

import collections
import threading


class Counters:
    """`add` from any thread; `snapshot` is a consistent copy (iterating a Counter while another thread adds a key
    raises "dictionary changed size during iteration").

    >>> c = Counters(); c.add("served"); c["served"], c["busy"]
    (1, 0)
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: collections.Counter[str] = collections.Counter()

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._counts[name] += n

    def __getitem__(self, name: str) -> int:
        with self._lock:
            return self._counts[name]

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)
