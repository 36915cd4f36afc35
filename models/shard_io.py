"""Export split shards (pruned or not) as safetensors + JSON config and ONNX; load them verified.

No pickles: weights are safetensors (or ONNX external data), structure is a JSON
:class:`~coinfer.reports.prune.ShardConfig` holding the pruned shape of every block. Loading
checks the sha256 of the config first, then of the weights the config names, and refuses any
mismatch with :class:`~coinfer.errors.IntegrityError` before a byte is deserialised.

Files are data, never directions: a name inside a report or a config (``shards[].path``,
``weights_file``, an ONNX graph's external data) is a relative name that must stay inside its
folder once symlinks are resolved; sizes are checked against the record before reading, hashes
are computed while reading, and a refusal says what did not match, never anything about the
file found (no hash fragments, no sizes).

Public API (for ``coinfer run``)::

    from coinfer.models.shard_io import load_shard, load_onnx_shard
    shard = load_shard(dir / "device.json", sha256=report_sha)   # -> coinfer.models.shards.Shard
    sess = load_onnx_shard(dir / "device.onnx", sha256=..., data_sha256=...)  # onnxruntime session
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from coinfer.errors import IntegrityError, UserInputError
from coinfer.reports.io import atomic_write_bytes, parse_document, parse_json_text, write_json
from coinfer.reports.prune import ShardBlockShape, ShardConfig, ShardQuantization
from coinfer.vocab import max_positions

_DTYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}
# A shard config holds the architecture and tensor shapes: kilobytes. Far larger is not one.
MAX_SHARD_CONFIG_BYTES = 64 * 1024 * 1024
_CHUNK = 1 << 20


# -- names and bytes read from records (path, size and hash checks) --------------------------
def confined_file(folder: str | os.PathLike[str], name: str, what: str) -> Path:
    """The file a record names inside ``folder``, resolved; never a file outside it.

    Args:
        folder: The folder the record's names are relative to.
        name: The recorded name, e.g. ``ratio-0.300/device.json``.
        what: The record's field, for messages ('shards[].path').

    Raises:
        IntegrityError: An absolute name, one with ``..``, or one that leads outside ``folder``
            through a symbolic link.
        UserInputError: No such file.
    """
    pure = PurePosixPath(name) if isinstance(name, str) else None
    if (pure is None or not name or "\\" in name or "\x00" in name or pure.is_absolute()
            or any(part in ("", ".", "..") for part in name.split("/"))):
        raise IntegrityError(f"{what} {name!r}: not a relative name inside {folder}; refusing to read it")
    root = Path(folder).resolve()
    target = (root / pure).resolve()
    if not target.is_relative_to(root):
        raise IntegrityError(f"{what} {name!r}: leads outside {folder} (a symbolic link); refusing to read it")
    if not target.is_file():
        raise UserInputError(f"{Path(folder) / pure}: no such file")
    return target


def check_size(path: Path, size_bytes: int | None = None, max_bytes: int | None = None) -> int:
    """The file's size, once it is the recorded ``size_bytes`` and at most ``max_bytes``.

    Raises:
        IntegrityError: Another size (the message does not say which).
    """
    size = path.stat().st_size
    if size_bytes is not None and size != size_bytes:
        raise IntegrityError(f"{path}: does not have the recorded size; refusing to load")
    if max_bytes is not None and size > max_bytes:
        raise IntegrityError(f"{path}: larger than {max_bytes >> 20} MiB, not a file coinfer exported; refusing to load")
    return size


def _chunks(path: Path, limit: int) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while limit > 0 and (chunk := fh.read(min(_CHUNK, limit))):
            limit -= len(chunk)
            yield chunk


def read_verified(path: Path, sha256: str, size_bytes: int | None = None, max_bytes: int | None = None) -> bytes:
    """The bytes of ``path`` once their sha256 (computed while reading) is ``sha256``.

    Raises:
        IntegrityError: Another size or another hash (nothing about the file is echoed).
    """
    size = check_size(path, size_bytes, max_bytes)
    h, parts = hashlib.sha256(), []
    for chunk in _chunks(path, size + 1):  # one byte more: a file that grew is caught by the hash
        h.update(chunk)
        parts.append(chunk)
    if h.hexdigest() != sha256:
        raise IntegrityError(f"{path}: does not match the recorded sha256; refusing to load")
    return b"".join(parts)


def verify_file(path: Path, sha256: str, size_bytes: int | None = None) -> None:
    """Like :func:`read_verified`, for files loaded by another library (nothing kept in memory)."""
    h = hashlib.sha256()
    for chunk in _chunks(path, check_size(path, size_bytes) + 1):
        h.update(chunk)
    if h.hexdigest() != sha256:
        raise IntegrityError(f"{path}: does not match the recorded sha256; refusing to load")


def _verify(path: Path, sha256: str, max_bytes: int | None = None, size_bytes: int | None = None) -> bytes:
    if not path.is_file():
        raise UserInputError(f"{path}: no such file")
    return read_verified(path, sha256, size_bytes, max_bytes)


def _onnx_tensors(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _onnx_tensors(attr.g)
            for sub in attr.graphs:
                yield from _onnx_tensors(sub)


def check_onnx_external_data(path: Path, data_name: str) -> None:
    """Refuse an ONNX file whose tensors name any external data file but ``data_name`` beside it.

    onnxruntime reads external data wherever the graph says; a graph is data, not directions.

    Raises:
        IntegrityError: Another location, or not an ONNX file.
    """
    import onnx
    from onnx import TensorProto

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: any failure means "not ONNX"
        raise IntegrityError(f"{path}: not an ONNX file; refusing to load") from None
    for t in _onnx_tensors(model.graph):
        if t.data_location == TensorProto.EXTERNAL:
            where = {e.key: e.value for e in t.external_data}.get("location")
            if where != data_name:
                raise IntegrityError(f"{path}: a tensor's external data is not {data_name}; refusing to load")


# -- export ---------------------------------------------------------------------------------
def export_safetensors(shard: Any, folder: Path, role: str, identity: Any, *, requested_ratio: float, scope: str,
                       stem: str | None = None, quantization: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``<stem>.safetensors`` and ``<stem>.json`` for a shard into ``folder``.

    Args:
        shard: A :class:`~coinfer.models.shards.Shard`.
        folder: Existing destination folder (the caller exports into a temporary folder).
        role: ``device`` or ``server``.
        identity: The original model's :class:`~coinfer.reports.common.ModelIdentity`.
        requested_ratio: The pruning ratio the shard was made with (0 for unpruned).
        scope: ``all`` or ``device``.
        stem: File name without suffix (default: the role).
        quantization: A :class:`~coinfer.reports.prune.ShardQuantization` as a dict when the
            shard's matrices are quantized (its modules are then rebuilt empty before loading).

    Returns:
        ``{"safetensors": path, "json": path}``.
    """
    import torch
    from safetensors.torch import save

    ad = shard.adapter
    tensors = {k: v.detach().contiguous().clone() for k, v in shard.hf_state_dict().items()}
    blob = save(tensors, metadata={"format": "pt", "coinfer_role": role})
    stem = stem or role
    wpath = atomic_write_bytes(folder / f"{stem}.safetensors", blob)
    dtype = next(iter(tensors.values())).dtype if tensors else torch.float32
    quant = ShardQuantization.model_validate(quantization) if quantization else None
    cfg = ShardConfig(
        role=role,  # type: ignore[arg-type]
        model=identity,
        hf_config=ad.config.to_dict(),
        module_layout=ad.module_layout(),
        start=shard.start,
        end=shard.end,
        logits_to_keep=shard.logits_to_keep,
        stages=shard.stage_names(),
        blocks={str(i): ShardBlockShape(**ad.block_shape(i)) for i in shard.block_indices},
        requested_ratio=requested_ratio,
        scope=scope,  # type: ignore[arg-type]
        dtype=quant.precision if quant else _DTYPES.get(str(dtype).removeprefix("torch."), str(dtype)),
        quantization=quant,
        weights_file=wpath.name,
        weights_sha256=hashlib.sha256(blob).hexdigest(),
        weights_size_bytes=len(blob),
        tensor_shapes={k: list(v.shape) for k, v in tensors.items()},
    )
    jpath = write_json(cfg, folder / f"{stem}.json")
    return {"safetensors": wpath, "json": jpath}


