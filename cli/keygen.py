"""`edgegen keygen DIR`: an Ed25519 key pair for signing deployments (`deploy-key.pem`, 0600, and its `.pub.pem`).

Give the private key to `edgegen deploy --key`, the public one to each board (`edgegen serve --trust-key`,
`edgegen install --trust-key`). Refuses to overwrite an existing key.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgegen.cli.flags import add_json_flag
from edgegen.firmware_bridge.deploy.keys import generate_keypair, key_id, load_public_key


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("dir", type=Path, metavar="DIR", help="folder to write the key pair to (created if missing)")
    add_json_flag(parser, "the key files and key id")


def run(args: argparse.Namespace) -> int:
    priv, pub = generate_keypair(args.dir)
    kid = key_id(load_public_key(pub))
    if args.json:
        print(json.dumps({"private_key": str(priv), "public_key": str(pub), "key_id": kid}))
    else:
        print(f"private key: {priv} (keep it secret: it signs deployments)")
        print(f"public key:  {pub} (copy to each board: --trust-key)")
        print(f"key id:      {kid}")
    return 0
