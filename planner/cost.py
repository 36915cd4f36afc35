"""The cost model of SCIENCE.md, built from profiles: per-stage tables and one candidate's costs.

Conventions (the plan's notes repeat the ones that applied):

* Cut ``c`` = number of stages on the device, 0..N with N = L + 2 stages (embed, L blocks, head).
* Prefill at a prompt of ``n`` tokens when the profile measured ``s`` tokens: payloads scale
  exactly by ``n / s`` (they are per-token tensors; the result payload is not scaled: it is what
  the server returns once), stage latency and energy scale linearly by ``n / s`` (a profile has
  one prompt length; exact when ``n == s``).
* Decode step ``i`` (0-based) of ``m`` runs at context ``n + i``. A stage's decode latency (and
  energy) at a context is interpolated linearly between the profile's measured contexts and
  extrapolated linearly from the nearest two beyond them (attention grows linearly with context)
  when that end segment rises, held flat when it falls (noise); with one measured context it is
  constant. "Per token" figures are the mean over
  the ``m`` steps (at context ``n`` when ``m == 0``).
* Link: every phase that waits on the link pays half the RTT on each way. A split (1 <= c < N)
  pays a full round trip per decode step (the next token's hidden state crosses again). All on
  the server (c = 0) sends the token ids once; the server then generates on its own and streams
  each token id back (its bytes count, no further RTT). All on the device (c = N) uses no link.
* Device energy: measured per stage when the profile has it, else the profile's power model
  (``power_w`` x latency); DVFS at scale ``a`` multiplies device latency by ``1/a`` and device
  compute energy by ``a^2``. Transmit energy = power x airtime (bytes x 8 / uplink rate).
* Pruning (a prune report): the stages the speed-up was measured over (``measured_stages``; else
  the pruned blocks) run ``speedup`` times faster (the report's measured prefill / decode
  speed-up; none measured = no speed-up) with proportionally less energy; weights
  shrink by the block's ``params_after / params_before``; KV cache is kept (GQA keeps K/V).
  Scope ``all``: the pruned model runs on both sides, any cut. Scope ``device`` with split ``k``:
  only the device's ``k`` blocks are pruned, so that ratio applies only at cut ``k + 1``.
  Distortion is the report's output relative MSE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from coinfer.errors import SchemaError, UserInputError
from coinfer.planner.link import Link
from coinfer.planner.tables import stage_costs
from coinfer.reports.plan import Candidate, EnergyBreakdown, PhaseBreakdown
from coinfer.reports.precision import PrecisionReport
from coinfer.reports.profile import Profile
from coinfer.reports.prune import PruneReport
from coinfer.vocab import MAX_CONTEXT_TOKENS, check_wire_dtype, cut_name, stage_names

OBJECTIVES = ("latency", "energy", "weighted")


@dataclass(frozen=True)
class Workload:
    """What one request asks: a prompt of ``prompt_tokens`` then ``new_tokens`` decode steps.

    The prefill already yields the first generated token, so ``new_tokens`` = m decode steps give
    m + 1 generated tokens (``--decode-steps`` on the command line).
    """

    prompt_tokens: int
    new_tokens: int = 0

    def __post_init__(self) -> None:
        if self.prompt_tokens < 1:
            raise UserInputError(f"--prompt-tokens {self.prompt_tokens}: must be at least 1")
        if self.new_tokens < 0:
            raise UserInputError(f"--decode-steps {self.new_tokens}: must not be negative")
        if self.prompt_tokens + self.new_tokens > MAX_CONTEXT_TOKENS:
            raise UserInputError(f"--prompt-tokens + --decode-steps = {self.prompt_tokens + self.new_tokens}: "
                                 f"more than {MAX_CONTEXT_TOKENS} tokens")

    def check_positions(self, limit: int | None, model: str) -> None:
        """Refuse a request longer than the model's positions (``limit``; None: unstated).

        Raises:
            UserInputError: prompt plus decode steps exceed ``limit``.
        """
        if limit is not None and self.prompt_tokens + self.new_tokens > limit:
            raise UserInputError(f"--prompt-tokens + --decode-steps = {self.prompt_tokens + self.new_tokens} "
                                 f"exceeds {model}'s {limit} positions")


@dataclass(frozen=True)
class Budgets:
    """Upper limits a plan must meet; None = no limit."""

    latency_ms: float | None = None
    energy_j: float | None = None
    memory_bytes: float | None = None
    distortion: float | None = None
    ppl_ratio: float | None = None  # pruning's perplexity over dense on the prune report's evaluation text

    def __post_init__(self) -> None:
        for name, v in self.as_dict().items():
            if not math.isfinite(v) or v < 0:
                raise UserInputError(f"budget {name} = {v!r}: must be a finite number, not negative")

    def as_dict(self) -> dict[str, float]:
        """The set budgets by name."""
        return {k: float(v) for k, v in self.__dict__.items() if v is not None}


@dataclass(frozen=True)
class Objective:
    """What to minimise: latency [ms], device energy [J], or ``latency_ms + w * energy_j``."""

    kind: str = "latency"
    energy_weight_ms_per_j: float = 1000.0

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise UserInputError(f"--objective {self.kind!r}: expected one of {', '.join(OBJECTIVES)}")
        w = self.energy_weight_ms_per_j
        if not math.isfinite(w) or w < 0:
            raise UserInputError(f"--energy-weight {w!r}: must be finite and not negative")

    def value(self, latency_ms, energy_j):
        """The objective (floats or numpy arrays)."""
        if self.kind == "latency":
            return latency_ms
        if self.kind == "energy":
            return energy_j
        return latency_ms + self.energy_weight_ms_per_j * energy_j


@dataclass
class RatioOption:
    """One way to shrink the model as the planner uses it: a pruning ratio (ratio 0 = the unpruned
    model) and the device's weight precision (``fp32`` on ``torch``: none)."""

    ratio: float
    prefill_speedup: Any  # a number, or one per stage (a precision's per-stage measurement)
    decode_speedup: Any
    distortion: float
    param_scale: np.ndarray  # per stage: weight bytes after / before
    device_pruned: np.ndarray  # per stage: runs faster when on the device
    server_pruned: np.ndarray  # per stage: runs faster when on the server
    allowed_cuts: np.ndarray  # per cut 0..N
    ppl_ratio: float = 1.0  # perplexity over dense on the evaluation text; inf: not measured
    precision: str = "fp32"
    engine: str = "torch"

    def __post_init__(self) -> None:
        shape = self.param_scale.shape
        self.prefill_speedup = np.broadcast_to(np.asarray(self.prefill_speedup, dtype=float), shape)
        self.decode_speedup = np.broadcast_to(np.asarray(self.decode_speedup, dtype=float), shape)


