"""Channel traces and state distributions: reading (JSON or CSV), checking, and generating with a seed.

**Files.** JSON: the versioned documents of :mod:`coinfer.reports.trace` (``channel_trace``,
``channel_states``). CSV: an optional first line ``# coinfer channel_trace v1`` (or
``channel_states``), then a header naming columns from ``t_s, rate_bps, snr_db, erasure_p`` (a
trace; ``t_s`` required) or ``probability, rate_bps, snr_db, erasure_p`` (a distribution;
``probability`` required), then one row per state; an empty cell is "not given". Anything else -
an unknown column, a missing or non-monotonic timestamp, a value that is not a number, an erasure
probability outside [0, 1] - is refused in one line.

**Generators** (all seeded; ``numpy.random.default_rng(seed)``), one state per block of
``block_s`` seconds:

* ``rayleigh`` - block fading: the power gain of each block is exponential with mean 1 (the
  squared magnitude of a unit complex Gaussian), independent across blocks; SNR = mean SNR x gain.
* ``gauss-markov`` - the SNR in dB follows a stationary AR(1):
  ``x[k] = m + rho (x[k-1] - m) + sqrt(1 - rho^2) sigma w[k]``, ``w`` standard normal and
  ``x[0] ~ N(m, sigma^2)``; the lag-1 correlation is ``rho`` and the spread ``sigma``.

With ``bandwidth_hz`` each state gets the Shannon rate ``B log2(1 + SNR)``; with an erasure model
each gets ``erasure_p`` from the SNR (:func:`coinfer.planner.channel.erasure_from_snr`: uncoded
BPSK/QPSK bit errors, an element erased when any of its bits is wrong - a model, not a measurement).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import numpy as np
from pydantic import ValidationError

from coinfer.errors import SchemaError, UserInputError
from coinfer.planner.channel import ERASURE_MODELS, ChannelState, erasure_from_snr, shannon_rate_from_snr
from coinfer.reports.io import load_document, read_json_file
from coinfer.reports.trace import STATE_COLUMNS, ChannelStates, ChannelTrace, TraceGenerator

GENERATORS = ("rayleigh", "gauss-markov")
_MAX_STEPS = 10_000_000


def _number(text: str, where: str, column: str) -> float | None:
    s = text.strip()
    if s == "":
        return None
    try:
        v = float(s)
    except ValueError:
        raise SchemaError(f"{where}: {column} {s!r} is not a number") from None
    if not math.isfinite(v):
        raise SchemaError(f"{where}: {column} {s!r} is not a finite number")
    return v


def _csv_rows(path: Path, kind: str, key: str) -> list[dict]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if lines and lines[0].startswith("#"):
        head = lines[0].lstrip("#").split()
        if len(head) >= 3 and head[0] == "coinfer" and (head[1] != kind or head[2] != "v1"):
            raise SchemaError(f"{path}: {' '.join(head[1:3])} is not a {kind} v1 file")
        lines = [ln for ln in lines if not ln.startswith("#")]
    reader = csv.reader(io.StringIO("\n".join(lines)))
    header = [h.strip() for h in next(reader, [])]
    allowed = (key, *STATE_COLUMNS)
    unknown = [h for h in header if h not in allowed]
    if unknown or key not in header:
        bad = f"unknown column {unknown[0]!r}" if unknown else f"no {key} column"
        raise SchemaError(f"{path}: {bad} (expected a header of {', '.join(allowed)})")
    rows = []
    for n, cells in enumerate(reader, start=1):
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise SchemaError(f"{path}: row {n}: {len(cells)} cells for {len(header)} columns")
        row = {h: _number(c, f"{path}: row {n}", h) for h, c in zip(header, cells, strict=True)}
        if row[key] is None:
            raise SchemaError(f"{path}: row {n}: missing {key}")
        rows.append({k: v for k, v in row.items() if v is not None})
    return rows


def _validated(cls, path: Path, body: dict):
    try:
        return cls.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = [str(x) for x in first["loc"]]
        where = f"row {int(loc[1]) + 1}: {'.'.join(loc[2:])}" if len(loc) >= 2 and loc[1].isdigit() else ".".join(loc)
        msg = first["msg"].removeprefix("Value error, ")
        raise SchemaError(f"{path}: {where + ': ' if where else ''}{msg}") from None


def _is_csv(path: Path) -> bool:
    if path.suffix.lower() == ".csv":
        return True
    if not path.exists():
        raise UserInputError(f"{path}: no such file")
    return not path.read_text(encoding="utf-8", errors="replace").lstrip().startswith("{")


def load_trace(path: str) -> ChannelTrace:
    """A trace from JSON or CSV.

    Raises:
        SchemaError: Missing or non-monotonic timestamps, values out of range, unknown columns.
        UserInputError: No such file.
    """
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{p}: no such file")
    if _is_csv(p):
        return _validated(ChannelTrace, p, {"steps": _csv_rows(p, "channel_trace", "t_s")})
    data = read_json_file(p)
    if isinstance(data, dict) and data.get("kind") == "channel_trace" and data.get("schema_version") == 1:
        return _validated(ChannelTrace, p, data)
    return load_document(p, ChannelTrace)


def load_states(path: str) -> ChannelStates:
    """A distribution of states from JSON or CSV (same refusals as :func:`load_trace`)."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{p}: no such file")
    if _is_csv(p):
        return _validated(ChannelStates, p, {"states": _csv_rows(p, "channel_states", "probability")})
    data = read_json_file(p)
    if isinstance(data, dict) and data.get("kind") == "channel_states" and data.get("schema_version") == 1:
        return _validated(ChannelStates, p, data)
    return load_document(p, ChannelStates)


