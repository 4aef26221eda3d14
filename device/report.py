"""Bench reports: a text table, an appended CSV history, and PNG plots (matplotlib, Agg backend).

A report is a plain JSON-ready dict (see device/bench.py for its fields); these functions only present it.
"""
from __future__ import annotations

import csv
import math
from pathlib import Path

MIB = 1024 * 1024

# The scalar fields a CSV history row keeps, in column order.
CSV_FIELDS = (
    "timestamp", "label", "model", "device", "board", "prompt_tokens", "gen_tokens", "runs", "load_s", "ttft_s",
    "prefill_tok_s", "decode_tok_s", "latency_p50_ms", "latency_p99_ms", "peak_rss_bytes", "peak_device_bytes",
    "compile_cold_s", "compile_warm_s", "kernel_compile_s", "achieved_bandwidth_bytes_per_s", "bandwidth_share",
    "joules_per_token",
)


def _fmt(value, unit: str = "", scale: float = 1.0, digits: int = 2) -> str:
    if value is None or isinstance(value, str):
        return value or "-"
    return f"{value / scale:,.{digits}f}{unit}"


def format_table(r: dict) -> str:
    """Two aligned columns: what was measured and its value."""
    rows = [
        ("model", f"{r['label']} ({r['model']})"),
        ("device / board", f"{r['device']} / {r['board']}"),
        ("prompt / generated tokens", f"{r['prompt_tokens']} / {r['gen_tokens']} x {r['runs']} runs"),
        ("load", _fmt(r["load_s"], " s")),
        ("time to first token", _fmt(r["ttft_s"], " s", digits=3)),
        ("prefill", _fmt(r["prefill_tok_s"], " tok/s", digits=1)),
        ("decode", _fmt(r["decode_tok_s"], " tok/s", digits=1)),
        ("per-token latency p50 / p99", f"{_fmt(r['latency_p50_ms'], ' ms', digits=1)} / "
                                        + _fmt(r["latency_p99_ms"], " ms", digits=1)),
        ("peak host RSS", _fmt(r["peak_rss_bytes"], " MiB", MIB, 1)),
        ("peak tinygrad device memory", _fmt(r["peak_device_bytes"], " MiB", MIB, 1)),
        ("start to first token, cold / warm caches", f"{_fmt(r['compile_cold_s'], ' s', digits=1)} / "
                                               + _fmt(r["compile_warm_s"], " s", digits=1)),
        ("compile + capture time (cold - warm)", _fmt(r["kernel_compile_s"], " s", digits=1)),
        ("achieved memory bandwidth", (f"{_fmt(r['achieved_bandwidth_bytes_per_s'], ' GB/s', 1e9)} = "
                                       f"{_fmt(r['bandwidth_share'], '%', 0.01, 1)} of {r['board']}'s "
                                       f"{_fmt(r['board_bandwidth_bytes_per_s'], ' GB/s', 1e9, 1)}")),
        ("energy per token", _fmt(r["joules_per_token"], " J", digits=3) if r["joules_per_token"] is not None
         else f"{r['energy_source']}"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)


def append_csv(r: dict, path: Path) -> None:
    """Append one row of the report's scalar fields; write the header if the file is new."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with path.open("a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=CSV_FIELDS, extrasaction="ignore")
        if new:
            w.writeheader()
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in CSV_FIELDS})


def read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a board or in CI
    import matplotlib.pyplot as plt

    return plt


def plot_latency(r: dict, path: Path) -> None:
    """Per-token latency over each measured run (one line per run), with the p50 and p99 marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    for i, lat in enumerate(r["token_latencies_ms"]):
        ax.plot(range(2, len(lat) + 2), lat, marker=".", linewidth=1, label=f"run {i + 1}")
    for q in ("p50", "p99"):
        value = r[f"latency_{q}_ms"]
        if value is not None and math.isfinite(value):
            ax.axhline(value, linestyle="--", linewidth=0.8, color="gray")
            ax.annotate(f"{q} {value:.1f} ms", (1, value), textcoords="offset points", xytext=(4, 2), fontsize=8)
    ax.set_xlabel("generated token")
    ax.set_ylabel("latency (ms)")
    ax.set_title(f"{r['label']} on {r['device']}: per-token decode latency")
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_comparison(history: list[dict], path: Path) -> None:
    """Bar charts of decode tok/s, prefill tok/s and peak RSS: the latest history row per (label, device)."""
    latest: dict[tuple[str, str], dict] = {}
    for row in history:
        latest[(row["label"], row["device"])] = row
    if not latest:
        return
    plt = _pyplot()
    names = [f"{label}\n{dev}" for label, dev in latest]

    def values(key: str, scale: float) -> list[float]:
        return [float(row[key]) / scale if row.get(key) else 0.0 for row in latest.values()]

    panels = (("decode_tok_s", "decode tok/s", 1.0, "tab:blue"), ("prefill_tok_s", "prefill tok/s", 1.0, "tab:orange"),
              ("peak_rss_bytes", "peak RSS (MiB)", MIB, "tab:green"))
    fig, axes = plt.subplots(1, len(panels), figsize=(max(8, 2 + 2.4 * len(names)), 4))
    for ax, (key, title, scale, color) in zip(axes, panels, strict=True):
        bars = ax.bar(names, values(key, scale), color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
        ax.set_title(title)
        ax.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
