"""Drop-in replacements for a model's ``nn.Linear``: weights in bf16/fp16, int8 or int4.

Each module keeps the replaced layer's ``in_features``/``out_features`` and fp32 bias, takes and
returns the block's dtype, and holds its weights as parameters (so byte counts and ``.to()`` see
them; none trains). The formats are :mod:`coinfer.precision.quant`'s; the kernels are PyTorch's
own weight-only matmuls, which read bf16 activations (with fp32 activations the CPU int8 kernel
has no fast path: 6x slower than fp32 in the lead's probe), so each call casts its input to bf16
and its output back.

An int8 matmul over many rows (a prefill of 64 tokens or more) dequantizes the codes to bf16 and
runs a bf16 GEMM instead: the weights stay int8 in memory.

Kernel constraints handled here (measured on torch 2.13 CPU): ``_weight_int8pack_mm`` needs the
input width to be a multiple of 16 (other widths returned garbage or crashed), the int4 kernel a
whole number of groups and an output width that is a multiple of 16; inputs are zero-padded and
outputs sliced where a (pruned) layer does not fit.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from coinfer.errors import DeviceUnavailableError
from coinfer.precision import quant

_FLOAT = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
INT8_K_MULTIPLE = 16
INT8_DEQUANT_ROWS = 64  # from this many input rows on, int8 weights are dequantized to bf16 per call
INT4_N_MULTIPLE = 16


def _has_kernel(op: str, dispatch_key: str) -> bool:
    try:
        return bool(torch._C._dispatch_has_kernel_for_dispatch_key(f"aten::{op}", dispatch_key))
    except (AttributeError, RuntimeError):
        return False


def _cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def kernel_for(precision: str, device: str) -> str:
    """Which kernel runs ``precision`` weights on ``device`` (cpu or cuda), in words.

    Raises:
        DeviceUnavailableError: No kernel here; the message says why (nothing is emulated).
    """
    if precision == "fp32":
        return "torch linear, fp32"
    if precision in ("bf16", "fp16"):
        if device == "cpu" and precision == "fp16" and not _cpu_flags() & {"avx512_fp16", "amx_fp16"}:
            raise DeviceUnavailableError("fp16 weights: this CPU has no fp16 arithmetic (no avx512_fp16/amx_fp16); use bf16")
        return f"torch linear, {precision} weights and activations (cast in and out)"
    if precision == "int8":
        key = "CUDA" if device == "cuda" else "CPU"
        if not _has_kernel("_weight_int8pack_mm", key):
            raise DeviceUnavailableError(f"int8 weights: this torch has no {key} kernel for aten._weight_int8pack_mm")
        return "aten._weight_int8pack_mm, int8 per-channel weights, bf16 activations"
    if precision == "int4":
        if device != "cpu":
            raise DeviceUnavailableError("int4 weights: only the CPU kernel (aten._weight_int4pack_mm_for_cpu) is wired up")
        if not _has_kernel("_weight_int4pack_mm_for_cpu", "CPU"):
            raise DeviceUnavailableError("int4 weights: this torch has no aten._weight_int4pack_mm_for_cpu")
        return "aten._weight_int4pack_mm_for_cpu, int4 group-wise weights, bf16 activations"
    raise DeviceUnavailableError(f"unknown precision {precision!r}")


def _frozen(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t, requires_grad=False)


class WeightOnlyLinear(nn.Module):
    """Base of the replacements: shapes, the fp32 bias, the cast around the kernel."""

    precision: ClassVar[str]

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.bias = _frozen(torch.zeros(out_features)) if bias else None

    def spec(self) -> dict[str, Any]:
        """What rebuilds an empty module of this shape (recorded in exported shard configs)."""
        return {"precision": self.precision, "in_features": self.in_features, "out_features": self.out_features,
                "bias": self.bias is not None}

    def dequantized_weight(self) -> torch.Tensor:
        """The fp32 (out, in) matrix this module multiplies by."""
        raise NotImplementedError

    def matmul(self, x2: torch.Tensor) -> torch.Tensor:
        """``x2 @ W.T`` for a 2-D input in the kernel's activation dtype."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        y = self.matmul(x.reshape(-1, self.in_features)).reshape(*lead, self.out_features).to(x.dtype)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._kernel_cache = None  # repack from the loaded codes on the next call


class FloatLinear(WeightOnlyLinear):
    """Weights in bf16 or fp16; activations cast to that dtype for the matmul and back."""

    def __init__(self, in_features: int, out_features: int, bias: bool, precision: str = "bf16") -> None:
        super().__init__(in_features, out_features, bias)
        self.precision = precision  # type: ignore[misc]
        self.weight = _frozen(torch.zeros(out_features, in_features, dtype=_FLOAT[precision]))

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, precision: str = "bf16") -> FloatLinear:
        m = cls(weight.shape[1], weight.shape[0], bias is not None, precision)
        m.weight.data = weight.detach().to(_FLOAT[precision]).contiguous()
        if bias is not None:
            m.bias.data = bias.detach().float().clone()
        return m

    def dequantized_weight(self) -> torch.Tensor:
        return self.weight.float()

    def matmul(self, x2: torch.Tensor) -> torch.Tensor:
        return F.linear(x2.to(self.weight.dtype), self.weight)


