"""What a corrupted or compressed link does to SmolLM2 and MiniLM, per cut, and whether the best
cut moves deeper as the channel gets worse (the adaptive layer-splitting paper's finding).

Run (the defaults take about an hour on a busy shared 2-core CPU; quality numbers do not depend
on the load, the wall times do):

    .venv/bin/python benchmarks/bench_channel.py

For each model, one ``measure_robustness`` (what ``coinfer channel`` runs) over the cuts, the wire
precisions fp16/int8/int4 alone, and element erasure and AWGN on the fp32 wire, each random
condition averaged over ``--draws`` seeded draws with a Student-t 95% interval. Then:

1. quality against erasure p and against SNR, per cut (SmolLM2: perplexity ratio to the clean
   model under the printed protocol; MiniLM: pooled cosine to the clean embeddings);
2. payload saved against quality lost for fp16, int8 and int4 at each cut;
3. the best cut per channel state, as the paper defines it: the split s (blocks on the device)
   maximising ``R = a (PPL_ref - PPL_s) / PPL_ref + b (L - s) / L`` with a = 10, b = 1, i.e.
   ``R = a (1 - ratio) + b (L - s) / L``; for MiniLM (no perplexity) the same with the cosine
   loss, ``R = a (cos - 1) + b (L - s) / L``. R's interval is the ratio's, mapped. Cuts whose
   interval overlaps the best one's are listed as tied: the table says where the data cannot
   tell them apart, and the verdict says plainly whether "the best cut moves deeper" holds.

Writes benchmarks/results/channel_bench.json (or --out): both profiles, the tables, the command.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

A, B = 10.0, 1.0  # the paper's reward weights


def _measure(model: str, blocks: list[int], args: argparse.Namespace, draws: int, tokens: int) -> tuple[dict, float]:
    from coinfer.models.robustness import ChannelOptions, measure_robustness

    opts = ChannelOptions(model=model, cuts=",".join(str(s + 1) for s in blocks), wires=args.wires,
                          impair_wires="fp32", erasure=args.erasure, snr_db=args.snr_db, draws=draws,
                          seed=args.seed, eval_tokens=tokens, threads=args.threads)
    last = [0.0]

    def progress(what: str, done: int, total: int) -> None:
        now = time.perf_counter()
        if now - last[0] > 30 or done == total:
            last[0] = now
            print(f"  {model}: {done}/{total} server evaluations ({what})", file=sys.stderr, flush=True)

    t0 = time.perf_counter()
    prof = measure_robustness(opts, progress)
    return prof.model_dump(mode="json"), time.perf_counter() - t0


def outliers(model: str, blocks: list[int], tokens: int, threads: int) -> list[dict]:
    """Why some cuts are fragile: how concentrated the activation crossing each cut is (one clean
    pass over the first evaluation window). LLMs grow a few "massive activations" (a handful of
    elements hundreds of times the RMS); erasing one of them, or AWGN scaled to a row whose power
    they dominate, wrecks the output."""
    import torch

    from coinfer.models.corpora import DEFAULT_EVALUATION, corpus
    from coinfer.models.loading import load_model
    from coinfer.models.perplexity import prepare_for
    from coinfer.models.shards import shard_range

    torch.set_num_threads(threads)
    m = load_model(model)
    if not m.adapter.is_decoder:
        return []
    h, prev, rows = prepare_for(m, corpus(DEFAULT_EVALUATION), tokens=tokens).window_inputs()[0], 0, []
    with torch.no_grad():
        for s in sorted(blocks):
            h = shard_range(m, prev, s + 1)(h)
            prev = s + 1
            x = h[0].double()
            energy = x.pow(2)
            tok, dim = divmod(int(x.abs().argmax()), x.shape[1])
            rows.append({"blocks": s, "elements": x.numel(), "max_over_rms": float(x.abs().max() / energy.mean().sqrt()),
                         "max_at_token": tok, "max_at_dim": dim,
                         "top20_energy_share": float(energy.flatten().topk(20).values.sum() / energy.sum())})
    return rows


def _quality(pt: dict, decoder: bool) -> dict:
    return pt["perplexity_ratio"] if decoder else pt["pooled_cosine"]


def _loss(q: float, decoder: bool) -> float:
    """Relative quality lost: ratio - 1 (decoders), 1 - cosine (encoders)."""
    return q - 1.0 if decoder else 1.0 - q


def _fmt(e: dict) -> str:
    if e["draws"] == 1:
        return f"{e['mean']:.4f}"
    return f"{e['mean']:.4f} [{e['ci_low']:.4f}, {e['ci_high']:.4f}]"


def _by(prof: dict, impairment: str) -> dict[float, dict[int, dict]]:
    out: dict[float, dict[int, dict]] = {}
    for pt in prof["points"]:
        c = pt["condition"]
        if c["impairment"] == impairment and c["wire_dtype"] == "fp32":
            key = c["erasure_p"] if impairment == "erasure" else c["snr_db"]
            out.setdefault(key, {})[pt["cut"]] = pt
    return out


def quality_table(prof: dict, impairment: str) -> list[dict]:
    """Rows: one per channel state; columns: one per cut (blocks on the device)."""
    dec = prof["metric"] == "perplexity_ratio"
    rows = []
    for key, pts in sorted(_by(prof, impairment).items()):
        rows.append({"state": key, "by_blocks": {str(c - 1): _quality(pts[c], dec) for c in sorted(pts)}})
    return rows


def payload_table(prof: dict) -> list[dict]:
    """Per cut and wire: bytes per token, payload saved vs fp32 and quality lost (mean, CI)."""
    dec = prof["metric"] == "perplexity_ratio"
    rows = []
    for pt in prof["points"]:
        c = pt["condition"]
        if c["impairment"] != "none":
            continue
        fp32 = prof["model"]["hidden_size"] * 4
        q = _quality(pt, dec)
        rows.append({"blocks": pt["cut"] - 1, "wire": c["wire_dtype"], "bytes_per_token": pt["payload_bytes_per_token"],
                     "payload_saved": 1 - pt["payload_bytes_per_token"] / fp32, "quality_lost": _loss(q["mean"], dec),
                     "kl_nats": pt["kl_nats"]["mean"] if pt.get("kl_nats") else None,
                     "top1_agreement": pt["top1_agreement"]["mean"] if pt.get("top1_agreement") else None})
    return rows


def reward(q: dict, s: int, L: int, decoder: bool) -> dict:
    """The paper's R for split s with its interval (R is linear in the quality figure)."""
    def r(x: float) -> float:
        return A * (1 - x if decoder else x - 1) + B * (L - s) / L

    lo, hi = sorted((r(q["ci_low"]), r(q["ci_high"])))
    return {"mean": r(q["mean"]), "ci_low": lo, "ci_high": hi}


