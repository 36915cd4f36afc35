"""Every benchmark in one command (`make bench`, `make bench-quick`), written up as BENCHMARKS.md.

Each entry is a command, where it writes its JSON, the figure read back from that JSON, the target
it is held to and whether it is met. A failing entry is reported with its stderr tail and the
suite goes on; the exit code says whether every entry ran. The papers' findings are stated from
the produced JSON only: a finding whose data did not come out of this run says so.

    .venv/bin/python benchmarks/suite.py --quick --out-dir out/bench-quick --md out/bench-quick/BENCHMARKS.md
    .venv/bin/python benchmarks/suite.py --out-dir benchmarks/results/suite --md BENCHMARKS.md

``--quick`` runs the coinfer walk (profile, prune with perplexity, plan with a perplexity budget,
run) on a tiny random-weight Llama built here, so the harness is exercised in CI in seconds; the
full suite runs the real sizes (SmolLM2 with real weights, GPT-2 and 1.1B shapes) and the scripts
in ``benchmarks/`` (about 40 minutes on 2 cores). Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
Figure = tuple[str, bool | None]  # (the figure in words, target met; None: no target)


@dataclass
class Entry:
    """One benchmark: a command, its JSON and how to read it."""

    name: str
    what: str
    command: list[str]
    output: str  # the JSON it writes, relative to --out-dir
    target: str
    read: Callable[[Any], Figure]
    needs: str | None = None  # a script that must exist (else: "not run: script absent")
    result: dict[str, Any] = field(default_factory=dict)


def _coinfer(*args: str) -> list[str]:
    return [str(BIN / "coinfer"), *args]


def _script(name: str, *args: str) -> list[str]:
    return [sys.executable, str(ROOT / "benchmarks" / name), *args]


# -- readers: a figure and a verdict from each JSON ----------------------------------------------
def _profile(d: Any) -> Figure:
    cov = (d.get("whole_model") or {}).get("prefill_coverage")
    total = sum(s["prefill"]["median_ms"] for s in d["stages"])
    text = f"prefill {total:.1f} ms over {len(d['stages'])} stages" + (f", coverage {cov:.2f}" if cov else "")
    return text, None if cov is None else 0.9 <= cov <= 1.1


def _prune(d: Any, ratio: float = 0.2, limit: float = 1.25) -> Figure:
    dense = d.get("dense_quality")
    row = next((r for r in d["results"] if abs(r["requested_ratio"] - ratio) < 1e-9), None)
    if dense is None or row is None or row.get("quality") is None:
        return "no perplexity in the report", None
    x = row["quality"]["perplexity"] / dense["perplexity"]
    sp = row.get("speedup") or {}
    speed = f", prefill {sp['prefill_measured']:.2f}x, decode {sp.get('decode_measured') or 0:.2f}x" if sp else ""
    p = dense["protocol"]
    return (f"ratio {ratio:g}: perplexity {x:.3f}x dense ({dense['perplexity']:.4g}; {p['text']['name']}, "
            f"{p['tokens']} tokens, window {p['window']}){speed}"), x <= limit


def _plan(d: Any) -> Figure:
    b = d["best"]
    ppl = f", perplexity {b['ppl_ratio']:.3f}x" if b.get("ppl_ratio") else ""
    return f"best cut {b['cut']} ({b['cut_name']}), ratio {b['ratio']:g}, {b['total_latency_ms']:.1f} ms{ppl}", None


def _run(d: Any, limit_pct: float = 15.0) -> Figure:
    e = d["total"]["end_to_end"]
    if e.get("error_pct") is None:
        return f"measured {e['measured_ms']:.1f} ms (no prediction)", None
    return (f"end to end measured {e['measured_ms']:.1f} ms vs predicted {e['predicted_ms']:.1f} ms "
            f"({e['error_pct']:+.1f}%); tokens identical: {d.get('matches_unsplit')}"), abs(e["error_pct"]) <= limit_pct


def _bench_plan(d: Any) -> Figure:
    s = d.get("search_vs_brute_80L") or {}
    t = d["plan_80L"]["core_1freq"]["median_s"]
    text = f"80 blocks x 11 ratios x 1000 rates in {t * 1e3:.0f} ms"
    if s:
        text += (f"; one rate's {s['configurations']:,} configurations: search {s['search']['median_s'] * 1e3:.1f} ms "
                 f"vs brute force {s['brute_force']['median_s']:.2f} s ({s['speedup']:.0f}x)")
    targets = d.get("targets") or {}
    flat = [v for v in targets.values() if isinstance(v, bool)] + [
        x for v in targets.values() if isinstance(v, dict) for x in v.values()]
    return text, all(flat) if flat else None


def _bench_profile(d: Any) -> Figure:
    parts, ok = [], True
    for r in d["results"]:
        cov = r["coverage"]["first"]["prefill"]
        rep = [v["prefill"] for v in r["repeatability"]["per_stage"].values()]
        within = sum(abs(x - 1) <= 0.10 for x in rep)
        parts.append(f"{r['model']}: coverage {cov:.2f}, {within}/{len(rep)} stage medians of two profiles within 10%, "
                     f"default profile {r['default_profile_wall_s']:.0f} s")
        ok &= 0.9 <= cov <= 1.1 and within == len(rep)
    return "; ".join(parts), ok


def _bench_run(d: Any) -> Figure:
    errs = [r["total"]["end_to_end"]["error_pct"] for r in d.get("rows", [])]
    errs = [e for e in errs if e is not None]
    if not errs:
        return "no predicted/measured pairs found", None
    rates = ", ".join(f"{r.get('rate_mbps', '?')} Mbit/s {r['total']['end_to_end']['error_pct']:+.1f}%" for r in d["rows"])
    return f"end to end: {rates}", max(abs(e) for e in errs) <= 10.0


def _quality(d: Any) -> Figure:
    rows = [r for r in d["rows"] if abs(r["ratio"] - 0.2) < 1e-9]
    if not rows:
        return "no row at ratio 0.2", None
    best = min(rows, key=lambda r: r["perplexity_over_dense"])
    return (f"best at 0.2: {best['importance']}/{best['allocation']}/{best['compensation']} "
            f"{best['perplexity_over_dense']:.3f}x dense"), best["perplexity_over_dense"] <= 1.25


def _channel(d: Any) -> Figure:
    a = d["models"]["smollm2"]["analysis"] if "smollm2" in d.get("models", {}) else None
    return ("SmolLM2 erasure: " + a["verdict_erasure"][:160]) if a else "no SmolLM2 analysis", None


def _device(d: Any) -> Figure:
    rows = [(m["model"], r) for m in d["models"] for r in (m.get("target") or {}).get("results", [])]
    if not rows:
        return "no precision results", None
    text = "; ".join(f"{name} {r['precision']}/{r['engine']} ({r['threads']} thr): decode {r['decode_speedup']:.2f}x, "
                     f"perplexity {r['perplexity_ratio']:.3f}x" for name, r in rows if r["precision"] == "int8")
    return text, any(r["met"] for _, r in rows if r["precision"] == "int8")


def entries(quick: bool, tiny: Path | None) -> list[Entry]:
    """The suite: the coinfer walk first (quick: on ``tiny``), then the scripts (full only)."""
    m = str(tiny) if quick else "smollm2"
    walk = [
        Entry("profile", "per-stage latency, memory bandwidth share", _coinfer(
            "profile", "--model", m, "--prompt-tokens", "16" if quick else "128", "--decode-context", "24" if quick else "160",
            "--repeats", "1" if quick else "5", "--min-time", "0.05s" if quick else "1s", "--no-emissions", "-q",
            "-o", "{out}/profile.json"), "profile.json", "coverage (sum of stages / whole model) within 0.9-1.1", _profile),
        Entry("prune", "perplexity against ratio with the default recipe", _coinfer(
            "prune", "--model", m, "--ratios", "0.1,0.2,0.3", "-q", "-o", "{out}/prune.json",
            *(["--windows", "2", "--prompt-tokens", "32", "--eval-tokens", "256", "--eval-window", "32", "--repeats", "1",
               "--calib", "builtin"] if quick else [])),
            "prune.json", "ratio 0.2 at most 1.25x dense perplexity (issue 9's target, default recipe)", _prune),
        Entry("plan", "cut and ratio under a perplexity budget at 20 Mbps", _coinfer(
            "plan", "--device-profile", "{out}/profile.json", "--server-speedup", "8", "--prune-report", "{out}/prune.json",
            "--rate", "20Mbps", "--rtt", "10ms", "--max-ppl-ratio", "1.3", "--prompt-tokens", "16" if quick else "128",
            "--decode-steps", "4" if quick else "32", "--sweep-rate", "10kbps:1Gbps", "-q", "-o", "{out}/plan.json"),
            "plan.json", "a feasible plan (reported)", _plan),
        Entry("run", "the split run for real against the profile's prediction", _coinfer(
            "run", "--model", m, "--cut", "2" if quick else "9", "--device-profile", "{out}/profile.json",
            "--prompt-tokens", "16" if quick else "128", "--decode-steps", "4" if quick else "32",
            "--repeats", "1" if quick else "3", "-q", "-o", "{out}/run.json",
            *([] if quick else ["--emulate-rate", "20Mbps", "--emulate-rtt", "10ms"])),
            "run.json", "end to end within 15% of the prediction", _run),
    ]
    if quick:
        return walk
    return walk + [
        Entry("bench_plan", "planner: agreement with brute force, planning time", _script(
            "bench_plan.py", "--repeats", "5", "--out", "{out}/plan_bench.json"), "plan_bench.json",
            "the bench's own targets (planning under 1 s; chain DP 100x faster than brute force)", _bench_plan),
        Entry("bench_profile", "profile coverage, back-to-back repeatability, wall time", _script(
            "bench_profile.py", "--models", "gpt2,llama-1.1b", "--out", "{out}/profile_bench.json"), "profile_bench.json",
            "coverage within 0.9-1.1 and every stage median of two profiles within 10%", _bench_profile),
        Entry("bench_run", "predicted vs measured at three link rates", _script(
            "bench_run.py", "--models", "gpt2", "--rates", "5,50,500", "--repeats", "3", "--interleave", "--link", "veth",
            "--out", "{out}/run_bench.json"), "run_bench.json", "every rate within 10% end to end, two namespaces over a veth", _bench_run),
        Entry("bench_quality", "SmolLM2 perplexity per recipe and ratio", _script(
            "bench_quality.py", "--importance", "fluctuation,activation", "--allocation", "sensitivity,uniform",
            "--compensation", "lstsq,bias", "--ratios", "0.2", "--calib-windows", "32", "--out", "{out}/quality.json"),
            "quality.json", "ratio 0.2 at most 1.25x dense for the best recipe", _quality),
        Entry("bench_channel", "quality vs erasure/SNR per cut, the best cut per channel state", _script(
            "bench_channel.py", "--models", "smollm2", "--smollm2-blocks", "1,2,4,8", "--smollm2-draws", "2",
            "--snr-db", "10", "--out", "{out}/channel.json"), "channel.json",
            "the paper's finding stated either way (reported)", _channel),
        Entry("bench_device", "int8/int4 vs fp32 per engine on SmolLM2's device shard", _script(
            "bench_device.py", "--models", "gpt2", "--repeats", "5", "--out", "{out}/device.json"), "device.json",
            "weight-only int8 decode at least 2x fp32 torch at perplexity at most 1.05x (issue 14)", _device),
    ]


def _machine() -> dict[str, Any]:
    import torch

    return {"platform": platform.platform(), "python": platform.python_version(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "loadavg_1m": os.getloadavg()[0]}


def _tiny_model(folder: Path) -> Path:
    """A tiny random-weight Llama saved as a Hugging Face folder (quick mode's model)."""
    from coinfer.models.loading import build_from_config

    cfg = dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
               num_key_value_heads=2, vocab_size=256, max_position_embeddings=128)
    build_from_config(cfg, name="tiny-llama", seed=0).model.save_pretrained(folder)
    return folder


