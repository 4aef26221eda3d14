"""`edgegen plan MODEL --board NAME --context N`: predicted memory and decode ceiling, and whether it fits.

Exit 0 with a verdict (fits, does not fit, cannot run here) for any GGUF file the planner can read; exit 2 with
one error line for bad input: an unknown board, a bad context, a file that is missing or not a readable GGUF.
"""
from __future__ import annotations

import argparse
import json

from edgegen.cli.flags import add_json_flag, add_model_argument
from edgegen.device.errors import DeviceError
from edgegen.device.model_open import open_model_facts
from edgegen.device.planner import MIB, plan_memory
from edgegen.device.profiles import BOARD_PROFILES, get_profile


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_argument(parser)
    parser.add_argument("--board", required=True, metavar="NAME",
                        help=f"board profile: {', '.join(BOARD_PROFILES)}, or host (this machine, measured)")
    parser.add_argument("--context", type=int, default=1024, metavar="N",
                        help="tokens of KV cache to plan for (default 1024, the runtime's default context)")
    parser.add_argument("--parallel", type=int, default=1, metavar="N",
                        help="sequences served at once (`edgegen serve --parallel N`): N more KV caches (default 1)")
    add_json_flag(parser, "the plan")


def format_plan(plan: dict) -> str:
    """The plan as text: components, verdict, ceiling, and what each recipe would need."""
    lines = [
        f"model:    {plan['model']}",
        f"board:    {plan['board']} ({plan['backend']}), context {plan['context']} tokens"
        + (f", {plan['parallel']} sequences at once" if plan.get("parallel", 1) > 1 else ""),
        (f"memory:   weights {plan['weights_bytes'] / MIB:,.1f} MiB, KV cache {plan['kv_cache_bytes'] / MIB:,.1f},"
         f" activations {plan['activations_bytes'] / MIB:,.1f}, load transient"
         f" {plan['load_transient_bytes'] / MIB:,.1f}, runtime {plan['runtime_bytes'] / MIB:,.1f}"),
        (f"peak RSS: {plan['first_start_bytes'] / MIB:,.1f} MiB on a first start, "
         f"{plan['cached_start_bytes'] / MIB:,.1f} MiB with graphs from the JIT cache"),
        *verdict_lines(plan),
        (f"decode:   at most {plan['decode_ceiling_tok_s']:,.1f} tok/s "
         f"({plan['bytes_per_token'] / MIB:,.1f} MiB read per token at the full context)"),
        f"advice:   {plan['suggestion']}",
        "recipes:  " + "; ".join(f"{name} {r['total_bytes'] / MIB:,.0f} MiB {'fits' if r['fits'] else 'no'}"
                                 f" <= {r['decode_ceiling_tok_s']:,.0f} tok/s" for name, r in plan["recipes"].items()),
    ]
    return "\n".join(lines)


def verdict_lines(plan: dict) -> list[str]:
    """'cannot run here: why' when the runtime refuses the file (memory verdict below it), else the memory verdict."""
    memory = f"{'FITS' if plan['memory_fits'] else 'DOES NOT FIT'}: {plan['reason']}"
    if plan["verdict"] == "cannot_run":
        return [f"verdict:  cannot run here: {plan['cannot_run_reason']}", f"          memory alone: {memory}"]
    return [f"verdict:  {memory}"]


def run(args: argparse.Namespace) -> int:
    if args.context < 1:
        raise DeviceError(f"--context must be a positive number of tokens, got {args.context}")
    board = get_profile(args.board)
    opened = open_model_facts(args.model)
    plan = plan_memory(opened.facts, board, args.context, opened.cannot_run, opened.requantize_fixes,
                       args.parallel).to_dict()
    if args.json:
        plan["board_profile"] = board.to_dict()
        print(json.dumps(plan, indent=2))
    else:
        print(format_plan(plan))
    return 0
