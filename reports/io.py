"""Atomic JSON writing and validated loading of coinfer files."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import math
import os
import shutil
import socket
import tempfile
from pathlib import Path
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ValidationError

from coinfer.errors import SchemaError, UserInputError

T = TypeVar("T", bound=BaseModel)

# A coinfer document is a few MB at most (a plan with a long rate sweep); anything far larger is
# not one, and is refused before it is read.
MAX_DOCUMENT_BYTES = 256 * 1024 * 1024
# Numbers in our files are written by repr(): a float needs at most ~25 characters.
MAX_NUMBER_CHARS = 40


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
    sweep_stale_temps(folder, dest.name)
    try:
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(dest.name), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise UserInputError(f"cannot write {dest}: {exc.strerror}") from None
    try:
        # mkstemp makes the file 0600; give it the mode any other file the user writes gets (the
        # umask's), or keep the mode of the file it replaces.
        os.fchmod(fd, _mode_for(dest))
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_folder(folder)
    return dest


def fsync_folder(folder: str | os.PathLike[str]) -> None:
    """Make a rename inside ``folder`` durable (a crash right after must not bring the old name back)."""
    with contextlib.suppress(OSError):  # some filesystems cannot open or sync a folder
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_prefix(name: str) -> str:
    """The prefix of every temporary file or folder written on the way to ``name``.

    ``.NAME.<host>~<pid>.``: the host and process let a later write tell a leftover of a killed
    process (removed by :func:`sweep_stale_temps`) from another process's write in progress.
    """
    return f".{name}.{socket.gethostname()}~{os.getpid()}."


def sweep_stale_temps(folder: str | os.PathLike[str], name: str) -> list[Path]:
    """Remove temporaries of ``name`` in ``folder`` left by dead processes of this host.

    SIGKILL (or a power cut) gives no chance to clean up; the next write of the same name does it.

    Returns:
        What was removed.
    """
    host = socket.gethostname()
    removed = []
    for entry in Path(folder).glob(f".{glob.escape(name)}.{glob.escape(host)}~*.*"):
        pid = entry.name[len(f".{name}.{host}~"):].split(".", 1)[0]
        if not pid.isdigit() or int(pid) == os.getpid() or pid_alive(int(pid)):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


def pid_alive(pid: int) -> bool:
    """True when a process ``pid`` exists on this host (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _mode_for(dest: Path) -> int:
    try:
        return dest.stat().st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _umask() -> int:
    # The umask can only be read by setting it; set it straight back.
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def check_writable(path: str | os.PathLike[str], option: str | None = None) -> Path:
    """Fail early, before any work, if ``path`` cannot be written.

    The folder is probed by creating (and removing) a temporary file in it, so read-only
    filesystems and permissions are found even when running as root.

    Args:
        path: The file a command will write.
        option: The option that named it, for the message ('-o').

    Raises:
        UserInputError: The folder is missing or not writable, or ``path`` is a folder.
    """
    dest = Path(path)
    what = f"{option} {dest}" if option else str(dest)
    folder = dest.parent if str(dest.parent) else Path(".")
    if dest.is_dir():
        raise UserInputError(f"cannot write {what}: it is a folder")
    if dest.exists() and not dest.is_file():
        raise UserInputError(f"cannot write {what}: it is not a regular file")
    _probe_folder(folder, dest.name, what)
    return dest


def check_writable_folder(path: str | os.PathLike[str], option: str | None = None) -> Path:
    """Fail early if a folder cannot be created (or replaced) at ``path``.

    Raises:
        UserInputError: ``path`` is a file, or its parent is missing or not writable.
    """
    dest = Path(path)
    what = f"{option} {dest}" if option else str(dest)
    if dest.exists() and not dest.is_dir():
        raise UserInputError(f"cannot write {what}: exists and is not a folder")
    parent = dest.parent if str(dest.parent) else Path(".")
    _probe_folder(parent, dest.name, what)
    return dest


def _probe_folder(folder: Path, name: str, what: str) -> None:
    if not folder.is_dir():
        raise UserInputError(f"cannot write {what}: folder {folder} does not exist")
    try:
        fd, probe = tempfile.mkstemp(prefix=temp_prefix(name), suffix=".tmp", dir=folder)
    except OSError as exc:
        raise UserInputError(f"cannot write {what}: folder {folder}: {exc.strerror or exc}") from None
    os.close(fd)
    Path(probe).unlink(missing_ok=True)


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
    """Write a schema object atomically, once :func:`check_document` says it loads back.

    Raises:
        UserInputError: The document holds a number that is not finite, or would not load back
            (nothing is written then; a previous file stays as it was).
    """
    try:
        text = check_document(model)
    except UserInputError as exc:
        raise UserInputError(f"{path} not written: {exc}") from None
    return atomic_write_bytes(path, text.encode())


def check_document(model: BaseModel) -> str:
    """The JSON text of ``model``, after checking that coinfer would read it back.

    Every number must be finite (JSON has no infinity; a non-finite figure comes from an input
    out of range), and the text must validate as the same class: no command writes a file it
    would refuse to read.

    Raises:
        UserInputError: Not finite, or not valid when read back; names the first field.
    """
    what = getattr(model, "kind", None) or type(model).__name__
    where = _first_non_finite(model.model_dump())
    if where is not None:
        raise UserInputError(f"the {what}'s {where or '(root)'} is not a finite number (an input is out of range)")
    text = to_json(model)
    try:
        type(model).model_validate(_strict_loads(text))
    except (ValidationError, ValueError, RecursionError) as exc:
        raise UserInputError(f"the {what} would not load back: {_first_error(exc)}") from None
    return text


def _first_non_finite(obj: Any, where: str = "") -> str | None:
    if isinstance(obj, float) and not math.isfinite(obj):
        return where
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list | tuple) else ()
    for k, v in items:
        found = _first_non_finite(v, f"{where}.{k}" if where else str(k))
        if found is not None:
            return found
    return None


