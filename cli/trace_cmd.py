"""`coinfer trace`: generate a seeded channel trace (Rayleigh block fading or Gauss-Markov SNR)."""

from __future__ import annotations

import numpy as np
import typer

from coinfer.cli.app import app, console
from coinfer.planner.channel import parse_snr_db
from coinfer.planner.trace import generate_trace
from coinfer.planner.units import fmt_rate, parse_bandwidth_hz, parse_duration_ms
from coinfer.reports.io import check_writable, write_json


@app.command("trace")
def trace_cmd(
    kind: str = typer.Option("rayleigh", "--kind", help="rayleigh (block fading) or gauss-markov (AR(1) SNR in dB)"),
    mean_snr_db: str = typer.Option("10", "--mean-snr-db", help="mean SNR in dB"),
    duration: str = typer.Option("60s", "--duration", help="trace length, e.g. 60s"),
    block: str = typer.Option("100ms", "--block", help="one state per block, e.g. 100ms"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    bandwidth: str | None = typer.Option(None, "--bandwidth", help="adds rate_bps = B log2(1 + SNR), e.g. 10MHz"),
    correlation: float = typer.Option(0.9, "--correlation", help="gauss-markov: AR(1) coefficient per block"),
    sigma_db: float = typer.Option(4.0, "--sigma-db", help="gauss-markov: standard deviation of the SNR, dB"),
    erasure_model: str = typer.Option("none", "--erasure-model", help="adds erasure_p from the SNR: bpsk, qpsk or none"),
    element_bits: int = typer.Option(16, "--element-bits", help="bits per activation element for the erasure model"),
    output: str = typer.Option("trace.json", "--output", "-o", help="the trace (JSON)"),
) -> None:
    """Generate a channel trace with a seed (a model of a channel, not a measurement)."""
    check_writable(output)
    trace = generate_trace(
        kind, mean_snr_db=parse_snr_db(mean_snr_db, "--mean-snr-db"),
        duration_s=parse_duration_ms(duration, "--duration") / 1e3, block_s=parse_duration_ms(block, "--block") / 1e3,
        seed=seed, bandwidth_hz=parse_bandwidth_hz(bandwidth) if bandwidth is not None else None,
        correlation=correlation, sigma_db=sigma_db, erasure_model=None if erasure_model == "none" else erasure_model,
        element_bits=element_bits,
    )
    write_json(trace, output)
    snr = np.array([s.snr_db for s in trace.steps])
    console.print(f"{len(trace.steps)} steps of {trace.generator.block_s * 1e3:g} ms; SNR mean {snr.mean():.2f} dB "
                  f"(min {snr.min():.1f}, max {snr.max():.1f})", highlight=False)
    if trace.steps[0].rate_bps is not None:
        rate = np.array([s.rate_bps for s in trace.steps])
        console.print(f"rate mean {fmt_rate(rate.mean())} (min {fmt_rate(rate.min())}, max {fmt_rate(rate.max())})",
                      highlight=False)
    if trace.steps[0].erasure_p is not None:
        p = np.array([s.erasure_p for s in trace.steps])
        console.print(f"erasure_p mean {p.mean():.3g}, median {np.median(p):.3g}, max {p.max():.3g}", highlight=False)
    console.print(f"model: {trace.generator.model_description}", markup=False, highlight=False)
    console.print(f"wrote {output}")