def trace_states(trace: ChannelTrace) -> list[ChannelState]:
    """The trace's steps as planner states."""
    return [ChannelState(s.rate_bps, s.snr_db, s.erasure_p, t_s=s.t_s) for s in trace.steps]


def distribution_states(doc: ChannelStates) -> list[ChannelState]:
    """The distribution's states as planner states."""
    return [ChannelState(s.rate_bps, s.snr_db, s.erasure_p, probability=s.probability) for s in doc.states]


def _check_generator(kind: str, block_s: float, duration_s: float, correlation: float, sigma_db: float,
                     erasure_model: str | None, mean_snr_db: float) -> int:
    if kind not in GENERATORS:
        raise UserInputError(f"--kind {kind!r}: expected one of {', '.join(GENERATORS)}")
    if not math.isfinite(mean_snr_db):
        raise UserInputError(f"--mean-snr-db {mean_snr_db!r}: not a finite number")
    if not (block_s > 0 and duration_s > 0 and math.isfinite(block_s) and math.isfinite(duration_s)):
        raise UserInputError("--block and --duration must be positive")
    steps = int(round(duration_s / block_s))
    if steps < 1 or steps > _MAX_STEPS:
        raise UserInputError(f"--duration / --block = {duration_s / block_s:.6g} steps: must be 1..{_MAX_STEPS}")
    if kind == "gauss-markov" and not (-1 < correlation < 1 and sigma_db >= 0 and math.isfinite(sigma_db)):
        raise UserInputError("--correlation must lie in (-1, 1) and --sigma-db be a finite number >= 0")
    if erasure_model is not None and erasure_model not in ERASURE_MODELS:
        raise UserInputError(f"--erasure-model {erasure_model!r}: expected {', '.join(ERASURE_MODELS)} or none")
    return steps


def snr_series(kind: str, steps: int, mean_snr_db: float, seed: int, correlation: float = 0.9,
               sigma_db: float = 4.0) -> np.ndarray:
    """The SNR [dB] of each block (the module note's generators)."""
    rng = np.random.default_rng(seed)
    if kind == "rayleigh":
        gain = rng.exponential(1.0, steps)
        return mean_snr_db + 10.0 * np.log10(np.maximum(gain, 1e-300))
    x = np.empty(steps)
    w = rng.standard_normal(steps)
    x[0] = mean_snr_db + sigma_db * w[0]
    innovation = math.sqrt(1.0 - correlation ** 2) * sigma_db
    for k in range(1, steps):
        x[k] = mean_snr_db + correlation * (x[k - 1] - mean_snr_db) + innovation * w[k]
    return x


def generate_trace(
    kind: str,
    *,
    mean_snr_db: float,
    duration_s: float,
    block_s: float,
    seed: int = 0,
    bandwidth_hz: float | None = None,
    correlation: float = 0.9,
    sigma_db: float = 4.0,
    erasure_model: str | None = None,
    element_bits: int = 16,
) -> ChannelTrace:
    """A seeded trace (see the module note).

    Raises:
        UserInputError: Unknown kind or erasure model, non-positive block or duration, a
            correlation outside (-1, 1), or too many steps.
    """
    steps = _check_generator(kind, block_s, duration_s, correlation, sigma_db, erasure_model, mean_snr_db)
    if bandwidth_hz is not None and not (math.isfinite(bandwidth_hz) and bandwidth_hz > 0):
        raise UserInputError(f"--bandwidth {bandwidth_hz!r}: must be positive")
    if element_bits < 1:
        raise UserInputError(f"--element-bits {element_bits}: must be at least 1")
    snr = snr_series(kind, steps, mean_snr_db, seed, correlation, sigma_db)
    rate = shannon_rate_from_snr(bandwidth_hz, snr) if bandwidth_hz is not None else None
    erasure = erasure_from_snr(snr, erasure_model, element_bits) if erasure_model is not None else None
    rows = []
    for k in range(steps):
        row = {"t_s": round(k * block_s, 9), "snr_db": float(snr[k])}
        if rate is not None:
            row["rate_bps"] = max(float(rate[k]), 1e-3)  # a deep fade still carries a trickle
        if erasure is not None:
            row["erasure_p"] = float(min(1.0, max(0.0, erasure[k])))
        rows.append(row)
    gm = kind == "gauss-markov"
    desc = (f"{'Rayleigh block fading: SNR = mean x Exp(1) power gain per block' if not gm else 'Gauss-Markov SNR: AR(1) in dB'}"
            f"{'; rate = B log2(1 + SNR)' if bandwidth_hz else ''}"
            f"{f'; erasure_p = 1 - (1 - BER_{erasure_model}(SNR))^{element_bits} (uncoded, a model)' if erasure_model else ''}")
    gen = TraceGenerator(kind=kind, seed=seed, mean_snr_db=mean_snr_db, block_s=block_s, duration_s=duration_s,
                         bandwidth_hz=bandwidth_hz, correlation=correlation if gm else None,
                         sigma_db=sigma_db if gm else None, erasure_model=erasure_model,
                         element_bits=element_bits if erasure_model else None, model_description=desc)
    return ChannelTrace(generator=gen, steps=rows, notes=[desc])