def best_cuts(prof: dict, impairment: str) -> list[dict]:
    """Per channel state: R at each split, the best split, and the splits tied with it within the CIs."""
    dec = prof["metric"] == "perplexity_ratio"
    L = prof["model"]["num_blocks"]
    rows = []
    for key, pts in sorted(_by(prof, impairment).items()):
        rs = {c - 1: reward(_quality(pts[c], dec), c - 1, L, dec) for c in sorted(pts)}
        best = max(rs, key=lambda s: rs[s]["mean"])
        tied = [s for s in rs if s != best and rs[s]["ci_high"] >= rs[best]["ci_low"]]
        rows.append({"state": key, "best_blocks": best, "best_R": rs[best], "tied_blocks": tied,
                     "R": {str(s): v for s, v in rs.items()}})
    return rows


def verdict(rows: list[dict], impairment: str) -> str:
    """Does the best split move deeper as the channel worsens? Said plainly, with where it does not."""
    # worse channel: higher erasure p, lower SNR
    seq = rows if impairment == "erasure" else list(reversed(rows))
    name = "p" if impairment == "erasure" else "SNR"
    best = [(r["state"], r["best_blocks"]) for r in seq]
    steps = [(a, b) for a, b in zip(best, best[1:], strict=False)]
    shallower = [f"{name} {a[0]:g} -> {b[0]:g}: {a[1]} -> {b[1]} blocks" for a, b in steps if b[1] < a[1]]
    deeper = [f"{name} {a[0]:g} -> {b[0]:g}: {a[1]} -> {b[1]}" for a, b in steps if b[1] > a[1]]
    ties = [f"{name} {r['state']:g} (best {r['best_blocks']}, tied within CI: {r['tied_blocks']})"
            for r in seq if r["tied_blocks"]]
    path = ", ".join(f"{s:g}: {b}" for s, b in best)
    if not deeper and not shallower:
        head = f"does NOT hold here: the best split stays at {best[0][1]} blocks for every {name} ({path})"
    elif not shallower:
        head = f"holds: the best split never moves shallower as the channel worsens and moves deeper at {deeper} ({path})"
    else:
        head = f"does NOT hold monotonically: it moves shallower at {shallower} ({path})"
    tail = f"; not separable from the best within the 95% CIs: {ties}" if ties else "; every best split is separated from the rest by the CIs"
    return head + tail


def _print_quality(title: str, rows: list[dict], unit: str) -> None:
    print(f"\n{title}")
    if not rows:
        print("  (not measured)")
        return
    blocks = list(rows[0]["by_blocks"])
    print(f"  {unit:>8} | " + " | ".join(f"s={b:>2}" for b in blocks))
    for r in rows:
        print(f"  {r['state']:>8g} | " + " | ".join(_fmt(r["by_blocks"][b]) for b in blocks))


def _print_best(title: str, rows: list[dict], unit: str) -> None:
    print(f"\n{title}")
    for r in rows:
        b = r["best_R"]
        print(f"  {unit} {r['state']:>6g}: best s = {r['best_blocks']:>2}  R = {b['mean']:.3f} [{b['ci_low']:.3f}, "
              f"{b['ci_high']:.3f}]  tied within CI: {r['tied_blocks'] or '-'}")
        print("      R by s: " + ", ".join(f"{s}: {v['mean']:.3f}" for s, v in r["R"].items()))


