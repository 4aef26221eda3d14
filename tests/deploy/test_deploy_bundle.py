"""The health check on the real runtime, and the offline bundle: `install_bundle` and `edgegen install` refuse each
bad deployment with its reason and commit a good one."""
from __future__ import annotations

import dataclasses
import io
import json
import stat
import subprocess
import sys
import tarfile
import time

import pytest
from deploy_lib_helpers import GOLDEN_PROMPT

from edgegen.cli import main
from edgegen.firmware_bridge.deploy import health, keys
from edgegen.firmware_bridge.deploy.bundle import MODEL_MEMBER, install_bundle, read_bundle_manifest, write_bundle
from edgegen.firmware_bridge.deploy.errors import DeployError
from edgegen.firmware_bridge.deploy.health import HealthResult
from edgegen.firmware_bridge.deploy.manifest import build_manifest, sign
from edgegen.firmware_bridge.deploy.slots import DeviceStore


@pytest.fixture(scope="session")
def golden(tiny_models) -> dict:
    """Greedy ids of the good tiny model, computed with the runtime (TextGenerator) as `edgegen deploy` does."""
    return health.golden_for(tiny_models[0], "text", GOLDEN_PROMPT, max_tokens=8)


def make_bundle(tmp_path, keypair, model, golden, *, version=1, name="tiny", file=None, **kw):
    m = build_manifest(model, name, version, golden=golden, block_size=4096, **kw)
    signed = sign(m, keys.load_private_key(keypair[0]))
    return write_bundle(signed, file or model, tmp_path / f"{name}-v{version}.bundle")


def pub(keypair):
    return keys.load_public_key(keypair[1])


# ---- health on the real runtime ----------------------------------------------------------------------------------
def test_golden_passes_on_its_model_and_fails_on_other_weights(tiny_models, golden, keypair):
    good, other = tiny_models
    assert golden["prompt"] == GOLDEN_PROMPT and len(golden["token_ids"]) >= 1
    assert health.golden_for(other, "text", GOLDEN_PROMPT, max_tokens=8)["token_ids"] != golden["token_ids"]
    m = build_manifest(good, "tiny", 1, golden=golden, block_size=4096)
    ok = health.run_health(good, m)
    assert ok.ok and ok.code is None and ok.numbers["golden_got"] == golden["token_ids"]
    assert ok.numbers["planned_peak_bytes"] > 0
    bad = health.run_health(other, m)  # the same manifest, a file with other weights
    assert not bad.ok and bad.code == "golden_failed"
    assert bad.numbers["golden_expected"] == golden["token_ids"] and "golden_first_difference" in bad.numbers


def test_speed_below_the_baseline_share_is_too_slow(tiny_models, golden):
    good = tiny_models[0]
    fast = build_manifest(good, "tiny", 1, golden=golden, block_size=4096, baseline=1e6)  # no board does 1M tok/s
    r = health.run_health(good, fast, min_speed_share=0.5)
    assert r.code == "too_slow" and r.numbers["speed_share"] < 0.5 and r.numbers["baseline_decode_tok_s"] == 1e6
    slow = dataclasses.replace(fast, baseline_decode_tok_s=1e-3)
    assert health.run_health(good, slow).ok


