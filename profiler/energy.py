"""Energy readers: RAPL package counters, NVML total energy, or a labelled power-model estimate.

A reader returns a cumulative energy in joules; callers take differences over a window of
repeated runs long enough for the counter to move. Estimates are never reported as readings:
the profile carries ``energy_source`` (``rapl``, ``nvml``, ``estimate`` or ``none``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RAPL_ROOT = Path("/sys/class/powercap")


@dataclass
class RaplDomain:
    """One RAPL package domain: its counter file and the value at which it wraps."""

    energy_file: Path
    max_range_uj: int
    name: str


class RaplReader:
    """Sum of the package domains' energy counters, wraparound handled between reads.

    Args:
        domains: Package domains to read (see :func:`find_rapl_domains`).
    """

    source = "rapl"
    min_window_s = 0.05  # counters tick about every millisecond

    def __init__(self, domains: list[RaplDomain]) -> None:
        self.domains = domains
        self._last = [self._raw(d) for d in domains]
        self._total_uj = 0

    @staticmethod
    def _raw(domain: RaplDomain) -> int:
        return int(domain.energy_file.read_text().strip())

    def read_j(self) -> float:
        """Cumulative joules since this reader was made."""
        for i, d in enumerate(self.domains):
            now = self._raw(d)
            delta = now - self._last[i]
            if delta < 0:  # the counter wrapped past max_energy_range_uj
                delta += d.max_range_uj
            self._total_uj += delta
            self._last[i] = now
        return self._total_uj / 1e6


def find_rapl_domains(root: Path = RAPL_ROOT) -> list[RaplDomain]:
    """Readable top-level RAPL package domains under ``root`` (empty when there are none).

    Sub-domains (``intel-rapl:0:0`` core, uncore, dram) are inside the package figure, so only
    package-level ``intel-rapl:<n>`` folders are used.
    """
    out: list[RaplDomain] = []
    try:
        entries = sorted(root.glob("intel-rapl:*"))
    except OSError:
        return out
    for entry in entries:
        if entry.name.count(":") != 1:
            continue
        energy, max_range = entry / "energy_uj", entry / "max_energy_range_uj"
        try:
            int(energy.read_text().strip())
            rng = int(max_range.read_text().strip())
            name = (entry / "name").read_text().strip() if (entry / "name").exists() else entry.name
        except (OSError, ValueError):
            continue  # not readable (often root-only): fall back to another source
        out.append(RaplDomain(energy, rng, name))
    return out


class NvmlReader:
    """NVML total energy of one GPU (millijoules since the driver loaded)."""

    source = "nvml"
    min_window_s = 0.25  # the counter is updated less often than RAPL

    def __init__(self, index: int = 0) -> None:
        import pynvml

        pynvml.nvmlInit()
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        self._start_mj = pynvml.nvmlDeviceGetTotalEnergyConsumption(self._handle)

    def read_j(self) -> float:
        """Cumulative joules since this reader was made."""
        return (self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) - self._start_mj) / 1e3


def open_nvml(index: int = 0) -> NvmlReader | None:
    """An NVML reader for GPU ``index``, or None when NVML or its energy counter is unavailable."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        return NvmlReader(index)
    except pynvml.NVMLError:  # no driver, no such GPU, or the energy counter is not supported
        return None


def open_hardware_reader(device: str) -> RaplReader | NvmlReader | None:
    """The hardware energy counter for ``device`` (``cpu``: RAPL, ``cuda``: NVML), or None."""
    if device == "cuda":
        return open_nvml()
    domains = find_rapl_domains()
    return RaplReader(domains) if domains else None


def codecarbon_cpu_power_w() -> float | None:
    """codecarbon's power model for this CPU (its TDP table, or 4 W per thread), or None."""
    try:
        from codecarbon.core.cpu import TDP
    except ImportError:
        return None
    log = logging.getLogger("codecarbon")
    old = log.level
    log.setLevel(logging.ERROR)  # it warns about CPUs it does not know
    try:
        tdp = TDP().tdp
    except Exception:  # noqa: BLE001 - codecarbon raises anything on a CPU it does not know; no TDP then
        return None
    finally:
        log.setLevel(old)
    return float(tdp) if tdp else None


def measure_window(
    reader: Any, fn: Callable[[], Any], sync: Callable[[], None], min_window_s: float, clock: Callable[[], float]
) -> tuple[float, int]:
    """Run ``fn`` repeatedly until at least ``min_window_s`` passed; return (joules per call, calls)."""
    sync()
    e0, t0 = reader.read_j(), clock()
    calls = 0
    while True:
        fn()
        calls += 1
        if calls >= 3 and clock() - t0 >= min_window_s:
            sync()
            if clock() - t0 >= min_window_s:
                break
    e1 = reader.read_j()
    return max(e1 - e0, 0.0) / calls, calls


@dataclass
class EmissionsRun:
    """A running codecarbon tracker (quiet, nothing written to disk)."""

    tracker: Any

    def stop(self) -> dict[str, float] | None:
        """Stop and return energy_kwh, emissions_kg_co2eq and duration_s, or None on failure."""
        try:
            kg = self.tracker.stop()
            data = self.tracker.final_emissions_data
            return {
                "energy_kwh": float(data.energy_consumed),
                "emissions_kg_co2eq": float(kg or 0.0),
                "duration_s": float(data.duration),
            }
        except Exception:  # noqa: BLE001 - a failed emissions summary must not lose the profile
            return None


def start_emissions(country_iso_code: str = "USA") -> EmissionsRun | None:
    """Start codecarbon's offline tracker for the whole run, or None if it cannot start."""
    try:
        from codecarbon import OfflineEmissionsTracker
    except ImportError:
        return None
    logging.getLogger("codecarbon").setLevel(logging.ERROR)  # it logs before applying log_level
    try:
        tracker = OfflineEmissionsTracker(
            country_iso_code=country_iso_code,
            save_to_file=False,
            log_level="error",
            tracking_mode="process",
        )
        tracker.start()
    except Exception:  # noqa: BLE001 - codecarbon failing to start must not stop the profile (no summary then)
        return None
    return EmissionsRun(tracker)
