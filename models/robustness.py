"""``coinfer channel``: what a corrupted or compressed link does to the answer, cut by cut.

For each cut and channel condition (wire precision, optionally erasure or AWGN; see
:mod:`coinfer.models.channel`) the activation crossing the cut is sent through
:func:`~coinfer.models.channel.transmit` and the server part runs on what arrives:

- decoders: perplexity under the protocol of :mod:`coinfer.reports.quality` (as a ratio to the
  clean model's), mean next-token KL(clean || corrupted) and top-1 agreement over the scored
  positions;
- encoders: cosine of mean-pooled sentence embeddings to the clean ones, per window;
- both: rel-MSE ``sum ||y - y_hat||^2 / sum ||y||^2`` of the final hidden states.

**Teacher forcing is split decoding.** The evaluation is teacher-forced: a whole window crosses
the cut at once, and every position of it is corrupted independently (erasure per element, AWGN
power per token row). That is exactly what split decoding does: each decode step's hidden state
crosses the link as its own message, and the server's KV cache is built from what arrived, so
position t's keys and values come from the corrupted activation of token t and nothing else. With
the same per-token corruption, the corrupted window's logits equal those of step-by-step split
decoding (``tests/test_channel.py`` checks it for the int8 wire and a seeded erasure).

**Cost.** The device part runs once per window: one clean pass caches the activation at every
measured cut (and the clean model's output); each (cut, condition, draw) then runs only the
server part. ``model_evaluations`` counts those server-part forward passes. fp32 without an
impairment is the clean model itself (split shards reproduce it bit for bit), so its points are
exact and not evaluated. Each (cut, condition, draw, window) draws from its own generator, seeded
from ``seed`` and those keys: the same seed gives the same numbers, whatever else is measured.

Importing this module is cheap (the CLI reads its defaults); torch loads when measuring.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from coinfer.errors import UserInputError
from coinfer.models.payload import activation_bytes
from coinfer.reports.common import MachineInfo
from coinfer.reports.quality import PerplexityProtocol, TextRef
from coinfer.reports.robustness import ChannelCondition, Estimate, RobustnessPoint, RobustnessProfile
from coinfer.vocab import WIRE_DTYPES, WireDtype, check_wire_dtype, cut_name

if TYPE_CHECKING:
    import torch

Progress = Callable[[str, int, int], None]

# Sized so that `coinfer channel --model smollm2` runs in minutes on 2 cores: one 512-token window,
# 5 cuts, int8 and int4 alone and 3 erasure probabilities x 3 draws (55 server-part passes).
DEFAULT_EVAL_TOKENS = 512
DEFAULT_DECODER_WINDOW = 512
DEFAULT_ENCODER_WINDOW = 128
DEFAULT_DRAWS = 3
DEFAULT_WIRES = "fp32,int8,int4"
DEFAULT_ERASURE = "0.01,0.1,0.3"
DEFAULT_SNR_DB = "none"
DEFAULT_RANGE_STEPS = 4


@dataclass
class ChannelOptions:
    """Everything ``coinfer channel`` accepts, as given on the command line.

    ``erasure`` and ``snr_db`` are lists (``0.01,0.1``) or ranges ``A:B[:STEPS]`` (``STEPS``
    evenly spaced values from A to B, default 4); ``""`` or ``none`` measures none. Each wire
    precision of ``wires`` is measured alone, and every impairment on each of ``impair_wires``
    (default: the first of ``wires``; ``all``: every one).
    """

    model: str = "smollm2"
    cuts: str | None = None
    erasure: str | None = DEFAULT_ERASURE
    snr_db: str | None = DEFAULT_SNR_DB
    wires: str = DEFAULT_WIRES
    impair_wires: str | None = None
    draws: int = DEFAULT_DRAWS
    seed: int = 0
    eval_text: str | None = None
    eval_tokens: int = DEFAULT_EVAL_TOKENS
    window: int | None = None
    confidence: float = 0.95
    threads: int | None = None


# -- parsing (before any model work) -----------------------------------------------------------------
def parse_values(text: str | None, option: str, *, lo: float | None = None, hi: float | None = None) -> list[float]:
    """Numbers from a list ``a,b,c`` and/or ranges ``A:B[:STEPS]``, sorted, without repeats.

    Raises:
        UserInputError: Not a finite number, a bad range, or a value outside ``[lo, hi]``.
    """
    if text is None or text.strip().lower() in ("", "none"):
        return []
    out: set[float] = set()
    for item in (i.strip() for i in text.split(",")):
        out.update(_item_values(item, option, text))
    for v in out:
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise UserInputError(f"{option} {v:g}: must lie in [{lo:g}, {hi:g}]")
    return sorted(out)


def _number(s: str, option: str, text: str) -> float:
    try:
        v = float(s)
    except ValueError:
        raise UserInputError(f"{option} {text!r}: {s!r} is not a number") from None
    if not math.isfinite(v):
        raise UserInputError(f"{option} {text!r}: {s!r} is not a finite number")
    return v


def _item_values(item: str, option: str, text: str) -> list[float]:
    parts = item.split(":")
    if len(parts) == 1:
        return [_number(item, option, text)]
    if len(parts) > 3:
        raise UserInputError(f"{option} {text!r}: a range is A:B or A:B:STEPS")
    a, b = _number(parts[0], option, text), _number(parts[1], option, text)
    steps = DEFAULT_RANGE_STEPS
    if len(parts) == 3:
        try:
            steps = int(parts[2])
        except ValueError:
            raise UserInputError(f"{option} {text!r}: STEPS {parts[2]!r} is not a whole number") from None
    if steps < 2 or b <= a:
        raise UserInputError(f"{option} {text!r}: a range needs A < B and at least 2 steps")
    return [round(a + (b - a) * i / (steps - 1), 6) for i in range(steps)]


def parse_wires(text: str | None, option: str) -> list[WireDtype]:
    """Wire precisions from ``fp32,int8``, in the order given (``all``: every one)."""
    if text is None or text.strip() == "":
        return []
    if text.strip() == "all":
        return list(WIRE_DTYPES)
    out: list[WireDtype] = []
    for w in (x.strip() for x in text.split(",")):
        d = check_wire_dtype(w, option)
        if d not in out:
            out.append(d)
    return out


def default_cuts(num_blocks: int) -> list[int]:
    """Cuts after 1, 2, 4, 8, 16, ... blocks (cut = blocks + 1: the embedding is a stage too)."""
    out, s = [], 1
    while s <= num_blocks:
        out.append(s + 1)
        s *= 2
    return out


def parse_cuts(text: str | None, num_blocks: int) -> list[int]:
    """The measured cuts, each in 1..L+1 (an activation crosses), sorted.

    Raises:
        UserInputError: Not whole numbers, or a cut where no activation crosses.
    """
    if text is None:
        return default_cuts(num_blocks)
    try:
        cuts = sorted({int(x) for x in text.split(",") if x.strip()})
    except ValueError:
        raise UserInputError(f"--cuts {text!r}: expected stage counts such as 2,5,9") from None
    top = num_blocks + 1
    if not cuts:
        raise UserInputError("--cuts: give at least one cut")
    for c in cuts:
        if c == 0:
            raise UserInputError(f"--cuts 0: at cut 0 token ids cross, not an activation; give cuts in 1..{top}")
        if not 1 <= c <= top:
            raise UserInputError(f"--cuts {c}: outside 1..{top} for a {num_blocks}-block model "
                                 f"(cut c = c stages on the device, 1 = the embedding only)")
    return cuts


def conditions(wires: list[WireDtype], impair_wires: list[WireDtype], erasure: list[float],
               snr_db: list[float]) -> list[ChannelCondition]:
    """Each wire alone, then each impairment on each of ``impair_wires``."""
    out = [ChannelCondition(wire_dtype=w) for w in wires]
    for w in impair_wires:
        out += [ChannelCondition(wire_dtype=w, impairment="erasure", erasure_p=p) for p in erasure]
        out += [ChannelCondition(wire_dtype=w, impairment="awgn", snr_db=s) for s in snr_db]
    return out


@dataclass
class _Plan:
    """The checked options."""

    conditions: list[ChannelCondition]
    draws: int
    opts: ChannelOptions


def check_options(opts: ChannelOptions) -> _Plan:
    """Check everything that needs no model.

    Raises:
        UserInputError: Bad numbers, wires, draws, confidence or an empty set of conditions.
    """
    erasure = parse_values(opts.erasure, "--erasure", lo=0.0, hi=1.0)
    snr = parse_values(opts.snr_db, "--snr-db")
    wires = parse_wires(opts.wires, "--wire")
    impair = parse_wires(opts.impair_wires, "--impair-wire") if opts.impair_wires else wires[:1]
    if (erasure or snr) and not impair:
        raise UserInputError("--erasure/--snr-db need a wire to impair: give --wire or --impair-wire")
    if opts.draws < 1:
        raise UserInputError("--draws must be at least 1")
    if not 0 < opts.confidence < 1:
        raise UserInputError("--confidence must lie strictly between 0 and 1")
    if opts.eval_tokens < 2 or (opts.window is not None and opts.window < 2):
        raise UserInputError("--eval-tokens and --window must be at least 2")
    conds = conditions(wires, impair, erasure, snr)
    if not conds:
        raise UserInputError("nothing to measure: give --wire, --erasure or --snr-db")
    return _Plan(conds, opts.draws, opts)


# -- evaluation sets --------------------------------------------------------------------------------
@dataclass
class _Window:
    """One evaluation input (decoders: one protocol window; encoders: all windows as one batch)."""

    ids: torch.Tensor
    span: tuple[int, int] | None = None  # decoders: logits [lo, hi) are scored


@dataclass
class _EvalSet:
    windows: list[_Window]
    protocol: PerplexityProtocol | None = None
    text: TextRef | None = None
    description: str = ""


def _decoder_set(loaded: Any, text: Any, tokens: int, window: int | None) -> _EvalSet:
    from coinfer.models.perplexity import logit_span, prepare_for

    ev = prepare_for(loaded, text, tokens=tokens, window=window or DEFAULT_DECODER_WINDOW)
    p = ev.protocol
    wins = [_Window(x, logit_span(w, p.bos_prepended)) for w, x in zip(p.windows(), ev.window_inputs(), strict=True)]
    return _EvalSet(wins, protocol=p, description=f"protocol: {p.describe()}")


def _encoder_set(loaded: Any, text: Any, tokens: int, window: int | None) -> _EvalSet:
    """Windows of ``window`` positions ([CLS] + text + [SEP] with a tokenizer), batched as one."""
    import torch

    from coinfer.models.corpora import encode
    from coinfer.vocab import max_positions

    ad, tok = loaded.adapter, loaded.tokenizer
    window = min(window or DEFAULT_ENCODER_WINDOW, max_positions(ad.config) or 10**9)
    ids, kind = encode(text.text, tok, ad.vocab_size)
    cls_id, sep_id = (getattr(tok, "cls_token_id", None), getattr(tok, "sep_token_id", None)) if tok else (None, None)
    special = cls_id is not None and sep_id is not None
    body = window - 2 if special else window
    n = min(len(ids), tokens) // body
    if body < 1 or n < 1:
        raise UserInputError(f"text {text.name}: {len(ids)} tokens, shorter than one window of {body} text tokens")
    rows = [ids[i * body:(i + 1) * body] for i in range(n)]
    if special:
        rows = [[cls_id, *r, sep_id] for r in rows]
    what = "[CLS] + " if special else ""
    desc = (f"text: {text.name} (sha256 {text.sha256[:12]}), {n} windows of {window} positions "
            f"({what}{body} text tokens{' + [SEP]' if special else ''}, {kind} tokenizer), {n * body:,} text tokens, "
            "mean-pooled over every position")
    ref = TextRef(name=text.name, sha256=text.sha256, source=text.source)
    return _EvalSet([_Window(torch.tensor(rows, dtype=torch.long))], text=ref, description=desc)


# -- measuring --------------------------------------------------------------------------------------
@dataclass
class _Sums:
    """Running sums of one (cut, condition, draw) over the windows."""

    nll: float = 0.0
    kl: float = 0.0
    agree: int = 0
    count: int = 0
    sq_err: float = 0.0
    sq_ref: float = 0.0
    cos: float = 0.0
    cos_n: int = 0


@dataclass
class _Reference:
    """The clean model's output on one window, reduced to what the metrics need."""

    hidden: torch.Tensor
    logp: torch.Tensor | None = None
    prob: torch.Tensor | None = None
    targets: torch.Tensor | None = None
    top: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