def analyse(name: str, prof: dict) -> dict:
    dec = prof["metric"] == "perplexity_ratio"
    metric = "perplexity ratio to the clean model" if dec else "pooled cosine to the clean embedding"
    print(f"\n=== {name}: {prof['model']['num_blocks']} blocks, {metric}, mean [95% CI] over "
          f"{max(p['output_rel_mse']['draws'] for p in prof['points'])} draws")
    if dec:
        print(f"clean perplexity {prof['clean_perplexity']:.4g}; protocol: {_describe(prof)}")
    for n in prof["notes"]:
        print(f"note: {n}")
    out = {"erasure": quality_table(prof, "erasure"), "awgn": quality_table(prof, "awgn"),
           "payload": payload_table(prof), "best_erasure": best_cuts(prof, "erasure"), "best_awgn": best_cuts(prof, "awgn")}
    _print_quality("quality vs erasure p (fp32 wire), per split s", out["erasure"], "p")
    _print_quality("quality vs SNR (fp32 wire), per split s", out["awgn"], "SNR dB")
    print("\npayload saved vs quality lost (wire alone)")
    for r in out["payload"]:
        extra = f"  KL {r['kl_nats']:.3g}  top-1 {r['top1_agreement']:.3f}" if r["kl_nats"] is not None else ""
        print(f"  s={r['blocks']:>2} {r['wire']:>4}: {r['bytes_per_token']:>5} B/token, saved {r['payload_saved']:6.1%}, "
              f"quality lost {r['quality_lost']:+.4%}{extra}")
    _print_best(f"best split per erasure p (R = {A:g}*(1 - loss) + {B:g}*(L - s)/L)", out["best_erasure"], "p")
    _print_best("best split per SNR", out["best_awgn"], "SNR")
    out["verdict_erasure"] = verdict(out["best_erasure"], "erasure") if out["best_erasure"] else None
    out["verdict_awgn"] = verdict(out["best_awgn"], "awgn") if out["best_awgn"] else None
    print(f"\nbest split deeper as erasure grows? {out['verdict_erasure']}")
    print(f"best split deeper as SNR falls? {out['verdict_awgn']}")
    return out


def _describe(prof: dict) -> str:
    from coinfer.reports.quality import PerplexityProtocol

    return PerplexityProtocol.model_validate(prof["protocol"]).describe()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default="smollm2,minilm")
    ap.add_argument("--smollm2-blocks", default="1,2,3,4,6,8,10", help="splits s (blocks on the device; the paper's 1..10)")
    ap.add_argument("--minilm-blocks", default="1,2,3,4,5,6")
    ap.add_argument("--wires", default="fp16,int8,int4", help="wire precisions measured alone at each cut")
    ap.add_argument("--erasure", default="0.01,0.05,0.1,0.2,0.3")
    ap.add_argument("--snr-db", default="0,10,20")
    ap.add_argument("--smollm2-draws", type=int, default=3)
    ap.add_argument("--smollm2-eval-tokens", type=int, default=512, help="one 512-token window")
    ap.add_argument("--minilm-draws", type=int, default=8)
    ap.add_argument("--minilm-eval-tokens", type=int, default=4096, help="32 windows of 128 positions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", default="benchmarks/results/channel_bench.json")
    args = ap.parse_args()
    load_before = os.getloadavg()
    results: dict = {"command": " ".join([Path(sys.argv[0]).as_posix(), *sys.argv[1:]]), "args": vars(args),
                     "reward": {"a": A, "b": B}, "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                                                            "loadavg_before": load_before}, "models": {}}
    for name in args.models.split(","):
        blocks = [int(x) for x in getattr(args, f"{name}_blocks").split(",")]
        print(f"measuring {name} at splits {blocks} ...", file=sys.stderr, flush=True)
        prof, wall = _measure(name, blocks, args, getattr(args, f"{name}_draws"), getattr(args, f"{name}_eval_tokens"))
        results["models"][name] = {"profile": prof, "wall_s": wall, "analysis": analyse(name, prof),
                                   "outliers": outliers(name, blocks, getattr(args, f"{name}_eval_tokens"), args.threads)}
        for r in results["models"][name]["outliers"]:
            print(f"  s={r['blocks']:>2}: max |x| = {r['max_over_rms']:6.1f} x RMS (token {r['max_at_token']}, dim "
                  f"{r['max_at_dim']}); the top 20 of {r['elements']:,} elements hold "
                  f"{r['top20_energy_share']:.1%} of the energy")
        print(f"\n{name}: {prof['model_evaluations']} server-part evaluations in {wall:.0f} s "
              f"({args.threads} threads, busy shared machine: wall times are not comparable)")
    results["machine"]["loadavg_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
