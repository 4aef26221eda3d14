"""`edgegen prompt`: send a prompt to a device or pool over MQTT and stream the answer to stdout."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from edgegen.cli.flags import add_broker_arguments, add_deprecated_alias, add_device_id_argument, broker_options
from edgegen.firmware_bridge.client import Client
from edgegen.firmware_bridge.errors import ErrorCode, RequestError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", nargs="?", help="the text prompt")
    target = parser.add_mutually_exclusive_group(required=True)
    add_device_id_argument(target, "device id to ask")
    # `--device` meant the device id here before it meant the tinygrad backend everywhere: accepted for one release.
    add_deprecated_alias(target, "--device", "--device-id", dest="device_id", meaning="for the device id",
                         metavar="ID")
    target.add_argument("--pool", help="pool to ask: whichever member is next takes the request")
    parser.add_argument("--image", metavar="PROMPT", help="ask for an image instead (e.g. a digit '7'); needs -o")
    parser.add_argument("-o", "--output", help="where to write the PNG of --image")
    parser.add_argument("--model", default="default", help="model name on the device (default 'default')")
    parser.add_argument("--max-tokens", type=int, default=128, help="most tokens to generate (128)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0 is greedy (default)")
    parser.add_argument("--top-k", type=int, default=0)
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--raw", action="store_true", help="send the prompt without the chat template")
    parser.add_argument("--expiry-s", type=int, help="give up on the request if it has not started after this")
    parser.add_argument("--timeout-s", type=float, default=300.0, help="seconds to wait for the answer (300)")
    parser.add_argument("--stats", action="store_true", help="print the final message's stats as JSON to stderr")
    add_broker_arguments(parser)


def run(args: argparse.Namespace) -> int:
    if (args.prompt is None) == (args.image is None):
        raise RequestError(ErrorCode.MISSING_PROMPT, "give a text prompt or --image PROMPT (not both)")
    if args.image is not None and not args.output:
        raise RequestError(ErrorCode.INVALID_REQUEST, "--image needs -o/--output FILE.png")
    with Client(broker_options(args), timeout_s=args.timeout_s) as client:
        if args.image is not None:
            png = client.image(args.image, device=args.device_id, pool=args.pool, model=args.model, seed=args.seed)
            Path(args.output).write_bytes(png)
            print(f"wrote {args.output} ({len(png)} bytes)", file=sys.stderr)
            return 0
        sampling = {"temperature": args.temperature, "top_k": args.top_k, "top_p": args.top_p, "seed": args.seed}
        stream = client.generate(args.prompt, device=args.device_id, pool=args.pool, model=args.model,
                                 max_tokens=args.max_tokens, chat=not args.raw, sampling=sampling,
                                 expiry_s=args.expiry_s)
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        if args.stats and stream.result is not None:
            print(json.dumps({k: stream.result[k] for k in ("finish_reason", "device", "stats")}), file=sys.stderr)
    return 0