def _reference(out: Any, win: _Window, is_decoder: bool) -> tuple[_Reference, _Sums]:
    hidden = out.last_hidden_state.double()
    clean = _Sums(sq_ref=float(hidden.pow(2).sum()))
    if not is_decoder:
        return _Reference(hidden, pooled=hidden.mean(dim=1)), clean
    lo, hi = win.span  # type: ignore[misc]
    logp = out.logits[0, lo:hi].float().log_softmax(-1)
    targets = win.ids[0, lo + 1 : hi + 1]
    clean.nll = -float(logp.gather(-1, targets[:, None]).sum())
    clean.count = hi - lo
    prob = logp.exp()
    return _Reference(hidden, logp, prob, targets, logp.argmax(-1)), clean


def _score(out: Any, ref: _Reference, win: _Window, acc: _Sums) -> None:
    import torch

    hidden = out.last_hidden_state.double()
    acc.sq_err += float((hidden - ref.hidden).pow(2).sum())
    acc.sq_ref += float(ref.hidden.pow(2).sum())
    if ref.logp is None:
        cos = torch.nn.functional.cosine_similarity(hidden.mean(dim=1), ref.pooled, dim=-1)
        acc.cos += float(cos.sum())
        acc.cos_n += cos.numel()
        return
    lo, hi = win.span  # type: ignore[misc]
    logp = out.logits[0, lo:hi].float().log_softmax(-1)
    acc.nll -= float(logp.gather(-1, ref.targets[:, None]).sum())  # type: ignore[index]
    acc.kl += float((ref.prob * (ref.logp - logp)).sum())  # type: ignore[operator]
    acc.agree += int((logp.argmax(-1) == ref.top).sum())
    acc.count += hi - lo