def check_compatible(a: Profile, b: Profile, what_a: str = "device", what_b: str = "server") -> None:
    """Raise SchemaError unless two profiles describe the same architecture and batch."""
    ma, mb = a.model, b.model
    if not ma.same_architecture(mb) or ma.num_blocks != mb.num_blocks or ma.hidden_size != mb.hidden_size:
        raise SchemaError(
            f"the {what_a} and {what_b} profiles are of different models: {ma.name} ({ma.family}, "
            f"{ma.num_blocks} blocks, config {ma.config_sha256[:12]}) vs {mb.name} ({mb.family}, "
            f"{mb.num_blocks} blocks, config {mb.config_sha256[:12]})"
        )
    if a.context.batch != b.context.batch:
        raise SchemaError(f"the {what_a} profile has batch {a.context.batch}, the {what_b} profile batch {b.context.batch}")


def derive_server_profile(device: Profile, speedup: float) -> Profile:
    """A server profile made from the device's: every stage ``speedup`` times faster, no energy.

    Raises:
        UserInputError: ``speedup`` not positive and finite.
    """
    if not math.isfinite(speedup) or speedup <= 0:
        raise UserInputError(f"--server-speedup {speedup!r}: must be a positive finite number")
    srv = device.model_copy(deep=True)
    for st in srv.stages:
        st.prefill.median_ms /= speedup
        st.prefill.iqr_ms /= speedup
        st.prefill_energy_j = None
        for d in st.decode:
            d.timing.median_ms /= speedup
            d.timing.iqr_ms /= speedup
            d.energy_j = None
    srv.context.energy_source = "none"
    srv.whole_model = None
    srv.emissions = None
    srv.derived_from = f"device profile, every stage {speedup:g}x faster"
    return srv


