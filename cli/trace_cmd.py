"""`coinfer trace`: generate a seeded channel trace (Rayleigh block fading or Gauss-Markov SNR)."""

from __future__ import annotations

from enum import StrEnum

import numpy as np
import typer

from coinfer.cli.common import LINK, Output, command, json_option, output_option, quiet_option, verbose_option
from coinfer.planner.channel import parse_snr_db
from coinfer.planner.trace import generate_trace
from coinfer.reports.io import check_writable, write_json
from coinfer.units import fmt_rate, parse_duration_ms, parse_frequency_hz


class TraceKind(StrEnum):
    rayleigh = "rayleigh"
    gauss_markov = "gauss-markov"


class ErasureModel(StrEnum):
    none = "none"
    bpsk = "bpsk"
    qpsk = "qpsk"


@command("trace")
def trace_cmd(
    kind: TraceKind = typer.Option(TraceKind.rayleigh, "--kind", rich_help_panel=LINK,
                                   help="rayleigh (block fading) or gauss-markov (AR(1) SNR in dB)"),
    mean_snr_db: str = typer.Option("10", "--mean-snr-db", help="mean SNR in dB"),
    duration: str = typer.Option("60s", "--duration", help="trace length, e.g. 60s"),
    block: str = typer.Option("100ms", "--block", help="one state per block, e.g. 100ms"),
    seed: int = typer.Option(0, "--seed", help="random seed"),
    bandwidth: str | None = typer.Option(None, "--bandwidth", help="adds rate_bps = B log2(1 + SNR), e.g. 10MHz"),
    correlation: float = typer.Option(0.9, "--correlation", help="gauss-markov: AR(1) coefficient per block"),
    sigma_db: float = typer.Option(4.0, "--sigma-db", help="gauss-markov: standard deviation of the SNR, dB"),
    erasure_model: ErasureModel = typer.Option(ErasureModel.none, "--erasure-model",
                                               help="adds erasure_p from the SNR of uncoded BPSK or QPSK"),
    element_bits: int = typer.Option(16, "--element-bits", help="bits per activation element for the erasure model"),
    output: str | None = output_option("trace", default=None),
    as_json: bool = json_option("trace"),
    quiet: bool = quiet_option(),
    verbose: bool = verbose_option(),
) -> None:
    """Generate a channel trace with a seed (a model of a channel, not a measurement)."""
    out = Output.of(quiet, verbose, as_json)
    if output is None and not as_json:
        output = "trace.json"
    if output is not None:
        check_writable(output)
    trace = generate_trace(
        kind.value, mean_snr_db=parse_snr_db(mean_snr_db, "--mean-snr-db"),
        duration_s=parse_duration_ms(duration, "--duration") / 1e3, block_s=parse_duration_ms(block, "--block") / 1e3,
        seed=seed, bandwidth_hz=parse_frequency_hz(bandwidth) if bandwidth is not None else None,
        correlation=correlation, sigma_db=sigma_db, erasure_model=None if erasure_model == ErasureModel.none else erasure_model.value,
        element_bits=element_bits,
    )
    if output is not None:
        write_json(trace, output)
    if as_json:
        out.emit_json(trace)
        return
    snr = np.array([s.snr_db for s in trace.steps])
    out.print(f"{len(trace.steps)} steps of {trace.generator.block_s * 1e3:g} ms; SNR mean {snr.mean():.2f} dB "
                  f"(min {snr.min():.1f}, max {snr.max():.1f})", highlight=False)
    if trace.steps[0].rate_bps is not None:
        rate = np.array([s.rate_bps for s in trace.steps])
        out.print(f"rate mean {fmt_rate(rate.mean())} (min {fmt_rate(rate.min())}, max {fmt_rate(rate.max())})",
                      highlight=False)
    if trace.steps[0].erasure_p is not None:
        p = np.array([s.erasure_p for s in trace.steps])
        out.print(f"erasure_p mean {p.mean():.3g}, median {np.median(p):.3g}, max {p.max():.3g}", highlight=False)
    out.print(f"model: {trace.generator.model_description}", markup=False, highlight=False)
    out.wrote(output)