@dataclass
class _Run:
    """Everything one measurement accumulates."""

    sums: dict[tuple[int, int, int], _Sums] = field(default_factory=dict)
    clean: _Sums = field(default_factory=_Sums)
    evaluations: int = 0


def _draws(cond: ChannelCondition, draws: int) -> int:
    return 1 if cond.deterministic else draws


def _evaluated(cond: ChannelCondition) -> bool:
    return not (cond.deterministic and cond.wire_dtype == "fp32")


def _measure(ad: Any, evalset: _EvalSet, cuts: list[int], plan: _Plan, progress: Progress | None) -> _Run:
    import torch

    with torch.no_grad():
        return _measure_windows(ad, evalset, cuts, plan, progress)


def _measure_windows(ad: Any, evalset: _EvalSet, cuts: list[int], plan: _Plan, progress: Progress | None) -> _Run:
    from coinfer.models import channel
    from coinfer.models.shards import shard_range

    total_stages = ad.num_blocks + 2
    bounds = [0, *cuts]
    segments = [shard_range(ad, a, b) for a, b in zip(bounds, bounds[1:], strict=False)]
    tail = shard_range(ad, cuts[-1], total_stages, logits_to_keep=0)
    servers = {c: shard_range(ad, c, total_stages, logits_to_keep=0) for c in cuts}
    run = _Run()
    jobs = [(c, i, d) for c in cuts for i, cond in enumerate(plan.conditions) if _evaluated(cond)
            for d in range(_draws(cond, plan.draws))]
    total = len(jobs) * len(evalset.windows)
    for wi, win in enumerate(evalset.windows):
        acts, h = {}, win.ids
        for c, seg in zip(cuts, segments, strict=True):
            h = seg(h)
            acts[c] = h
        ref, clean = _reference(tail(h), win, ad.is_decoder)
        for k in ("nll", "count", "sq_ref"):
            setattr(run.clean, k, getattr(run.clean, k) + getattr(clean, k))
        for c, i, d in jobs:
            cond = plan.conditions[i]
            gen = channel.generator(plan.opts.seed, c, cond.label(), d, wi)
            out = servers[c](channel.transmit(acts[c], cond, gen))
            _score(out, ref, win, run.sums.setdefault((c, i, d), _Sums()))
            run.evaluations += 1
            if progress is not None:
                progress(f"cut {c}, {cond.label()}", run.evaluations, total)
    return run


