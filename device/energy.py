"""Energy over an interval, where the board exposes it: Linux powercap (RAPL) counters or Jetson INA3221 sensors.

Where neither exists (VMs, most ARM SBCs, macOS without root) the meter says "not available" instead of guessing.
- powercap: /sys/class/powercap/<zone>/energy_uj is a cumulative microjoule counter that wraps at
  max_energy_range_uj (Linux Documentation/power/powercap/powercap.rst). Top-level zones are the packages;
  their subzones (core, uncore, dram) are already inside the package figure, so only top-level ones are summed.
- Jetson: the INA3221 monitors give instantaneous rail voltage (mV) and current (mA) through hwmon
  (Orin: /sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*/in<N>_input, curr<N>_input, in<N>_label); the board input
  rail is labelled VDD_IN. Power is sampled on a thread and integrated over time (trapezoids).
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Self

NOT_AVAILABLE = "not available"


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def rapl_zones(root: Path = Path("/sys/class/powercap")) -> list[Path]:
    """Top-level powercap zones with a readable energy counter (intel-rapl:0, amd-rapl:0 style names)."""
    if not root.is_dir():
        return []
    zones = [z for z in sorted(root.iterdir()) if z.name.count(":") == 1 and _read_int(z / "energy_uj") is not None]
    return zones


def ina_power_channels(root: Path = Path("/sys/bus/i2c/drivers")) -> list[tuple[Path, Path]]:
    """(voltage, current) file pairs of the Jetson board-input rail, or of every rail if none is labelled VDD_IN."""
    pairs: list[tuple[Path, Path]] = []
    vdd_in: list[tuple[Path, Path]] = []
    for hwmon in sorted(root.glob("ina3221*/*/hwmon/hwmon*")):
        for volt in sorted(hwmon.glob("in*_input")):
            n = volt.name[2:-len("_input")]
            curr = hwmon / f"curr{n}_input"
            if not curr.exists():
                continue
            label = (hwmon / f"in{n}_label")
            name = label.read_text().strip() if label.exists() else ""
            (vdd_in if name.startswith("VDD_IN") else pairs).append((volt, curr))
    return vdd_in or pairs


class EnergyMeter:
    """`with EnergyMeter() as m: ...` then `m.joules` (None if the board exposes no counter) and `m.source`."""

    def __init__(self, powercap_root: Path = Path("/sys/class/powercap"),
                 i2c_root: Path = Path("/sys/bus/i2c/drivers"), sample_period_s: float = 0.05):
        self.zones = rapl_zones(powercap_root)
        self.channels = [] if self.zones else ina_power_channels(i2c_root)
        self.sample_period_s = sample_period_s
        self.joules: float | None = None
        if self.zones:
            self.source = "powercap/RAPL: " + ", ".join(z.name for z in self.zones)
        elif self.channels:
            self.source = "INA3221 hwmon: " + ", ".join(str(v.parent) + "/" + v.name for v, _ in self.channels)
        else:
            self.source = NOT_AVAILABLE
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return self.source != NOT_AVAILABLE

    def _power_w(self) -> float:
        return sum((_read_int(v) or 0) * (_read_int(c) or 0) for v, c in self.channels) / 1e6  # mV * mA = uW

    def _sample(self) -> None:
        last_t, last_p = time.perf_counter(), self._power_w()
        while not self._stop.wait(self.sample_period_s):
            t, p = time.perf_counter(), self._power_w()
            self.joules += (p + last_p) / 2 * (t - last_t)  # type: ignore[operator]  # __enter__ set it to 0.0
            last_t, last_p = t, p
        t, p = time.perf_counter(), self._power_w()
        self.joules += (p + last_p) / 2 * (t - last_t)  # type: ignore[operator]

    def __enter__(self) -> Self:
        self.joules = None
        if self.zones:
            self._start_uj = [_read_int(z / "energy_uj") or 0 for z in self.zones]
        elif self.channels:
            self.joules = 0.0
            self._stop.clear()
            self._thread = threading.Thread(target=self._sample, name="energy-meter", daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        if self.zones:
            total_uj = 0
            for zone, start in zip(self.zones, self._start_uj):
                end = _read_int(zone / "energy_uj") or 0
                wrap = _read_int(zone / "max_energy_range_uj") or 0
                total_uj += end - start if end >= start else end + wrap - start  # the counter wrapped once
            self.joules = total_uj / 1e6
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
