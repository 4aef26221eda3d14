"""What deploying a model costs: transfer throughput of `edgegen deploy` on loopback as a share of a raw
`mosquitto_pub -f` / `mosquitto_sub` copy of the same file, and the time from `edgegen deploy` to committed, per
phase (sign, transfer, verify, warm-up, health). Writes benchmarks/results/deploy.json.

    .venv/bin/python benchmarks/bench_deploy.py                   # the shipped model quantized w8 (minutes)
    .venv/bin/python benchmarks/bench_deploy.py --file model.gguf

The device is a real `edgegen serve --trust-key` process and the deploy side the real `edgegen deploy` command, on
a Mosquitto with the shipped settings. The raw copy runs on a second Mosquitto whose max_packet_size admits the
whole file as one message (the shipped limit of 1 MiB would disconnect the sender: that is why deploy pulls blocks).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from local_broker import LocalBroker, die_with_parent

from edgegen.firmware_bridge.deploy.keys import generate_keypair

RESULTS = REPO / "benchmarks" / "results" / "deploy.json"
NAME = "bench"
RAW_RUNS = 3


def _sha(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def raw_copy(file: Path, folder: Path) -> dict:
    """Median seconds for mosquitto_pub -f -> mosquitto_sub of `file` as one QoS 1 message on loopback."""
    size = file.stat().st_size
    broker = LocalBroker(folder / "raw-broker", [f"max_packet_size {size + (1 << 20)}", "message_size_limit 0"]).start()
    try:
        times = []
        for run in range(RAW_RUNS):
            out = folder / f"raw-{run}.bin"
            topic = f"bench/raw/{run}"
            with open(out, "wb") as f:
                sub = subprocess.Popen(["mosquitto_sub", "-p", str(broker.port), "-t", topic, "-q", "1", "-C", "1",
                                        "-N"], stdout=f, preexec_fn=die_with_parent)
                time.sleep(0.5)  # subscribed before the publish
                started = time.perf_counter()
                subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", topic, "-q", "1", "-f", str(file)],
                               check=True)
                sub.wait(timeout=600)
                times.append(time.perf_counter() - started)
            assert out.stat().st_size == size and _sha(out) == _sha(file), "raw copy is not byte-identical"
            out.unlink()
        times.sort()
        return {"runs_s": [round(t, 3) for t in times], "median_s": round(times[len(times) // 2], 3),
                "mb_per_s": round(size / times[len(times) // 2] / 1e6, 1)}
    finally:
        broker.stop()


def deployed(file: Path, folder: Path, device: str | None) -> dict:
    """One `edgegen deploy` of `file` to one `edgegen serve` device: the command's wall time and its report."""
    priv, pub = generate_keypair(folder / "keys")
    broker = LocalBroker(folder / "broker").start()
    broker_flag = ["--broker", f"127.0.0.1:{broker.port}"]
    backend = ["--device", device] if device else []
    serve = subprocess.Popen([sys.executable, "-m", "edgegen.cli", "serve", "--device-id", "board", "--state-dir",
                              str(folder / "state"), "--trust-key", str(pub), "--no-warmup", *backend, *broker_flag],
                             cwd=REPO, stdout=subprocess.PIPE, text=True, preexec_fn=die_with_parent)
    try:
        assert serve.stdout is not None
        serve.stdout.readline()  # "edgegen serve: device board serving ..."
        started = time.perf_counter()
        out = subprocess.run([sys.executable, "-m", "edgegen.cli", "deploy", str(file), "--name", NAME, "--key",
                              str(priv), "--device-id", "board", "--json", *backend, *broker_flag], cwd=REPO,
                             capture_output=True, text=True, preexec_fn=die_with_parent)
        wall_s = time.perf_counter() - started
        if out.returncode != 0:
            raise SystemExit(f"edgegen deploy exited {out.returncode}:\n{out.stderr}")
        report = json.loads(out.stdout)
    finally:
        serve.terminate()
        serve.wait(timeout=60)
        broker.stop()
    return {"wall_s": round(wall_s, 3), "report": report}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, help="model file to deploy (default: the shipped model quantized w8)")
    parser.add_argument("--device", help="tinygrad backend for both sides (default: tinygrad's choice)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"JSON results (default {RESULTS})")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="edgegen-bench-deploy-"))
    try:
        file = args.file
        if file is None:
            file = folder / "smollm2-135m-w8.gguf"
            subprocess.run([sys.executable, "-m", "edgegen.cli", "quantize", "default", "--recipe", "w8", "-o",
                            str(file), "--no-progress"], cwd=REPO, check=True, capture_output=True)
        size = file.stat().st_size
        raw = raw_copy(file, folder)
        dep = deployed(file, folder, args.device)
        target = dep["report"]["targets"]["board"]
        phases = target["numbers"]["phases_s"]
        transfer_s = phases["transfer_s"]
        result = {
            "machine": {"platform": platform.platform(), "python": platform.python_version(),
                        "cpus": os.cpu_count()},
            "file": {"name": file.name, "bytes": size, "blocks": dep["report"]["blocks"]},
            "raw_mosquitto_pub_sub": raw,
            "deploy_transfer": {"seconds": transfer_s, "mb_per_s": round(size / transfer_s / 1e6, 1),
                                "share_of_raw": round(raw["median_s"] / transfer_s, 3),
                                "bytes_served": dep["report"]["bytes_served"],
                                "blocks_refetched": phases.get("blocks_refetched")},
            "deploy_to_committed_s": dep["wall_s"],
            "phases_s": {"sign (golden ids + hashes + signature)": dep["report"]["sign_s"],
                         "transfer": transfer_s, "verify": phases.get("verify_s"), "install": phases.get("install_s"),
                         "load": phases.get("load_s"), "warm_up": phases.get("warm_up_s"),
                         "health": phases.get("health_s")},
            "device_elapsed_s": target["elapsed_s"],
            "health": {k: v for k, v in target["numbers"].items() if k not in ("phases_s", "fit")},
        }
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    t = result["deploy_transfer"]
    print(f"raw mosquitto_pub/sub copy: {raw['median_s']:.2f} s ({raw['mb_per_s']} MB/s); edgegen deploy transfer: "
          f"{t['seconds']:.2f} s ({t['mb_per_s']} MB/s), {t['share_of_raw']:.0%} of raw")
    print("deploy to committed: {:.1f} s; ".format(result["deploy_to_committed_s"])
          + ", ".join(f"{k.split(' ')[0]} {v}" for k, v in result["phases_s"].items()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
