"""The `edgegen` command: a thin dispatcher that imports each subcommand's module only when it runs.

Each subcommand lives in the package that owns the work (`runtime.cli`, `quantize.cli`, ...), exposes
`add_arguments(parser)` and `run(args) -> int`, and raises its package's error class for bad input. Every such
error class carries `exit_code = 2`; the dispatcher prints its message on one line and exits with that code.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import sys

# name -> (module, one-line help). Modules are imported lazily so `edgegen device` never loads tinygrad's compiler.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("edgegen.runtime.cli_generate", "generate text from a prompt with a GGUF model"),
    "info": ("edgegen.runtime.cli_info", "show a model file's architecture, tensor types and sizes"),
    "run-onnx": ("edgegen.runtime.cli_run_onnx", "run an ONNX model (float or quantized) with tinygrad's ONNX runner"),
    "quantize": ("edgegen.quantize.cli", "quantize a model into one deployable file"),
    "train-diffusion": ("edgegen.models.train_diffusion", "train the MNIST diffusion U-Net or its evaluation classifier"),
    "diffuse": ("edgegen.runtime.cli_diffuse", "generate digit images from a prompt with a diffusion model"),
    "eval": ("edgegen.quantize.cli_eval", "measure a model's quality (perplexity, KL, top-1 vs a reference)"),
    "device": ("edgegen.device.cli", "what this machine is and which tinygrad backends work on it"),
    "plan": ("edgegen.device.cli_plan", "predict whether a model fits a board's memory"),
    "bench": ("edgegen.device.cli_bench", "measure latency, throughput and memory of a model on this machine"),
    "serve": ("edgegen.firmware_bridge.cli_serve", "run a device agent that answers prompts over MQTT"),
    "prompt": ("edgegen.firmware_bridge.cli_prompt", "send a prompt to a device over MQTT and stream the answer"),
}


def _available() -> dict[str, tuple[str, str]]:
    """Subcommands whose module exists in this installation."""
    out = {}
    for name, (module, help_text) in SUBCOMMANDS.items():
        if importlib.util.find_spec(module.split(".")[0]) is None:
            continue
        try:
            if importlib.util.find_spec(module) is None:
                continue
        except ModuleNotFoundError:
            continue
        out[name] = (module, help_text)
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    commands = _available()
    parser = argparse.ArgumentParser(prog="edgegen", description="Generation runtime for small devices.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details to stderr")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in commands.items():
        sub.add_parser(name, help=help_text, add_help=False)
    # Parse only the command name first, so that just one subcommand module gets imported.
    head, rest = parser.parse_known_args(argv)
    if head.command is None:
        parser.print_help()
        return 2
    module = importlib.import_module(commands[head.command][0])
    sub_parser = argparse.ArgumentParser(prog=f"edgegen {head.command}", description=commands[head.command][1])
    module.add_arguments(sub_parser)
    args = sub_parser.parse_args(rest)
    logging.basicConfig(level=logging.INFO if head.verbose else logging.WARNING, format="%(name)s: %(message)s")
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        print("edgegen: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code = getattr(type(e), "exit_code", None)
        if code is None:
            raise
        print(f"edgegen {head.command}: error: {e}", file=sys.stderr)
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
