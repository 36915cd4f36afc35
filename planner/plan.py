"""`coinfer plan` as one library call: load and check the inputs, search, and build the Plan."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from coinfer.errors import SchemaError, UserInputError
from coinfer.planner.chain import build_chain_problem, describe_chain, solve_chain
from coinfer.planner.cost import (
    Budgets,
    Objective,
    Workload,
    build_cost_model,
    check_compatible,
    derive_server_profile,
)
from coinfer.planner.link import Link
from coinfer.planner.search import rate_table, search, sweep_rates
from coinfer.reports.io import file_sha256, load_document
from coinfer.reports.plan import InputFile, Plan
from coinfer.reports.precision import PrecisionReport
from coinfer.reports.profile import Profile
from coinfer.reports.prune import PruneReport
from coinfer.vocab import DEFAULT_DECODE_STEPS  # noqa: E402  (re-exported)

if TYPE_CHECKING:  # robust imports this module
    from coinfer.planner.robust import RobustSpec

MODEL_NOTES = [
    "link: half the RTT each way per phase that waits on the link; a split pays one round trip per decoded token; "
    "all-on-server sends token ids once and streams generated ids back",
    "decode cost at context n+i: linear interpolation of the profile's decode contexts; beyond them, linear "
    "extrapolation when the end segment rises, flat when it falls",
    "DVFS: device latency x 1/a, device compute energy x a^2; transmit energy = power x airtime",
]


@dataclass
class ChainSpec:
    """Several devices in a chain.

    Attributes:
        links: (rate_bps, rtt_ms) by 'a-b' for each consecutive pair of members; the last device's
            link to the server defaults to the request's --rate/--rtt.
        objective: 'latency' or 'throughput'.
        memory_caps: Bytes per member name.
    """

    links: dict[str, tuple[float, float]]
    objective: str = "latency"
    memory_caps: dict[str, float] = field(default_factory=dict)


@dataclass
class PlanRequest:
    """Everything `coinfer plan` was asked, already parsed into SI numbers.

    Attributes:
        devices: (name, path) of the device profile(s); several = a chain, in order.
        server: Path of the server profile, or None with ``server_speedup``.
        server_speedup: Derive the server from the (first) device profile, X times faster.
        prune: Path of a pruning report, or None.
        precision: Path of a precision report (``coinfer quantize``), or None: the device's weight
            precision is then chosen with the cut.
        link: The device-server link (for a chain: the last device to the server).
        prompt_tokens: Prompt length; None = the device profile's seq_len.
        decode_steps: Decoding steps after the prefill (the prefill yields the first token, so m steps
            give m + 1 generated tokens); None = :data:`DEFAULT_DECODE_STEPS` for a decoder, 0 otherwise.
        objective: latency, energy or weighted.
        energy_weight_ms_per_j: For 'weighted'.
        budgets: The budgets.
        freq_range: (lo, hi, steps) of the device frequency scale.
        sweep: (lo_bps, hi_bps, points) of a log-spaced rate sweep, or None.
        chain: For several devices.
        wire_dtype: Activation dtype on the wire for a chain (a single split uses ``link.wire_dtype``).
        robust: A robustness profile, quality budget and channel states
            (:class:`coinfer.planner.robust.RobustSpec`): the plan becomes a policy.
    """

    devices: list[tuple[str, str]]
    link: Link | None = None
    server: str | None = None
    server_speedup: float | None = None
    prune: str | None = None
    precision: str | None = None
    prompt_tokens: int | None = None
    decode_steps: int | None = None
    objective: str = "latency"
    energy_weight_ms_per_j: float = 1000.0
    budgets: Budgets = field(default_factory=Budgets)
    freq_range: tuple[float, float, int] = (1.0, 1.0, 1)
    sweep: tuple[float, float, int] | None = None
    chain: ChainSpec | None = None
    wire_dtype: str = "fp32"
    robust: RobustSpec | None = None


def _chain_link(link: Link | None, last_hop: tuple[float, float], wire_dtype: str):
    if link is not None:
        return link.describe(None)
    return Link(rate_bps=last_hop[0], rtt_ms=last_hop[1], wire_dtype=wire_dtype).describe(None)


def freq_grid(lo: float, hi: float, steps: int) -> np.ndarray:
    """The DVFS scales searched: ``steps`` evenly spaced values from lo to hi.

    Raises:
        UserInputError: Not positive, not finite, or lo > hi.
    """
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or lo > hi or steps < 1:
        raise UserInputError(f"frequency range {lo:g}:{hi:g}:{steps}: needs 0 < lo <= hi and steps >= 1")
    # Highest first: where the frequency does not matter (nothing on the device), ties keep nominal.
    return np.array([hi]) if steps == 1 or lo == hi else np.linspace(hi, lo, steps)


def input_file(role: str, path: str, derived: bool = False, derivation: str | None = None) -> InputFile:
    """A file the plan was computed from, with its sha256."""
    return InputFile(role=role, path=str(path), sha256=file_sha256(path), derived=derived, derivation=derivation)


@dataclass
class Prepared:
    """What every plan starts from: the request's files loaded and checked."""

    objective: Objective
    freqs: np.ndarray
    profiles: list[tuple[str, Profile]]
    device: Profile
    server: Profile | None
    prune: PruneReport | None
    inputs: list[InputFile]
    precision: PrecisionReport | None
    notes: list[str]
    workload: Workload