@dataclass
class CostModel:
    """Per-stage and per-cut cost tables of one (device, server, workload, wire dtype).

    Built by :func:`build_cost_model`; evaluated by :meth:`evaluate` (one candidate, plain loops)
    and by :mod:`coinfer.planner.search` (all candidates at once, numpy).
    """

    num_blocks: int
    names: list[str]
    batch: int
    workload: Workload
    wire_dtype: str
    is_decoder: bool
    dev_prefill_ms: np.ndarray
    dev_token_ms: np.ndarray
    dev_prefill_j: np.ndarray
    dev_token_j: np.ndarray
    srv_prefill_ms: np.ndarray
    srv_token_ms: np.ndarray
    param_bytes: np.ndarray
    kv_bytes_per_token: np.ndarray
    up_prefill_bytes: np.ndarray  # per cut 0..N
    up_token_bytes: np.ndarray
    down_prefill_bytes: np.ndarray
    down_token_bytes: np.ndarray
    ratios: list[RatioOption]
    energy_known: bool
    notes: list[str] = field(default_factory=list)
    shared_param_bytes: float = 0.0  # tied embedding/head weights counted in both stages: one copy on one machine

    def shared_bytes(self, opt: RatioOption) -> float:
        """What to subtract from the device's memory when every stage runs there at option ``opt``
        (the tied copy, unless the option changed the embedding's or the head's weights)."""
        return self.shared_param_bytes if opt.param_scale[0] == 1 and opt.param_scale[-1] == 1 else 0.0

    @property
    def num_stages(self) -> int:
        """N = L + 2."""
        return len(self.names)

    def ratio_index(self, ratio: float, precision: str = "fp32", engine: str = "torch") -> int:
        """Index of a pruning ratio (at a device precision) among the options (0.0 in fp32 is always there).

        Raises:
            UserInputError: The ratio is not in the pruning report.
        """
        for i, r in enumerate(self.ratios):
            if abs(r.ratio - ratio) < 1e-9 and (r.precision, r.engine) == (precision, engine):
                return i
        have = ", ".join(f"{r.ratio:g}" for r in self.ratios)
        raise UserInputError(f"ratio {ratio:g} is not in the pruning report (have {have})")

    # --- the scalar path: one candidate, plain loops over stages -------------------------------
    def evaluate(
        self,
        link: Link,
        cut: int,
        ratio_index: int = 0,
        freq_scale: float = 1.0,
        tx_power_w: float | None = None,
        objective: Objective | None = None,
        budgets: Budgets | None = None,
    ) -> Candidate:
        """Predict the costs of one configuration.

        Args:
            link: The link.
            cut: Stages on the device, 0..N.
            ratio_index: Index into :attr:`ratios`.
            freq_scale: DVFS scale ``a`` of the device (latency x 1/a, energy x a^2).
            tx_power_w: Transmit power; None = the link's only power (or 0 when unknown).
            objective: What the ``objective`` field holds (latency by default).
            budgets: Limits to check; violations are listed, not raised.

        Returns:
            The candidate with its breakdowns.
        """
        n_st = self.num_stages
        if not 0 <= cut <= n_st:
            raise UserInputError(f"cut {cut} outside 0..{n_st} (0 = all on server, {n_st} = all on device)")
        if not math.isfinite(freq_scale) or freq_scale <= 0:
            raise UserInputError(f"frequency scale {freq_scale!r}: must be positive")
        objective = objective or Objective()
        budgets = budgets or Budgets()
        opt = self.ratios[ratio_index]
        if tx_power_w is None:
            tx_power_w = float(link.powers()[-1])
        m = self.workload.new_tokens
        rate_up = float(link.uplink_rates(np.array([tx_power_w]))[0])
        rate_down = link.downlink_rate()
        a = freq_scale

        dev_p = dev_t = dev_pj = dev_tj = srv_p = srv_t = 0.0
        mem = 0.0
        for i in range(n_st):
            if i < cut:
                sp = opt.prefill_speedup[i] if opt.device_pruned[i] else 1.0
                sd = opt.decode_speedup[i] if opt.device_pruned[i] else 1.0
                dev_p += self.dev_prefill_ms[i] / sp
                dev_t += self.dev_token_ms[i] / sd
                dev_pj += self.dev_prefill_j[i] / sp
                dev_tj += self.dev_token_j[i] / sd
                ctx = self.workload.prompt_tokens + m
                mem += self.param_bytes[i] * opt.param_scale[i] + self.kv_bytes_per_token[i] * ctx
            else:
                sp = opt.prefill_speedup[i] if opt.server_pruned[i] else 1.0
                sd = opt.decode_speedup[i] if opt.server_pruned[i] else 1.0
                srv_p += self.srv_prefill_ms[i] / sp
                srv_t += self.srv_token_ms[i] / sd
        if cut == n_st:
            mem -= self.shared_bytes(opt)
        crosses = cut < n_st
        split = 1 <= cut < n_st
        half_rtt = link.rtt_ms / 2
        upb, utb = float(self.up_prefill_bytes[cut]), float(self.up_token_bytes[cut])
        dpb, dtb = float(self.down_prefill_bytes[cut]), float(self.down_token_bytes[cut])
        up_p = (upb * 8e3 / rate_up + half_rtt) if crosses else 0.0
        down_p = (dpb * 8e3 / rate_down + half_rtt) if crosses else 0.0
        up_t = (utb * 8e3 / rate_up + half_rtt) if split else 0.0
        down_t = (dtb * 8e3 / rate_down + (half_rtt if split else 0.0)) if crosses else 0.0
        prefill = PhaseBreakdown(device_ms=dev_p / a, uplink_ms=up_p, server_ms=srv_p, downlink_ms=down_p,
                                 total_ms=dev_p / a + up_p + srv_p + down_p)
        per_token = None
        if self.is_decoder:
            per_token = PhaseBreakdown(device_ms=dev_t / a, uplink_ms=up_t, server_ms=srv_t, downlink_ms=down_t,
                                       total_ms=dev_t / a + up_t + srv_t + down_t)
        total = prefill.total_ms + (m * per_token.total_ms if per_token else 0.0)
        airtime_s = (upb + m * utb) * 8 / rate_up if crosses else 0.0
        e_cmp = a * a * (dev_pj + m * dev_tj)
        e_tx = tx_power_w * airtime_s
        energy = EnergyBreakdown(compute_j=e_cmp, transmit_j=e_tx, total_j=e_cmp + e_tx)
        violations = self._violations(budgets, total, e_cmp + e_tx, mem, opt.distortion, opt.ppl_ratio)
        if not opt.allowed_cuts[cut]:
            violations.insert(0, f"ratio {opt.ratio:g} ({opt.precision}) was measured only at another cut")
        return Candidate(
            cut=cut, cut_name=cut_name(cut, self.num_blocks), ratio=opt.ratio, freq_scale=a,
            tx_power_w=tx_power_w if link.tx_powers_w else None, uplink_rate_bps=rate_up,
            uplink_prefill_bytes=int(upb), uplink_per_token_bytes=int(utb),
            prefill=prefill, per_token=per_token, total_latency_ms=total, energy=energy,
            device_memory_bytes=int(round(mem)), distortion=opt.distortion,
            ppl_ratio=opt.ppl_ratio if math.isfinite(opt.ppl_ratio) else None,
            device_precision=opt.precision, device_engine=opt.engine,
            objective=float(objective.value(total, e_cmp + e_tx)),
            feasible=not violations, violations=violations,
        )

    @staticmethod
    def _violations(b: Budgets, latency_ms: float, energy_j: float, mem: float, distortion: float,
                    ppl_ratio: float) -> list[str]:
        out = []
        if b.latency_ms is not None and latency_ms > b.latency_ms:
            out.append(f"latency {latency_ms:.4g} ms > {b.latency_ms:.4g} ms")
        if b.energy_j is not None and energy_j > b.energy_j:
            out.append(f"energy {energy_j:.4g} J > {b.energy_j:.4g} J")
        if b.memory_bytes is not None and mem > b.memory_bytes:
            out.append(f"memory {mem / 1e6:.4g} MB > {b.memory_bytes / 1e6:.4g} MB")
        if b.distortion is not None and distortion > b.distortion:
            out.append(f"distortion {distortion:.4g} > {b.distortion:.4g}")
        if b.ppl_ratio is not None and ppl_ratio > b.ppl_ratio:
            out.append(f"perplexity {ppl_ratio:.4g}x dense > {b.ppl_ratio:.4g}x" if math.isfinite(ppl_ratio)
                       else "perplexity not measured (prune with an evaluation text)")
        return out