def _point(ad: Any, cut: int, i: int, cond: ChannelCondition, run: _Run, plan: _Plan) -> RobustnessPoint:
    L = ad.num_blocks
    base = dict(cut=cut, cut_name=cut_name(cut, L), condition=cond,
                payload_bytes_per_token=activation_bytes(1, 1, ad.hidden_size, cond.wire_dtype))
    conf = plan.opts.confidence
    if not _evaluated(cond):  # the clean model itself
        one = Estimate.of([0.0])
        ones = Estimate.of([1.0])
        if ad.is_decoder:
            return RobustnessPoint(**base, perplexity_ratio=ones, kl_nats=one, top1_agreement=ones, output_rel_mse=one)
        return RobustnessPoint(**base, pooled_cosine=ones, output_rel_mse=one)
    sums = [run.sums[(cut, i, d)] for d in range(_draws(cond, plan.draws))]
    rel = Estimate.of([s.sq_err / s.sq_ref if s.sq_ref > 0 else 0.0 for s in sums], conf)
    if not ad.is_decoder:
        return RobustnessPoint(**base, pooled_cosine=Estimate.of([s.cos / s.cos_n for s in sums], conf), output_rel_mse=rel)
    clean_nll = run.clean.nll / run.clean.count
    return RobustnessPoint(
        **base,
        perplexity_ratio=Estimate.of([math.exp(s.nll / s.count - clean_nll) for s in sums], conf),
        kl_nats=Estimate.of([max(0.0, s.kl / s.count) for s in sums], conf),
        top1_agreement=Estimate.of([s.agree / s.count for s in sums], conf),
        output_rel_mse=rel,
    )