def make_plan(req: PlanRequest) -> Plan:
    """Load the inputs named in ``req``, search exactly, and return the Plan document.

    Raises:
        UserInputError: Inconsistent options.
        SchemaError: Input files of the wrong kind, version or model.
        InfeasibleError: No configuration meets the budgets (says which binds, by how much).
    """
    if req.robust is not None:
        from coinfer.planner.robust import robust_plan

        return robust_plan(req).plan
    p = prepare(req)
    if req.chain is not None:
        return _chain_plan(req, p.profiles, p.server, p.workload, p.objective, p.inputs, p.notes)
    return _single_plan(req, p)


def prepare(req: PlanRequest) -> Prepared:
    """Check the request's options and load its profiles (and pruning report).

    Raises:
        UserInputError: Inconsistent options.
        SchemaError: Input files of the wrong kind, version or model.
    """
    if not req.devices:
        raise UserInputError("give at least one --device-profile")
    if req.server is not None and req.server_speedup is not None:
        raise UserInputError("give one of --server-profile FILE and --server-speedup X, not both")
    if req.chain is None:
        if len(req.devices) > 1:
            raise UserInputError("several --device-profile files make a chain: give a --link for each consecutive "
                                 "pair")
        if req.server is None and req.server_speedup is None:
            raise UserInputError("give --server-profile FILE, or --server-speedup X to derive one from the device")
        if req.link is None:
            raise UserInputError("give a link: --rate RATE, or --bandwidth/--tx-power/--channel-gain/--noise-density")
    objective = Objective(req.objective, req.energy_weight_ms_per_j)
    freqs = freq_grid(*req.freq_range)
    profiles = [(name, load_document(path, Profile)) for name, path in req.devices]
    inputs = [input_file(name if len(req.devices) > 1 else "device", path) for name, path in req.devices]
    device = profiles[0][1]
    notes = list(MODEL_NOTES)
    server: Profile | None = None
    if req.server is not None:
        server = load_document(req.server, Profile)
        inputs.append(input_file("server", req.server))
    elif req.server_speedup is not None:
        server = derive_server_profile(device, req.server_speedup)
        inputs.append(input_file("server", req.devices[0][1], derived=True,
                             derivation=f"{req.devices[0][0]} profile, every stage {req.server_speedup:g}x faster"))
        source = "device" if len(req.devices) == 1 else req.devices[0][0]
        notes.append(f"server profile derived from the {source} profile ({req.server_speedup:g}x faster per stage), "
                     "not measured")
    prune = None
    if req.prune is not None:
        prune = load_document(req.prune, PruneReport)
        inputs.append(input_file("prune", req.prune))
    if server is not None:
        check_compatible(device, server)
    steps = req.decode_steps
    if steps is None:
        steps = DEFAULT_DECODE_STEPS if device.model.is_decoder else 0
    wl = Workload(req.prompt_tokens or device.context.seq_len, steps)
    wl.check_positions(device.model.max_positions, device.model.name)
    precision = None
    if req.precision is not None:
        precision = load_document(req.precision, PrecisionReport)
        inputs.append(input_file("precision", req.precision))
    return Prepared(objective, freqs, profiles, device, server, prune, inputs, precision, notes, wl)


