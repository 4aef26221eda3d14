"""Measurement library: timer and statistics, memory readings, energy meters over fake sysfs trees, reports."""
from __future__ import annotations

import csv
import time

import numpy as np
import pytest
from device_helpers import sample_report

from edgegen.device.energy import NOT_AVAILABLE, EnergyMeter
from edgegen.device.measure import TokenTimer, current_rss_bytes, latency_stats, peak_rss_bytes, percentile


def test_token_timer_measures_gaps_between_tokens():
    timer = TokenTimer()
    timer.start()
    time.sleep(0.05)
    timer.mark()
    for gap in (0.01, 0.03, 0.02):
        time.sleep(gap)
        timer.mark()
    assert timer.ttft_s == pytest.approx(0.05, abs=0.04)
    lat = timer.token_latencies_ms
    assert len(lat) == 3 and all(g * 1000 - 1 <= m for g, m in zip((0.01, 0.03, 0.02), lat))
    assert timer.decode_tokens_per_s == pytest.approx(3 / (sum(lat) / 1000))


def test_token_timer_without_tokens_reports_nothing():
    timer = TokenTimer()
    timer.start()
    assert timer.ttft_s is None and timer.token_latencies_ms == [] and timer.decode_tokens_per_s is None


def test_latency_stats_agree_with_numpy():
    rng = np.random.default_rng(0)
    values = list(rng.gamma(2.0, 10.0, size=501))
    stats = latency_stats(values)
    assert stats["p50_ms"] == pytest.approx(np.median(values))
    assert stats["p99_ms"] == pytest.approx(np.percentile(values, 99))
    assert stats["max_ms"] == max(values) and stats["p50_ms"] < stats["p99_ms"] <= stats["max_ms"]
    assert percentile([], 50) is None and latency_stats([])["p99_ms"] is None


def test_peak_rss_remembers_a_freed_allocation():
    block = np.ones(200 * 1024 * 1024 // 8)  # 200 MiB, touched
    during = current_rss_bytes()
    assert during >= block.nbytes
    del block
    # Linux syncs per-thread RSS counters lazily (a few hundred KiB of slack between two readings).
    assert peak_rss_bytes() >= during - 1024 * 1024
    assert during > current_rss_bytes() + 150 * 1024 * 1024


def test_peak_rss_of_a_child_is_its_own():
    import subprocess
    import sys

    # getrusage's ru_maxrss would report this (large) parent's size for a forked child; VmHWM does not.
    ballast = np.ones(300 * 1024 * 1024 // 8)
    code = "from edgegen.device.measure import peak_rss_bytes; print(peak_rss_bytes())"
    child = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert child < ballast.nbytes / 2


def test_energy_not_available_without_counters(tmp_path):
    with EnergyMeter(powercap_root=tmp_path / "none", i2c_root=tmp_path / "none") as meter:
        pass
    assert not meter.available and meter.source == NOT_AVAILABLE and meter.joules is None


def test_rapl_counter_difference_and_wraparound(tmp_path):
    zone = tmp_path / "intel-rapl:0"
    sub = tmp_path / "intel-rapl:0:0"  # a subzone: already inside the package figure, must not be added
    for z in (zone, sub):
        z.mkdir()
        (z / "max_energy_range_uj").write_text("1000000\n")
    (zone / "energy_uj").write_text("990000\n")
    (sub / "energy_uj").write_text("5\n")
    meter = EnergyMeter(powercap_root=tmp_path, i2c_root=tmp_path / "none")
    assert meter.source == "powercap/RAPL: intel-rapl:0"
    with meter:
        (zone / "energy_uj").write_text("20000\n")  # wrapped past 1,000,000 uJ
        (sub / "energy_uj").write_text("999999\n")
    assert meter.joules == pytest.approx((1_000_000 - 990_000 + 20_000) / 1e6)


def test_jetson_ina3221_power_is_integrated_over_time(tmp_path):
    hwmon = tmp_path / "ina3221" / "1-0040" / "hwmon" / "hwmon3"
    hwmon.mkdir(parents=True)
    rails = {1: ("VDD_IN", 5000, 1000), 2: ("VDD_CPU_GPU_CV", 5000, 400)}  # label, mV, mA
    for n, (label, mv, ma) in rails.items():
        (hwmon / f"in{n}_label").write_text(label + "\n")
        (hwmon / f"in{n}_input").write_text(f"{mv}\n")
        (hwmon / f"curr{n}_input").write_text(f"{ma}\n")
    meter = EnergyMeter(powercap_root=tmp_path / "none", i2c_root=tmp_path, sample_period_s=0.01)
    assert meter.available and "in1_input" in meter.source and "in2_input" not in meter.source
    start = time.perf_counter()
    with meter:
        time.sleep(0.3)
    elapsed = time.perf_counter() - start
    assert meter.joules == pytest.approx(5.0 * elapsed, rel=0.1)  # VDD_IN only: 5 V x 1 A


def test_report_table_csv_and_plots(tmp_path):
    from edgegen.device.report import append_csv, format_table, plot_comparison, plot_latency, read_history

    table = format_table(sample_report("q4", 10.0))
    assert "decode" in table and "10.0 tok/s" in table and "5.0% of host's 20.0 GB/s" in table
    assert "energy per token" in table and NOT_AVAILABLE in table
    history = tmp_path / "history.csv"
    append_csv(sample_report("q4", 10.0), history)
    append_csv(sample_report("w8", 7.5), history)
    rows = read_history(history)
    assert [r["label"] for r in rows] == ["q4", "w8"] and rows[1]["decode_tok_s"] == "7.5"
    with history.open() as f:
        assert sum(1 for _ in csv.reader(f)) == 3  # one header, two rows
    plot_latency(sample_report("q4", 10.0), tmp_path / "latency.png")
    plot_comparison(rows, tmp_path / "comparison.png")
    for name in ("latency.png", "comparison.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