class _OnnxWrapper:
    """Builds a plain ``nn.Module`` around a shard whose outputs are tensors only."""

    @staticmethod
    def make(shard: Any) -> Any:
        from torch import nn

        from coinfer.models.adapters.base import HeadOutput, ShardState

        class Wrapped(nn.Module):
            def __init__(self) -> None:
                super().__init__()
                self.shard = shard

            def forward(self, x):  # noqa: ANN001
                # Stateless prefill: no KV cache inside the graph.
                out = self.shard(x, ShardState(cache=None))
                if isinstance(out, HeadOutput):
                    extra = out.logits if out.logits is not None else out.pooled
                    return (out.last_hidden_state, extra) if extra is not None else out.last_hidden_state
                return out

        return Wrapped().eval()


def onnx_io_names(shard: Any) -> tuple[str, list[str]]:
    """(input name, output names) of an exported shard."""
    inp = "input_ids" if shard.has_embed else "hidden_in"
    if not shard.has_head:
        return inp, ["hidden_out"]
    ad = shard.adapter
    if ad.is_decoder:
        return inp, ["last_hidden_state", "logits"]
    return inp, ["last_hidden_state", "pooled"] if ad.head_modules() else ["last_hidden_state"]


def example_input(shard: Any, seq_len: int, batch: int = 1) -> Any:
    """A deterministic example input for a shard: token ids or a hidden state."""
    import torch

    g = torch.Generator().manual_seed(seq_len)
    ad = shard.adapter
    if shard.has_embed:
        return torch.randint(0, ad.vocab_size, (batch, seq_len), generator=g)
    return torch.randn(batch, seq_len, ad.hidden_size, generator=g)