class Int8Linear(WeightOnlyLinear):
    """int8 codes per output channel (symmetric) with bf16 scales."""

    precision = "int8"

    def __init__(self, in_features: int, out_features: int, bias: bool) -> None:
        super().__init__(in_features, out_features, bias)
        self.qweight = _frozen(torch.zeros(out_features, in_features, dtype=torch.int8))
        self.scales = _frozen(torch.ones(out_features, dtype=quant.SCALE_DTYPE))
        self._kernel_cache: torch.Tensor | None = None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None) -> Int8Linear:
        m = cls(weight.shape[1], weight.shape[0], bias is not None)
        q = quant.quantize_int8(weight)
        m.qweight.data, m.scales.data = q.qweight, q.scales
        if bias is not None:
            m.bias.data = bias.detach().float().clone()
        return m

    def dequantized_weight(self) -> torch.Tensor:
        return quant.dequantize_int8(self.qweight, self.scales)

    def _pad(self) -> int:
        return -self.in_features % INT8_K_MULTIPLE

    def _kernel_weight(self) -> torch.Tensor:
        pad = self._pad()
        if not pad:
            return self.qweight
        if self._kernel_cache is None or self._kernel_cache.device != self.qweight.device:
            self._kernel_cache = F.pad(self.qweight, (0, pad)).contiguous()
        return self._kernel_cache

    def matmul(self, x2: torch.Tensor) -> torch.Tensor:
        xb = x2.to(torch.bfloat16)
        if x2.shape[0] >= INT8_DEQUANT_ROWS:
            # Many rows (a prefill): the matmul is bound by arithmetic, not by reading weights, and
            # a bf16 GEMM on the dequantized matrix ran 2.3x fp32 against int8pack's 1.5x (128 rows).
            return F.linear(xb, self.qweight.to(torch.bfloat16) * self.scales[:, None])
        if self._pad():
            xb = F.pad(xb, (0, self._pad()))
        return torch.ops.aten._weight_int8pack_mm(xb.contiguous(), self._kernel_weight(), self.scales)


class Int4Linear(WeightOnlyLinear):
    """int4 codes per group of input columns (asymmetric) with bf16 scales and zeros."""

    precision = "int4"

    def __init__(self, in_features: int, out_features: int, bias: bool, group_size: int = quant.DEFAULT_GROUP_SIZE) -> None:
        super().__init__(in_features, out_features, bias)
        self.group_size = group_size
        kp = quant.padded_width(in_features, group_size)
        self.qweight = _frozen(torch.zeros(out_features, kp // 2, dtype=torch.uint8))
        self.scales = _frozen(torch.ones(out_features, kp // group_size, dtype=quant.SCALE_DTYPE))
        self.zeros = _frozen(torch.zeros(out_features, kp // group_size, dtype=quant.SCALE_DTYPE))
        self._kernel_cache: tuple[torch.Tensor, torch.Tensor] | None = None

    @classmethod
    def from_weight(cls, weight: torch.Tensor, bias: torch.Tensor | None, group_size: int = quant.DEFAULT_GROUP_SIZE) -> Int4Linear:
        m = cls(weight.shape[1], weight.shape[0], bias is not None, group_size)
        q = quant.quantize_int4(weight, group_size)
        m.qweight.data, m.scales.data, m.zeros.data = q.qweight, q.scales, q.zeros
        if bias is not None:
            m.bias.data = bias.detach().float().clone()
        return m

    def spec(self) -> dict[str, Any]:
        return {**super().spec(), "group_size": self.group_size}

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, group_size={self.group_size}"

    def dequantized_weight(self) -> torch.Tensor:
        return quant.dequantize_int4(self.qweight, self.scales, self.zeros, self.in_features, self.group_size)

    def _kernel_weight(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._kernel_cache is None:
            codes = quant.unpack_nibbles(self.qweight).to(torch.int32)
            sz = torch.stack([self.scales, self.zeros], dim=-1)  # (out, groups, 2)
            pad = -self.out_features % INT4_N_MULTIPLE
            if pad:
                codes = F.pad(codes, (0, 0, 0, pad), value=8)
                sz = F.pad(sz, (0, 0, 0, 0, 0, pad))
            packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(codes.contiguous(), 1)
            self._kernel_cache = (packed, sz.transpose(0, 1).contiguous())  # (groups, out, 2)
        return self._kernel_cache

    def matmul(self, x2: torch.Tensor) -> torch.Tensor:
        packed, sz = self._kernel_weight()
        xb = x2.to(torch.bfloat16)
        pad = self.qweight.shape[1] * 2 - self.in_features
        if pad:
            xb = F.pad(xb, (0, pad))
        y = torch.ops.aten._weight_int4pack_mm_for_cpu(xb.contiguous(), packed, self.group_size, sz)
        return y[:, : self.out_features]


def from_linear(linear: nn.Module, precision: str, group_size: int = quant.DEFAULT_GROUP_SIZE) -> WeightOnlyLinear:
    """The replacement of an ``nn.Linear`` at ``precision`` (bf16, fp16, int8 or int4)."""
    w, b = linear.weight, linear.bias
    if precision in ("bf16", "fp16"):
        return FloatLinear.from_weight(w, b, precision)
    if precision == "int8":
        return Int8Linear.from_weight(w, b)
    if precision == "int4":
        return Int4Linear.from_weight(w, b, group_size)
    raise ValueError(f"no weight-only module for precision {precision!r}")


def empty_from_spec(spec: dict[str, Any]) -> WeightOnlyLinear:
    """An empty module of the shape a :meth:`WeightOnlyLinear.spec` describes (to load weights into)."""
    p, i, o, b = spec["precision"], int(spec["in_features"]), int(spec["out_features"]), bool(spec["bias"])
    if p in ("bf16", "fp16"):
        return FloatLinear(i, o, b, p)
    if p == "int8":
        return Int8Linear(i, o, b)
    if p == "int4":
        return Int4Linear(i, o, b, int(spec.get("group_size") or quant.DEFAULT_GROUP_SIZE))
    raise ValueError(f"no weight-only module for precision {p!r}")
