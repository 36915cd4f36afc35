"""``coinfer run`` through a lossy wire or an emulated channel, and the quality of what came out.

Where it acts: the device encodes its activation in the wire precision before sending (that is
the wire itself); the impairment (``--erasure P`` or ``--snr-db S``) is applied by rank 1 (the
server, or the first relay of a chain) **on receipt**, to the decoded activation, for the
prefill's message and for every decode step's, with draws from
``torch.Generator().manual_seed(seed)`` taken token row after token row, fresh for each request.
That is :func:`coinfer.models.channel.transmit`, exactly what ``coinfer channel`` measures; relay
hops after the first stay clean, and the tokens coming back are never corrupted.

What came out is judged by the clean model (unsplit, nothing lost) on the device: for decoders,
the share of generated tokens the clean model would also have picked after the same preceding
tokens (teacher-forced on the run's own output, comparable to a robustness profile's top-1
agreement), agreement with the clean model's own greedy run, and the log-likelihood the clean
model gives the generated tokens; for encoders, the cosine of the embedding to the clean one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from coinfer.errors import UserInputError
from coinfer.reports.common import ModelIdentity
from coinfer.reports.robustness import ChannelCondition, Estimate, RobustnessPoint, RobustnessProfile
from coinfer.reports.run import ChannelRun, GeneratedQuality

APPLIED = ("the device sends in {wire}; rank 1 impairs what it receives (after decoding), prefill and every "
           "decode step, before running its stages")
APPLIED_WIRE_ONLY = "the device sends in {wire}; the channel is clean"


@dataclass
class RunChannel:
    """A run's link condition, and the robustness profile to predict its cost from."""

    condition: ChannelCondition
    seed: int
    profile: RobustnessProfile | None = None
    profile_path: str | None = None

    def spec(self) -> dict[str, Any] | None:
        """The :class:`~coinfer.runner.protocol.ChannelImpairment` the first member applies (None: clean)."""
        c = self.condition
        if c.deterministic:
            return None
        return dict(impairment=c.impairment, erasure_p=c.erasure_p, snr_db=c.snr_db, seed=self.seed)


def _one_number(text: str, option: str, lo: float | None = None, hi: float | None = None) -> float:
    from coinfer.models.robustness import parse_values

    values = parse_values(text, option, lo=lo, hi=hi)
    if len(values) != 1 or ":" in text or "," in text:
        raise UserInputError(f"{option} {text!r}: a run takes one value")
    return values[0]


def resolve(erasure: str | None, snr_db: str | None, robustness: str | None, wire_dtype: str,
            seed: int) -> RunChannel | None:
    """Check the channel options (before any model work); None when the link is lossless and no
    profile is given.

    Raises:
        UserInputError: A probability outside [0, 1], an SNR that is not a number, both at once,
            a negative seed, or an unreadable profile.
    """
    from coinfer.reports.io import load_document

    if erasure is not None and snr_db is not None:
        raise UserInputError("give --erasure or --snr-db, not both")
    if (erasure is not None or snr_db is not None) and seed < 0:
        raise UserInputError("--seed must not be negative with --erasure/--snr-db")
    if erasure is not None:
        cond = ChannelCondition(wire_dtype=wire_dtype, impairment="erasure",  # type: ignore[arg-type]
                                erasure_p=_one_number(erasure, "--erasure", 0.0, 1.0))
    elif snr_db is not None:
        cond = ChannelCondition(wire_dtype=wire_dtype, impairment="awgn",  # type: ignore[arg-type]
                                snr_db=_one_number(snr_db, "--snr-db"))
    else:
        cond = ChannelCondition(wire_dtype=wire_dtype)  # type: ignore[arg-type]
    profile = load_document(robustness, RobustnessProfile) if robustness else None
    if cond.deterministic and wire_dtype == "fp32" and profile is None:
        return None
    return RunChannel(cond, seed, profile, robustness)


def check_fit(rc: RunChannel, identity: ModelIdentity, bounds: list[int], shards: bool) -> None:
    """Check the channel against the loaded model and the cut.

    Raises:
        UserInputError: A profile of another model (architecture or weights), an impairment where
            no activation leaves the device, or with exported shards.
    """
    p = rc.profile
    if p is not None:
        m = p.model
        if not m.same_architecture(identity):
            raise UserInputError(f"--robustness {rc.profile_path} was measured on {m.name} "
                                 f"({m.config_sha256[:12]}), not {identity.name} ({identity.config_sha256[:12]})")
        if (m.weights, m.weights_seed, m.weights_source) != (identity.weights, identity.weights_seed, identity.weights_source):
            raise UserInputError(f"--robustness {rc.profile_path} was measured on other weights of {m.name} "
                                 f"({m.weights_label}, seed {m.weights_seed}), not these ({identity.weights_label})")
    if rc.condition.deterministic:
        return
    if shards:
        raise UserInputError("--erasure/--snr-db with --prune-report: not supported (the quality check would mix "
                             "pruning's loss with the channel's)")
    if not 1 <= bounds[1] <= identity.num_blocks + 1:
        raise UserInputError(f"--erasure/--snr-db impair the activation the device sends; at cut {bounds[1]} "
                             + ("token ids cross" if bounds[1] == 0 else "nothing crosses"))