def _ppl_ratio(prune: PruneReport, res: Any) -> float:
    """A ratio's perplexity over dense on the report's evaluation text (inf: not measured)."""
    if prune.dense_quality is None or res.quality is None:
        return math.inf
    return res.quality.perplexity / prune.dense_quality.perplexity


def _precision_options(rep: PrecisionReport | None, num_blocks: int, notes: list[str]) -> list[RatioOption]:
    """The device weight precisions (x pruning ratios) a precision report measured, as options.

    Each stage the report timed runs on the device at its measured per-stage speed-up and weight
    bytes; the server keeps fp32. A device-scope report applies only at its cut (split + 1).
    """
    if rep is None:
        return []
    n_st = num_blocks + 2
    index = {name: i for i, name in enumerate(stage_names(num_blocks))}
    ref = next((r for r in rep.results if (r.precision, r.engine, r.pruning_ratio) == ("fp32", "torch", 0.0)), None)
    ref_bytes = {s.stage: s.weight_bytes for s in ref.stages} if ref is not None else {}
    out = []
    for r in rep.results:
        what = f"precision {r.precision} on {r.engine} at ratio {r.pruning_ratio:g}"
        if (r.precision, r.engine, r.pruning_ratio) == ("fp32", "torch", 0.0):
            continue  # the unpruned fp32 model: the base option
        if not r.supported or r.prefill_speedup is None:
            notes.append(f"{what}: {r.unsupported_reason or 'not timed'}; left out")
            continue
        unknown = [s for s in rep.timed_stages if s not in index]
        if unknown:
            raise SchemaError(f"precision report: unknown stage {unknown[0]!r} for a {num_blocks}-block model")
        mask = np.zeros(n_st, bool)
        sp, sd, scale = np.ones(n_st), np.ones(n_st), np.ones(n_st)
        for name in rep.timed_stages:
            mask[index[name]] = True
        per_stage = {s.stage: s for s in r.stages}
        for name in rep.timed_stages:  # per stage where measured, else the shard's whole figure (ONNX Runtime)
            i, s = index[name], per_stage.get(name)
            sp[i] = s.prefill_speedup if s is not None and s.prefill_speedup else r.prefill_speedup
            sd[i] = s.decode_speedup if s is not None and s.decode_speedup else (r.decode_speedup or 1.0)
            if s is not None and s.weight_bytes and ref_bytes.get(name):
                scale[i] = s.weight_bytes / ref_bytes[name]
        allowed = np.ones(n_st + 1, bool)
        if rep.scope == "device":
            allowed = np.zeros(n_st + 1, bool)
            allowed[(rep.split or 0) + 1] = True
        q = r.quality
        ppl = q.perplexity_ratio if q is not None and q.perplexity_ratio is not None else math.inf
        out.append(RatioOption(r.pruning_ratio, sp, sd, q.output_rel_mse if q is not None else 0.0, scale, mask,
                               np.zeros(n_st, bool), allowed, ppl_ratio=ppl, precision=r.precision, engine=r.engine))
    if out:
        notes.append("weight precision: the device runs each timed stage at its measured speed-up (interleaved with "
                     "fp32 on the machine of the precision report) and weight bytes; the server keeps fp32")
    return out


