"""`coinfer prune` as one library call: prune at each ratio, measure, optionally export shards."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from coinfer.errors import UserInputError
from coinfer.pruner.importance import IMPORTANCES

SCOPES = ("all", "device")


@dataclass
class PruneOptions:
    """Everything ``coinfer prune`` takes, validated by :func:`validate` before any work.

    Attributes:
        model: ``--model`` spec.
        ratios: Requested pruning ratios, each in [0, 1).
        split: Device blocks K (needed for ``scope='device'`` and for export).
        scope: ``all`` (every block) or ``device`` (blocks 1..K only).
        importance: ``auto`` (the measured default for the model kind, see
            :mod:`coinfer.pruner.recipe`), ``magnitude``, ``activation``, ``fluctuation`` or ``taylor``.
        allocation: ``auto`` or one of :data:`coinfer.pruner.allocation.ALLOCATIONS`.
        compensation: ``auto`` or one of :data:`coinfer.pruner.compensation.COMPENSATIONS`.
        calib: Calibration text: a named text or a file (None: ``shakespeare-calib``).
        eval_text: Decoders: the evaluation text for perplexity, KL and top-1 against the dense
            model, a named text or a file (None: ``shakespeare-eval``, works disjoint from
            ``shakespeare-calib``).
        eval_tokens: Evaluation tokens (whole non-overlapping windows).
        eval_window: Tokens per evaluation window.
        quality: Measure the quality on the evaluation text (decoders).
        export_dir: Folder to export shards into (None: no export).
        force: Replace a non-empty ``export_dir``.
        onnx: Also export ONNX shards when exporting.
        seq_len: Tokens per calibration window and timed prompt.
        max_windows: Calibration windows at most.
        repeats: Timed repeats per model (medians are reported).
        measure_speed: Time prefill/decode (off in quick tests).
        round_to: Kept MLP width rounded to a multiple of this.
        output: Report path (checked writable before any work).
        threads: torch CPU threads for the whole run (None: leave torch's setting).
        strict: Refuse (raise, writing nothing) when a speed measurement ran on a contended machine.
    """

    model: str
    ratios: list[float]
    split: int | None = None
    scope: str = "all"
    importance: str = "auto"
    allocation: str = "auto"
    compensation: str = "auto"
    calib: str | None = None
    eval_text: str | None = None
    eval_tokens: int = 4096
    eval_window: int = 512
    quality: bool = True
    export_dir: str | None = None
    force: bool = False
    onnx: bool = True
    seq_len: int = 512
    max_windows: int = 32
    repeats: int = 10
    measure_speed: bool = True
    round_to: int = 8
    output: str | None = None
    seed: int = 0
    strict: bool = False
    notes: list[str] = field(default_factory=list)
    threads: int | None = None


def parse_ratios(text: str) -> list[float]:
    """Parse ``0.1,0.2`` into ratios, each in [0, 1), no duplicates, order kept.

    Raises:
        UserInputError: Not numbers, out of range, or empty.
    """
    out: list[float] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            r = float(part)
        except ValueError:
            raise UserInputError(f"--ratios: {part!r} is not a number") from None
        if not (0.0 <= r < 1.0) or math.isnan(r):
            raise UserInputError(f"--ratios: {part} outside [0, 1)")
        if r not in out:
            out.append(r)
    if not out:
        raise UserInputError("--ratios: give at least one ratio, e.g. 0.1,0.3,0.5")
    return out


def validate(opts: PruneOptions) -> None:
    """Check every option that does not need the model.

    Raises:
        UserInputError: One clear line naming the bad option.
    """
    for r in opts.ratios:
        if not (0.0 <= r < 1.0) or math.isnan(r):
            raise UserInputError(f"--ratios: {r} outside [0, 1)")
    if opts.scope not in SCOPES:
        raise UserInputError(f"--scope {opts.scope!r}: expected all or device")
    _check_recipe(opts)
    if opts.scope == "device" and opts.split is None:
        raise UserInputError("--scope device needs --split K (the device runs blocks 1..K)")
    if opts.export_dir is not None and opts.split is None:
        raise UserInputError("--export needs --split K (shards are the device and server sides of that cut)")
    if opts.split is not None and opts.split < 0:
        raise UserInputError(f"--split {opts.split}: must be 0 or more")
    if opts.eval_tokens < 2 or opts.eval_window < 2:
        raise UserInputError("--eval-tokens and --eval-window must be at least 2")
    if opts.seq_len < 8 or opts.max_windows < 1 or opts.repeats < 1:
        raise UserInputError("--prompt-tokens must be at least 8, windows and repeats at least 1")
    if opts.export_dir is not None:
        d = Path(opts.export_dir)
        if d.exists() and not d.is_dir():
            raise UserInputError(f"--export {d}: exists and is not a folder")
        if d.is_dir() and any(d.iterdir()) and not opts.force:
            raise UserInputError(f"--export {d}: folder exists and is not empty (use --force to replace it)")
        from coinfer.reports.io import check_writable_folder

        check_writable_folder(d, "--export")
    if opts.output is not None:
        from coinfer.reports.io import check_writable

        check_writable(opts.output, "-o")


def _check_recipe(opts: PruneOptions) -> None:
    from coinfer.pruner.allocation import ALLOCATIONS
    from coinfer.pruner.compensation import COMPENSATIONS

    for option, value, allowed in (
        ("--importance", opts.importance, IMPORTANCES),
        ("--allocation", opts.allocation, ALLOCATIONS),
        ("--compensation", opts.compensation, COMPENSATIONS),
    ):
        if value != "auto" and value not in allowed:
            raise UserInputError(f"{option} {value!r}: expected auto, {', '.join(allowed)}")
    if opts.allocation in ("global", "standardized") and opts.importance == "taylor":
        raise UserInputError("--allocation global/standardized compares scores across blocks; taylor scores do not add up that way")


def run_prune(opts: PruneOptions) -> Any:
    """Prune ``opts.model`` at every ratio, measure each, export shards if asked.

    Returns:
        A :class:`~coinfer.reports.prune.PruneReport` (also written to ``opts.output`` if set).

    Raises:
        UserInputError: Bad options, calibration file or split (before any work is written).
        ContendedMeasurementError: ``opts.strict`` and a speed-up was measured on a contended machine
            (no report, no export written; earlier ones intact).
    """
    from coinfer.pruner import calibration

    validate(opts)
    source, text = calibration.read_text(opts.calib)  # the texts are validated before loading the model
    eval_text = None
    if opts.quality:
        from coinfer.models.corpora import DEFAULT_EVALUATION, resolve_text

        eval_text = resolve_text(opts.eval_text, "--eval-text", DEFAULT_EVALUATION)

    import torch

    from coinfer.models.loading import load_model

    if opts.threads is not None:
        torch.set_num_threads(opts.threads)
    loaded = load_model(opts.model, seed=opts.seed)
    L = loaded.adapter.num_blocks
    if opts.split is not None and not 0 <= opts.split <= L:
        raise UserInputError(f"--split {opts.split} outside 0..{L} for a {L}-block model")
    calib = calibration.build(text, source, loaded, opts.seq_len, opts.max_windows)
    with torch.no_grad():
        # GPT-2's fused Conv1D attention becomes separate Linear q/k/v first; the converted
        # model is the "original" every ratio is compared with.
        loaded.adapter.prepare_for_pruning()
    from coinfer.pruner.measure import measure_all

    report = measure_all(loaded, calib, opts, eval_text)
    if opts.output is not None:
        from coinfer.reports.io import write_json

        write_json(report, opts.output)
    return report

