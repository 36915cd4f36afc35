"""Exported shards of each precision (x ratio): safetensors + JSON config, sha256 recorded.

Layout of the export folder, one sub-folder per pruning ratio::

    ratio-0.000/device-int8.json, device-int8.safetensors   (one pair per precision)
    ratio-0.000/server.json, server.safetensors             (fp32: shared by the precisions
                                                             when the scope is the device)

A shard whose matrices are quantized records them in its config (``quantization``) and is
rebuilt by :func:`coinfer.models.shard_io.load_shard` like any other, sha256-checked first.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from coinfer.errors import UserInputError
from coinfer.precision.apply import Quantized
from coinfer.reports.prune import ShardFile


def _quantization(q: Quantized, shard: Any) -> dict[str, Any] | None:
    """The quantization block of ``shard``: the replaced matrices among its stages (None: none)."""
    stages = set(shard.stage_names())
    mods = {p: s for p, s in q.modules.items() if q.adapter.stage_of(f"{p}.bias") in stages}
    if not mods:
        return None
    return {"precision": q.precision, "group_size": q.group_size, "modules": mods}


def export_variant(q: Quantized, loaded: Any, split_k: int, ratio: float, root: Path, scope: str) -> list[ShardFile]:
    """Write the device shard of ``q`` (and the server shard if not already there) under ``root``.

    Returns:
        The files written for this variant, paths relative to ``root``.
    """
    from coinfer.models import shard_io
    from coinfer.models.shards import split
    from coinfer.reports.io import file_sha256

    sub = f"ratio-{ratio:.3f}"
    folder = root / sub
    folder.mkdir(exist_ok=True)
    s = split(q.adapter, split_k)
    files: list[ShardFile] = []
    for role, shard in (("device", s.device), ("server", s.server)):
        qz = _quantization(q, shard)
        stem = role if qz is None and role == "server" else f"{role}-{q.precision}"
        if not (folder / f"{stem}.json").exists():
            shard_io.export_safetensors(shard, folder, role, loaded.identity, requested_ratio=ratio, scope=scope,
                                        stem=stem, quantization=qz)
        for suffix, fmt in ((".json", "json"), (".safetensors", "safetensors")):
            path = folder / f"{stem}{suffix}"
            files.append(ShardFile(role=role, format=fmt, path=f"{sub}/{path.name}", sha256=file_sha256(path),  # type: ignore[arg-type]
                                   size_bytes=path.stat().st_size))
    return files


@contextmanager
def export_folder(final: Path | None, force: bool) -> Iterator[Path | None]:
    """A temporary folder beside ``final`` that replaces it when the block succeeds (None: no export).

    On any failure the temporary folder is removed and ``final`` is left as it was.
    """
    if final is None:
        yield None
        return
    parent = final.parent if str(final.parent) else Path(".")
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=parent))
    try:
        yield tmp
        if final.exists():
            if any(final.iterdir()) and not force:
                raise UserInputError(f"--export {final}: folder exists and is not empty (use --force to replace it)")
            old = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".old", dir=parent))
            final.rename(old / "previous")
            tmp.rename(final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(final)
    except BaseException:  # noqa: BLE001 - any interruption: remove the half-written folder, then re-raise
        shutil.rmtree(tmp, ignore_errors=True)
        raise