def _ratio_options(prune: PruneReport | None, num_blocks: int, notes: list[str]) -> list[RatioOption]:
    n_st = num_blocks + 2
    is_block = np.array([False, *([True] * num_blocks), False])
    base = RatioOption(0.0, 1.0, 1.0, 0.0, np.ones(n_st), np.zeros(n_st, bool), np.zeros(n_st, bool),
                       np.ones(n_st + 1, bool))
    opts = [base]
    if prune is None:
        return opts
    index = {name: i for i, name in enumerate(stage_names(num_blocks))}
    for res in sorted(prune.results, key=lambda r: r.requested_ratio):
        r = res.requested_ratio
        if r == 0:
            continue
        if not res.pruned_anything:
            notes.append(f"prune ratio {r:g}: nothing was pruned; left out")
            continue
        if res.speedup is None:
            notes.append(f"prune ratio {r:g}: no measured speed-up; planned with none (FLOPs are not speed)")
            sp = sd = 1.0
        else:
            sp = res.speedup.prefill_measured
            if res.speedup.decode_measured is None:
                sd = 1.0
                notes.append(f"prune ratio {r:g}: no measured decode speed-up; decode planned with none")
            else:
                sd = res.speedup.decode_measured
            if res.speedup.contention is not None and res.speedup.contention.verdict == "contended":
                notes.append(f"prune ratio {r:g}: speed-up measured on a CONTENDED machine; it may be wrong either way")
        scale = np.ones(n_st)
        for b in res.blocks:
            if b.name not in index:
                raise SchemaError(f"pruning report: unknown stage {b.name!r} for a {num_blocks}-block model")
            if b.params_before > 0:
                scale[index[b.name]] = b.params_after / b.params_before
        allowed = np.ones(n_st + 1, bool)
        # The speed-up was measured over some stages (the pruned scope's shard, possibly with the
        # unpruned embed/head): applying it to exactly those reproduces the measured shard time.
        timed = getattr(res.speedup, "measured_stages", None) if res.speedup is not None else None
        unknown = [t for t in (timed or []) if t not in index]
        if unknown:
            raise SchemaError(f"pruning report: unknown stage {unknown[0]!r} for a {num_blocks}-block model")
        sped = np.array([n in set(timed) for n in index]) if timed else is_block.copy()
        if prune.scope == "all":
            dev_pruned = srv_pruned = sped
        else:
            k = prune.split
            if k is None or k > num_blocks:
                notes.append(f"prune ratio {r:g}: scope 'device' without a valid split; left out")
                continue
            dev_pruned = sped & (np.arange(n_st) < k + 1)
            srv_pruned = np.zeros(n_st, bool)
            allowed = np.zeros(n_st + 1, bool)
            allowed[k + 1] = True
        opts.append(RatioOption(r, sp, sd, res.distortion.output_rel_mse, scale, dev_pruned, srv_pruned, allowed,
                                ppl_ratio=_ppl_ratio(prune, res)))
    if prune.scope == "device" and len(opts) > 1:
        notes.append(f"pruning report scope 'device' (split {prune.split}): pruned ratios apply only at cut "
                     f"{prune.split + 1} ({cut_name(prune.split + 1, num_blocks)})")
    return opts


