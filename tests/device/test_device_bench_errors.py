"""`edgegen bench` refuses bad input with one clear line, before loading anything."""
from __future__ import annotations

import sys

import pytest
from device_helpers import SMOLLM2_Q4_1


@pytest.mark.parametrize("argv, message", [
    (["--device", "VULKAN"], "unknown device 'VULKAN': expected one of CPU, CL, CUDA, NV, METAL"),
    (["--gen-tokens", "0"], "--gen-tokens must be a positive integer, got 0"),
    (["--runs", "-1"], "--runs must be a positive integer, got -1"),
    (["--prompt-tokens", "0"], "--prompt-tokens must be a positive integer, got 0"),
    (["--context", "64", "--prompt-tokens", "60", "--gen-tokens", "8"],
     "--prompt-tokens 60 + --gen-tokens 8 do not fit a context of 64 tokens"),
    (["--context", "10000"], "--context 10000 exceeds the model's trained context of 8192"),
    (["--board", "toaster"], "unknown board 'toaster'"),
])
def test_bench_bad_input(edgegen, argv, message):
    code, out, err = edgegen("bench", str(SMOLLM2_Q4_1), *argv)
    assert code == 2 and out == ""
    assert err.startswith("edgegen bench: error: ") and message in err


def test_bench_missing_model(edgegen, tmp_path):
    code, _, err = edgegen("bench", str(tmp_path / "missing.gguf"))
    assert (code, err) == (2, f"edgegen bench: error: model file not found: {tmp_path / 'missing.gguf'}\n")


def test_bench_without_matplotlib_skips_the_plots_and_says_so_first(edgegen, tmp_path, monkeypatch):
    """A runtime-only install has no matplotlib (the 'bench' extra): the measurement runs, the plots are skipped."""
    from device_helpers import sample_report

    from edgegen.device import bench as measurement

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` raises ImportError
    notice_first = []

    def fake_bench(model, runner, settings, track):  # stands in for minutes of measuring; the notice comes first
        notice_first.append("PNG plots skipped" in sys.stderr.getvalue())  # capsys's buffer so far
        return sample_report("q4", 10.0)

    monkeypatch.setattr(measurement, "bench", fake_bench)
    code, out, err = edgegen("bench", str(SMOLLM2_Q4_1), "--results", str(tmp_path))
    assert code == 0 and notice_first == [True]
    assert err == ("edgegen bench: PNG plots skipped: they need matplotlib, the 'bench' extra: "
                   "pip install 'edgegen[bench]'\n")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench-q4.json", "history.csv"]
    assert f"wrote {tmp_path / 'history.csv'}" in out and ".png" not in out


@pytest.mark.skipif(sys.platform == "darwin", reason="METAL works on a Mac")
def test_bench_unusable_backend(edgegen):
    code, out, err = edgegen("bench", str(SMOLLM2_Q4_1), "--device", "METAL", "--no-compile-times")
    assert code == 2 and out == ""
    assert err.startswith("edgegen bench: error: tinygrad device 'METAL' is not usable here")
