"""`edgegen install BUNDLE --state-dir DIR --trust-key PUB`: install a model bundle (from `edgegen deploy --bundle`)
on a board without a network path, with every check an MQTT deployment makes.

Exit 0 when the model is committed; 1 when the bundle is refused or fails (the reason code on stderr, or the
whole outcome with --json on stdout); 2 for bad arguments.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgegen.cli.flags import add_device_argument, add_json_flag
from edgegen.firmware_bridge.deploy.bundle import install_bundle
from edgegen.firmware_bridge.deploy.errors import DeployError
from edgegen.firmware_bridge.deploy.keys import load_public_key

EXIT_REFUSED = 1


def _share(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share: expected a number from 0 to 1")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("bundle", type=Path, metavar="BUNDLE", help="the bundle (a tar of manifest.json and model)")
    parser.add_argument("--state-dir", type=Path, required=True, metavar="DIR",
                        help="the device's state folder (as `edgegen serve --state-dir`): its models and slots")
    parser.add_argument("--trust-key", type=Path, required=True, metavar="PUB",
                        help="the public key (from `edgegen keygen`) whose signatures this device accepts")
    parser.add_argument("--min-speed-share", type=_share, default=0.5, metavar="X",
                        help="decode speed must reach this share of the manifest's baseline (default 0.5)")
    add_device_argument(parser)
    add_json_flag(parser, "the outcome")


def run(args: argparse.Namespace) -> int:
    def track(phase: str, numbers: dict) -> None:
        if not args.json:
            print(f"{phase}...", file=sys.stderr)

    try:
        outcome = install_bundle(args.bundle, args.state_dir, load_public_key(args.trust_key), device=args.device,
                                 min_speed_share=args.min_speed_share, track=track)
    except DeployError as e:
        if args.json:
            print(json.dumps({"ok": False, **e.to_dict()}))
        print(f"edgegen install: refused: {e.code}: {e.message}", file=sys.stderr)
        return EXIT_REFUSED
    if args.json:
        print(json.dumps(outcome))
    else:
        print(f"committed {outcome['name']} v{outcome['version']}: {outcome['path']}")
    return 0
