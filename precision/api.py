"""`coinfer quantize` as one library call: options, their validation, and the run."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coinfer.errors import UserInputError
from coinfer.precision.quant import DEFAULT_GROUP_SIZE, INT4_GROUP_SIZES
from coinfer.vocab import WEIGHT_PRECISIONS, check_engine

SCOPES = ("all", "device")
DEVICES = ("cpu", "cuda")


@dataclass
class QuantizeOptions:
    """Everything ``coinfer quantize`` takes, validated by :func:`validate` before any work.

    Attributes:
        model: ``--model`` spec.
        precisions: Weight precisions to measure (fp32 is always timed as the reference).
        ratios: Pruning ratios to combine with each precision (0 = unpruned).
        split: Device blocks K (scope ``device`` and export need it).
        scope: ``device`` (embedding plus blocks 1..K; the precision applies to the blocks) or
            ``all`` (every block and the head).
        group_size: int4 group width.
        importance: Pruning importance when a ratio is above 0.
        calib: Pruning calibration text (None: the shipped sample); must differ from the evaluation text.
        eval_text: Evaluation text: None/``shakespeare-eval`` (Hamlet) or a file.
        eval_tokens: Text tokens evaluated.
        eval_window: Tokens per evaluation window.
        quality: Measure quality (perplexity, KL, top-1, cosine).
        measure_speed: Time the stages.
        prefill_tokens: Tokens of the timed prefill; also the KV-cache length of a timed decode step.
        repeats: Timed repeats (medians reported).
        export_dir: Export the device shards (and the server shard per ratio) here.
        force: Replace a non-empty export folder.
        device: cpu or cuda.
        engines: ``torch`` (per-stage rows) and/or ``onnxruntime`` (whole device shard, scope device).
        threads: torch intra-op threads (None: torch's default).
        output: Report path.
    """

    model: str
    precisions: list[str]
    ratios: list[float] = field(default_factory=lambda: [0.0])
    split: int | None = None
    scope: str = "all"
    group_size: int = DEFAULT_GROUP_SIZE
    importance: str = "activation"
    calib: str | None = None
    eval_text: str | None = None
    eval_tokens: int = 4096
    eval_window: int = 512
    quality: bool = True
    measure_speed: bool = True
    prefill_tokens: int = 128
    repeats: int = 10
    export_dir: str | None = None
    force: bool = False
    device: str = "cpu"
    engines: list[str] = field(default_factory=lambda: ["torch"])
    threads: int | None = None
    output: str | None = None
    seed: int = 0
    round_to: int = 8


def validate(opts: QuantizeOptions) -> None:
    """Check every option that does not need the model.

    Raises:
        UserInputError: One clear line naming the bad option.
    """
    from coinfer.pruner.importance import IMPORTANCES

    bad = [p for p in opts.precisions if p not in WEIGHT_PRECISIONS]
    if bad or not opts.precisions:
        raise UserInputError(f"--precision {','.join(bad) or '(none)'}: expected some of {', '.join(WEIGHT_PRECISIONS)}")
    if not opts.ratios or any(not (0.0 <= r < 1.0) or math.isnan(r) for r in opts.ratios):
        raise UserInputError("--ratios: each ratio must be in [0, 1)")
    if opts.scope not in SCOPES:
        raise UserInputError(f"--scope {opts.scope!r}: expected all or device")
    if opts.scope == "device" and opts.split is None:
        raise UserInputError("--scope device needs --split K (the device runs blocks 1..K)")
    if opts.export_dir is not None and opts.split is None:
        raise UserInputError("--export needs --split K (shards are the device and server sides of that cut)")
    if opts.split is not None and opts.split < 0:
        raise UserInputError(f"--split {opts.split}: must be 0 or more")
    if opts.group_size not in INT4_GROUP_SIZES:
        raise UserInputError(f"--group-size {opts.group_size}: expected one of {', '.join(map(str, INT4_GROUP_SIZES))}")
    if any(r > 0 for r in opts.ratios) and opts.importance not in IMPORTANCES:
        raise UserInputError(f"--importance {opts.importance!r}: expected {', '.join(IMPORTANCES)}")
    if not opts.engines:
        raise UserInputError("--engine: give torch, onnxruntime or both")
    for e in opts.engines:
        check_engine(e)
    if opts.device not in DEVICES:
        raise UserInputError(f"--device {opts.device!r}: expected cpu or cuda")
    if opts.threads is not None and opts.threads < 1:
        raise UserInputError("--threads must be at least 1")
    if opts.prefill_tokens < 2 or opts.repeats < 1 or opts.eval_tokens < 2 or opts.eval_window < 2:
        raise UserInputError("--prompt-tokens, --eval-tokens and --eval-window must be at least 2, --repeats at least 1")
    if opts.export_dir is not None:
        _check_export_dir(Path(opts.export_dir), opts.force)
    if opts.output is not None:
        from coinfer.reports.io import check_writable

        check_writable(opts.output)


def _check_export_dir(d: Path, force: bool) -> None:
    if d.exists() and not d.is_dir():
        raise UserInputError(f"--export {d}: exists and is not a folder")
    if d.is_dir() and any(d.iterdir()) and not force:
        raise UserInputError(f"--export {d}: folder exists and is not empty (use --force to replace it)")
    parent = d.parent if str(d.parent) else Path(".")
    if not parent.is_dir():
        raise UserInputError(f"--export {d}: parent folder {parent} does not exist")


def run_quantize(opts: QuantizeOptions) -> Any:
    """Measure every precision (x ratio) of ``opts.model``; export shards and write the report if asked.

    Returns:
        A :class:`~coinfer.reports.precision.PrecisionReport`.

    Raises:
        UserInputError: Bad options, texts or split (before any work is written).
    """
    from coinfer.precision import measure

    validate(opts)
    texts = measure.read_texts(opts)  # checked before the model loads
    report = measure.measure_all(opts, texts)
    if opts.output is not None:
        from coinfer.reports.io import write_json

        write_json(report, opts.output)
    return report
