"""`coinfer run` as a library: one entry point per role, and the result it writes.

``run_command`` is what the CLI calls. Locally (``role="local"``) it starts the server (and any
relays) as child processes on 127.0.0.1 — inside a rate-shaped private network namespace when
asked to emulate a link — runs the device part, and builds a :class:`RunResult` that puts each
measured phase next to the plan's prediction.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from coinfer.errors import UserInputError
from coinfer.reports.run import (
    ChainMember,
    ExportedShards,
    LinkEmulation,
    Measured,
    PhaseTiming,
    RunResult,
    Traffic,
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


DEFAULT_PROMPT_TOKENS = 32
DEFAULT_NEW_TOKENS = 8


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
    """Run the device role and return a JSON-able outcome (used in-process and in a child)."""
    if loaded is None:
        from coinfer.models.loading import load_model

        loaded = load_model(model, seed=seed)
    return _device_outcome(loaded, **kw)


def _device_outcome(loaded: Any, *, bounds: list[int], members: list[list[Any]], input_ids: list[list[int]],
                    attention_mask: list[list[int]] | None, new_tokens: int, wire_dtype: str, runs: int,
                    rtt_ms: float, timeout_s: float, threads: int, check: bool,
                    shards: dict[str, list[str]] | None = None, token_file: str | None = None) -> dict[str, Any]:
    import torch

    from coinfer.models.shards import generate_greedy, shard_range
    from coinfer.runner.auth import load_token
    from coinfer.runner.device import run_device_session
    from coinfer.runner.engine import sentence_embedding

    _set_threads(threads)
    ids = torch.tensor(input_ids, dtype=torch.int64)
    mask = torch.tensor(attention_mask, dtype=torch.int64) if attention_mask is not None else None
    dev_shard = None
    if shards:
        from coinfer.models.shard_io import load_shard

        dev_shard = load_shard(*shards["device"])
    run = run_device_session(loaded, bounds, [(str(h), int(p)) for h, p in members], ids, mask, new_tokens,
                             wire_dtype, runs, rtt_ms, timeout_s, device_shard=dev_shard,
                             server_shard_sha256=shards["server"][1] if shards else None,
                             token=load_token(token_file))
    out = run.records[0].output
    tokens = out.tolist() if loaded.is_decoder else None
    matches, diff = None, None
    if check:
        with torch.no_grad():
            # Exported shards are checked against themselves run in one process (pruning changes
            # the output on purpose); otherwise against the unsplit model.
            if shards:
                whole_chain = [dev_shard, load_shard(*shards["server"])]
            else:
                whole_chain = [shard_range(loaded, 0, loaded.adapter.num_blocks + 2)]
            if loaded.is_decoder:
                matches = bool(torch.equal(generate_greedy(whole_chain, ids, new_tokens + 1), out))
            else:
                h: Any = ids
                for sh in whole_chain:
                    h = sh(h, sh.new_state(), mask)
                ref = sentence_embedding(h.last_hidden_state, mask)
                diff = float((ref - out).abs().max())
                matches = diff == 0.0
    return {
        "identity": loaded.identity.model_dump(mode="json"),
        "records": [{"compute_ms": r.compute_ms, "end_to_end_ms": r.end_to_end_ms, "sent_bytes": r.sent_bytes}
                    for r in run.records],
        "members": [m.model_dump(mode="json") for m in run.member_reports],
        "tokens": tokens,
        "matches_unsplit": matches,
        "max_abs_diff": diff,
    }


# -- the command ----------------------------------------------------------------------------------
def _cut_name(cut: int, stage_names: list[str]) -> str:
    return "server-only" if cut == 0 else stage_names[cut - 1]


def _stages(start: int, end: int, names: list[str]) -> str:
    if start >= end:
        return "-"
    return names[start] if end - start == 1 else f"{names[start]}..{names[end - 1]}"


def _prompt(vocab: int, batch: int, tokens: int, seed: int, ragged: bool, is_decoder: bool):
    import torch

    gen = torch.Generator().manual_seed(seed)
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
    passive = passive_openmp()
    if opts.role == "server":
        if opts.emulate_rate or opts.plan or opts.cut is not None:
            raise UserInputError("--role server takes --listen and --model only (the device sends the cut)")
        shards = _resolve_shards(opts.prune_report, opts.ratio)
        serve(opts.listen, opts.model or "gpt2", seed=opts.seed, threads=opts.threads or _default_threads(),
              timeout_s=opts.timeout_s, on_event=on_event, shard=tuple(shards["server"]) if shards else None,
              token_file=opts.token_file, max_sessions=opts.max_sessions)
        return None
    return _run_device_side(opts, on_event or (lambda e: None), passive)


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
    from pathlib import Path

    from coinfer.reports.io import load_document
    from coinfer.reports.prune import PruneReport

    rep = load_document(report_path, PruneReport)
    have = ", ".join(f"{r.requested_ratio:g}" for r in rep.results)
    if ratio is None:
        raise UserInputError(f"--prune-report needs --ratio (the report has {have})")
    res = [r for r in rep.results if abs(r.requested_ratio - ratio) < 1e-9]
    if not res:
        raise UserInputError(f"--ratio {ratio:g} is not in {report_path} (it has {have})")
    folder = Path(rep.export_dir) if rep.export_dir else Path(report_path).parent
    if not folder.is_absolute() and not folder.exists():
        folder = Path(report_path).parent / folder
    files = {f.role: [str(folder / f.path), f.sha256] for f in res[0].shards if f.format == "json"}
    if set(files) != {"device", "server"}:
        raise UserInputError(f"{report_path}: ratio {ratio:g} has no exported device and server shards (coinfer prune --export-dir)")
    return files


def _run_device_side(opts: RunOptions, on_event: EventSink, passive_omp: bool = True) -> RunResult:
    from coinfer.models.loading import load_model
    from coinfer.models.payload import activation_bytes, token_ids_bytes
    from coinfer.reports.io import check_writable, file_sha256, load_document, write_json
    from coinfer.reports.plan import InputFile, Plan
    from coinfer.runner import predict
    from coinfer.runner.linkemu import parse_duration_ms, parse_rate_bps
    from coinfer.runner.transport import TRANSPORT_NAME
    from coinfer.runner.wire import WIRE_DTYPES

    # -- validate everything before any work ------------------------------------------------
    if opts.out is not None:
        check_writable(opts.out)
    threads = opts.threads if opts.threads is not None else _default_threads()
    from coinfer.runner.auth import load_token

    load_token(opts.token_file)  # a bad token file is found before any work
    if opts.batch < 1 or opts.warmup < 0 or opts.repeats < 1 or opts.timeout_s <= 0:
        raise UserInputError("--batch and --repeats must be >= 1, --warmup >= 0, --timeout-s > 0")
    plan = load_document(opts.plan, Plan) if opts.plan else None
    rate_bps = parse_rate_bps(opts.emulate_rate) if opts.emulate_rate else None
    rtt_ms = parse_duration_ms(opts.emulate_rtt) if opts.emulate_rtt else 0.0
    if rate_bps is not None and opts.role != "local":
        raise UserInputError("--emulate-rate shapes a local namespace; use it without --role (both roles local)")
    if opts.role == "device" and not opts.server:
        raise UserInputError("--role device needs --server HOST:PORT")
    wire_dtype = opts.wire_dtype or (plan.link.wire_dtype if plan else "fp32")
    if wire_dtype not in WIRE_DTYPES:
        raise UserInputError(f"--wire-dtype {wire_dtype!r}: expected fp32, fp16 or int8")
    spec = opts.model or (plan.model.name if plan else None)
    if spec is None:
        raise UserInputError("give --model or --plan")
    if opts.chain_cuts and opts.cut is not None:
        raise UserInputError("give --cut or --chain-cuts, not both")
    chain_cuts = opts.chain_cuts
    chain_plan = plan is not None and plan.best is None and plan.chain is not None
    if chain_plan and chain_cuts is None and opts.cut is None:
        chain_cuts = predict.chain_from_plan(plan, opts.plan)[0]
    cut = chain_cuts[0] if chain_cuts else opts.cut
    shards = _resolve_shards(opts.prune_report, opts.ratio)
    shard_cut, dev_cfg = None, None
    if shards is not None:
        from coinfer.models.shard_io import read_shard_config

        dev_cfg = read_shard_config(*shards["device"])  # sha256-checked
        shard_cut = dev_cfg.end
        if opts.chain_cuts:
            raise UserInputError("exported shards are a device/server pair; they do not form a chain")
        if cut is None:
            cut = shard_cut
    if cut is None:
        if plan is None or plan.best is None:
            raise UserInputError("give --cut (or --plan with a best candidate)")
        cut = plan.best.cut
    prompt_tokens = opts.prompt_tokens or (plan.prompt_tokens if plan else DEFAULT_PROMPT_TOKENS)
    if opts.prompt_tokens is not None and opts.prompt_tokens < 1:
        raise UserInputError("--prompt-tokens must be >= 1")

    loaded = load_model(spec, seed=opts.seed)
    ident, ad = loaded.identity, loaded.adapter
    if dev_cfg is not None and not dev_cfg.model.same_architecture(ident):
        raise UserInputError(f"--prune-report {opts.prune_report} exported shards of {dev_cfg.model.name}, not {spec}")
    if plan is not None and not plan.model.same_architecture(ident):
        raise UserInputError(f"--plan {opts.plan} is for {plan.model.name} ({plan.model.config_sha256[:12]}), not {spec}")
    new_tokens = opts.new_tokens if opts.new_tokens is not None else (plan.new_tokens if plan else DEFAULT_NEW_TOKENS)
    if not ad.is_decoder:
        new_tokens = 0
    elif new_tokens < 0:
        raise UserInputError("--new-tokens must not be negative")
    total = ad.num_blocks + 2
    bounds = [0, *(chain_cuts or [cut])]
    if bounds[-1] != total:
        bounds.append(total)
    if any(b < 0 or b > total for b in bounds) or any(x >= y for x, y in zip(bounds[1:], bounds[2:], strict=False)):
        raise UserInputError(f"cut(s) {bounds[1:-1]}: expected increasing stage counts in 0..{total} for {ident.num_blocks} blocks")
    if len(bounds) > 17:
        raise UserInputError("a chain has at most 16 parts")
    if shard_cut is not None and cut != shard_cut:
        raise UserInputError(f"the exported shards split at cut {shard_cut}, not {cut}")
    limit = getattr(loaded.model.config, "n_positions", None) or getattr(loaded.model.config, "max_position_embeddings", None)
    if isinstance(limit, int) and prompt_tokens + new_tokens > limit:
        raise UserInputError(f"--prompt-tokens + --new-tokens = {prompt_tokens + new_tokens} exceeds the model's {limit} positions")
    n_members = len(bounds) - 2
    if opts.role == "device":
        from coinfer.runner.server import parse_hostport

        addresses = [parse_hostport(v, "--via") for v in opts.via] + [parse_hostport(opts.server, "--server")]
        if len(addresses) != n_members:
            raise UserInputError(f"cuts {bounds[1:-1]} need {n_members} server(s): --via for each relay, then --server")
    prediction, notes = None, []
    if chain_plan:
        planned_cuts, chain_pred = predict.chain_from_plan(plan, opts.plan)
        if chain_cuts == planned_cuts:
            prediction = chain_pred
        else:
            notes.append(f"the run's cuts {chain_cuts or [cut]} are not the plan's chain {planned_cuts}: no prediction")
    elif plan is not None:
        prediction, notes = predict.from_plan(plan, cut, wire_dtype, opts.plan)
    elif opts.device_profile:
        if len(bounds) > 3:
            notes.append("no prediction: profile-based prediction covers device + server, not chains")
        elif rate_bps is None:
            notes.append("no prediction: the link is unshaped loopback; give --emulate-rate to predict from profiles")
        else:
            prediction, more, prof = predict.from_profiles(
                opts.device_profile, opts.server_profile, cut, rate_bps=rate_bps, rtt_ms=rtt_ms,
                wire_dtype=wire_dtype, prompt_tokens=prompt_tokens, new_tokens=new_tokens)
            notes += more
            if not prof.model.same_architecture(ident):
                raise UserInputError(f"--device-profile {opts.device_profile} is for {prof.model.name}, not {spec}")
            if prof.context.batch != opts.batch:
                notes.append(f"the profile measured batch {prof.context.batch}, the run uses {opts.batch}")
            if prof.context.threads != threads:
                notes.append(f"the profile measured with {prof.context.threads} threads, the run uses {threads}")
    elif opts.server_profile:
        raise UserInputError("--server-profile needs --device-profile too")
    if plan is not None and rate_bps is not None and abs(plan.link.uplink_rate_bps - rate_bps) > 0.01 * rate_bps:
        notes.append(f"the plan's link is {plan.link.uplink_rate_bps / 1e6:g} Mbit/s, the emulated one {rate_bps / 1e6:g} Mbit/s")
    if plan is not None and abs(plan.link.rtt_ms - rtt_ms) > 0.01:
        notes.append(f"the plan's RTT is {plan.link.rtt_ms:g} ms, the run's {rtt_ms:g} ms")

    ids, mask = _prompt(ad.vocab_size, opts.batch, prompt_tokens, opts.seed, opts.ragged, ad.is_decoder)
    runs = opts.warmup + opts.repeats
    request = dict(bounds=bounds, input_ids=ids.tolist(), attention_mask=None if mask is None else mask.tolist(),
                   new_tokens=new_tokens, wire_dtype=wire_dtype, runs=runs, rtt_ms=rtt_ms, timeout_s=opts.timeout_s,
                   threads=threads, check=opts.check, shards=shards, token_file=opts.token_file)

    # -- run ---------------------------------------------------------------------------------------
    link = LinkEmulation(rate_bps=rate_bps, rtt_ms=rtt_ms, rtt_emulated_at_transport=rtt_ms > 0)
    addr_text: list[str | None]
    if opts.role == "device":
        on_event({"event": "device_start", "servers": [f"{h}:{p}" for h, p in addresses]})
        outcome = device_outcome(model=spec, seed=opts.seed, loaded=loaded, members=[list(a) for a in addresses], **request)
        addr_text = [f"{h}:{p}" for h, p in addresses]
    else:
        outcome, addr_text = _run_local(spec, opts, loaded, request, n_members, rate_bps, link, on_event)

    # -- result ------------------------------------------------------------------------------------
    names = ad.stage_names()
    chain = [ChainMember(role="device", rank=0, start=0, end=bounds[1], stages=_stages(0, bounds[1], names))]
    for r in range(1, len(bounds) - 1):
        chain.append(ChainMember(role="server" if r == len(bounds) - 2 else "relay", rank=r, start=bounds[r],
                                 end=bounds[r + 1], stages=_stages(bounds[r], bounds[r + 1], names),
                                 address=addr_text[r - 1]))
    recs = outcome["records"][opts.warmup:]
    members = [{"compute_ms": m["compute_ms"][opts.warmup:], "sent_bytes": m["sent_bytes"][opts.warmup:]}
               for m in outcome["members"]]
    phases = _phases(recs, members, prediction, new_tokens)
    up_pre = recs[0]["sent_bytes"][0] + sum(m["sent_bytes"][0][0] for m in members[:-1])
    per_tok_up = None
    if len(recs[0]["sent_bytes"]) > 1:
        per_tok_up = recs[0]["sent_bytes"][1] + sum(m["sent_bytes"][0][1] for m in members[:-1])
    down = sum(members[-1]["sent_bytes"][0]) if members else 0
    total_bytes = sum(recs[0]["sent_bytes"]) + sum(sum(m["sent_bytes"][0]) for m in members)
    if cut == 0:
        pred_payload = token_ids_bytes(opts.batch, prompt_tokens)
    elif cut >= total:
        pred_payload = 0
    else:
        pred_payload = activation_bytes(opts.batch, prompt_tokens, ad.hidden_size, wire_dtype)
    if rtt_ms > 0:
        notes.append("the RTT is emulated at the transport boundary (a sleep of rtt/2 per message and direction); tc adds only the rate")
    if mask is not None:
        notes.append("the padding mask crosses the link before the activation (counted in the uplink bytes)")
    if not passive_omp and threads > 1 and opts.role == "local":
        notes.append("OpenMP threads of this process may spin while waiting (torch was loaded before GOMP_SPINCOUNT "
                     "could be set, or OMP_WAIT_POLICY was given): device compute may be inflated")
    if shards:
        notes.append(f"ran the exported shards of ratio {opts.ratio:g} (sha256-checked); the output check compares "
                     "them with the same shards in one process")
    from coinfer.reports.common import ModelIdentity

    result = RunResult(
        model=ModelIdentity.model_validate(outcome["identity"]),
        machine=_machine(),
        torch_threads=threads,
        mode="two-machine" if opts.role == "device" else "local",
        transport=TRANSPORT_NAME,
        cut=cut,
        cut_name=_cut_name(cut, names),
        chain=chain,
        wire_dtype=wire_dtype,  # type: ignore[arg-type]
        batch=opts.batch,
        prompt_tokens=prompt_tokens,
        new_tokens=new_tokens,
        decode_steps=new_tokens,
        warmup_runs=opts.warmup,
        repeats=opts.repeats,
        link=link,
        plan=InputFile(role="plan", path=str(opts.plan), sha256=file_sha256(opts.plan)) if opts.plan else None,
        shards=ExportedShards(
            prune_report=InputFile(role="prune", path=str(opts.prune_report), sha256=file_sha256(opts.prune_report)),
            ratio=opts.ratio, device_shard_sha256=shards["device"][1], server_shard_sha256=shards["server"][1],
        ) if shards else None,
        prediction_source=prediction.source if prediction else None,
        traffic=Traffic(prefill_uplink_bytes=up_pre, per_token_uplink_bytes=per_tok_up, downlink_bytes=down,
                        total_bytes=total_bytes, predicted_prefill_payload_bytes=pred_payload),
        generated_tokens=outcome["tokens"],
        matches_unsplit=outcome["matches_unsplit"],
        max_abs_diff=outcome["max_abs_diff"],
        notes=notes,
        **phases,
    )
    if opts.out is not None:
        write_json(result, opts.out)
    return result


def _run_local(spec: str, opts: RunOptions, loaded: Any, request: dict[str, Any], n_members: int,
               rate_bps: float | None, link: LinkEmulation, on_event: EventSink) -> tuple[dict[str, Any], list[str | None]]:
    from contextlib import ExitStack

    from coinfer.runner import local
    from coinfer.runner.linkemu import shaped_namespace

    with ExitStack() as stack:
        prefix: list[str] = []
        if rate_bps is not None:
            ns = stack.enter_context(shaped_namespace(rate_bps))
            prefix = ns.prefix()
            link.qdisc, link.namespace = ns.qdisc, ns.name
            on_event({"event": "namespace", "name": ns.name, "qdisc": ns.qdisc})
        children = []
        if n_members:
            shard = request["shards"]["server"] if request.get("shards") else None
            children = stack.enter_context(local.servers(spec, opts.seed, request["threads"], n_members, opts.timeout_s,
                                                         prefix, shard, request.get("token_file")))
        members = [[c.host, c.port] for c in children]
        for c in children:
            on_event({"event": "server_ready", "address": f"{c.host}:{c.port}"})
        if prefix:
            outcome = local.device_in_child(dict(model=spec, seed=opts.seed, members=members, **request), prefix)
        else:
            outcome = device_outcome(model=spec, seed=opts.seed, loaded=loaded, members=members, **request)
        return outcome, [f"{h}:{p}" for h, p in members]


def _machine():
    import torch
    import transformers

    from coinfer.reports.common import MachineInfo

    m = MachineInfo.here()
    m.torch_version = torch.__version__
    m.transformers_version = transformers.__version__
    return m


def _measured(value: float, predicted: float | None) -> Measured:
    err = None
    if predicted is not None and predicted > 0:
        err = (value - predicted) / predicted * 100.0
    return Measured(measured_ms=max(0.0, value), predicted_ms=predicted, error_pct=err)


def _timing(dev: float, xfer: float, srv: float, e2e: float, pred: Any | None) -> PhaseTiming:
    p = pred or {}
    return PhaseTiming(
        device_compute=_measured(dev, p.get("device")),
        transfer=_measured(xfer, p.get("transfer")),
        server_compute=_measured(srv, p.get("server")),
        end_to_end=_measured(e2e, p.get("total")),
    )


def _pb(b: Any) -> dict[str, float] | None:
    if b is None:
        return None
    return {"device": b.device_ms, "transfer": b.uplink_ms + b.downlink_ms, "server": b.server_ms, "total": b.total_ms}


def _phases(recs: list[dict], members: list[dict], prediction: Any, new_tokens: int) -> dict[str, Any]:
    """Medians over the measured requests of each term, per phase."""
    per_run = []  # per run: list of (dev, srv, e2e) per step
    for j, r in enumerate(recs):
        steps = []
        for s in range(len(r["end_to_end_ms"])):
            srv = sum(m["compute_ms"][j][s] for m in members)
            steps.append((r["compute_ms"][s], srv, r["end_to_end_ms"][s]))
        per_run.append(steps)

    def med(values: list[float]) -> float:
        return float(statistics.median(values))

    def terms(rows: list[tuple[float, float, float]]) -> tuple[float, float, float, float]:
        dev = sum(x[0] for x in rows)
        srv = sum(x[1] for x in rows)
        e2e = sum(x[2] for x in rows)
        return dev, max(0.0, e2e - dev - srv), srv, e2e

    pre = [terms(steps[:1]) for steps in per_run]
    tot = [terms(steps) for steps in per_run]
    p_pre = _pb(prediction.prefill) if prediction else None
    p_tok = _pb(prediction.per_token) if prediction else None
    whole_only = prediction.total_ms if prediction is not None and prediction.prefill is None else None
    decode_steps = len(per_run[0]) - 1
    out: dict[str, Any] = {"prefill": _timing(*(med([t[i] for t in pre]) for i in range(4)), p_pre)}
    p_tot = None
    if p_pre is not None:
        p_tot = {k: p_pre[k] + decode_steps * (p_tok[k] if p_tok else 0.0) for k in p_pre}
    elif whole_only is not None:
        p_tot = {"total": whole_only}
    if decode_steps > 0:
        per = [tuple(v / decode_steps for v in terms(steps[1:])) for steps in per_run]
        out["per_token"] = _timing(*(med([t[i] for t in per]) for i in range(4)), p_tok)
    out["total"] = _timing(*(med([t[i] for t in tot]) for i in range(4)), p_tot)
    if len(per_run[0]) > 1:  # decoders: the prefill's token plus one per decode step
        n_out = len(per_run[0])
        e2e = med([t[3] for t in tot]) / n_out
        out["per_generated_token"] = _measured(e2e, p_tot["total"] / n_out if p_tot else None)
    return out