def build_cost_model(
    device: Profile,
    server: Profile,
    workload: Workload,
    wire_dtype: str = "fp32",
    prune: PruneReport | None = None,
    roles: tuple[str, str] = ("device", "server"),
    precision: PrecisionReport | None = None,
) -> CostModel:
    """Turn profiles (and a pruning report) into the planner's cost tables for one workload.

    ``roles`` names the two profiles in notes (a chain's first and last members).

    Raises:
        SchemaError: Profiles (or the report) of different models, or missing decode timings.
        UserInputError: Generated tokens asked of a model without decode timings.
    """
    check_compatible(device, server)
    for rep, what in ((prune, "pruning report"), (precision, "precision report")):
        if rep is not None and not rep.model.same_architecture(device.model):
            raise SchemaError(f"the {what} is of another model ({rep.model.name}) than the profiles "
                              f"({device.model.name})")
    check_wire_dtype(wire_dtype)
    ident = device.model
    L = ident.num_blocks
    n_st = L + 2
    is_decoder = ident.is_decoder
    if workload.new_tokens > 0 and not is_decoder:
        raise UserInputError(f"--decode-steps {workload.new_tokens}: {ident.name} is not a decoder (no generation)")
    notes: list[str] = []
    for p, role in ((device, roles[0]), (server, roles[1])):
        if workload.prompt_tokens != p.context.seq_len:
            notes.append(f"{role} profile measured {p.context.seq_len} prompt tokens; prefill latency and energy "
                         f"scaled linearly to {workload.prompt_tokens}")
        if p.contention is not None and p.contention.verdict == "contended":
            notes.append(f"{role} profile was measured on a CONTENDED machine (other processes took the cores it "
                         "timed on): its latencies are inflated")
    dev = stage_costs(device, "device", workload, is_decoder)
    srv = stage_costs(server, "server", workload, is_decoder)
    if not dev.energy_known:
        notes.append(f"{roles[0]} profile has no energy figures and no power model: device energy not counted")
    if device.context.energy_source == "estimate":
        notes.append(f"{roles[0]} energy is the profile's estimate (power model x time), not a hardware counter")
    if wire_dtype != "fp32":
        notes.append(f"wire {wire_dtype}: the activation's quantisation distortion is not counted (not measured)")
    if prune is not None:
        notes.append("pruning: KV cache kept as profiled; the measured speed-up applies uniformly to the stages it "
                     "was measured over")
    measured = sorted({d.context_tokens for stage in device.stages for d in stage.decode})
    last_ctx = workload.prompt_tokens + max(workload.new_tokens, 1) - 1
    if is_decoder and measured and (last_ctx > measured[-1] or workload.prompt_tokens < measured[0]):
        notes.append(f"decode contexts {workload.prompt_tokens}..{last_ctx} reach outside the profiled "
                     f"{measured[0]}..{measured[-1]}: extrapolated")
    scale = workload.prompt_tokens / device.context.seq_len
    # Per cut: what crosses. Cut 0 sends token ids; a split sends the activation after stage c-1.
    up_p = np.zeros(n_st + 1)
    up_t = np.zeros(n_st + 1)
    down_p = np.zeros(n_st + 1)
    down_t = np.zeros(n_st + 1)
    up_p[0] = round(device.input_payload.prefill_bytes * scale)
    for c in range(1, n_st):
        pay = device.stages[c - 1].payload_after.get(wire_dtype)
        if pay is None:
            raise SchemaError(f"device profile: stage {device.stages[c - 1].name} has no {wire_dtype} payload")
        up_p[c] = round(pay.prefill_bytes * scale)
        up_t[c] = pay.per_token_bytes if is_decoder else 0
    down_p[:n_st] = device.result_payload.prefill_bytes
    down_t[:n_st] = device.result_payload.per_token_bytes if is_decoder else 0
    return CostModel(
        num_blocks=L, names=stage_names(L), batch=device.context.batch, workload=workload, wire_dtype=wire_dtype,
        is_decoder=is_decoder, dev_prefill_ms=dev.prefill_ms, dev_token_ms=dev.token_ms, dev_prefill_j=dev.prefill_j,
        dev_token_j=dev.token_j, srv_prefill_ms=srv.prefill_ms, srv_token_ms=srv.token_ms,
        param_bytes=np.array([s.param_bytes for s in device.stages], dtype=float),
        shared_param_bytes=float(device.shared_param_bytes),
        kv_bytes_per_token=np.array([s.kv_cache_bytes_per_token for s in device.stages], dtype=float),
        up_prefill_bytes=up_p, up_token_bytes=up_t, down_prefill_bytes=down_p, down_token_bytes=down_t,
        ratios=_ratio_options(prune, L, notes) + _precision_options(precision, L, notes), energy_known=dev.energy_known, notes=notes,
    )


