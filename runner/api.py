"""`coinfer run` as a library: one entry point per role, and the result it writes.

``run_command`` is what the CLI calls. Locally (``role="local"``) it starts the server (and any
relays) as child processes on 127.0.0.1 — inside a rate-shaped private network namespace when
asked to emulate a link — runs the device part, and builds a :class:`RunResult` that puts each
measured phase next to the plan's prediction.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coinfer.errors import UserInputError
from coinfer.quiet import QuietWatch, note_line, refuse_if_strict, warning_line
from coinfer.reports.common import Contention, MachineInfo
from coinfer.reports.run import ChainMember, ExportedShards, LinkEmulation, RunResult
from coinfer.runner import channel_run
from coinfer.runner.outcome import DeviceOutcome, RequestRecord, phase_timings, traffic
from coinfer.runner.predict import Prediction
from coinfer.vocab import (
    DEFAULT_DECODE_STEPS,
    DEFAULT_PROMPT_TOKENS,
    check_engine,
    check_precision,
    check_wire_dtype,
    cut_name,
    max_positions,
)

EventSink = Callable[[dict[str, Any]], None]


@dataclass
class RunOptions:
    """Everything `coinfer run` accepts (None = take it from the plan, or the default)."""

    role: str = "local"
    plan: str | None = None
    cut: int | None = None
    chain_cuts: list[int] | None = None
    model: str | None = None
    seed: int = 0
    listen: str = "127.0.0.1:29600"
    server: str | None = None
    via: list[str] = field(default_factory=list)
    wire_dtype: str | None = None
    prompt_tokens: int | None = None
    new_tokens: int | None = None
    batch: int = 1
    ragged: bool = False
    emulate_rate: str | None = None
    emulate_rtt: str | None = None
    emulate_link: str = "loopback"  # or "veth": device and server in two namespaces joined by a veth pair
    threads: int | None = None
    warmup: int = 1
    repeats: int = 1
    timeout_s: float = 60.0
    out: str | None = None
    check: bool = True
    device_profile: str | None = None
    server_profile: str | None = None
    prune_report: str | None = None
    ratio: float | None = None
    token_file: str | None = None
    max_sessions: int = 1
    precision: str = "fp32"
    engine: str = "torch"
    prompt: str | None = None
    erasure: str | None = None
    snr_db: str | None = None
    robustness: str | None = None
    strict: bool = False  # refuse to write a result measured on a contended machine




# -- server role --------------------------------------------------------------------------------
def serve(listen: str, model: str, *, seed: int = 0, threads: int = 1, timeout_s: float = 60.0,
          on_event: EventSink | None = None, stop_after: int | None = None,
          shard: tuple[str, str] | None = None, token_file: str | None = None, max_sessions: int = 1,
          limits: Any = None) -> None:
    """Load ``model`` and serve sessions on ``listen`` until interrupted.

    Args:
        stop_after: Return once this many sessions have ended (None: serve until interrupted).
        shard: (path, sha256) of an exported shard config (``coinfer prune``) to serve instead of
            the model's own stages; verified before loading.
        token_file: The shared secret devices must prove they hold (else ``$COINFER_TOKEN``); one
            is required unless ``listen`` is a loopback address.
        max_sessions: Sessions (devices) served at the same time; more are refused as busy.
        limits: The server's deadlines and bounds (a ``runner.server.Limits``; None: defaults).

    Raises:
        UserInputError: Bad address, the port cannot be bound, no token beyond loopback.
        IntegrityError: The exported shard does not match its sha256.
    """
    from coinfer.models.loading import load_model
    from coinfer.runner.auth import load_token
    from coinfer.runner.server import Server, check_exposure, parse_hostport

    host, port = parse_hostport(listen, "--listen")
    token = load_token(token_file)
    check_exposure(host, token)
    if max_sessions < 1:
        raise UserInputError("--max-sessions must be at least 1")
    _set_threads(threads)
    loaded = load_model(model, seed=seed)
    fixed = None
    if shard is not None:
        from coinfer.models.shard_io import load_shard

        fixed = load_shard(shard[0], shard[1])
    srv = Server(loaded, host, port, max_timeout_s=timeout_s, on_event=on_event, shard=fixed,
                 shard_sha256=shard[1] if shard else None, token=token, max_sessions=max_sessions,
                 limits=limits)
    try:
        srv.bind()
    except OSError as exc:
        raise UserInputError(f"--listen {listen}: cannot listen there ({exc.strerror or exc})") from None
    try:
        srv.serve_forever(stop_after)
    except KeyboardInterrupt:
        srv.stop()


def _default_threads() -> int:
    # The roles alternate (each waits while the other computes), so each may use every core.
    import torch

    return max(1, torch.get_num_threads())


def _set_threads(threads: int) -> None:
    import torch

    if threads < 1:
        raise UserInputError("--threads must be at least 1")
    torch.set_num_threads(threads)


# -- device role ----------------------------------------------------------------------------------
def device_outcome(*, model: str, seed: int, loaded: Any = None, **kw: Any) -> dict[str, Any]:
    """Run the device role and return its outcome as JSON (what a device child process writes)."""
    return run_device(model=model, seed=seed, loaded=loaded, **kw).model_dump(mode="json")


def run_device(*, model: str, seed: int, loaded: Any = None, **kw: Any) -> DeviceOutcome:
    """Run the device role (loading ``model`` unless ``loaded`` is given) and return what it measured."""
    if loaded is None:
        from coinfer.models.loading import load_model

        loaded = load_model(model, seed=seed)
    return _device_run(loaded, **kw)


def _device_run(loaded: Any, *, bounds: list[int], members: list[list[Any]], input_ids: list[list[int]],
                attention_mask: list[list[int]] | None, new_tokens: int, wire_dtype: str, runs: int,
                rtt_ms: float, timeout_s: float, threads: int, check: bool,
                shards: dict[str, list[str]] | None = None, token_file: str | None = None,
                precision: str = "fp32", engine: str = "torch",
                channel: dict[str, Any] | None = None, quality: bool = False) -> DeviceOutcome:
    import torch

    from coinfer.runner.auth import load_token
    from coinfer.runner.device import run_device_session

    _set_threads(threads)
    ids = torch.tensor(input_ids, dtype=torch.int64)
    mask = torch.tensor(attention_mask, dtype=torch.int64) if attention_mask is not None else None
    dev_shard = None
    if shards:
        from coinfer.models.shard_io import load_shard

        dev_shard = load_shard(*shards["device"])
    variant = _device_variant(loaded, bounds, dev_shard, precision, engine, threads)
    if variant is not None:
        dev_shard = variant.shard
    run = run_device_session(loaded, bounds, [(str(h), int(p)) for h, p in members], ids, mask, new_tokens,
                             wire_dtype, runs, rtt_ms, timeout_s, device_shard=dev_shard,
                             server_shard_sha256=shards["server"][1] if shards else None,
                             token=load_token(token_file), channel=channel)
    out = run.records[0].output
    matches, diff = (_check_output(loaded, out, ids, mask, new_tokens, dev_shard, shards, bounds[1] if variant else None)
                     if check else (None, None))
    judged = channel_run.generated_quality(loaded, out, ids, mask) if quality else None
    return DeviceOutcome(
        identity=loaded.identity,
        records=[RequestRecord(compute_ms=r.compute_ms, end_to_end_ms=r.end_to_end_ms, sent_bytes=r.sent_bytes)
                 for r in run.records],
        members=run.member_reports,
        tokens=out.tolist() if loaded.is_decoder else None,
        matches_unsplit=matches,
        max_abs_diff=diff,
        notes=variant.notes if variant is not None else [],
        quality=judged,
    )


def _device_variant(loaded: Any, bounds: list[int], dev_shard: Any, precision: str, engine: str, threads: int) -> Any:
    """The device shard at ``precision`` on ``engine`` (None: the fp32 torch shard as it is)."""
    if precision == "fp32" and engine == "torch":
        return None
    if bounds[1] == 0:
        raise UserInputError("--precision/--engine change the device shard, and cut 0 leaves the device nothing to run")
    from coinfer.models.shards import shard_range
    from coinfer.precision.runtime import device_variant

    return device_variant(dev_shard if dev_shard is not None else shard_range(loaded, 0, bounds[1]), precision, engine, threads)


def _check_output(loaded: Any, out: Any, ids: Any, mask: Any, new_tokens: int, dev_shard: Any,
                  shards: dict[str, list[str]] | None, variant_cut: int | None = None) -> tuple[bool, float | None]:
    """(identical to the reference, encoders' max |difference|) for the split run's output.

    Exported shards, and a device shard at another precision or engine (``variant_cut``), are
    checked against the same shards run in one process (they change the output on purpose);
    otherwise the reference is the unsplit model.
    """
    import torch

    from coinfer.models.shards import generate_greedy, shard_range
    from coinfer.runner.engine import sentence_embedding

    with torch.no_grad():
        if shards:
            from coinfer.models.shard_io import load_shard

            whole_chain = [dev_shard, load_shard(*shards["server"])]
        elif variant_cut is not None:
            whole_chain = [dev_shard, shard_range(loaded, variant_cut, loaded.adapter.num_blocks + 2)]
        else:
            whole_chain = [shard_range(loaded, 0, loaded.adapter.num_blocks + 2)]
        if loaded.is_decoder:
            return bool(torch.equal(generate_greedy(whole_chain, ids, new_tokens + 1), out)), None
        h: Any = ids
        for sh in whole_chain:
            h = sh(h, sh.new_state(), mask)
        ref = sentence_embedding(h.last_hidden_state, mask)
        diff = float((ref - out).abs().max())
        return diff == 0.0, diff


# -- the command ----------------------------------------------------------------------------------
def _stages(start: int, end: int, names: list[str]) -> str:
    if start >= end:
        return "-"
    return names[start] if end - start == 1 else f"{names[start]}..{names[end - 1]}"


def _prompt(loaded: Any, batch: int, tokens: int, seed: int, ragged: bool, text: str | None):
    """Decoders: a real-text prompt of ``tokens`` tokens ending with ``text`` (see
    :func:`coinfer.models.corpora.prompt_ids`), the same for every sequence of the batch. Encoders:
    seeded random ids, padded to ragged lengths with ``ragged``."""
    import torch

    from coinfer.models.corpora import prompt_ids

    is_decoder = loaded.adapter.is_decoder
    if text is not None and not is_decoder:
        raise UserInputError("--prompt is for decoders (an encoder's input is random token ids)")
    if is_decoder and not ragged:
        vocab = loaded.adapter.vocab_size
        own = prompt_ids(loaded.tokenizer, vocab, text=text)
        # A prompt shorter than the default one's tokens is the default's end; the user's own must fit.
        one = own[-tokens:] if text is None and len(own) > tokens else prompt_ids(loaded.tokenizer, vocab, tokens, text)
        return torch.tensor([one] * batch, dtype=torch.int64), None
    gen = torch.Generator().manual_seed(seed)
    vocab = loaded.adapter.vocab_size
    ids = torch.randint(0, vocab, (batch, tokens), generator=gen)
    if not ragged:
        return ids, None
    if is_decoder:
        raise UserInputError("--ragged (padded batches) is for encoders; decoder batches use equal-length prompts")
    mask = torch.ones((batch, tokens), dtype=torch.int64)
    for i in range(1, batch):
        mask[i, max(1, tokens - i * max(1, tokens // (2 * batch))):] = 0
    return ids, mask


def passive_openmp() -> bool:
    """Make idle OpenMP threads sleep soon after work instead of spinning; True if in effect.

    Both roles on one machine take turns on the same cores: with libgomp's default spin-wait the
    idle role's threads kept both cores busy (decode steps 40-70x slower); see coinfer.openmp for
    why a short spin rather than OMP_WAIT_POLICY=PASSIVE. It only works before torch loads.
    """
    from coinfer.openmp import configure_openmp_wait

    return configure_openmp_wait()


def run_command(opts: RunOptions, on_event: EventSink | None = None) -> RunResult | None:
    """Run one role of `coinfer run` (see the CLI for the options' meaning).

    Returns:
        The result for ``local`` and ``device`` roles (also written to ``opts.out``); None for a
        server, which returns only when interrupted.

    Raises:
        UserInputError, SchemaError, ModelNotFoundError, DeviceUnavailableError: one clear line each.
    """
    if opts.role not in ("local", "server", "device"):
        raise UserInputError(f"--role {opts.role!r}: expected local, server or device")
    check_limits(opts)
    passive = passive_openmp()
    if opts.role == "server":
        if opts.emulate_rate or opts.plan or opts.cut is not None:
            raise UserInputError("--role server takes --listen and --model only (the device sends the cut)")
        if opts.erasure is not None or opts.snr_db is not None or opts.robustness:
            raise UserInputError("--erasure, --snr-db and --robustness are the device's: it asks the server for the channel")
        shards = _resolve_shards(opts.prune_report, opts.ratio)
        serve(opts.listen, opts.model or "gpt2", seed=opts.seed, threads=opts.threads or _default_threads(),
              timeout_s=opts.timeout_s, on_event=on_event, shard=tuple(shards["server"]) if shards else None,
              token_file=opts.token_file, max_sessions=opts.max_sessions)
        return None
    return _run_device_side(opts, on_event or (lambda e: None), passive)


def check_limits(opts: RunOptions) -> None:
    """The bounds a session has (runner.protocol), checked on the options before anything starts.

    Raises:
        UserInputError: The first option out of its bounds, in one line.
    """
    from coinfer.runner import protocol as p
    from coinfer.units import fmt_duration

    runs = opts.warmup + opts.repeats
    checks = [
        (opts.batch, 1, p.MAX_BATCH, "--batch"),
        (opts.repeats, 1, p.MAX_RUNS, "--repeats"),
        (opts.warmup, 0, p.MAX_RUNS - 1, "--warmup"),
        (opts.prompt_tokens, 1, p.MAX_TOKENS, "--prompt-tokens"),
        (opts.new_tokens, 0, p.MAX_TOKENS, "--decode-steps"),
        (opts.max_sessions, 1, 1024, "--max-sessions"),
    ]
    for value, lo, hi, option in checks:
        if value is not None and not lo <= value <= hi:
            raise UserInputError(f"{option} {value}: outside {lo}..{hi} (what one session may ask)")
    if runs > p.MAX_RUNS:
        raise UserInputError(f"--warmup {opts.warmup} + --repeats {opts.repeats} = {runs} requests: at most {p.MAX_RUNS}")
    if not 0 < opts.timeout_s <= p.MAX_TIMEOUT_S:
        raise UserInputError(f"--timeout {fmt_duration(opts.timeout_s * 1e3)}: outside 0..{fmt_duration(p.MAX_TIMEOUT_S * 1e3)}")
    if opts.emulate_rtt is not None:
        from coinfer.units import parse_duration_ms

        rtt = parse_duration_ms(opts.emulate_rtt, "--emulate-rtt")
        if rtt > p.MAX_RTT_MS:
            raise UserInputError(f"--emulate-rtt {opts.emulate_rtt}: at most {fmt_duration(p.MAX_RTT_MS)}")


def _resolve_shards(report_path: str | None, ratio: float | None) -> dict[str, list[str]] | None:
    """The exported device and server shard configs of ``ratio`` in a prune report: role -> [path, sha256].

    Raises:
        UserInputError: Missing ratio, no such ratio, or no exported shards.
        SchemaError: Not a prune report.
    """
    if report_path is None:
        if ratio is not None:
            raise UserInputError("--ratio needs --prune-report")
        return None

    from coinfer.reports.io import load_document
    from coinfer.reports.prune import PruneReport

    rep = load_document(report_path, PruneReport)
    have = ", ".join(f"{r.requested_ratio:g}" for r in rep.results)
    if ratio is None:
        raise UserInputError(f"--prune-report needs --ratio (the report has {have})")
    res = [r for r in rep.results if abs(r.requested_ratio - ratio) < 1e-9]
    if not res:
        raise UserInputError(f"--ratio {ratio:g} is not in {report_path} (it has {have})")
    folder = _export_folder(rep.export_dir, report_path)
    files = {f.role: [str(_shard_file(folder, f)), f.sha256] for f in res[0].shards if f.format == "json"}
    if set(files) != {"device", "server"}:
        raise UserInputError(f"{report_path}: ratio {ratio:g} has no exported device and server shards (coinfer prune --export-dir)")
    return files




def _export_folder(export_dir: str | None, report_path: str) -> Any:
    """The folder a report's shard names are relative to: ``export_dir`` (relative to the report's
    folder, or for reports written before, to the working folder), else the report's folder."""
    from pathlib import Path

    beside = Path(report_path).parent
    if not export_dir:
        return beside
    folder = Path(export_dir)
    if not folder.is_absolute() and (beside / folder).is_dir():
        folder = beside / folder
    if not folder.is_dir():
        raise UserInputError(f"{report_path}: export_dir {export_dir}: no such folder")
    return folder


def _shard_file(folder: Any, f: Any) -> Any:
    """A shard file the report lists: inside the export folder, of the recorded size (not yet read)."""
    from coinfer.models.shard_io import check_size, confined_file

    path = confined_file(folder, f.path, "shards[].path")
    check_size(path, f.size_bytes)
    return path


@dataclass
class _Setup:
    """A device-side run as resolved from the options, the plan and the prune report, step by step."""

    opts: RunOptions
    threads: int
    plan: Any  # the Plan, or None
    rate_bps: float | None
    rtt_ms: float
    wire_dtype: str
    spec: str = ""
    cut: int = 0
    chain_cuts: list[int] | None = None
    chain_plan: bool = False
    shards: dict[str, list[str]] | None = None
    shard_cut: int | None = None
    dev_cfg: Any = None  # the exported device shard's config
    prompt_tokens: int = 0
    prompt_ids: list[int] | None = None  # decoders: the first sequence's prompt
    # known once the model is loaded
    loaded: Any = None
    new_tokens: int = 0
    bounds: list[int] = field(default_factory=list)
    addresses: list[tuple[str, int]] = field(default_factory=list)

    @property
    def n_members(self) -> int:
        """Processes after the device: relays and the server."""
        return len(self.bounds) - 2


def _run_device_side(opts: RunOptions, on_event: EventSink, passive_omp: bool = True) -> RunResult:
    """Validate everything, load the model, predict, run, and put measurements beside predictions."""
    from coinfer.models.loading import load_model
    from coinfer.reports.io import write_json

    s = _resolve_link(opts)
    rc = channel_run.resolve(opts.erasure, opts.snr_db, opts.robustness, s.wire_dtype, opts.seed)
    _resolve_cut(s)
    s.loaded = load_model(s.spec, seed=opts.seed)
    _fit_model(s)
    if rc is not None:
        channel_run.check_fit(rc, s.loaded.identity, s.bounds, s.shards is not None)
    prediction, notes = _prediction(s)
    ids, mask = _prompt(s.loaded, opts.batch, s.prompt_tokens, opts.seed, opts.ragged, opts.prompt)
    s.prompt_ids = ids[0].tolist() if s.loaded.adapter.is_decoder else None
    request = dict(bounds=s.bounds, input_ids=ids.tolist(), attention_mask=None if mask is None else mask.tolist(),
                   new_tokens=s.new_tokens, wire_dtype=s.wire_dtype, runs=opts.warmup + opts.repeats,
                   rtt_ms=s.rtt_ms, timeout_s=opts.timeout_s, threads=s.threads, check=opts.check, shards=s.shards,
                   token_file=opts.token_file, precision=opts.precision, engine=opts.engine,
                   channel=rc.spec() if rc else None, quality=rc is not None and s.shards is None)
    link = LinkEmulation(rate_bps=s.rate_bps, rtt_ms=s.rtt_ms, rtt_emulated_at_transport=s.rtt_ms > 0)
    if opts.role == "device":
        on_event({"event": "device_start", "servers": [f"{h}:{p}" for h, p in s.addresses]})
        watch = QuietWatch("cpu", s.threads).start()
        outcome = run_device(model=s.spec, seed=opts.seed, loaded=s.loaded, members=[list(a) for a in s.addresses],
                             **request)
        contention = watch.stop()
        addr_text: list[str | None] = [f"{h}:{p}" for h, p in s.addresses]
    else:
        outcome, addr_text, contention = _run_local(s.spec, opts, s.loaded, request, s.n_members, s.rate_bps, link, on_event)
    notes += _run_notes(s, mask is not None, passive_omp) + outcome.notes
    if line := warning_line(contention, "this run") or note_line(contention, "this run"):
        notes.append(line)
    result = _result(s, outcome.after_warmup(opts.warmup), prediction, link, addr_text, notes, contention)
    if rc is not None:
        result.channel = channel_run.report(rc, s.cut, outcome.quality)
        if not rc.condition.deterministic:
            result.notes.append("the channel impairs the activation on purpose: the output is not expected to match the "
                                "unsplit model; the channel section judges it")
    refuse_if_strict(contention, opts.strict, "this run")
    if opts.out is not None:
        write_json(result, opts.out)
    return result


def _resolve_link(opts: RunOptions) -> _Setup:
    """Check the options that need no model; read the plan, the emulated link and the wire dtype."""
    from coinfer.reports.io import check_writable, load_document
    from coinfer.reports.plan import Plan
    from coinfer.runner.linkemu import parse_duration_ms, parse_rate_bps

    if opts.out is not None:
        check_writable(opts.out)
    threads = opts.threads if opts.threads is not None else _default_threads()
    from coinfer.runner.auth import load_token

    load_token(opts.token_file)  # a bad token file is found before any work
    if opts.batch < 1 or opts.warmup < 0 or opts.repeats < 1 or opts.timeout_s <= 0:
        raise UserInputError("--batch and --repeats must be >= 1, --warmup >= 0, --timeout > 0")
    plan = load_document(opts.plan, Plan) if opts.plan else None
    rate_bps = parse_rate_bps(opts.emulate_rate) if opts.emulate_rate else None
    rtt_ms = parse_duration_ms(opts.emulate_rtt) if opts.emulate_rtt else 0.0
    if rate_bps is not None and opts.role != "local":
        raise UserInputError("--emulate-rate shapes a local namespace; use it without --role (both roles local)")
    if opts.role == "device" and not opts.server:
        raise UserInputError("--role device needs --server HOST:PORT")
    wire_dtype = check_wire_dtype(opts.wire_dtype or (plan.link.wire_dtype if plan else "fp32"))
    check_precision(opts.precision)
    check_engine(opts.engine)
    return _Setup(opts, threads, plan, rate_bps, rtt_ms, wire_dtype)


def _resolve_cut(s: _Setup) -> None:
    """The model, the cut (or chain of cuts), exported shards and the prompt length."""
    from coinfer.runner import predict

    opts, plan = s.opts, s.plan
    spec = opts.model or (plan.model.name if plan else None)
    if spec is None:
        raise UserInputError("give --model or --plan")
    s.spec = spec
    if opts.chain_cuts and opts.cut is not None:
        raise UserInputError("give --cut or --chain-cuts, not both")
    s.chain_cuts = opts.chain_cuts
    s.chain_plan = plan is not None and plan.best is None and plan.chain is not None
    if s.chain_plan and s.chain_cuts is None and opts.cut is None:
        s.chain_cuts = predict.chain_from_plan(plan, opts.plan)[0]
    cut = s.chain_cuts[0] if s.chain_cuts else opts.cut
    s.shards = _resolve_shards(opts.prune_report, opts.ratio)
    if s.shards is not None:
        from coinfer.models.shard_io import read_shard_config

        s.dev_cfg = read_shard_config(*s.shards["device"])  # sha256-checked
        s.shard_cut = s.dev_cfg.end
        if opts.chain_cuts:
            raise UserInputError("exported shards are a device/server pair; they do not form a chain")
        if cut is None:
            cut = s.shard_cut
    if cut is None:
        if plan is None or plan.best is None:
            raise UserInputError("give --cut (or --plan with a best candidate)")
        cut = plan.best.cut
    s.cut = cut
    s.prompt_tokens = opts.prompt_tokens or (plan.prompt_tokens if plan else DEFAULT_PROMPT_TOKENS)
    if opts.prompt_tokens is not None and opts.prompt_tokens < 1:
        raise UserInputError("--prompt-tokens must be >= 1")


def _fit_model(s: _Setup) -> None:
    """Check the loaded model against the plan and shards; fix generated tokens, stage bounds and addresses."""
    opts, ident, ad = s.opts, s.loaded.identity, s.loaded.adapter
    if s.dev_cfg is not None and not s.dev_cfg.model.same_architecture(ident):
        raise UserInputError(f"--prune-report {opts.prune_report} exported shards of {s.dev_cfg.model.name}, not {s.spec}")
    if s.plan is not None and not s.plan.model.same_architecture(ident):
        raise UserInputError(f"--plan {opts.plan} is for {s.plan.model.name} ({s.plan.model.config_sha256[:12]}), not {s.spec}")
    new_tokens = opts.new_tokens if opts.new_tokens is not None else (s.plan.new_tokens if s.plan else DEFAULT_DECODE_STEPS)
    if not ad.is_decoder:
        new_tokens = 0
    elif new_tokens < 0:
        raise UserInputError("--decode-steps must not be negative")
    s.new_tokens = new_tokens
    total = ad.num_blocks + 2
    bounds = [0, *(s.chain_cuts or [s.cut])]
    if bounds[-1] != total:
        bounds.append(total)
    if any(b < 0 or b > total for b in bounds) or any(x >= y for x, y in zip(bounds[1:], bounds[2:], strict=False)):
        raise UserInputError(f"cut(s) {bounds[1:-1]}: expected increasing stage counts in 0..{total} for {ident.num_blocks} blocks")
    if len(bounds) > 17:
        raise UserInputError("a chain has at most 16 parts")
    if s.shard_cut is not None and s.cut != s.shard_cut:
        raise UserInputError(f"the exported shards split at cut {s.shard_cut}, not {s.cut}")
    limit = max_positions(s.loaded.model.config)
    if limit is not None and s.prompt_tokens + new_tokens > limit:
        raise UserInputError(f"--prompt-tokens + --decode-steps = {s.prompt_tokens + new_tokens} exceeds the model's {limit} positions")
    from coinfer.models.footprint import check_request

    check_request(s.loaded.model.config, batch=opts.batch, tokens=s.prompt_tokens, context=s.prompt_tokens + new_tokens)
    s.bounds = bounds
    if opts.role == "device":
        from coinfer.runner.server import parse_hostport

        s.addresses = [parse_hostport(v, "--via") for v in opts.via] + [parse_hostport(opts.server, "--server")]
        if len(s.addresses) != s.n_members:
            raise UserInputError(f"cuts {bounds[1:-1]} need {s.n_members} server(s): --via for each relay, then --server")


def _prediction(s: _Setup) -> tuple[Prediction | None, list[str]]:
    """What the plan (or the profiles, through the planner's cost model) predicts, and why not when it cannot."""
    from coinfer.runner import predict

    opts, plan = s.opts, s.plan
    prediction, notes = None, []
    if s.chain_plan:
        planned_cuts, chain_pred = predict.chain_from_plan(plan, opts.plan)
        if s.chain_cuts == planned_cuts:
            prediction = chain_pred
        else:
            notes.append(f"the run's cuts {s.chain_cuts or [s.cut]} are not the plan's chain {planned_cuts}: no prediction")
    elif plan is not None:
        prediction, notes = predict.from_plan(plan, s.cut, s.wire_dtype, opts.plan)
    elif opts.device_profile:
        prediction, notes = _profile_prediction(s)
    elif opts.server_profile:
        raise UserInputError("--server-profile needs --device-profile too")
    if plan is not None and s.rate_bps is not None and abs(plan.link.uplink_rate_bps - s.rate_bps) > 0.01 * s.rate_bps:
        notes.append(f"the plan's link is {plan.link.uplink_rate_bps / 1e6:g} Mbit/s, the emulated one {s.rate_bps / 1e6:g} Mbit/s")
    if plan is not None and abs(plan.link.rtt_ms - s.rtt_ms) > 0.01:
        notes.append(f"the plan's RTT is {plan.link.rtt_ms:g} ms, the run's {s.rtt_ms:g} ms")
    return prediction, notes


def _profile_prediction(s: _Setup) -> tuple[Prediction | None, list[str]]:
    """The planner's prediction from --device-profile (and --server-profile) for a shaped two-party run."""
    from coinfer.runner import predict

    opts = s.opts
    if len(s.bounds) > 3:
        return None, ["no prediction: profile-based prediction covers device + server, not chains"]
    if s.rate_bps is None:
        return None, ["no prediction: the link is unshaped loopback; give --emulate-rate to predict from profiles"]
    from coinfer.runner.linkemu import PAYLOAD_SHARE

    # tc shapes frames: the payload gets PAYLOAD_SHARE of the shaped rate (TCP/IP and Ethernet headers).
    prediction, notes, prof = predict.from_profiles(
        opts.device_profile, opts.server_profile, s.cut, rate_bps=s.rate_bps * PAYLOAD_SHARE, rtt_ms=s.rtt_ms,
        wire_dtype=s.wire_dtype, prompt_tokens=s.prompt_tokens, new_tokens=s.new_tokens)
    if not prof.model.same_architecture(s.loaded.identity):
        raise UserInputError(f"--device-profile {opts.device_profile} is for {prof.model.name}, not {s.spec}")
    if prof.context.batch != opts.batch:
        notes.append(f"the profile measured batch {prof.context.batch}, the run uses {opts.batch}")
    if prof.context.threads != s.threads:
        notes.append(f"the profile measured with {prof.context.threads} threads, the run uses {s.threads}")
    notes.append(f"the emulated link shapes Ethernet frames: payload at {PAYLOAD_SHARE:.4f} of the rate (1448 TCP "
                 "payload bytes per 1514-byte frame at MTU 1500)")
    return prediction, notes


def _run_notes(s: _Setup, masked: bool, passive_omp: bool) -> list[str]:
    """How the run was made, where that matters to reading its figures."""
    notes = []
    if s.rtt_ms > 0:
        notes.append("the RTT is emulated at the transport boundary (a sleep of rtt/2 per message and direction); tc adds only the rate")
    if masked:
        notes.append("the padding mask crosses the link before the activation (counted in the uplink bytes)")
    if not passive_omp and s.threads > 1 and s.opts.role == "local":
        notes.append("OpenMP threads of this process may spin while waiting (torch was loaded before GOMP_SPINCOUNT "
                     "could be set, or OMP_WAIT_POLICY was given): device compute may be inflated")
    if s.shards:
        notes.append(f"ran the exported shards of ratio {s.opts.ratio:g} (sha256-checked); the output check compares "
                     "them with the same shards in one process")
    return notes


def _chain_members(s: _Setup, addr_text: list[str | None]) -> list[ChainMember]:
    """Each process of the run and the stages it ran."""
    names, b = s.loaded.adapter.stage_names(), s.bounds
    chain = [ChainMember(role="device", rank=0, start=0, end=b[1], stages=_stages(0, b[1], names))]
    for r in range(1, len(b) - 1):
        chain.append(ChainMember(role="server" if r == len(b) - 2 else "relay", rank=r, start=b[r], end=b[r + 1],
                                 stages=_stages(b[r], b[r + 1], names), address=addr_text[r - 1]))
    return chain


def _predicted_payload(s: _Setup) -> int:
    """Bytes the payload model says cross the cut in the prefill."""
    from coinfer.models.payload import activation_bytes, token_ids_bytes

    ad = s.loaded.adapter
    if s.cut == 0:
        return token_ids_bytes(s.opts.batch, s.prompt_tokens)
    if s.cut >= ad.num_blocks + 2:
        return 0
    return activation_bytes(s.opts.batch, s.prompt_tokens, ad.hidden_size, s.wire_dtype)


def _result(s: _Setup, outcome: DeviceOutcome, prediction: Prediction | None, link: LinkEmulation,
            addr_text: list[str | None], notes: list[str], contention: Contention | None = None) -> RunResult:
    """The run result: measured phases beside predictions, traffic, the output check."""
    from coinfer.reports.io import file_sha256
    from coinfer.reports.plan import InputFile
    from coinfer.runner.transport import TRANSPORT_NAME

    opts, shards = s.opts, s.shards
    phases = phase_timings(outcome, prediction)
    return RunResult(
        model=outcome.identity,
        machine=MachineInfo.here(libraries=True),
        torch_threads=s.threads,
        mode="two-machine" if opts.role == "device" else "local",
        transport=TRANSPORT_NAME,
        cut=s.cut,
        cut_name=cut_name(s.cut, s.loaded.adapter.num_blocks),
        chain=_chain_members(s, addr_text),
        wire_dtype=s.wire_dtype,  # type: ignore[arg-type]
        batch=opts.batch,
        prompt_tokens=s.prompt_tokens,
        new_tokens=s.new_tokens,
        decode_steps=s.new_tokens,
        warmup_runs=opts.warmup,
        repeats=opts.repeats,
        link=link,
        plan=InputFile(role="plan", path=str(opts.plan), sha256=file_sha256(opts.plan)) if opts.plan else None,
        shards=ExportedShards(
            prune_report=InputFile(role="prune", path=str(opts.prune_report), sha256=file_sha256(opts.prune_report)),
            ratio=opts.ratio, device_shard_sha256=shards["device"][1], server_shard_sha256=shards["server"][1],
        ) if shards else None,
        prediction_source=prediction.source if prediction else None,
        prefill=phases.prefill,
        per_token=phases.per_token,
        total=phases.total,
        per_generated_token=phases.per_generated_token,
        traffic=traffic(outcome, _predicted_payload(s)),
        generated_tokens=outcome.tokens,
        prompt_text=_text(s.loaded, s.prompt_ids) if s.prompt_ids else None,
        generated_text=_text(s.loaded, outcome.tokens[0]) if outcome.tokens else None,
        matches_unsplit=outcome.matches_unsplit,
        max_abs_diff=outcome.max_abs_diff,
        device_precision=opts.precision,  # type: ignore[arg-type]
        device_engine=opts.engine,  # type: ignore[arg-type]
        contention=contention,
        notes=notes,
    )


def _text(loaded: Any, ids: list[int]) -> str | None:
    """Token ids as text through the model's tokenizer (None: a model without one)."""
    return None if loaded.tokenizer is None else str(loaded.tokenizer.decode(ids))


@contextmanager
def _session_token() -> Iterator[str]:
    """A fresh shared secret in a private temporary file, for two local processes that talk over a veth."""
    import secrets
    import tempfile

    with tempfile.TemporaryDirectory(prefix="coinfer-token-") as tmp:
        path = Path(tmp) / "token"
        path.write_text(secrets.token_hex(32))
        path.chmod(0o600)
        yield str(path)


def _run_local(spec: str, opts: RunOptions, loaded: Any, request: dict[str, Any], n_members: int,
               rate_bps: float | None, link: LinkEmulation,
               on_event: EventSink) -> tuple[DeviceOutcome, list[str | None], Contention]:
    """Both roles here (servers as children, the device here or in the namespace); the quiet watch
    covers the measured requests, from the servers being ready to the device's outcome."""
    from contextlib import ExitStack

    from coinfer.runner import local
    from coinfer.runner.linkemu import shaped_namespace, veth_namespaces

    with ExitStack() as stack:
        prefix: list[str] = []
        server_prefix: list[str] = []
        host = "127.0.0.1"
        if rate_bps is not None and opts.emulate_link == "veth":
            pair = stack.enter_context(veth_namespaces(rate_bps))
            prefix, server_prefix, host = pair.device.prefix(), pair.server.prefix(), pair.server_ip
            link.qdisc, link.namespace = pair.qdisc, f"{pair.device.name} <-veth-> {pair.server.name}"
            on_event({"event": "namespace", "name": link.namespace, "qdisc": link.qdisc})
            if request.get("token_file") is None and not os.environ.get("COINFER_TOKEN"):
                request["token_file"] = stack.enter_context(_session_token())  # beyond loopback: a secret
        elif rate_bps is not None:
            ns = stack.enter_context(shaped_namespace(rate_bps))
            prefix = server_prefix = ns.prefix()
            link.qdisc, link.namespace = ns.qdisc, ns.name
            on_event({"event": "namespace", "name": ns.name, "qdisc": ns.qdisc})
        children = []
        if n_members:
            shard = request["shards"]["server"] if request.get("shards") else None
            children = stack.enter_context(local.servers(spec, opts.seed, request["threads"], n_members, opts.timeout_s,
                                                         server_prefix, shard, request.get("token_file"), host=host))
        members = [[c.host, c.port] for c in children]
        for c in children:
            on_event({"event": "server_ready", "address": f"{c.host}:{c.port}"})
        watch = QuietWatch("cpu", request["threads"]).start()  # the servers are children: their CPU is ours
        if prefix:
            outcome = DeviceOutcome.model_validate(
                local.device_in_child(dict(model=spec, seed=opts.seed, members=members, **request), prefix))
        else:
            outcome = run_device(model=spec, seed=opts.seed, loaded=loaded, members=members, **request)
        return outcome, [f"{h}:{p}" for h, p in members], watch.stop()