def _first_error(exc: BaseException) -> str:
    if isinstance(exc, ValidationError):
        first = exc.errors()[0]
        where = ".".join(str(x) for x in first["loc"]) or "(root)"
        more = f" (and {exc.error_count() - 1} more)" if exc.error_count() > 1 else ""
        return f"{where}: {first['msg']}{more}"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    return str(exc)


class _BadNumber(ValueError):
    """A number a coinfer file may not hold (not finite, or absurdly long)."""


def _number(text: str, kind: type) -> Any:
    if len(text) > MAX_NUMBER_CHARS:
        raise _BadNumber(f"a number of {len(text)} digits (at most {MAX_NUMBER_CHARS})")
    value = kind(text)
    if kind is float and not math.isfinite(value):
        raise _BadNumber(f"{text} is out of range (files hold finite numbers only)")
    return value


def _constant(text: str) -> Any:
    raise _BadNumber(f"{text} is not a number coinfer reads (files hold finite numbers only)")


def _strict_loads(text: str) -> Any:
    """``json.loads`` that refuses NaN, Infinity, numbers beyond float range and endless digits."""
    return json.loads(text, parse_float=lambda t: _number(t, float), parse_int=lambda t: _number(t, int),
                      parse_constant=_constant)


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
    if not p.is_file():
        raise UserInputError(f"{p}: not a regular file, expected a JSON file")
    if p.stat().st_size > MAX_DOCUMENT_BYTES:
        raise SchemaError(f"{p}: larger than {MAX_DOCUMENT_BYTES >> 20} MiB, not a coinfer file")
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise UserInputError(f"{p}: cannot read it ({exc.strerror or exc})") from None
    return parse_json_text(raw, p)


def parse_json_text(raw: bytes | str, path: str | os.PathLike[str]) -> Any:
    """Parse a coinfer file's bytes: UTF-8 JSON with finite numbers of sensible length only.

    Raises:
        SchemaError: Not text, not JSON, or a number coinfer does not read (``path`` names it).
    """
    p = Path(path)
    try:
        text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
    except UnicodeDecodeError:
        raise SchemaError(f"{p}: not a text file") from None
    try:
        return _strict_loads(text)
    except json.JSONDecodeError as exc:
        raise SchemaError(f"{p}: malformed JSON at line {exc.lineno} column {exc.colno}: {exc.msg}") from None
    except _BadNumber as exc:
        raise SchemaError(f"{p}: {exc}") from None
    except (RecursionError, ValueError) as exc:  # e.g. an integer Python refuses to convert
        raise SchemaError(f"{p}: not a coinfer file ({_first_error(exc)[:200]})") from None


def load_document(path: str | os.PathLike[str], cls: type[T]) -> T:
    """Load and validate a coinfer document of the class ``cls``.

    The kind and the schema version are checked before the body so the message names the real
    problem (a plan given where a profile is expected, a file from a newer coinfer). A class may
    read older versions too: its ``READABLE_SCHEMA_VERSIONS`` (default: its own version only).

    Raises:
        SchemaError: Wrong kind, unknown version or invalid content.
    """
    return parse_document(read_json_file(path), path, cls)


def parse_document(data: Any, path: str | os.PathLike[str], cls: type[T]) -> T:
    """Validate parsed JSON as a document of the class ``cls`` (see :func:`load_document`).

    Raises:
        SchemaError: Wrong kind, unknown version or invalid content.
    """
    kind = cls.model_fields["kind"].default
    version = cls.model_fields["schema_version"].default
    readable = getattr(cls, "READABLE_SCHEMA_VERSIONS", (version,))
    if not isinstance(data, dict):
        raise SchemaError(f"{path}: expected a JSON object, found {type(data).__name__}")
    found_kind = data.get("kind")
    if found_kind != kind:
        what = f"a {found_kind!r} file" if found_kind else "not a coinfer file (no 'kind')"
        raise SchemaError(f"{path}: expected a {kind!r} file, found {what}")
    # A schema reads every version its ``schema_version`` literal names (older files it still
    # understands) and writes the default, the newest.
    readable = get_args(cls.model_fields["schema_version"].annotation) or (version,)
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
