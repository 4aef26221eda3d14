"""The `edgegen` command: a thin dispatcher that imports each subcommand's module only when it runs.

Each subcommand is one module of this package (`cli/generate.py`, `cli/quantize.py`, ...), a front end that exposes
`add_arguments(parser)` and `run(args) -> int` over library calls; shared flags live in `cli/flags.py`, progress bars
in `cli/progress.py`. Library code raises its package's error class for bad input; every such class carries
`exit_code = 2`, and the dispatcher prints its message on one line and exits with that code.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys
from typing import Any

# name -> (module, one-line help). Modules are imported lazily so `edgegen device` never loads tinygrad's compiler.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "generate": ("edgegen.cli.generate", "generate text from a prompt with a GGUF model"),
    "info": ("edgegen.cli.info", "show a model file's architecture, tensor types and sizes"),
    "run-onnx": ("edgegen.cli.run_onnx", "run an ONNX model (float or quantized) with tinygrad's ONNX runner"),
    "quantize": ("edgegen.cli.quantize", "quantize a model into one deployable file"),
    "train-diffusion": ("edgegen.cli.train_diffusion", "train the MNIST diffusion U-Net or its evaluation classifier"),
    "diffuse": ("edgegen.cli.diffuse", "generate digit images from a prompt with a diffusion model"),
    "eval": ("edgegen.cli.eval", "measure a model's quality (perplexity, KL, top-1 vs a reference)"),
    "device": ("edgegen.cli.device", "what this machine is and which tinygrad backends work on it"),
    "plan": ("edgegen.cli.plan", "predict whether a model fits a board's memory"),
    "bench": ("edgegen.cli.bench", "measure latency, throughput and memory of a model on this machine"),
    "serve": ("edgegen.cli.serve", "run a device agent that answers prompts over MQTT"),
    "prompt": ("edgegen.cli.prompt", "send a prompt to a device over MQTT and stream the answer"),
    "gateway": ("edgegen.cli.gateway", "answer OpenAI's HTTP API in front of a fleet of devices, over MQTT"),
    "keygen": ("edgegen.cli.keygen", "make an Ed25519 key pair that signs model deployments"),
    "install": ("edgegen.cli.install", "install a signed model bundle on this board, with every deployment check"),
    "deploy": ("edgegen.cli.deploy", "sign a model and roll it out to devices over MQTT, with health-checked commits"),
}


def main(argv: list[str] | None = None, **hooks: Any) -> int:
    """Parse the command name, import just its module, run it; returns the exit code. `hooks` go to the module's
    run() as keyword arguments (test-only fault injection: tests/bridge/faulty_edgegen.py)."""
    argv = sys.argv[1:] if argv is None else argv
    commands = SUBCOMMANDS
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
        return int(module.run(args, **hooks) or 0)
    except KeyboardInterrupt:
        print("edgegen: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        code = getattr(type(e), "exit_code", None)
        if code is None:
            raise
        message = " ".join(str(e).split("\n"))  # one line, whatever a message quotes
        print(f"edgegen {head.command}: error: {message}", file=sys.stderr)
        return int(code)


if __name__ == "__main__":
    sys.exit(main())
