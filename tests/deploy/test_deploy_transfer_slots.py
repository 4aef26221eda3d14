"""The partial file, the device's slots and the preflight: real files in tmp_path, and children SIGKILLed at random
points while they write blocks or swap slots."""
from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from deploy_lib_helpers import FAKE_PLAN, fake_manifest

from edgegen.firmware_bridge.deploy import preflight
from edgegen.firmware_bridge.deploy.errors import DeployError
from edgegen.firmware_bridge.deploy.manifest import Manifest
from edgegen.firmware_bridge.deploy.slots import DeviceStore
from edgegen.firmware_bridge.deploy.transfer import PartialFile

MIB = 1024 * 1024


def blocks_of(data: bytes, m: Manifest) -> list[bytes]:
    return [data[i * m.block_size:(i + 1) * m.block_size] for i in range(m.n_blocks)]


# ---- the partial file --------------------------------------------------------------------------------------------
def test_blocks_in_any_order_then_finish(tmp_path):
    data = os.urandom(10_000)
    m = fake_manifest(data)
    part = PartialFile(tmp_path, m)
    assert part.part_path.stat().st_size == len(data)  # preallocated
    order = list(range(m.n_blocks))
    random.Random(0).shuffle(order)
    for i in order:
        assert part.write_block(i, blocks_of(data, m)[i])
    assert part.complete() and part.progress() == (m.n_blocks, m.n_blocks)
    path = part.finish()
    assert path.read_bytes() == data and path.name == f"{m.file_sha256}.gguf"
    assert not part.part_path.exists() and not part.bitmap_path.exists()
    assert PartialFile(tmp_path, m).finish() == path  # reopening a finished transfer has nothing to receive


def test_bad_block_stays_missing(tmp_path):
    data = os.urandom(3000)
    m = fake_manifest(data)
    part = PartialFile(tmp_path, m)
    good = blocks_of(data, m)
    assert not part.write_block(1, b"\x00" * len(good[1]))  # wrong bytes
    assert not part.write_block(2, good[2] + b"x")  # wrong length
    assert not part.write_block(0, good[1])  # another block's bytes
    assert part.missing() == [0, 1, 2]
    with pytest.raises(DeployError, match="block index 3 out of range: expected 0..2") as e:
        part.write_block(3, good[0])
    assert e.value.code == "bad_state"
    with pytest.raises(DeployError, match="is not complete"):
        part.finish()


def test_reopen_resumes_where_it_stopped(tmp_path):
    data = os.urandom(8 * 1024)
    m = fake_manifest(data)
    with PartialFile(tmp_path, m, flush_every=100, flush_s=1e9) as part:
        for i in (0, 3, 5):
            part.write_block(i, blocks_of(data, m)[i])
    # close() flushed the bitmap although flush_every was not reached
    again = PartialFile(tmp_path, m)
    assert again.missing() == [1, 2, 4, 6, 7]
    for i in again.missing():
        again.write_block(i, blocks_of(data, m)[i])
    assert again.finish().read_bytes() == data


def test_unflushed_blocks_are_fetched_again_not_trusted(tmp_path):
    data = os.urandom(4096)
    m = fake_manifest(data)
    part = PartialFile(tmp_path, m, flush_every=100, flush_s=1e9)
    part.write_block(0, blocks_of(data, m)[0])
    # no flush, no close: as after a SIGKILL
    assert PartialFile(tmp_path, m).missing() == [0, 1, 2, 3]


def test_bytes_corrupted_on_disk_are_found_at_finish_and_refetched(tmp_path):
    data = os.urandom(5000)
    m = fake_manifest(data)
    part = PartialFile(tmp_path, m)
    for i, b in enumerate(blocks_of(data, m)):
        part.write_block(i, b)
    part.close()
    with open(part.part_path, "r+b") as f:  # a bit rots between the write and the finish
        f.seek(2100)
        f.write(b"\xff")
    part = PartialFile(tmp_path, m)
    with pytest.raises(DeployError) as e:
        part.finish()
    assert e.value.code == "hash_mismatch" and e.value.details["bad_blocks"] == [2]
    assert part.missing() == [2]
    part.write_block(2, blocks_of(data, m)[2])
    assert part.finish().read_bytes() == data


def test_resized_part_file_starts_over(tmp_path):
    data = os.urandom(3000)
    m = fake_manifest(data)
    part = PartialFile(tmp_path, m)
    for i, b in enumerate(blocks_of(data, m)):
        part.write_block(i, b)
    part.close()
    os.truncate(part.part_path, 100)  # truncated by hand: the bitmap no longer describes it
    assert PartialFile(tmp_path, m).missing() == [0, 1, 2]