def generated_quality(loaded: Any, output: Any, input_ids: Any, mask: Any) -> GeneratedQuality:
    """Judge a run's output with the clean, unsplit model (see the module docstring)."""
    import torch

    from coinfer.models.shards import generate_greedy, shard_range
    from coinfer.runner.engine import sentence_embedding

    ad = loaded.adapter
    end = ad.num_blocks + 2
    with torch.no_grad():
        if not ad.is_decoder:
            ref = sentence_embedding(shard_range(loaded, 0, end)(input_ids, None, mask).last_hidden_state, mask)
            return GeneratedQuality(pooled_cosine=float(torch.nn.functional.cosine_similarity(output, ref).mean()))
        tokens = output
        clean = generate_greedy([shard_range(loaded, 0, end)], input_ids, tokens.shape[1])
        whole = shard_range(loaded, 0, end, logits_to_keep=0)
        agree, nll = _judge(whole, input_ids, tokens)
        _, clean_nll = _judge(whole, input_ids, clean)
        same = (tokens == clean).all(dim=0)
        diverge = [i for i, s in enumerate(same.tolist()) if not s]
        return GeneratedQuality(tokens=tokens.numel(), top1_agreement=agree,
                                clean_run_agreement=float((tokens == clean).float().mean()),
                                first_divergence=diverge[0] if diverge else None, nll_nats=nll,
                                clean_run_nll_nats=clean_nll)


def _judge(whole: Any, prompt: Any, tokens: Any) -> tuple[float, float]:
    """(share of tokens that are the clean model's top choice, mean NLL), teacher-forced."""
    import torch

    p = prompt.shape[1]
    logp = whole(torch.cat([prompt, tokens[:, :-1]], dim=1)).logits[:, p - 1 :].float().log_softmax(-1)
    agree = float((logp.argmax(-1) == tokens).float().mean())
    return agree, max(0.0, -float(logp.gather(-1, tokens[..., None]).mean()))


def predicted(profile: RobustnessProfile, cut: int, cond: ChannelCondition) -> tuple[RobustnessPoint | None, str]:
    """The profile's point for this cut and condition: measured, else interpolated linearly in the
    erasure probability or the SNR between the two nearest measured ones (same cut and wire)."""
    at_cut = [p for p in profile.points if p.cut == cut]
    if not at_cut:
        return None, f"no prediction: the profile measured cuts {profile.cuts}, not {cut}"
    for p in at_cut:
        if p.condition == cond:
            return p, f"measured point at cut {cut}"
    if not cond.deterministic:
        near = sorted((_param(p.condition), p) for p in at_cut
                      if (p.condition.wire_dtype, p.condition.impairment) == (cond.wire_dtype, cond.impairment))
        x = _param(cond)
        lo = [(v, p) for v, p in near if v < x]
        hi = [(v, p) for v, p in near if v > x]
        if lo and hi:
            (x0, a), (x1, b) = lo[-1], hi[0]
            return _interpolate(a, b, (x - x0) / (x1 - x0), cond), (
                f"interpolated at cut {cut} between {a.condition.label()} and {b.condition.label()} "
                "(the interval too: a guide, not a confidence interval)")
    have = sorted({p.condition.label() for p in at_cut})
    return None, f"no prediction: at cut {cut} the profile has {', '.join(have)}, not {cond.label()}"


def _param(c: ChannelCondition) -> float:
    return float(c.erasure_p if c.impairment == "erasure" else c.snr_db)  # type: ignore[arg-type]


def _interpolate(a: RobustnessPoint, b: RobustnessPoint, t: float, cond: ChannelCondition) -> RobustnessPoint:
    def mix(x: Estimate | None, y: Estimate | None) -> Estimate | None:
        if x is None or y is None:
            return None
        f = lambda u, v: u + t * (v - u)  # noqa: E731
        return Estimate(mean=f(x.mean, y.mean), ci_low=f(x.ci_low, y.ci_low), ci_high=f(x.ci_high, y.ci_high),
                        draws=min(x.draws, y.draws))

    fields = ("perplexity_ratio", "kl_nats", "top1_agreement", "pooled_cosine", "output_rel_mse")
    return a.model_copy(update={"condition": cond, **{k: mix(getattr(a, k), getattr(b, k)) for k in fields}})


def report(rc: RunChannel, cut: int, quality: GeneratedQuality | None) -> ChannelRun:
    """The run result's channel section."""
    from coinfer.reports.io import file_sha256
    from coinfer.reports.plan import InputFile

    point, how = predicted(rc.profile, cut, rc.condition) if rc.profile else (None, None)
    template = APPLIED_WIRE_ONLY if rc.condition.deterministic else APPLIED
    return ChannelRun(
        condition=rc.condition, seed=rc.seed, applied=template.format(wire=rc.condition.wire_dtype), measured=quality,
        robustness=InputFile(role="robustness", path=str(rc.profile_path), sha256=file_sha256(rc.profile_path))
        if rc.profile_path else None,
        predicted=point, prediction=how,
    )