def export_onnx(shard: Any, folder: Path, role: str, *, seq_len: int = 16) -> dict[str, Path]:
    """Export a shard's stateless prefill to ``<role>.onnx`` with weights in ``<role>.onnx.data``.

    Sequence length is dynamic; batch is 1. Uses the dynamo exporter (the legacy one fails on
    the transformers mask). The two files are written into ``folder`` by the exporter; callers
    export into a temporary folder and rename it into place.
    """
    import logging
    import warnings

    import torch

    # The exporter logs a line per missing torchvision op and warns about internals: noise here.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    wrapped = _OnnxWrapper.make(shard)
    inp, outs = onnx_io_names(shard)
    x = example_input(shard, seq_len)
    seq = torch.export.Dim("seq", min=2, max=max_positions(shard.adapter.config))  # None: no upper bound
    path = folder / f"{role}.onnx"
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(
            wrapped,
            (x,),
            dynamo=True,
            input_names=[inp],
            output_names=outs,
            dynamic_shapes=({1: seq},),
            external_data=True,
            optimize=True,
            verbose=False,
        )
        prog.save(str(path), external_data=True)
    data = folder / f"{role}.onnx.data"
    if not data.exists():
        raise IntegrityError(f"ONNX export of {role} wrote no external data file")
    return {"onnx": path, "onnx-data": data}


# -- loading --------------------------------------------------------------------------------
def read_shard_config(path: str | os.PathLike[str], sha256: str) -> ShardConfig:
    """Verify and parse a shard config.

    Raises:
        IntegrityError: The file's sha256 is not ``sha256``.
        SchemaError: Not a shard config of a known version.
    """
    p = Path(path)
    data = _verify(p, sha256, MAX_SHARD_CONFIG_BYTES)
    return parse_document(parse_json_text(data, p), p, ShardConfig)


