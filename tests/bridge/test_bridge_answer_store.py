"""The answer store: byte-exact round trips, bounds in answers and in bytes, a file that survives reopening, no copy
of the answers in Python's memory, and `edgegen serve`'s default state folder."""
from __future__ import annotations

import sqlite3
import tracemalloc
from pathlib import Path

import pytest

from edgegen.firmware_bridge.answer_store import FILE_NAME, AnswerStore
from edgegen.firmware_bridge.state_dir import default_state_dir

TOPIC = "edgegen/v1/clients/c1/responses"
PNG, JSON = "image/png", "application/json"


def answer(n_bytes: int, tag: int = 0) -> tuple[tuple[bytes, str], ...]:
    return ((bytes([tag % 256]) * n_bytes, PNG), (b'{"type":"final","id":"%d"}' % tag, JSON))


def test_an_answer_comes_back_byte_for_byte_with_its_content_types() -> None:
    store = AnswerStore(None)
    parts = ((b"\x89PNG\r\n\x1a\n\x00\xff", PNG), (b'{"type":"final","text":"\xc3\xa9"}', JSON))
    store.put(TOPIC, "r-1", parts)
    assert store.get(TOPIC, "r-1") == parts
    assert store.get(TOPIC, "r-2") is None and store.get("other/topic", "r-1") is None  # keyed by both
    store.put(TOPIC, "empty", ())
    assert store.get(TOPIC, "empty") == ()


def test_the_byte_bound_evicts_the_oldest_answers_first() -> None:
    store = AnswerStore(None, max_answers=100, max_bytes=1000)
    sizes = [sum(len(p) for p, _ in answer(300, i)) for i in range(5)]
    for i in range(5):
        store.put(TOPIC, f"r-{i}", answer(300, i))
        assert store.size_bytes <= 1000
    kept = [i for i in range(5) if store.get(TOPIC, f"r-{i}") is not None]
    assert kept == [2, 3, 4] and store.size_bytes == sum(sizes[2:]) and len(store) == 3


def test_the_count_bound_still_holds() -> None:
    store = AnswerStore(None, max_answers=2, max_bytes=10**9)
    for i in range(4):
        store.put(TOPIC, f"r-{i}", answer(10, i))
    assert len(store) == 2 and store.get(TOPIC, "r-1") is None and store.get(TOPIC, "r-3") is not None


def test_an_answer_larger_than_the_bound_is_not_kept_and_evicts_nothing() -> None:
    store = AnswerStore(None, max_bytes=1000)
    store.put(TOPIC, "small", answer(100))
    store.put(TOPIC, "huge", answer(5000))
    assert store.get(TOPIC, "huge") is None and store.get(TOPIC, "small") is not None


def test_storing_a_key_again_replaces_it_and_its_size() -> None:
    store = AnswerStore(None, max_bytes=10_000)
    store.put(TOPIC, "r", answer(4000, 1))
    store.put(TOPIC, "r", answer(100, 2))
    assert len(store) == 1 and store.size_bytes == sum(len(p) for p, _ in answer(100, 2))
    assert store.get(TOPIC, "r") == answer(100, 2)


def test_answers_survive_closing_and_reopening_the_state_folder(tmp_path: Path) -> None:
    state = tmp_path / "a" / "state"
    store = AnswerStore.open(state, max_bytes=10_000)
    store.put(TOPIC, "r-1", answer(50, 7))
    store.close()
    assert state.stat().st_mode & 0o777 == 0o700 and (state / FILE_NAME).is_file()
    with sqlite3.connect(state / FILE_NAME) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    again = AnswerStore.open(state, max_bytes=10_000)
    assert again.get(TOPIC, "r-1") == answer(50, 7) and len(again) == 1
    again.close()
    smaller = AnswerStore.open(state, max_bytes=10)  # a smaller bound applies to what the file already holds
    assert len(smaller) == 0 and smaller.size_bytes == 0


def test_remembered_answers_are_not_held_in_python_memory(tmp_path: Path) -> None:
    """1024 PNG answers of 512 KiB would be 512 MiB in an OrderedDict; the store reads them back from SQLite."""
    store = AnswerStore.open(tmp_path / "state", max_bytes=64 * 1024 * 1024)
    png = bytes(range(256)) * 2048  # 512 KiB
    tracemalloc.start()
    try:
        for i in range(40):  # 20 MiB
            store.put(TOPIC, f"r-{i}", ((png, PNG), (b'{"type":"final"}', JSON)))
        held, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert held < 2 * 1024 * 1024, held
    assert store.get(TOPIC, "r-39")[0][0] == png and store.size_bytes >= 40 * len(png)


def test_bounds_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="bounds must be >= 0"):
        AnswerStore(None, max_bytes=-1)


def test_serve_keeps_state_under_xdg_state_home_or_local_state(monkeypatch: pytest.MonkeyPatch,
                                                                tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
    assert default_state_dir("dev7") == tmp_path / "xdg" / "edgegen" / "dev7"
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    for unset in ("", "relative/path"):  # the XDG spec: a relative path is invalid and ignored
        monkeypatch.setenv("XDG_STATE_HOME", unset)
        assert default_state_dir("dev7") == tmp_path / "home" / ".local" / "state" / "edgegen" / "dev7"