def _single_plan(req: PlanRequest, p: Prepared) -> Plan:
    objective, freqs, device, server, prune, inputs, notes, wl = (
        p.objective, p.freqs, p.device, p.server, p.prune, p.inputs, p.notes, p.workload)
    model = build_cost_model(device, server, wl, req.link.wire_dtype, prune, precision=p.precision)
    notes += model.notes
    if not req.link.tx_powers_w:
        notes.append("no transmit power given: transmit energy not counted")
    if objective.kind != "latency" and not model.energy_known:
        raise UserInputError(f"--objective {objective.kind} needs device energy: the device profile has no energy "
                             "figures and no power model")
    if req.budgets.energy_j is not None and not model.energy_known:
        raise UserInputError("--max-energy needs device energy: the device profile has no energy figures")
    res = search(model, req.link, freqs, objective, req.budgets)
    sweep_points = []
    if req.sweep is not None:
        lo, hi, n = req.sweep
        rates = np.geomspace(lo, hi, n) if n > 1 else np.array([lo])
        idx, obj = sweep_rates(model, req.link, rates, freqs, objective, req.budgets)
        sweep_points = rate_table(model, rates, idx, obj, freqs)
        notes.append(f"rate sweep: {n} log-spaced uplink rates; a range runs from the first to the last sampled rate "
                     "with that choice (the switch lies between two samples)"
                     + ("" if req.link.downlink_rate_bps is not None else "; the downlink follows the swept rate"))

    def gain(base) -> float | None:
        return base.objective / res.best.objective if res.best.objective > 0 else None

    return Plan(
        model=device.model, inputs=inputs, link=req.link.describe(res.best.tx_power_w),
        objective=objective.kind,
        energy_weight_ms_per_j=objective.energy_weight_ms_per_j if objective.kind == "weighted" else None,
        prompt_tokens=wl.prompt_tokens, new_tokens=wl.new_tokens, budgets=req.budgets.as_dict(),
        freq_scales=[float(f) for f in freqs], ratios=[r.ratio for r in model.ratios],
        best=res.best, all_device=res.all_device, all_server=res.all_server,
        gain_over_all_device=gain(res.all_device), gain_over_all_server=gain(res.all_server),
        candidates=res.per_cut, nominal=res.nominal, rate_sweep=sweep_points, notes=notes,
    )


def _chain_plan(req, profiles, server, wl, objective, inputs, notes) -> Plan:
    spec = req.chain
    members = list(profiles)
    if server is not None:
        members.append(("server", server))
    if objective.kind not in ("latency",) and spec.objective == "latency":
        raise UserInputError(f"--objective {objective.kind}: a chain optimises latency or throughput only")
    if req.prune is not None or req.precision is not None or len(freq_grid(*req.freq_range)) > 1:
        raise UserInputError("a chain plan does not search pruning ratios, precisions or frequencies (drop "
                             "--prune-report/--precision-report/--freq-range)")
    if req.budgets.as_dict():
        raise UserInputError("a chain plan takes per-member memory caps (--member-memory), not budgets")
    names = [n for n, _ in members]
    pairs = {f"{a}-{b}" for a, b in zip(names, names[1:], strict=False)}
    unknown = sorted(set(spec.links) - pairs)
    if unknown:
        raise UserInputError(f"--link {unknown[0]}: not a consecutive pair of the chain {' -> '.join(names)}")
    hops = []
    for a, b in zip(names, names[1:], strict=False):
        key = f"{a}-{b}"
        if key in spec.links:
            hops.append(spec.links[key])
        elif b == "server" and req.link is not None and not req.link.wireless:
            hops.append((req.link.rate_bps, req.link.rtt_ms))
        else:
            raise UserInputError(f"chain {' -> '.join(names)}: missing --link {key}:RATE[:RTT]")
    for name, p in members[1:]:
        if p.model.num_blocks != members[0][1].model.num_blocks:
            raise SchemaError(f"chain member {name} profiles another model")
    first = members[0][1]
    cost = build_cost_model(first, members[-1][1], wl, req.wire_dtype, roles=(names[0], names[-1]))
    prob = build_chain_problem(members, hops, wl, req.wire_dtype, cost, spec.memory_caps)
    bounds, _ = solve_chain(prob, spec.objective)
    chain = describe_chain(prob, bounds, spec.objective)
    # The cost model speaks of its two ends; members in between scale their prefill the same way.
    middle = [f"{name} profile measured {p.context.seq_len} prompt tokens; prefill latency scaled linearly to "
              f"{wl.prompt_tokens}" for name, p in members[1:-1] if p.context.seq_len != wl.prompt_tokens]
    # A chain plan reports no energy: the cost model's notes on device energy say nothing here.
    energy = (f"{names[0]} profile has no energy figures", f"{names[0]} energy is the profile's estimate")
    notes = notes + [n for n in cost.notes if not n.startswith(energy)] + middle + [
        "chain: each member runs a contiguous (possibly empty) run of stages; no pruning or DVFS; "
        "throughput = 1 / slowest member or hop occupancy",
    ]
    return Plan(
        model=first.model, inputs=inputs, link=_chain_link(req.link, hops[-1], req.wire_dtype),
        objective="throughput" if spec.objective == "throughput" else "latency",
        prompt_tokens=wl.prompt_tokens, new_tokens=wl.new_tokens, best=None, chain=chain, notes=notes,
    )


def member_name(spec: str) -> tuple[str, str]:
    """Split a --device-profile value 'name=path' (or 'path': the name is the file's stem)."""
    if "=" in spec and not Path(spec).exists():
        name, path = spec.split("=", 1)
        if not name:
            raise UserInputError(f"--device-profile {spec!r}: empty member name")
        return name, path
    return Path(spec).stem, spec
