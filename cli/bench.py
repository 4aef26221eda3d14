"""`edgegen bench MODEL`: latency, throughput, memory, compile time, bandwidth share and energy of a model here.

A front end over device.bench: flags in, one progress bar per measured run, the report as a table or JSON, and the
JSON, history CSV and PNG plots under --results.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from edgegen.cli.flags import (
    add_device_argument,
    add_json_flag,
    add_kernel_arguments,
    add_model_argument,
    add_no_progress_flag,
    kernel_options,
)
from edgegen.cli.progress import tracker
from edgegen.device import bench as measurement
from edgegen.runtime.artifact.constants import DEFAULT_MAX_CONTEXT


class RuntimeRunner:
    """device.bench's Runner over edgegen's runtime (the runtime is imported when a bench runs, not at parse time)."""

    def __init__(self, kernels: Any = None) -> None:
        self.kernels = kernels  # runtime.native.options.KernelOptions, or None for the default

    def load(self, path: Path, device: str, context: int) -> Any:
        from edgegen.runtime.engine import TextGenerator

        return TextGenerator.load(str(path), device=device, max_context=context, kernels=self.kernels)

    def greedy(self, max_tokens: int) -> Any:
        from edgegen.runtime import SamplingParams

        return SamplingParams(temperature=0.0, max_tokens=max_tokens)

    def graphs_cached(self, path: Path, device: str, context: int) -> bool:
        from edgegen.runtime import jit_cache

        # the runtime's key hashes the file, device, context and runtime code
        from edgegen.runtime.native.options import KernelOptions

        variant = (self.kernels or KernelOptions()).describe(device)
        return (jit_cache.cache_dir() / f"{jit_cache.cache_key(path, device, context, variant)}.pkl").is_file()


PLOTS_SKIPPED = "PNG plots skipped: they need matplotlib, the 'bench' extra: pip install 'edgegen[bench]'"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--prompt-tokens", type=int, default=64, metavar="N", help="prompt length (default 64)")
    parser.add_argument("--gen-tokens", type=int, default=32, metavar="M", help="tokens generated per run (default 32)")
    parser.add_argument("--runs", type=int, default=3, metavar="K", help="measured runs after a warm-up (default 3)")
    add_device_argument(parser, default="CPU")
    add_kernel_arguments(parser)
    parser.add_argument("--board", metavar="NAME",
                        help="profile whose bandwidth the achieved bandwidth is compared with (default: the detected "
                             "board, else 'host', this machine's measured copy bandwidth)")
    parser.add_argument("--context", type=int, default=DEFAULT_MAX_CONTEXT, metavar="N",
                        help=f"KV cache size (default {DEFAULT_MAX_CONTEXT})")
    parser.add_argument("--label", help="name of this model/recipe in the history and bar chart (default: file name)")
    parser.add_argument("--results", default="bench-results", metavar="DIR",
                        help="folder for bench.json, history.csv and PNG plots (default ./bench-results)")
    parser.add_argument("--no-compile-times", action="store_true",
                        help="skip the cold/warm kernel-cache start-up measurement (two extra model loads)")
    parser.add_argument("--no-plots", action="store_true", help="do not draw PNG plots")
    add_json_flag(parser, "the report")
    add_no_progress_flag(parser)


def settings(args: argparse.Namespace) -> measurement.BenchSettings:
    """The flags as the measurement's settings."""
    return measurement.BenchSettings(prompt_tokens=args.prompt_tokens, gen_tokens=args.gen_tokens, runs=args.runs,
                                     device=args.device, board=args.board, context=args.context, label=args.label,
                                     compile_times=not args.no_compile_times)


def run(args: argparse.Namespace) -> int:
    plots = not args.no_plots
    if plots and not measurement.plotting_available():  # said before the minutes of measuring, not after
        print(f"edgegen bench: {PLOTS_SKIPPED}", file=sys.stderr)
        plots = False
    report = measurement.bench(args.model, RuntimeRunner(kernel_options(args)), settings(args),
                               track=tracker(not args.no_progress, unit="tok"))
    report["files"] = measurement.write_outputs(report, Path(args.results), plots)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        from edgegen.device.report import format_table

        print(format_table(report))
        print("\n".join(f"wrote {p}" for p in report["files"].values()))
    return 0


if __name__ == "__main__":  # device.bench.measure_startup's child: a fresh process timed from its first import
    _t0 = time.perf_counter()
    if len(sys.argv) == 6 and sys.argv[1] == measurement.PROBE_FLAG:
        measurement.startup_probe(RuntimeRunner(), sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), _t0)
    else:
        sys.exit(f"usage: python -m {measurement.PROBE_MODULE} {measurement.PROBE_FLAG} MODEL DEVICE PROMPT_TOKENS "
                 "CONTEXT")
