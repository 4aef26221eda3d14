"""Fail when a Python file outgrows its line budget: one concept per file, split before it gets long.

    python scripts/check_line_budget.py            # checks the repository this script lives in
    python scripts/check_line_budget.py --root DIR
Library and tool code (the packages, scripts/, benchmarks/) may have up to LIBRARY_MAX_LINES lines, tests up to
TESTS_MAX_LINES (table-driven cases and fixtures run longer). Prints every offender and exits 1 if there is one.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# STYLE: "ideally under 400 lines; split before 600". The longest library file was 465 lines and the longest test
# 270 when these were set, so both hold with room, and a file that crosses them is one to split, not to trim.
LIBRARY_MAX_LINES = 600
TESTS_MAX_LINES = 800
CHECKED_FOLDERS = ("runtime", "quantize", "models", "device", "firmware_bridge", "cli", "scripts", "benchmarks",
                   "tests")
SKIPPED_PARTS = {".venv", "__pycache__", ".git", "build"}


def budget_for(relative: Path) -> int:
    """The line budget of a file, by where it lives (`relative` to the repository root)."""
    return TESTS_MAX_LINES if relative.parts[0] == "tests" else LIBRARY_MAX_LINES


def over_budget(root: Path) -> list[tuple[Path, int, int]]:
    """Every checked .py file under `root` longer than its budget, as (path relative to root, lines, budget)."""
    found = []
    for folder in CHECKED_FOLDERS:
        for path in sorted((root / folder).rglob("*.py")):
            relative = path.relative_to(root)
            if SKIPPED_PARTS.intersection(relative.parts):
                continue
            with path.open("rb") as f:
                lines = sum(1 for _ in f)
            if lines > budget_for(relative):
                found.append((relative, lines, budget_for(relative)))
    return found


def main(argv: list[str] | None = None) -> int:
    """Print the files over their line budget; exit status 1 if there are any."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parents[1],
                        help="repository root (default: the one holding this script)")
    args = parser.parse_args(argv)
    if not (args.root / "pyproject.toml").is_file():
        print(f"check_line_budget: {args.root} is not the repository root (no pyproject.toml there)", file=sys.stderr)
        return 2
    offenders = over_budget(args.root)
    for relative, lines, budget in offenders:
        print(f"{relative}: {lines} lines, budget {budget}: split it into files of one concept each")
    if offenders:
        print(f"check_line_budget: {len(offenders)} file(s) over budget", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