def test_memory_over_plan_and_load_failure(tiny_models, golden, tmp_path):
    good = tiny_models[0]
    m = build_manifest(good, "tiny", 1, golden=golden, block_size=4096)
    tiny_plan = dataclasses.replace(m, plan={**m.plan, "weights_bytes": 0, "kv_cache_bytes": 0,
                                             "activations_bytes": 0, "load_transient_bytes": 0})
    # In a fresh process: here, a load can reuse memory earlier tests freed, and its peak grows by nothing.
    script = (
        "import sys, json\n"
        "from edgegen.device.planner import RUNTIME_OVERHEAD_BYTES\n"
        "from edgegen.firmware_bridge.deploy import health\n"
        "from edgegen.firmware_bridge.deploy.manifest import Manifest\n"
        "RUNTIME_OVERHEAD_BYTES['TINY'] = (1, 1)  # a backend whose runtime costs nothing\n"
        "m = Manifest.from_dict(json.loads(sys.stdin.read()))\n"
        "r = health.run_health(sys.argv[1], m, backend='TINY')  # a 1-byte plan: loading any model exceeds it\n"
        "keys = ('peak_rss_bytes', 'planned_peak_bytes')\n"
        "print(json.dumps({'code': r.code, **{k: r.numbers.get(k) for k in keys}}))\n")
    proc = subprocess.run([sys.executable, "-c", script, str(good)], input=json.dumps(tiny_plan.to_dict()),
                          capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["code"] == "memory_over_plan" and r["peak_rss_bytes"] > r["planned_peak_bytes"]
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(good.read_bytes()[:2000])
    r = health.run_health(broken, m)
    assert r.code == "load_failed" and "error" in r.numbers


@pytest.mark.slow
def test_image_golden_with_the_shipped_unet():
    from edgegen.firmware_bridge.deploy.manifest import Manifest
    from edgegen.runtime.diffusion import DEFAULT_UNET

    g = health.golden_for(DEFAULT_UNET, "image", "seven", steps=4)
    assert g == {"prompt": "seven", "seed": 0, "steps": 4, "verdict": g["verdict"]} and 0 <= g["verdict"] <= 9
    m = build_manifest(DEFAULT_UNET, "digits", 1, golden=g)
    assert isinstance(m, Manifest) and m.kind == "image" and m.plan["kv_cache_bytes"] == 0
    assert health.run_health(DEFAULT_UNET, m).ok
    wrong = dataclasses.replace(m, golden={**g, "verdict": (g["verdict"] + 1) % 10})
    r = health.run_health(DEFAULT_UNET, wrong)
    assert r.code == "golden_failed" and r.numbers["verdict_got"] == g["verdict"]


# ---- the bundle --------------------------------------------------------------------------------------------------
def test_install_bundle_commits_and_keeps_the_previous(tmp_path, keypair, tiny_models, golden):
    good = tiny_models[0]
    phases = []
    state = tmp_path / "state"
    out = install_bundle(make_bundle(tmp_path, keypair, good, golden), state, pub(keypair),
                         track=lambda p, _: phases.append(p))
    assert out["ok"] and out["version"] == 1 and phases == ["verifying", "preflight", "copying", "installing",
                                                             "probation", "committed"]
    store = DeviceStore(state)
    assert store.current("tiny").path.read_bytes() == good.read_bytes() and store.trusted_version("tiny") == 1
    install_bundle(make_bundle(tmp_path, keypair, good, golden, version=2), state, pub(keypair))
    info = DeviceStore(state).models()["tiny"]
    assert info["current"]["version"] == 2 and info["previous"]["version"] == 1
    assert list((state / "transfers").iterdir()) == []  # the partial file became the model


def _refusal(bundle, state, key, **kw) -> DeployError:
    with pytest.raises(DeployError) as e:
        install_bundle(bundle, state, key, **kw)
    return e.value


def test_each_bad_bundle_is_refused_with_its_reason(tmp_path, keypair, other_keypair, tiny_models, golden):
    good, other = tiny_models
    state = tmp_path / "state"
    install_bundle(make_bundle(tmp_path, keypair, good, golden, version=2), state, pub(keypair))
    v3 = make_bundle(tmp_path, keypair, good, golden, version=3)
    assert _refusal(make_bundle(tmp_path, other_keypair, good, golden, version=4, name="x"), state,
                    pub(keypair)).code == "untrusted_key"
    e = _refusal(make_bundle(tmp_path, keypair, good, golden, version=2, name="tiny"), state, pub(keypair))
    assert e.code == "downgrade" and e.details == {"version": 2, "trusted_version": 2}
    e = _refusal(v3, state, pub(keypair), now=time.time() + 8 * 24 * 3600)
    assert e.code == "expired"
    e = _refusal(v3, state, pub(keypair), free_bytes=1024)
    assert e.code == "wont_fit" and e.details["free_bytes"] == 1024 and e.details["need_bytes"] > 1024
    # a file with other weights, signed as what it is: it arrives intact and fails its golden check
    e = _refusal(make_bundle(tmp_path, keypair, other, golden, version=5), state, pub(keypair))
    assert e.code == "golden_failed" and e.details["golden_expected"] == golden["token_ids"]
    store = DeviceStore(state)
    assert store.current("tiny").version == 2 and store.pending("tiny") is None  # rolled back to the old model
    assert store.models()["tiny"]["last_event"]["reason"] == "golden_failed"
    assert install_bundle(v3, state, pub(keypair))["version"] == 3  # nothing above left a trace


def _rewrite(bundle, out, model: bytes):
    """The bundle with its model member replaced by `model` (its manifest untouched)."""
    signed = read_bundle_manifest(bundle)
    with tarfile.open(out, "w") as tar:
        data = signed.to_json().encode()
        for name, body in (("manifest.json", data), (MODEL_MEMBER, model)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out


def test_altered_or_truncated_model_is_refused(tmp_path, keypair, tiny_models, golden):
    good = tiny_models[0]
    bundle = make_bundle(tmp_path, keypair, good, golden)
    data = bytearray(good.read_bytes())
    data[5000] ^= 0x01
    e = _refusal(_rewrite(bundle, tmp_path / "altered.bundle", bytes(data)), tmp_path / "s", pub(keypair))
    assert e.code == "hash_mismatch" and e.details == {"block": 1}
    e = _refusal(_rewrite(bundle, tmp_path / "short.bundle", good.read_bytes()[:-10]), tmp_path / "s", pub(keypair))
    assert e.code == "size_mismatch" and e.details["expected"] == len(good.read_bytes())
    assert DeviceStore(tmp_path / "s").models() == {}
    assert list((tmp_path / "s" / "transfers").iterdir()) == []  # the bad partial file is gone


def test_not_a_bundle(tmp_path, keypair):
    junk = tmp_path / "junk.bundle"
    junk.write_bytes(b"hello")
    assert _refusal(junk, tmp_path / "s", pub(keypair)).code == "bad_manifest"
    with tarfile.open(tmp_path / "other.tar", "w") as tar:
        tar.addfile(tarfile.TarInfo("evil/../../x"), io.BytesIO(b""))
    e = _refusal(tmp_path / "other.tar", tmp_path / "s", pub(keypair))
    assert e.code == "bad_manifest" and "members ['evil/../../x']" in e.message
    assert _refusal(tmp_path / "missing.bundle", tmp_path / "s", pub(keypair)).code == "bad_state"


def test_crash_in_probation_is_counted_by_the_next_install(tmp_path, keypair, tiny_models, golden):
    good = tiny_models[0]
    state = tmp_path / "state"
    install_bundle(make_bundle(tmp_path, keypair, good, golden), state, pub(keypair))

    def dies(*_a, **_k) -> HealthResult:
        raise KeyboardInterrupt  # stands for the process dying mid-probation: no commit, no rollback

    v2 = make_bundle(tmp_path, keypair, good, golden, version=2)
    for _ in range(2):
        with pytest.raises(KeyboardInterrupt):
            install_bundle(v2, state, pub(keypair), health=dies)
    assert DeviceStore(state).pending("tiny").crashes == 1
    assert DeviceStore(state).on_start()[0]["action"] == "rolled_back"
    assert DeviceStore(state).current("tiny").version == 1


# ---- the CLI -----------------------------------------------------------------------------------------------------
def test_cli_keygen_and_install(tmp_path, capsys, tiny_models, golden):
    assert main(["keygen", str(tmp_path / "k"), "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE((tmp_path / "k" / "deploy-key.pem").stat().st_mode) == 0o600 and len(made["key_id"]) == 16
    assert main(["keygen", str(tmp_path / "k")]) == 2  # refuses to overwrite
    assert "already exists" in capsys.readouterr().err
    pair = (tmp_path / "k" / "deploy-key.pem", tmp_path / "k" / "deploy-key.pub.pem")
    bundle = make_bundle(tmp_path, pair, tiny_models[0], golden)
    args = ["install", str(bundle), "--state-dir", str(tmp_path / "s"), "--trust-key", str(pair[1])]
    assert main([*args, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["name"] == "tiny" and out["health"]["ok"]
    assert main(args) == 1  # the same version again: a downgrade
    err = capsys.readouterr().err
    assert "refused: downgrade: tiny v1 is not newer than v1" in err
    assert main([*args, "--json"]) == 1
    refused = json.loads(capsys.readouterr().out)
    assert refused == {"ok": False, "code": "downgrade", "message": refused["message"],
                       "details": {"version": 1, "trusted_version": 1}}
