"""`edgegen device`: what this machine is and which tinygrad backends work on it."""
from __future__ import annotations

import argparse
import json

from edgegen.cli.flags import add_json_flag
from edgegen.device.backends import BACKENDS, PROBE_TIMEOUT_S
from edgegen.device.errors import DeviceError
from edgegen.device.machine import machine_report
from edgegen.device.runtime_report import runtime_report

MIB = 1024 * 1024


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_json_flag(parser, "the report")
    parser.add_argument("--backends", default=",".join(BACKENDS),
                        help=f"comma-separated tinygrad backends to probe (default: {','.join(BACKENDS)})")
    parser.add_argument("--timeout", type=float, default=PROBE_TIMEOUT_S,
                        help="seconds each backend probe may take before it counts as broken")


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MIB:,.0f} MiB"


def format_report(report: dict) -> str:
    """The report as aligned text lines."""
    host = report["host"]
    lines = [
        (f"board:     {host['board_model'] or 'not identified (no device-tree model / Apple chip)'}"
         + (f"  [{host['tegra_release']}]" if host["tegra_release"] else "")),
        f"profile:   {report['board_profile'] or '-'}",
        (f"cpu:       {host['cpu_model'] or '?'} ({host['cpu_logical_cores']} logical, "
         f"{host['cpu_physical_cores'] or '?'} physical cores, {host['machine']})"),
        f"memory:    {_mib(host['memory_total_bytes'])} total, {_mib(host['memory_available_bytes'])} available",
        "backends:",
    ]
    for b in report["backends"]:
        if b["usable"]:
            detail = f"{b.get('device_name') or '?'}, memory {_mib(b.get('device_memory_bytes'))}"
            lines.append(f"  {b['backend']:<6} usable      {detail}")
        else:
            lines.append(f"  {b['backend']:<6} unavailable {b['error']}")
    runtime = report.get("runtime") or {}
    if "error" in runtime:
        lines.append(f"default:   unknown ({runtime['error']})")
    elif runtime:
        cache = runtime["jit_cache"]
        lines += [f"default:   {runtime['default_backend']} ({runtime['reason']}; --device overrides)",
                  f"jit cache: {_mib(cache['size_bytes'])} in {cache['entries']} entries, limit "
                  f"{_mib(cache['limit_bytes'])} (EDGEGEN_JIT_CACHE_MB), {cache['folder']}"]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    names = tuple(n.strip().upper() for n in args.backends.split(",") if n.strip())
    unknown = [n for n in names if n not in BACKENDS]
    if not names or unknown:
        raise DeviceError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}: expected some of "
                          f"{', '.join(BACKENDS)}")
    if not args.timeout > 0:
        raise DeviceError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    report = machine_report(names, timeout_s=args.timeout)
    report["runtime"] = runtime_report(args.timeout)
    print(json.dumps(report, indent=2) if args.json else format_report(report))
    return 0