def test_corrupt_bitmap_is_not_trusted(tmp_path):
    data = os.urandom(3000)
    m = fake_manifest(data)
    part = PartialFile(tmp_path, m)
    part.write_block(0, blocks_of(data, m)[0])
    part.close()
    part.bitmap_path.write_text("{not json")
    assert PartialFile(tmp_path, m).missing() == [0, 1, 2]


TRANSFER_CHILD = r"""
import json, random, sys
from pathlib import Path
from edgegen.firmware_bridge.deploy.manifest import Manifest
from edgegen.firmware_bridge.deploy.transfer import PartialFile
state, manifest, source, seed = sys.argv[1:5]
m = Manifest.from_dict(json.loads(Path(manifest).read_text()))
data = Path(source).read_bytes()
rng = random.Random(int(seed))
print("ready", flush=True)
while True:
    part = PartialFile(state, m, flush_every=rng.randint(1, 3))
    for _ in range(rng.randint(1, 20)):
        i = rng.randrange(m.n_blocks)
        block = data[i * m.block_size:(i + 1) * m.block_size]
        part.write_block(i, block if rng.random() < 0.8 else bytes(len(block)))
    part.close()
"""


def _kill_at_random(args: list[str], rng: random.Random, max_delay_s: float) -> None:
    child = subprocess.Popen([sys.executable, "-c", *args], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "ready"
    time.sleep(rng.uniform(0.0, max_delay_s))
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_sigkill_while_writing_blocks_never_leaves_a_false_bitmap(tmp_path):
    rng = random.Random(1)
    data = os.urandom(96 * 1024 + 123)  # 97 blocks of 1 KiB: the child never finishes in one life
    m = fake_manifest(data)
    (tmp_path / "manifest.json").write_text(json.dumps(m.to_dict()))
    (tmp_path / "source").write_bytes(data)
    state = tmp_path / "state"
    claimed_before = 0
    for round_ in range(8):
        _kill_at_random([TRANSFER_CHILD, str(state), str(tmp_path / "manifest.json"), str(tmp_path / "source"),
                         str(round_)], rng, 0.4)
        part = PartialFile(state, m)
        claimed = [i for i in range(m.n_blocks) if part.has(i)]
        on_disk = part.part_path.read_bytes()
        for i in claimed:  # the invariant: a claimed block's bytes are on disk, whole and right
            assert hashlib.sha256(on_disk[i * 1024:(i + 1) * 1024]).hexdigest() == m.block_sha256[i], (round_, i)
        assert len(claimed) >= claimed_before  # a resumed transfer never forgets a flushed block
        claimed_before = len(claimed)
        part.close()
    assert claimed_before > 0
    part = PartialFile(state, m)
    for i in part.missing():
        part.write_block(i, blocks_of(data, m)[i])
    assert part.finish().read_bytes() == data


# ---- slots -------------------------------------------------------------------------------------------------------
def staged(tmp_path: Path, name: str, version: int, content: bytes | None = None) -> tuple[Manifest, Path]:
    data = content or f"{name} v{version} ".encode() * 100
    m = fake_manifest(data, name=name, version=version)
    src = tmp_path / "incoming" / f"{name}-{version}"
    src.parent.mkdir(exist_ok=True)
    src.write_bytes(data)
    return m, src


def test_install_commit_keeps_previous(tmp_path):
    store = DeviceStore(tmp_path / "s")
    assert store.current("m") is None and store.models() == {}
    m1, f1 = staged(tmp_path, "m", 1)
    p = store.begin_install(m1, f1)
    assert p.path.is_file() and not f1.exists() and store.current("m") is None
    assert store.commit("m", {"golden": "ok"}).version == 1
    m2, f2 = staged(tmp_path, "m", 2)
    store.begin_install(m2, f2)
    assert store.current("m").version == 1 and store.pending("m").version == 2  # old serves meanwhile
    store.commit("m")
    reopened = DeviceStore(tmp_path / "s")
    info = reopened.models()["m"]
    assert info["current"]["version"] == 2 and info["previous"]["version"] == 1 and info["pending"] is None
    assert info["trusted_version"] == 2 and info["last_event"]["event"] == "committed"
    m3, f3 = staged(tmp_path, "m", 3)
    reopened.begin_install(m3, f3)
    reopened.commit("m")
    files = sorted(p.name for p in (tmp_path / "s" / "models" / "m").iterdir())
    assert files == [f"v2-{m2.file_sha256[:16]}.gguf", f"v3-{m3.file_sha256[:16]}.gguf"]  # v1 dropped


def test_rollback_of_pending_and_of_committed(tmp_path):
    store = DeviceStore(tmp_path / "s")
    for v in (1, 2):
        store.begin_install(*staged(tmp_path, "m", v))
        store.commit("m")
    m3, f3 = staged(tmp_path, "m", 3)
    pending = store.begin_install(m3, f3)
    assert store.rollback("m", "golden_failed", {"golden_first_difference": 0}).version == 2
    assert not pending.path.exists() and store.pending("m") is None
    assert store.models()["m"]["last_event"]["reason"] == "golden_failed"
    assert store.rollback("m", "operator").version == 1  # back from the committed v2 to the previous v1
    assert store.trusted_version("m") == 2  # v2 stays distrusted as a target: v3+ only
    with pytest.raises(DeployError, match="no pending or previous model") as e:
        store.rollback("m", "again")
    assert e.value.code == "bad_state"


def test_first_install_rolled_back_leaves_no_name(tmp_path):
    store = DeviceStore(tmp_path / "s")
    store.begin_install(*staged(tmp_path, "m", 1))
    assert store.rollback("m", "load_failed") is None
    assert store.models() == {} and list((tmp_path / "s" / "models" / "m").iterdir()) == []


def test_downgrade_and_missing_file_refused(tmp_path):
    store = DeviceStore(tmp_path / "s")
    store.begin_install(*staged(tmp_path, "m", 5))
    store.commit("m")
    with pytest.raises(DeployError) as e:
        store.begin_install(*staged(tmp_path, "m", 5))
    assert e.value.code == "downgrade" and e.value.details == {"version": 5, "trusted_version": 5}
    with pytest.raises(DeployError, match="does not exist"):
        store.begin_install(staged(tmp_path, "m", 6)[0], tmp_path / "nope")
    with pytest.raises(DeployError, match="no pending model to commit"):
        store.commit("m")


def test_pending_marker_rolls_back_after_two_crashed_starts(tmp_path):
    store = DeviceStore(tmp_path / "s")
    store.begin_install(*staged(tmp_path, "m", 1))
    store.commit("m")
    store.begin_install(*staged(tmp_path, "m", 2))
    # the service dies in probation, twice
    assert DeviceStore(tmp_path / "s").on_start() == [{"name": "m", "version": 2, "action": "retry", "crashes": 1}]
    after = DeviceStore(tmp_path / "s")
    assert after.on_start() == [{"name": "m", "version": 2, "action": "rolled_back", "crashes": 2}]
    assert after.current("m").version == 1 and after.pending("m") is None
    assert after.models()["m"]["last_event"]["reason"] == "crashed_in_probation"
    assert DeviceStore(tmp_path / "s").on_start() == []


def test_on_start_deletes_orphans_and_refuses_garbage_state(tmp_path):
    store = DeviceStore(tmp_path / "s")
    store.begin_install(*staged(tmp_path, "m", 1))
    store.commit("m")
    orphan = tmp_path / "s" / "models" / "m" / "v9-0000.gguf"  # placed, then a crash before the state named it
    orphan.write_bytes(b"x")
    store.on_start()
    assert not orphan.exists() and store.current("m").path.exists()
    (tmp_path / "s" / "state.json").write_text("{}")
    with pytest.raises(DeployError, match="state.json is unreadable") as e:
        DeviceStore(tmp_path / "s")
    assert e.value.code == "bad_state"


SLOTS_CHILD = r"""
import hashlib, json, random, sys, time
from pathlib import Path
from edgegen.firmware_bridge.deploy.manifest import Manifest
from edgegen.firmware_bridge.deploy.slots import DeviceStore
state, seed = sys.argv[1], int(sys.argv[2])
rng = random.Random(seed)
store = DeviceStore(state)
store.on_start()
print("ready", flush=True)
incoming = Path(state) / "incoming"
incoming.mkdir(exist_ok=True)
while True:
    for name in ("a", "b"):
        v = (store.trusted_version(name) or 0) + rng.randint(1, 3)
        data = f"{name} {v} {rng.random()}".encode() * rng.randint(50, 400)
        now = int(time.time())
        m = Manifest.from_dict({"v": 1, "name": name, "version": v, "kind": "text",
            "file_sha256": hashlib.sha256(data).hexdigest(), "file_size": len(data), "block_size": 1 << 17,
            "block_sha256": [hashlib.sha256(data).hexdigest()], "architecture": "qwen2", "tensor_types": ["F32"],
            "created": now, "expires": now + 60, "golden": {"prompt": "a", "max_tokens": 1, "token_ids": [1]},
            "plan": json.loads(sys.argv[3]), "baseline_decode_tok_s": None, "key_id": "0" * 16})
        src = incoming / f"{name}-{v}"
        src.write_bytes(data)
        store.begin_install(m, src)
        r = rng.random()
        if r < 0.6:
            store.commit(name)
        elif r < 0.9:
            store.rollback(name, "golden_failed")
        elif store.previous(name) is not None and store.pending(name) is None:
            store.rollback(name, "operator")
"""


def _check_store(state: Path, committed: set[str]) -> None:
    """Every slot's file is on disk with its sha256; a name once committed always has a current model."""
    store = DeviceStore(state)
    for name, info in store.models().items():
        assert info["current"] or info["pending"], name
        for key in ("current", "previous", "pending"):
            if info[key]:
                path = Path(info[key]["path"])
                assert hashlib.sha256(path.read_bytes()).hexdigest() == info[key]["file_sha256"], (name, key)
        if info["current"]:
            committed.add(name)
    for name in committed:
        assert store.current(name) is not None, name


def test_sigkill_during_install_commit_rollback_never_leaves_neither(tmp_path):
    rng = random.Random(2)
    state = tmp_path / "s"
    committed: set[str] = set()
    for round_ in range(10):
        _kill_at_random([SLOTS_CHILD, str(state), str(round_), json.dumps(FAKE_PLAN)], rng, 0.5)
        _check_store(state, committed)
        DeviceStore(state).on_start()
        _check_store(state, committed)
    assert committed == {"a", "b"}


# ---- preflight ---------------------------------------------------------------------------------------------------
def test_fit_from_the_manifest_plan_and_free_memory():
    m = fake_manifest(b"q" * 4096)
    need = preflight.need_from_plan(m.plan, "CPU")
    first, cached = preflight.RUNTIME_OVERHEAD_BYTES["CPU"]
    resident = 100_000 + 30_000 + 200_000  # weights, KV cache, activations (FAKE_PLAN); the transient is 10_000
    assert need == max(first + resident + 10_000, cached + resident)  # the larger of the planner's two starts
    fit = preflight.check_fit(m, free_bytes=10**12)
    assert fit.ok and fit.need_bytes == need + preflight.HEADROOM_BYTES and fit.free_bytes == 10**12
    assert preflight.check_fit(m).free_bytes > 0  # measured here


def test_forced_tiny_free_memory_refuses_with_the_numbers():
    m = fake_manifest(b"q" * 4096)
    fit = preflight.check_fit(m, free_bytes=64 * MIB)
    assert not fit.ok and fit.free_bytes == 64 * MIB and fit.need_bytes > 64 * MIB
    assert "but only 64.0 MiB free" in fit.detail and "KV cache 0.0 for 64 tokens" in fit.detail
    with pytest.raises(DeployError) as e:
        preflight.require_fit(m, free_bytes=64 * MIB)
    assert e.value.code == "wont_fit"
    assert e.value.details == {"ok": False, "need_bytes": fit.need_bytes, "free_bytes": 64 * MIB, "detail": fit.detail}


def test_fit_uses_the_device_backend_overhead():
    m = fake_manifest(b"q" * 4096)
    cpu, cuda = (preflight.check_fit(m, free_bytes=10**12, backend=b).need_bytes for b in ("CPU", "CUDA"))
    assert cuda - cpu == preflight.need_from_plan(m.plan, "CUDA") - preflight.need_from_plan(m.plan, "CPU") > 0
    assert preflight.need_from_plan(m.plan, "CUDA") >= preflight.RUNTIME_OVERHEAD_BYTES["CUDA"][0]


def test_cgroup_limit_narrows_free_memory(tmp_path, monkeypatch):
    (tmp_path / "memory.max").write_text("300000000\n")
    (tmp_path / "memory.current").write_text("100000000\n")
    monkeypatch.setattr(preflight, "CGROUP_V2", tmp_path)
    assert preflight.cgroup_free_bytes() == 200_000_000
    assert preflight.free_memory_bytes() <= 200_000_000
    (tmp_path / "memory.max").write_text("max\n")
    monkeypatch.setattr(preflight, "CGROUP_V1", tmp_path / "none")
    assert preflight.cgroup_free_bytes() is None


def test_plan_numbers_of_a_real_file(tiny_models):
    plan = preflight.plan_numbers(tiny_models[0], "text", context=32)
    assert plan["context"] == 32 and plan["backend"] == "CPU"
    assert plan["total_bytes"] == preflight.need_from_plan(plan, "CPU")  # the planner's arithmetic, restated once