def evaluate(
    device: Profile,
    server: Profile,
    link: Link,
    cut: int,
    *,
    ratio: float = 0.0,
    freq_scale: float = 1.0,
    tx_power_w: float | None = None,
    prompt_tokens: int | None = None,
    new_tokens: int = 0,
    wire_dtype: str | None = None,
    prune: PruneReport | None = None,
    objective: Objective | None = None,
    budgets: Budgets | None = None,
) -> Candidate:
    """Predict the costs of running at ``cut`` (stages on the device) over ``link``.

    This is the function ``coinfer run --cut K`` uses for its prediction; the planner's search
    gives the same figures for the same configuration.

    Args:
        device: The device profile.
        server: The server profile (e.g. :func:`derive_server_profile`).
        link: The link (its wire dtype is used unless ``wire_dtype`` is given).
        cut: 0..L+2 stages on the device.
        ratio: Pruning ratio from ``prune`` (0 = unpruned).
        freq_scale: Device DVFS scale.
        tx_power_w: Transmit power (default: the link's highest).
        prompt_tokens: Prompt length (default: the device profile's ``seq_len``).
        new_tokens: Generated tokens.
        wire_dtype: Activation dtype on the wire.
        prune: The pruning report, when ``ratio`` > 0.
        objective: Objective the candidate's ``objective`` field reports.
        budgets: Budgets to check.

    Returns:
        The predicted :class:`~coinfer.reports.plan.Candidate`.
    """
    wl = Workload(prompt_tokens or device.context.seq_len, new_tokens)
    model = build_cost_model(device, server, wl, wire_dtype or link.wire_dtype, prune)
    return model.evaluate(link, cut, model.ratio_index(ratio), freq_scale, tx_power_w, objective, budgets)
