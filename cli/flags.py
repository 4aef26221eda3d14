"""The flags several subcommands share, spelled and explained once: model, --device, broker, --json, --no-progress.

One vocabulary: `--device` is always the tinygrad backend (CPU, CL, CUDA, NV, METAL) and `--device-id` always the
MQTT device id. Old spellings stay accepted for one release through `add_deprecated_alias`, which prints one line.
"""
from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgegen.firmware_bridge.connection import BrokerOptions

DEFAULT_MODEL_HELP = ("'default' (the shipped SmolLM2-135M-Instruct Q4_1) or another installed model's name "
                      "(gemma3-270m)")
DEVICE_HELP = "tinygrad backend: CPU, CL, CUDA, NV, METAL"
DEFAULT_DEVICE_CHOICE = "tinygrad's choice"
DEFAULT_BROKER = "127.0.0.1:1883"


def add_model_argument(parser: argparse.ArgumentParser, what: str = "a GGUF model file", *, option: bool = False,
                       default: str | None = "default") -> None:
    """The model: a positional MODEL, or `--model` (default 'default') for commands whose positional is a prompt."""
    help_text = f"{what}, or {DEFAULT_MODEL_HELP}"
    if option:
        parser.add_argument("--model", default=default, help=help_text + (" (default)" if default == "default" else ""))
    else:
        parser.add_argument("model", help=help_text)


def add_device_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, default: str | None = None) -> None:
    """`--device`: the tinygrad backend to run on (default: tinygrad's choice, or `default`)."""
    parser.add_argument("--device", default=default, metavar="DEV",
                        help=f"{DEVICE_HELP} (default: {default or DEFAULT_DEVICE_CHOICE})")


def add_device_id_argument(parser: argparse.ArgumentParser | argparse._ArgumentGroup, help_text: str,
                           required: bool = False) -> None:
    """`--device-id`: a device's MQTT id (its topic subtree and client id), never a tinygrad backend."""
    parser.add_argument("--device-id", dest="device_id", required=required, metavar="ID", help=help_text)


def add_json_flag(parser: argparse.ArgumentParser, what: str = "the result") -> None:
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def add_no_progress_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


class _DeprecatedAlias(argparse.Action):
    """Stores like the new flag and prints one deprecation line on stderr (the old spelling works for one release)."""

    def __init__(self, option_strings: list[str], dest: str, new: str = "", meaning: str = "", **kwargs: Any) -> None:
        self.new, self.meaning = new, meaning
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        meaning = f" {self.meaning}" if self.meaning else ""
        print(f"{parser.prog}: {option_string}{meaning} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def add_deprecated_alias(parser: argparse.ArgumentParser | argparse._ArgumentGroup, old: str, new: str, dest: str,
                         meaning: str = "", metavar: str | None = None) -> None:
    """Accept `old` as a spelling of `new` (stored in `dest`), saying on stderr that it is deprecated."""
    parser.add_argument(old, dest=dest, action=_DeprecatedAlias, new=new, meaning=meaning, metavar=metavar,
                        help=f"deprecated spelling of {new}")


def add_broker_arguments(parser: argparse.ArgumentParser) -> None:
    """Where the MQTT broker is and how to log in, as `edgegen serve` and `edgegen prompt` take them."""
    group = parser.add_argument_group("broker")
    group.add_argument("--broker", default=DEFAULT_BROKER, metavar="HOST:PORT",
                       help=f"MQTT 5 broker address (default {DEFAULT_BROKER})")
    group.add_argument("--username", help="MQTT username (a device's username is its device id under the ACL)")
    group.add_argument("--password", help="MQTT password")
    group.add_argument("--cafile", help="CA certificate that signed the broker's certificate; turns TLS on")
    group.add_argument("--certfile", help="client certificate for brokers with require_certificate true")
    group.add_argument("--keyfile", help="private key of --certfile")


def broker_options(args: argparse.Namespace) -> BrokerOptions:
    """The broker flags as the bridge's BrokerOptions; a bad --broker is the bridge's RequestError."""
    from edgegen.firmware_bridge.connection import BrokerOptions, parse_broker

    host, port = parse_broker(args.broker)
    return BrokerOptions(host, port, username=args.username, password=args.password, cafile=args.cafile,
                         certfile=args.certfile, keyfile=args.keyfile)


def add_kernel_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """`--kernels` and `--threads`: which CPU kernels run a text model, on how many threads (runtime.native)."""
    from edgegen.runtime.native.options import KERNEL_CHOICES

    parser.add_argument("--kernels", choices=KERNEL_CHOICES, default="auto",
                        help="'auto' (default): the hand-written int8-dot kernels on threads on the CPU backend (the "
                             "fast path), tinygrad's on other backends; 'native': the hand-written ones (CPU only); "
                             "'tinygrad': tinygrad's generated kernels everywhere, for comparison")
    parser.add_argument("--threads", type=_thread_count, default=None, metavar="N",
                        help="threads for the native CPU kernels (default: every core this process may use)")


def kernel_options(args: argparse.Namespace) -> Any:
    """The runtime's KernelOptions from `--kernels` / `--threads`."""
    from edgegen.runtime.native.options import KernelOptions

    return KernelOptions(getattr(args, "kernels", "auto"), getattr(args, "threads", None))


def _thread_count(text: str) -> int:
    from edgegen.runtime.native.options import MAX_THREADS

    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--threads must be an integer, got {text!r}") from None
    if not 1 <= n <= MAX_THREADS:
        raise argparse.ArgumentTypeError(f"--threads must be from 1 to {MAX_THREADS}, got {n}")
    return n
