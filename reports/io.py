"""Atomic JSON writing and validated loading of coinfer files."""

from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from coinfer.errors import SchemaError, UserInputError

T = TypeVar("T", bound=BaseModel)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the new one, never half.

    Args:
        path: Destination file.
        data: The bytes to write.

    Returns:
        The destination path.

    Raises:
        UserInputError: The destination's folder does not exist or is not writable.
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if not folder.is_dir():
        raise UserInputError(f"cannot write {dest}: folder {folder} does not exist")
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=".tmp", dir=folder)
    except OSError as exc:
        raise UserInputError(f"cannot write {dest}: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest


def check_writable(path: str | os.PathLike[str]) -> Path:
    """Fail early, before any work, if ``path`` cannot be written.

    Raises:
        UserInputError: The folder is missing, or not writable, or ``path`` is a folder.
    """
    dest = Path(path)
    folder = dest.parent if str(dest.parent) else Path(".")
    if dest.is_dir():
        raise UserInputError(f"cannot write {dest}: it is a folder")
    if not folder.is_dir():
        raise UserInputError(f"cannot write {dest}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserInputError(f"cannot write {dest}: folder {folder} is not writable")
    return dest


def _clean(obj: Any) -> Any:
    # JSON has no NaN/inf; write them as null so every reader can parse the file.
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_clean(v) for v in obj]
    return obj


def to_json(model: BaseModel) -> str:
    """Serialise a schema object as stable, indented JSON."""
    return json.dumps(_clean(model.model_dump(mode="json")), indent=2, sort_keys=False) + "\n"


def write_json(model: BaseModel, path: str | os.PathLike[str]) -> Path:
    """Validate-by-construction and write a schema object atomically."""
    return atomic_write_bytes(path, to_json(model).encode())


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json_file(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file, turning every failure into a clear user error."""
    p = Path(path)
    if not p.exists():
        raise UserInputError(f"{p}: no such file")
    if p.is_dir():
        raise UserInputError(f"{p}: is a folder, expected a JSON file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise SchemaError(f"{p}: not a text file") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{p}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None


def load_document(path: str | os.PathLike[str], cls: type[T]) -> T:
    """Load and validate a coinfer document of the class ``cls``.

    The kind and the schema version are checked before the body so the message names the real
    problem (a plan given where a profile is expected, a file from a newer coinfer). A class may
    read older versions too: its ``READABLE_SCHEMA_VERSIONS`` (default: its own version only).

    Raises:
        SchemaError: Wrong kind, unknown version or invalid content.
    """
    data = read_json_file(path)
    kind = cls.model_fields["kind"].default
    version = cls.model_fields["schema_version"].default
    readable = getattr(cls, "READABLE_SCHEMA_VERSIONS", (version,))
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a JSON object, found {type(data).__name__}")
    found_kind = data.get("kind")
    if found_kind != kind:
        what = f"a {found_kind!r} file" if found_kind else "not a coinfer file (no 'kind')"
        raise SchemaError(f"{path}: expected a {kind!r} file, found {what}")
    found_version = data.get("schema_version")
    if found_version not in readable or isinstance(found_version, bool):
        which = ("version " if len(readable) == 1 else "versions ") + ", ".join(str(v) for v in readable)
        raise SchemaError(f"{path}: {kind} schema version {found_version!r} is not supported (this coinfer reads {which})")
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(root)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        raise SchemaError(f"{path}: invalid {kind}: {where}: {first['msg']}{more}") from None
