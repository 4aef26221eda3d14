"""`edgegen deploy FILE --name NAME (--device-id ID ... | --pool POOL) --key PRIV`: sign a manifest for a model file,
offer it to devices over MQTT, serve its blocks while the rollout runs, and report per device.

Progress goes to stderr, one line per device and state (downloads every 10%). Exit codes: 0 every target committed;
3 some failed, rolled back or were rejected; 4 the rollout stopped (failures passed --max-failed, e.g. a failing
canary); 5 some targets did not finish within --timeout-s; 2 bad arguments. `--json` prints the report on stdout.
`--bundle OUT` writes an offline bundle for `edgegen install` instead of deploying.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgegen.cli.flags import add_broker_arguments, add_device_argument, add_json_flag, broker_options
from edgegen.firmware_bridge.deploy.errors import DeployCode, DeployError
from edgegen.firmware_bridge.deploy.manifest import DEFAULT_BLOCK_SIZE, DEFAULT_TTL_S

DEFAULT_GOLDEN_TOKENS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("file", type=Path, metavar="FILE", help="the model file (GGUF) to deploy")
    parser.add_argument("--name", required=True, help="the model name it is served under (requests' \"model\")")
    parser.add_argument("--version", type=int, help="its version, which must rise per name (default: now, in unix "
                                                     "seconds, so each deploy is newer than the last)")
    parser.add_argument("--key", type=Path, required=True, metavar="PRIV", help="private key from `edgegen keygen`")
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--device-id", dest="device_ids", action="append", metavar="ID",
                        help="a target device (repeat for several)")
    target.add_argument("--pool", help="every device of this pool (members update one at a time)")
    target.add_argument("--bundle", type=Path, metavar="OUT",
                        help="write a signed bundle for `edgegen install` instead of deploying over MQTT")
    parser.add_argument("--canary", type=int, default=0, metavar="N", help="update N devices first, alone (0)")
    parser.add_argument("--wave", type=int, default=0, metavar="N",
                        help="then N devices at a time (default: all the rest at once; 1 for a pool)")
    parser.add_argument("--max-failed", type=int, default=0, metavar="N",
                        help="stop the rollout once more than N devices have failed (0)")
    parser.add_argument("--timeout-s", type=float, default=3600.0, help="seconds each wave may take (3600)")
    parser.add_argument("--rollout-id", help="resume the rollout of this id (default: a new one)")
    parser.add_argument("--discover-s", type=float, default=2.0,
                        help="seconds to collect the pool's members from their retained status (2)")
    parser.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE,
                        help=f"transfer block size in bytes ({DEFAULT_BLOCK_SIZE}; 1024-131072)")
    parser.add_argument("--ttl-s", type=int, default=DEFAULT_TTL_S, help=f"offer lifetime ({DEFAULT_TTL_S} s)")
    parser.add_argument("--golden-prompt", help="prompt of the golden check (default: health's)")
    parser.add_argument("--golden-tokens", type=int, default=DEFAULT_GOLDEN_TOKENS,
                        help=f"greedy tokens the device must reproduce ({DEFAULT_GOLDEN_TOKENS})")
    parser.add_argument("--baseline-tok-s", type=float, metavar="X",
                        help="decode tok/s measured on the reference board (default: no speed check)")
    parser.add_argument("--measure-baseline", action="store_true",
                        help="measure the baseline decode speed on this machine instead")
    parser.add_argument("--min-speed-share", type=float, default=0.5, metavar="X",
                        help="devices must decode at this share of the baseline (0.5)")
    add_device_argument(parser)
    add_json_flag(parser, "the rollout report")
    add_broker_arguments(parser)


def _check_args(args: argparse.Namespace) -> None:
    if args.bundle is None and not args.device_ids and not args.pool:
        raise DeployError(DeployCode.BAD_MANIFEST, "give --device-id ID (repeatable), --pool POOL or --bundle OUT")
    for flag, value in (("--canary", args.canary), ("--wave", args.wave), ("--max-failed", args.max_failed)):
        if value < 0:
            raise DeployError(DeployCode.BAD_MANIFEST, f"{flag} {value}: expected a count >= 0")
    if not 0 <= args.min_speed_share <= 1:
        raise DeployError(DeployCode.BAD_MANIFEST, f"--min-speed-share {args.min_speed_share}: expected 0 to 1")
    if not 1 <= args.golden_tokens <= 256:
        raise DeployError(DeployCode.BAD_MANIFEST, f"--golden-tokens {args.golden_tokens}: expected 1 to 256")
    if not args.file.is_file():
        raise DeployError(DeployCode.BAD_STATE, f"model file {str(args.file)!r} does not exist")


def _sign(args: argparse.Namespace) -> Any:
    """Golden check, baseline, manifest, signature (the model loads here once, for the golden ids)."""
    from edgegen.firmware_bridge.deploy.health import golden_for, measure_baseline
    from edgegen.firmware_bridge.deploy.keys import load_private_key
    from edgegen.firmware_bridge.deploy.manifest import build_manifest, sign
    from edgegen.runtime.artifact.constants import IMAGE_ARCHITECTURES
    from edgegen.runtime.artifact.reader import open_gguf

    key = load_private_key(args.key)  # before minutes of golden decoding: a wrong path fails now
    kind = "image" if open_gguf(str(args.file)).architecture in IMAGE_ARCHITECTURES else "text"
    extra = {"max_tokens": args.golden_tokens} if kind == "text" else {}
    golden = golden_for(args.file, kind, args.golden_prompt, device=args.device, **extra)
    baseline = args.baseline_tok_s
    if args.measure_baseline and kind == "text":
        baseline = measure_baseline(args.file, device=args.device)
    version = args.version if args.version is not None else int(time.time())
    manifest = build_manifest(args.file, args.name, version, golden=golden, block_size=args.block_size,
                              ttl_s=args.ttl_s, baseline=baseline, kind=kind)
    return sign(manifest, key)


def _progress_printer() -> Any:
    shown: dict[str, tuple[str, int]] = {}

    def track(target: Any) -> None:
        p = target.progress
        tenth = int(10 * p["blocks"] / max(1, p["of"])) if target.state == "downloading" and p else -1
        if shown.get(target.device) == (target.state, tenth):
            return
        shown[target.device] = (target.state, tenth)
        detail = f" {p['blocks'] * 100 // max(1, p['of'])}% ({p['blocks']}/{p['of']} blocks)" if tenth >= 0 else ""
        why = f" {target.reason}: {target.message or ''}".rstrip(": ") if target.reason else ""
        print(f"edgegen deploy: {target.device} {target.state}{detail}{why}", file=sys.stderr, flush=True)

    return track


def run(args: argparse.Namespace, faults: dict[str, int] | None = None) -> int:
    """`faults`: DeployServer's test-only fault injection (tests/bridge/faulty_edgegen.py passes it)."""
    _check_args(args)
    started = time.perf_counter()
    signed = _sign(args)
    sign_s = round(time.perf_counter() - started, 3)
    if args.bundle is not None:
        from edgegen.firmware_bridge.deploy.bundle import write_bundle

        out = write_bundle(signed, args.file, args.bundle)
        print(json.dumps({"bundle": str(out), "name": signed.manifest.name, "version": signed.manifest.version})
              if args.json else f"wrote {out}")
        return 0
    from edgegen.firmware_bridge.deploy.server import DeployServer

    server = DeployServer(broker_options(args), signed, args.file, rollout_id=args.rollout_id,
                          min_speed_share=args.min_speed_share, track=_progress_printer(),
                          faults=faults).connect()
    try:
        devices = args.device_ids or server.discover(args.pool, args.discover_s)
        if not devices:
            raise DeployError(DeployCode.TIMEOUT, f"no member of pool {args.pool!r} announced itself within "
                              f"{args.discover_s:g} s (devices run `edgegen serve --pool {args.pool} --trust-key ...`)")
        wave = 1 if args.pool else args.wave  # a pool updates one member at a time, so it keeps answering
        print(f"edgegen deploy: rollout {server.rollout}: {signed.manifest.name} v{signed.manifest.version} "
              f"({signed.manifest.n_blocks} blocks) to {', '.join(devices)}", file=sys.stderr, flush=True)
        report = server.run(devices, canary=args.canary, wave=wave, max_failed=args.max_failed,
                            timeout_s=args.timeout_s)
    finally:
        server.close()
    report["sign_s"] = sign_s
    if args.json:
        print(json.dumps(report))
    print(f"edgegen deploy: {report['result']}: " + ", ".join(f"{d} {t['state']}" for d, t in
                                                           report["targets"].items()), file=sys.stderr)
    return int(report["exit_code"])
