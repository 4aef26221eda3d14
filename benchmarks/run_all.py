"""Run every benchmark that exists and write one markdown report: benchmarks/results/REPORT.md.

    .venv/bin/python benchmarks/run_all.py                       # everything (tens of minutes on 2 cores)
    .venv/bin/python benchmarks/run_all.py --only device,mqtt    # a subset
    .venv/bin/python benchmarks/run_all.py --script-args mqtt="--skip-model"

Sections, in order: this machine (`edgegen device`), `edgegen bench` on the shipped SmolLM2 Q4_1 file and on the
same model re-quantized with each --recipes recipe (a bar chart compares them), then each of the scripts below
that exists in benchmarks/. A script is run in its own process with a time limit; the report gets what it printed
(its table) and every file it wrote or updated under benchmarks/results/ (PNG plots shown, markdown inlined, the
rest linked). A missing script is noted, not an error: they are written by different people at different times.
Each section is kept in benchmarks/results/sections/, stamped with when it ran, and the report is assembled from
all of them: `--only device` re-measures one section and keeps the others as they were.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REPORT = RESULTS / "REPORT.md"
SECTION_DIR = RESULTS / "sections"  # one markdown file per section: a partial re-run keeps the others
# name -> script; the names are what --only / --skip / --script-args take.
SCRIPTS = {
    "decode": "bench_decode.py",  # tinygrad decode vs llama.cpp (llama-cpp-python) on the same files
    "quality": "bench_quality.py",  # perplexity / KL / top-1 of each recipe
    "diffusion": "bench_diffusion.py",  # the tiny U-Net sampler
    "mqtt": "bench_mqtt.py",  # transport cost of the firmware bridge
    "onnx": "bench_onnx.py",  # tinygrad's ONNX runner vs onnxruntime
}
SECTIONS = ("device", *SCRIPTS)
OUTPUT_TAIL_CHARS = 6000  # a script's printed table is short; its progress chatter is cut from the top


def _python_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("DEV", "CPU")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    return env


def run_process(cmd: list[str], timeout_s: float) -> tuple[int | None, str, float]:
    """(exit code or None on timeout, stdout (+ stderr if it failed), seconds)."""
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=_python_env(), capture_output=True, text=True, timeout=timeout_s,
                              check=False)
        code, out = proc.returncode, proc.stdout + ("\n" + proc.stderr if proc.returncode else "")
    except subprocess.TimeoutExpired as e:
        code = None
        out = (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    return code, out, time.perf_counter() - start


def files_since(start: float, name: str) -> list[Path]:
    """Files under benchmarks/results written since `start` whose path names the section (decode.json,
    quality/...): other people's scripts write there at the same time, and their files are not this run's."""
    return sorted(p for p in RESULTS.rglob("*") if p.is_file() and p != REPORT and SECTION_DIR not in p.parents
                  and name in p.relative_to(RESULTS).as_posix() and p.stat().st_mtime >= start)


def render_files(paths: list[Path]) -> list[str]:
    lines = []
    for p in paths:
        rel = p.relative_to(RESULTS).as_posix()
        if p.suffix == ".png":
            lines += [f"![{rel}]({rel})", ""]
        elif p.suffix == ".md":
            lines += [p.read_text().strip(), ""]
        else:
            lines.append(f"- [{rel}]({rel})")
    return lines + [""]


def section_machine() -> list[str]:
    from edgegen.cli.device import format_report
    from edgegen.device.machine import machine_report

    return ["## This machine", "", "```", format_report(machine_report()), "```", ""]


def prepare_recipes(recipes: list[str], workdir: Path, timeout_s: float) -> tuple[list[tuple[str, Path]], list[str]]:
    """The shipped model plus one re-quantized file per recipe: [(label, path)], and notes on failures."""
    from edgegen.runtime import default_model_path

    base = Path(default_model_path())
    models, notes = [("shipped-Q4_1", base)], []
    for recipe in recipes:
        out = workdir / f"smollm2-{recipe}.gguf"
        code, text, _ = run_process([sys.executable, "-m", "edgegen.cli", "quantize", str(base), "--recipe", recipe,
                                     "-o", str(out), "--no-progress"], timeout_s)
        if code == 0 and out.exists():
            models.append((recipe, out))
        else:
            notes.append(f"- recipe `{recipe}`: quantize failed ({'timed out' if code is None else f'exit {code}'}):"
                         f" `{text.strip().splitlines()[-1] if text.strip() else ''}`")
    return models, notes


def section_device_bench(args: argparse.Namespace) -> list[str]:
    """`edgegen bench` per model/recipe, each its own process; a table of the headline numbers and the plots."""
    out_dir = RESULTS / "device"
    lines = ["## Decode on tinygrad: `edgegen bench`", ""]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgegen-recipes-") as tmp:
        models, notes = prepare_recipes(args.recipes, Path(tmp), args.timeout)
        for label, path in models:
            cmd = [sys.executable, "-m", "edgegen.cli", "bench", str(path), "--label", label, "--json",
                   "--no-progress", "--results", str(out_dir), "--prompt-tokens", str(args.prompt_tokens),
                   "--gen-tokens", str(args.gen_tokens), "--runs", str(args.runs)]
            code, text, seconds = run_process(cmd, args.timeout)
            try:
                rows.append(json.loads(text[text.index("{"):]) if code == 0 else None)
            except ValueError:
                rows.append(None)
            if rows[-1] is None:
                notes.append(f"- `{label}`: bench failed ({'timed out' if code is None else f'exit {code}'}) after "
                             f"{seconds:.0f} s: `{text.strip().splitlines()[-1] if text.strip() else ''}`")
    mib = 1024 * 1024
    lines += [("| model | file MiB | TTFT s | prefill tok/s | decode tok/s | p50 / p99 ms | peak RSS MiB | "
               "start-up cold / warm s | bandwidth share | J/token |"), "|" + "---|" * 10]
    for r in filter(None, rows):
        cold, warm = r["compile_cold_s"], r["compile_warm_s"]
        lines.append(
            f"| {r['label']} | {r['model_bytes'] / mib:.1f} | {r['ttft_s']:.2f} | {r['prefill_tok_s']:.1f} | "
            f"{r['decode_tok_s']:.2f} | {r['latency_p50_ms']:.0f} / {r['latency_p99_ms']:.0f} | "
            f"{r['peak_rss_bytes'] / mib:.0f} | {cold:.1f} / {warm:.1f} | {100 * r['bandwidth_share']:.1f}% of "
            f"{r['board_bandwidth_bytes_per_s'] / 1e9:.1f} GB/s ({r['board']}) | "
            f"{r['joules_per_token'] if r['joules_per_token'] is not None else r['energy_source']} |")
    lines += [""] + notes + [""]
    for name in ["comparison.png", *[f"latency-{r['label']}.png" for r in filter(None, rows)]]:
        if (out_dir / name).exists():
            lines += [f"![{name}](device/{name})", ""]
    return lines


def section_script(name: str, args: argparse.Namespace) -> list[str]:
    script = REPO / "benchmarks" / SCRIPTS[name]
    lines = [f"## {name}: `benchmarks/{script.name}`", ""]
    if not script.exists():
        return lines + [f"_Skipped: benchmarks/{script.name} does not exist yet._", ""]
    start = time.time() - 1  # mtime granularity
    extra = shlex.split(args.script_args.get(name, ""))
    code, text, seconds = run_process([sys.executable, str(script), *extra], args.timeout)
    status = "timed out" if code is None else ("ok" if code == 0 else f"failed with exit code {code}")
    lines += [f"`{' '.join(['python', 'benchmarks/' + script.name, *extra])}`: {status} in {seconds:.0f} s", "",
              "```", text.strip()[-OUTPUT_TAIL_CHARS:], "```", ""]
    return lines + render_files(files_since(start, name))


def parse_script_args(values: list[str]) -> dict[str, str]:
    out = {}
    for v in values:
        name, sep, rest = v.partition("=")
        if not sep or name not in SCRIPTS:
            raise SystemExit(f"run_all: --script-args expects NAME=ARGS with NAME one of {', '.join(SCRIPTS)}, "
                             f"got {v!r}")
        out[name] = rest
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help=f"comma-separated sections to run, of: {', '.join(SECTIONS)}")
    parser.add_argument("--skip", default="", help="comma-separated sections to leave out")
    parser.add_argument("--recipes", default="w8", help="recipes to re-quantize SmolLM2 with and bench (default w8; "
                                                       "'' for the shipped file only)")
    parser.add_argument("--prompt-tokens", type=int, default=64)
    parser.add_argument("--gen-tokens", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds each process may take (3600)")
    parser.add_argument("--script-args", action="append", default=[], metavar="NAME=ARGS",
                        help="extra arguments for one script, e.g. mqtt=--skip-model")
    args = parser.parse_args(argv)
    args.script_args = parse_script_args(args.script_args)
    args.recipes = [r for r in args.recipes.split(",") if r]
    chosen = [s for s in (args.only.split(",") if args.only else SECTIONS) if s not in args.skip.split(",")]
    unknown = [s for s in chosen if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {', '.join(unknown)}: expected some of {', '.join(SECTIONS)}")

    sys.path.insert(0, str(REPO))
    os.environ.setdefault("DEV", "CPU")
    SECTION_DIR.mkdir(parents=True, exist_ok=True)
    machine = section_machine()
    for section in chosen:
        print(f"run_all: {section} ...", file=sys.stderr, flush=True)
        started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        lines = section_device_bench(args) if section == "device" else section_script(section, args)
        lines.insert(2, f"_Measured {started}._\n")
        (SECTION_DIR / f"{section}.md").write_text("\n".join(lines) + "\n")
        write_report(machine)  # a partial report survives an interrupted run
    write_report(machine)
    print(f"run_all: wrote {REPORT}", file=sys.stderr)
    return 0


def write_report(machine: list[str]) -> None:
    """REPORT.md: this machine, then every section file there is, in the fixed section order."""
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    body = ["# edgegen benchmark report", "",
            (f"Assembled {now} from benchmarks/results/sections/ (each section says when it was measured). "
             "Regenerate with `.venv/bin/python benchmarks/run_all.py`."), "", *machine]
    for section in SECTIONS:
        path = SECTION_DIR / f"{section}.md"
        if path.exists():
            body += [path.read_text().strip(), ""]
    REPORT.write_text("\n".join(body) + "\n")


if __name__ == "__main__":
    sys.exit(main())