def load_shard(path: str | os.PathLike[str], sha256: str, *, attn_implementation: str = "sdpa") -> Any:
    """Rebuild an exported shard from its JSON config and safetensors weights, both verified.

    The model is built from its config (random weights), brought to the recorded module layout,
    every tensor the shard holds is resized to its saved (pruned) shape, head counts are
    re-derived, then the saved weights are loaded; nothing else of the full model is used.

    Args:
        path: The shard's ``<role>.json``.
        sha256: The sha256 the prune report recorded for that JSON file.
        attn_implementation: ``sdpa`` or ``eager``.

    Returns:
        A :class:`~coinfer.models.shards.Shard` that runs exactly the exported computation.

    Raises:
        IntegrityError: The config or the weights do not match their sha256, or the weights do
            not fit the shard the config describes.
        SchemaError: The config is not a shard config.
    """
    import torch
    from safetensors.torch import load as st_load
    from torch import nn

    from coinfer.models.loading import build_from_config
    from coinfer.models.shards import Shard

    cfg = read_shard_config(path, sha256)
    wpath = confined_file(Path(path).parent, cfg.weights_file, "weights_file")
    blob = read_verified(wpath, cfg.weights_sha256, cfg.weights_size_bytes)
    tensors = st_load(blob)
    if {k: list(v.shape) for k, v in tensors.items()} != cfg.tensor_shapes:
        raise IntegrityError(f"{wpath}: tensors do not match the shapes recorded in {path}")
    hf = dict(cfg.hf_config)
    hf["model_type"] = cfg.model.model_type
    loaded = build_from_config(hf, name=cfg.model.name, attn_implementation=attn_implementation)
    ad = loaded.adapter
    ad.apply_layout(cfg.module_layout)
    model = loaded.model
    if cfg.quantization is not None:
        # Weight-only modules are rebuilt empty at their recorded shapes, then loaded below.
        from coinfer.precision.apply import install_empty

        install_empty(model, {k: v.model_dump() for k, v in cfg.quantization.modules.items()})
    for name, t in tensors.items():
        owner, attr = name.rsplit(".", 1)
        mod = model.get_submodule(owner)
        cur = getattr(mod, attr, None)
        if cur is None and attr == "bias" and _may_add_bias(ad, cfg, mod):
            # Pruning compensation gave this out-projection a bias the family's config lacks.
            mod.bias = nn.Parameter(torch.empty(t.shape, dtype=t.dtype), requires_grad=False)
        elif cur is None:
            raise IntegrityError(f"{wpath}: tensor {name} has no place in the model")
        elif tuple(cur.shape) != tuple(t.shape):
            setattr(mod, attr, nn.Parameter(torch.empty(t.shape, dtype=t.dtype), requires_grad=False))
            if isinstance(mod, nn.Linear):
                mod.out_features, mod.in_features = mod.weight.shape
    ad.sync_pruned_attributes()
    shard = Shard(ad, cfg.start, cfg.end, cfg.logits_to_keep)
    expected = set(shard.hf_state_dict())
    if expected != set(tensors):
        raise IntegrityError(f"{wpath}: tensor names do not match the shard's stages {cfg.stages}")
    with torch.no_grad():
        missing, unexpected = model.load_state_dict(tensors, strict=False)
    if unexpected:
        raise IntegrityError(f"{wpath}: unexpected tensors {unexpected[:3]}")
    for i, shape in cfg.blocks.items():
        got = ad.block_shape(int(i))
        if got != shape.model_dump():
            raise IntegrityError(f"{path}: block {i} rebuilt as {got}, config says {shape.model_dump()}")
    model.eval()
    return shard


def _may_add_bias(ad: Any, cfg: ShardConfig, module: Any) -> bool:
    """Whether ``module`` is an out-projection of one of the shard's blocks (see
    :meth:`~coinfer.models.adapters.base.FamilyAdapter.bias_owners`)."""
    return any(module is m for i in cfg.blocks for m in ad.bias_owners(int(i)))


def load_onnx_shard(path: str | os.PathLike[str], sha256: str, data_sha256: str, *, threads: int | None = None) -> Any:
    """An onnxruntime session for an exported ONNX shard, after verifying both files' sha256.

    Args:
        path: ``<role>.onnx``; its external data ``<role>.onnx.data`` must sit beside it.
        sha256: Expected sha256 of the ``.onnx`` file.
        data_sha256: Expected sha256 of the ``.onnx.data`` file.
        threads: Intra-op threads (None: onnxruntime's default).

    Raises:
        IntegrityError: Either file does not match.
    """
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise UserInputError(f"{p}: no such file")
    verify_file(p, sha256)
    data = p.with_name(p.name + ".data")
    if not data.is_file():
        raise UserInputError(f"{data}: no such file (the ONNX shard's external weights)")
    verify_file(data, data_sha256)
    check_onnx_external_data(p, data.name)
    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    # Spinning threads would steal the cores from whatever is timed next.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