def measure_robustness(opts: ChannelOptions, progress: Progress | None = None) -> RobustnessProfile:
    """Measure the robustness profile of ``opts.model`` (``coinfer channel``).

    Args:
        opts: The command's options (see :class:`ChannelOptions`).
        progress: Optional callback ``(what, done, total)`` after each server-part evaluation.

    Raises:
        UserInputError: Bad options (checked before the model loads), a bad text or cut.
        UnsupportedModelError: A model whose family has no shards.
    """
    import torch

    from coinfer.models.corpora import DEFAULT_EVALUATION, resolve_text
    from coinfer.models.loading import load_model

    plan = check_options(opts)
    text = resolve_text(opts.eval_text, "--eval-text", DEFAULT_EVALUATION)
    if opts.threads is not None:
        if opts.threads < 1:
            raise UserInputError("--threads must be at least 1")
        torch.set_num_threads(opts.threads)
    loaded = load_model(opts.model, seed=opts.seed)
    ad = loaded.adapter
    cuts = parse_cuts(opts.cuts, ad.num_blocks)
    build = _decoder_set if ad.is_decoder else _encoder_set
    evalset = build(loaded, text, opts.eval_tokens, opts.window)
    run = _measure(ad, evalset, cuts, plan, progress)
    points = [_point(ad, c, i, cond, run, plan) for c in cuts for i, cond in enumerate(plan.conditions)]
    clean_ppl = math.exp(run.clean.nll / run.clean.count) if ad.is_decoder else None
    return RobustnessProfile(
        model=loaded.identity,
        machine=MachineInfo.here(libraries=True),
        metric="perplexity_ratio" if ad.is_decoder else "pooled_cosine",
        protocol=evalset.protocol,
        text=evalset.text,
        clean_perplexity=clean_ppl,
        seed=opts.seed,
        confidence=opts.confidence,
        cuts=cuts,
        points=points,
        model_evaluations=run.evaluations,
        notes=_notes(evalset, plan),
    )


def _notes(evalset: _EvalSet, plan: _Plan) -> list[str]:
    notes = [evalset.description] if evalset.protocol is None else []  # decoders: the protocol says it
    if any(not c.deterministic for c in plan.conditions):
        notes.append(f"random conditions: mean of {plan.draws} seeded draws with a Student-t {plan.opts.confidence:.0%} "
                     "interval (draw-to-draw spread on this text; the text itself is not resampled)")
    if any(not _evaluated(c) for c in plan.conditions):
        notes.append("fp32 without an impairment is the clean model (split shards reproduce it bit for bit): "
                     "its points are exact, not evaluated")
    notes.append("every position of a window is corrupted independently, as split decoding sends each token's "
                 "hidden state as its own message (teacher-forced = step-by-step with the same per-token corruption)")
    return notes
