"""A device shard on ONNX Runtime: one graph for prefill and decode (KV cache in and out), and
ONNX Runtime's own weight-only quantization of it (``MatMulNBits``).

The graph takes the shard's input (``input_ids``, or ``hidden_in`` after a cut) and, per block,
the cached keys and values (``past_key_<b>``, ``past_value_<b>``, batch x kv heads x past x head
dim; zero-length for a prefill), and returns the hidden state (or the head's outputs) followed by
the updated caches (``present_key_<b>``, ``present_value_<b>``). Positions come from the past
length, so the same graph serves the prefill and every decode step. It is exported with
``torch.onnx.export(dynamo=True)`` from a wrapper that rebuilds a ``DynamicCache`` from the
inputs; sliding-window caches (which drop old entries) are refused.

``int8``/``int4`` on this engine use ``MatMulNBitsQuantizer`` (block-wise weights, symmetric for
8 bits, asymmetric for 4 bits, ``accuracy_level`` 4 = int8 compute: the fast 8-bit path on this
CPU in the lead's probes); its grid is not torch's, so its quality is measured separately.
``bf16``/``fp16`` are not offered on ONNX Runtime's CPU provider.
"""

from __future__ import annotations

import logging
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from coinfer.errors import DeviceUnavailableError, IntegrityError, UnsupportedModelError
from coinfer.models.adapters.base import HeadOutput, ShardState
from coinfer.vocab import max_positions

ORT_BLOCK_SIZE = 32
ORT_ACCURACY_LEVEL = 4
ORT_PRECISIONS = ("fp32", "int8", "int4")


def check_precision(precision: str) -> str:
    """The MatMulNBits settings ONNX Runtime uses for ``precision``, in words.

    Raises:
        DeviceUnavailableError: A precision this engine does not offer.
    """
    if precision not in ORT_PRECISIONS:
        raise DeviceUnavailableError(f"onnxruntime engine: {precision} weights are not offered on the CPU provider "
                                     f"(use {', '.join(ORT_PRECISIONS)})")
    if precision == "fp32":
        return "onnxruntime CPU, fp32 MatMul"
    bits = 8 if precision == "int8" else 4
    sym = "symmetric" if bits == 8 else "asymmetric"
    return (f"onnxruntime MatMulNBits {bits}-bit, blocks of {ORT_BLOCK_SIZE}, {sym}, accuracy_level {ORT_ACCURACY_LEVEL} "
            "(int8 compute)")


def _names(shard: Any) -> tuple[list[str], list[str], list[int]]:
    blocks = list(shard.block_indices)
    inp = ["input_ids" if shard.has_embed else "hidden_in"]
    outs = ["last_hidden_state", "logits"] if shard.has_head else ["hidden_out"]
    for b in blocks:
        inp += [f"past_key_{b}", f"past_value_{b}"]
        outs += [f"present_key_{b}", f"present_value_{b}"]
    return inp, outs, blocks


def _check_cache(shard: Any) -> None:
    ad = shard.adapter
    if not ad.is_decoder:
        raise UnsupportedModelError("onnxruntime engine: a KV-cache graph is for decoders")
    layers = getattr(ad.new_cache(), "layers", [])
    if any("Sliding" in type(layer).__name__ for layer in layers):
        raise UnsupportedModelError("onnxruntime engine: sliding-window KV caches are not supported")