def run_entry(e: Entry, out_dir: Path) -> None:
    """Run one entry, read its figure; the outcome lands in ``e.result``."""
    if e.needs and not (ROOT / "benchmarks" / e.needs).exists():
        e.result = {"status": "not run: script absent"}
        return
    cmd = [c.replace("{out}", str(out_dir)) for c in e.command]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    wall = time.perf_counter() - start
    e.result = {"command": shlex.join(cmd), "wall_s": round(wall, 1), "exit": proc.returncode}
    if proc.returncode != 0:
        e.result.update(status="failed", stderr_tail=proc.stderr.strip().splitlines()[-5:])
        return
    try:
        figure, met = e.read(json.loads((out_dir / e.output).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        e.result.update(status="ran; figure unreadable", error=f"{type(exc).__name__}: {exc}")
        return
    e.result.update(status="ran", figure=figure, met=met)


def findings(out_dir: Path) -> list[str]:
    """The papers' findings from this run's JSON, or a plain 'not measured in this run'."""
    lines = []

    def load(name: str) -> Any:
        p = out_dir / name
        return json.loads(p.read_text()) if p.exists() else None

    prune = load("prune.json")
    if prune and prune.get("bound_holds") is not None:
        lines.append(f"1. Parameter distortion bounds output distortion (D_y <= C D_w on held-out windows): "
                     f"{'holds' if prune['bound_holds'] else 'does NOT hold'}, empirical C = {prune['empirical_c']:.3g}.")
    else:
        lines.append("1. Distortion bound: not measured in this run.")
    plan = load("plan.json")
    if plan:
        b = plan["best"]
        gd, gs = plan.get("gain_over_all_device"), plan.get("gain_over_all_server")
        lines.append(f"2. Joint choice at 20 Mbps under perplexity <= 1.3x: cut {b['cut']}, ratio {b['ratio']:g}; "
                     f"objective {gd:.3g}x better than all-on-device and {gs:.3g}x than all-on-server (unpruned)."
                     if gd and gs else f"2. Joint choice: cut {b['cut']}, ratio {b['ratio']:g}.")
        sweep = plan.get("rate_sweep") or []
        lines.append(f"3. Best cut against link rate: {len(sweep)} ranges in the plan's sweep." if sweep
                     else "3. Best cut against link rate: not swept in this run (plan --sweep-rate).")
    else:
        lines += ["2. Joint choice: not measured in this run.", "3. Best cut against link rate: not measured."]
    ch = load("channel.json")
    lines.append(f"4. Under erasure: {ch['models']['smollm2']['analysis']['verdict_erasure']}" if ch and
                 "smollm2" in ch.get("models", {}) else "4. Best cut under erasure: not measured in this run.")
    return lines


def write_markdown(path: Path, es: list[Entry], quick: bool, machine: dict[str, Any], out_dir: Path) -> None:
    """BENCHMARKS.md: machine, then per entry command, wall time, target, figure and verdict."""
    kind = "QUICK (tiny random-weight Llama: exercises the harness, not the project's figures)" if quick else "full"
    md = [f"# coinfer benchmarks ({kind})", "",
          f"Machine: {machine['platform']}, {machine['cpus']} CPUs, Python {machine['python']}, torch {machine['torch']} "
          f"({machine['torch_threads']} threads); load average {machine['loadavg_1m']:.2f} at start, "
          f"{machine.get('loadavg_end', 0):.2f} at end. Results: `{out_dir}`.", ""]
    for e in es:
        r = e.result
        verdict = {True: "met", False: "NOT met", None: "no target"}.get(r.get("met"), "-")
        md += [f"## {e.name}: {e.what}", "", f"- command: `{r.get('command', shlex.join(e.command))}`",
               f"- status: {r['status']}" + (f" in {r['wall_s']} s" if "wall_s" in r else ""),
               f"- target: {e.target}", f"- figure: {r.get('figure', '-')}", f"- verdict: {verdict}"]
        if r.get("stderr_tail"):
            md.append("- stderr: " + " / ".join(r["stderr_tail"]))
        md.append("")
    md += ["## The papers' findings, as measured in this run", "", *findings(out_dir), ""]
    report = out_dir / "report"
    if (report / "report.html").exists():
        md += [f"Pictures: `{report / 'report.html'}` (and `report.md`).", ""]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text("\n".join(md))
    tmp.replace(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="the walk on a tiny model (minutes at most)")
    ap.add_argument("--out-dir", default="out/bench")
    ap.add_argument("--md", default="BENCHMARKS.md")
    args = ap.parse_args(argv)
    out_dir = Path(args.out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    machine = _machine()
    tiny = _tiny_model(out_dir / "tiny-llama") if args.quick else None
    es = entries(args.quick, tiny)
    for e in es:
        print(f"[{e.name}] ...", flush=True)
        run_entry(e, out_dir)
        print(f"[{e.name}] {e.result['status']}: {e.result.get('figure', '')}", flush=True)
    files = [str(out_dir / f) for f in ("profile.json", "prune.json", "plan.json", "run.json") if (out_dir / f).exists()]
    if files:
        subprocess.run(_coinfer("report", *files, "-o", str(out_dir / "report"), "--force", "-q"), cwd=ROOT,
                       capture_output=True)
    machine["loadavg_end"] = os.getloadavg()[0]
    write_markdown(Path(args.md), es, args.quick, machine, out_dir)
    print(f"wrote {args.md}")
    return 0 if all(e.result["status"].startswith("ran") or e.result["status"].startswith("not run") for e in es) else 1


if __name__ == "__main__":
    sys.exit(main())
