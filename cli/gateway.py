"""`edgegen gateway`: OpenAI's HTTP API in front of a fleet of `edgegen serve` devices over MQTT, until a signal."""
from __future__ import annotations

import argparse
import signal
import threading

from edgegen.cli.flags import add_broker_arguments, broker_options
from edgegen.firmware_bridge.connection import parse_address
from edgegen.firmware_bridge.gateway import Gateway
from edgegen.firmware_bridge.http_api import HttpApi, read_api_keys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--listen", required=True, metavar="HOST:PORT", help="where to answer HTTP (e.g. 0.0.0.0:8080)")
    parser.add_argument("--pool", help="send plain model names to this pool (a shared subscription); without it each "
                                       "request goes to an online device that announces the model, in turn")
    parser.add_argument("--api-keys", metavar="FILE",
                        help="API keys, one per line; requests then need Authorization: Bearer KEY")
    parser.add_argument("--client-id", help="this gateway's MQTT client id (default: a random one)")
    add_broker_arguments(parser)


def run(args: argparse.Namespace) -> int:
    address = parse_address(args.listen, "--listen")
    keys = read_api_keys(args.api_keys) if args.api_keys else None
    gateway = Gateway(broker_options(args), pool=args.pool, client_id=args.client_id)
    api = HttpApi(gateway, address, keys)  # the address is taken (or refused) before the broker is dialled
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        gateway.start()
        api.start()
        host, port = api.address
        print(f"edgegen gateway: http://{host}:{port} -> {args.broker}" + (f" (pool {args.pool})" if args.pool else ""),
              flush=True)
        stop.wait()
    finally:
        api.stop()
        gateway.stop()
    return 0
