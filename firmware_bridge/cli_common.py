"""Command-line options shared by `edgegen serve` and `edgegen prompt`: where the broker is and how to log in."""
from __future__ import annotations

import argparse

from edgegen.firmware_bridge.connection import BrokerOptions, parse_broker


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("broker")
    group.add_argument("--broker", default="127.0.0.1:1883", metavar="HOST:PORT",
                       help="MQTT 5 broker address (default 127.0.0.1:1883)")
    group.add_argument("--username", help="MQTT username (a device's username is its device id under the ACL)")
    group.add_argument("--password", help="MQTT password")
    group.add_argument("--cafile", help="CA certificate that signed the broker's certificate; turns TLS on")
    group.add_argument("--certfile", help="client certificate for brokers with require_certificate true")
    group.add_argument("--keyfile", help="private key of --certfile")


def broker_options(args: argparse.Namespace) -> BrokerOptions:
    host, port = parse_broker(args.broker)
    return BrokerOptions(host, port, username=args.username, password=args.password, cafile=args.cafile,
                         certfile=args.certfile, keyfile=args.keyfile)