class _KVGraph(nn.Module):
    """The shard as a function of (input, past keys/values) -> (output(s), present keys/values)."""

    def __init__(self, shard: Any, blocks: list[int]) -> None:
        super().__init__()
        self.shard, self.blocks = shard, blocks

    def forward(self, x: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = self.shard.adapter.new_cache()
        for i, b in enumerate(self.blocks):
            cache.update(past[2 * i], past[2 * i + 1], b)
        out = self.shard(x, ShardState(cache=cache, past_length=past[0].shape[2]))
        head = (out.last_hidden_state, out.logits) if isinstance(out, HeadOutput) else (out,)
        present = [t for b in self.blocks for t in (cache.layers[b].keys, cache.layers[b].values)]
        return (*head, *present)


def _example(shard: Any, blocks: list[int]) -> tuple[torch.Tensor, ...]:
    ad = shard.adapter
    g = torch.Generator().manual_seed(0)
    x = (torch.randint(0, ad.vocab_size, (1, 5), generator=g) if shard.has_embed
         else torch.randn(1, 5, ad.hidden_size, generator=g))
    past = []
    for b in blocks:
        _, kv = ad.attention_heads(b)
        past += [torch.randn(1, kv, 7, ad.head_dim(), generator=g) for _ in range(2)]
    return (x, *past)


def export_kv_graph(shard: Any, folder: Path, stem: str) -> dict[str, Path]:
    """Export ``shard`` (fp32 torch) as the KV-cache graph ``<stem>.onnx`` (+ ``.onnx.data``).

    Raises:
        UnsupportedModelError: Not a decoder shard with blocks, or a sliding-window cache.
    """
    _check_cache(shard)
    inp, outs, blocks = _names(shard)
    if not blocks:
        raise UnsupportedModelError("onnxruntime engine: the device shard holds no block")
    limit = max_positions(shard.adapter.config)
    seq = torch.export.Dim("seq", min=1, max=limit)
    past = torch.export.Dim("past", min=1, max=limit - 1 if limit else None)
    shapes = ({1: seq}, tuple({2: past} for _ in range(2 * len(blocks))))
    path = folder / f"{stem}.onnx"
    # The exporter logs a line per torchvision op it cannot register (torchvision is not a dependency).
    logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prog = torch.onnx.export(_KVGraph(shard, blocks).eval(), _example(shard, blocks), dynamo=True, input_names=inp,
                                 output_names=outs, dynamic_shapes=shapes, external_data=True, optimize=True, verbose=False)
        prog.save(str(path), external_data=True)
    data = folder / f"{stem}.onnx.data"
    if not data.exists():
        raise IntegrityError(f"ONNX export of {stem} wrote no external data file")
    return {"onnx": path, "onnx-data": data}


def quantize_graph(src: Path, folder: Path, stem: str, precision: str) -> dict[str, Path]:
    """ONNX Runtime's weight-only quantization of an exported graph into ``<stem>.onnx`` (+ data)."""
    import onnx

    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # Importing it configures the root logger at INFO (basicConfig): undo that, keep its own quiet.
    root.setLevel(level)
    root.handlers[:] = handlers
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    bits = 8 if precision == "int8" else 4
    model = onnx.load(str(src), load_external_data=True)
    q = MatMulNBitsQuantizer(model, bits=bits, block_size=ORT_BLOCK_SIZE, is_symmetric=bits == 8,
                             accuracy_level=ORT_ACCURACY_LEVEL)
    q.process()
    path = folder / f"{stem}.onnx"
    onnx.save_model(q.model.model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{stem}.onnx.data")
    return {"onnx": path, "onnx-data": folder / f"{stem}.onnx.data"}


def session(path: Path, threads: int | None) -> Any:
    """An ONNX Runtime CPU session whose idle threads do not spin (they would steal the cores)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@dataclass
class OrtState:
    """Per-request state of an :class:`OrtShard`: its KV cache as arrays."""

    past: list[np.ndarray] = field(default_factory=list)
    past_length: int = 0


class OrtShard:
    """Runs a KV-cache graph like a :class:`~coinfer.models.shards.Shard` (same call and state API).

    Args:
        sess: The ONNX Runtime session of :func:`export_kv_graph`'s (or :func:`quantize_graph`'s) file.
        shard: The torch shard it was exported from (for names, shapes and stage bounds).
        precision: The weights' precision in that graph.
    """

    def __init__(self, sess: Any, shard: Any, precision: str) -> None:
        self.sess, self.precision = sess, precision
        self.inputs, self.outputs, self.blocks = _names(shard)
        self.adapter, self.start, self.end = shard.adapter, shard.start, shard.end
        self.has_embed, self.has_head = shard.has_embed, shard.has_head
        self.kv = [(shard.adapter.attention_heads(b)[1], shard.adapter.head_dim()) for b in self.blocks]

    def stage_names(self) -> list[str]:
        return self.adapter.stage_names()[self.start : self.end]

    def new_state(self) -> OrtState:
        return OrtState([np.zeros((1, h, 0, d), dtype=np.float32) for h, d in self.kv for _ in range(2)])

    def __call__(self, x: torch.Tensor, state: OrtState | None = None, attention_mask: Any = None) -> Any:
        if state is None:
            state = self.new_state()
        if x.shape[0] != 1:
            raise UnsupportedModelError("onnxruntime engine: batch 1 only")
        if state.past and state.past[0].shape[0] != x.shape[0]:
            state.past = [np.zeros((x.shape[0], *p.shape[1:2], 0, p.shape[3]), dtype=np.float32) for p in state.past]
        feed = {self.inputs[0]: x.detach().cpu().numpy()}
        feed.update(zip(self.inputs[1:], state.past, strict=True))
        got = self.sess.run(self.outputs, feed)
        n_head = 2 if self.has_head else 1
        state.past = got[n_head:]
        state.past_length += int(x.shape[1])
        if self.has_head:
            return HeadOutput(last_hidden_state=torch.from_numpy(got[0]), logits=torch.from_numpy(got[1]))
        return torch.from_numpy(got[0])


def build_ort_shard(shard: Any, precision: str, folder: Path, threads: int | None) -> tuple[OrtShard, dict[str, float]]:
    """Export ``shard`` (fp32 torch) to ``folder``, quantize it for ONNX Runtime if asked, open a session.

    The model is first brought to separate ``nn.Linear`` projections in place
    (:meth:`FamilyAdapter.prepare_for_pruning`: GPT-2's Conv1D export as Gemm, which
    MatMulNBits does not quantize).

    Returns:
        (the runnable shard, seconds spent: ``export_s``, ``quantize_s``).
    """
    check_precision(precision)
    with torch.no_grad():
        shard.adapter.prepare_for_pruning()
    t0 = time.perf_counter()
    files = export_kv_graph(shard, folder, "device-fp32")
    t1 = time.perf_counter()
    if precision != "fp32":
        files = quantize_graph(files["onnx"], folder, f"device-{precision}", precision)
    t2 = time.perf_counter()
    return OrtShard(session(files["onnx"], threads), shard, precision), {"export_s": t1 - t0, "quantize_s": t2 - t1}
