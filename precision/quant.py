"""The weight formats, as arithmetic: quantize a matrix, and the matrix a quantized one stands for.

* ``int8``: symmetric, one scale per output channel (row). ``W ~= q * s`` with ``q`` in
  -127..127 and ``s = max|W_row| / 127`` stored in bf16 (rounded before ``q`` is chosen, so the
  codes fit the stored scale).
* ``int4``: asymmetric, one (scale, zero) per group of ``group_size`` consecutive input columns
  of a row. ``W ~= (q - 8) * s + z`` with ``q`` in 0..15, ``s = (max - min) / 15`` and
  ``z = min + 8 s`` (the value of the middle code), both stored in bf16. This is the grid of
  PyTorch's CPU int4 kernel; a GGUF ``Q4_1`` block (``d * q + m``) lies on it exactly up to the
  bf16 rounding of ``d`` and ``m + 8 d``. Two codes share a byte: the even column in the low
  nibble. A width that is not a multiple of the group is padded by repeating the last column
  (the padding never widens a group's range; its inputs are zero at run time).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

INT4_GROUP_SIZES = (32, 64, 128, 256)  # what the CPU int4 kernel accepts
DEFAULT_GROUP_SIZE = 32
SCALE_DTYPE = torch.bfloat16


@dataclass
class Int8Weight:
    """A matrix (out, in) as int8 codes and one bf16 scale per row."""

    qweight: torch.Tensor  # int8 (out, in)
    scales: torch.Tensor  # bf16 (out,)

    def dequantize(self) -> torch.Tensor:
        """The fp32 matrix the codes stand for."""
        return dequantize_int8(self.qweight, self.scales)


@dataclass
class Int4Weight:
    """A matrix (out, in) as packed 4-bit codes with a bf16 (scale, zero) per group."""

    qweight: torch.Tensor  # uint8 (out, padded_in / 2)
    scales: torch.Tensor  # bf16 (out, groups)
    zeros: torch.Tensor  # bf16 (out, groups)
    in_features: int
    group_size: int

    def dequantize(self) -> torch.Tensor:
        """The fp32 matrix the codes stand for (the padding columns dropped)."""
        return dequantize_int4(self.qweight, self.scales, self.zeros, self.in_features, self.group_size)


def quantize_int8(weight: torch.Tensor) -> Int8Weight:
    """Per-output-channel symmetric int8 codes of ``weight`` (out, in)."""
    w = weight.detach().float()
    absmax = w.abs().amax(dim=1)
    # An all-zero row keeps scale 1 (its codes are 0 either way).
    scales = torch.where(absmax > 0, absmax / 127.0, torch.ones_like(absmax)).to(SCALE_DTYPE)
    q = torch.round(w / scales.float()[:, None]).clamp_(-127, 127).to(torch.int8)
    return Int8Weight(q.contiguous(), scales.contiguous())


def dequantize_int8(qweight: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """``q * s`` in fp32."""
    return qweight.float() * scales.float()[:, None]


def padded_width(in_features: int, group_size: int) -> int:
    """The input width rounded up to whole groups."""
    return -(-in_features // group_size) * group_size


def quantize_int4(weight: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE) -> Int4Weight:
    """Group-wise asymmetric 4-bit codes of ``weight`` (out, in); see the module docstring."""
    w = weight.detach().float()
    n, k = w.shape
    kp = padded_width(k, group_size)
    if kp != k:
        w = torch.cat([w, w[:, -1:].expand(n, kp - k)], dim=1)
    g = w.reshape(n, kp // group_size, group_size)
    lo, hi = g.amin(dim=-1), g.amax(dim=-1)
    span = hi - lo
    scales = torch.where(span > 0, span / 15.0, torch.ones_like(span)).to(SCALE_DTYPE)
    zeros = (lo + 8.0 * scales.float()).to(SCALE_DTYPE)
    s, z = scales.float()[..., None], zeros.float()[..., None]
    q = torch.round((g - z) / s + 8.0).clamp_(0, 15).to(torch.uint8).reshape(n, kp)
    return Int4Weight(pack_nibbles(q), scales.contiguous(), zeros.contiguous(), k, group_size)


def dequantize_int4(
    qweight: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor, in_features: int, group_size: int
) -> torch.Tensor:
    """``(q - 8) * s + z`` in fp32, (out, in_features)."""
    q = unpack_nibbles(qweight).float()
    n, kp = q.shape
    g = q.reshape(n, kp // group_size, group_size)
    w = (g - 8.0) * scales.float()[..., None] + zeros.float()[..., None]
    return w.reshape(n, kp)[:, :in_features]


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(out, in) codes 0..15 to (out, in / 2) bytes: even column low nibble, odd column high."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] | (q[:, 1::2] << 4)).contiguous()


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`pack_nibbles`: (out, in / 2) bytes to (out, in) codes."""
    lo, hi = packed & 0x0F, packed >> 4
    return torch.stack([lo, hi], dim=-1).reshape(packed.shape[0], -1)
