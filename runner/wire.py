"""The wire dtype applied to the activation that crosses a cut.

fp32 and fp16 send one tensor. int8 is symmetric per-token quantisation: an int8 tensor plus one
fp32 scale per token row, which is exactly what `coinfer.models.payload.activation_bytes` counts.
Token ids (cut 0) and results travel as they are.
"""

from __future__ import annotations

import torch


def encode(x: torch.Tensor, wire_dtype: str) -> list[torch.Tensor]:
    """Turn an fp32 activation (batch, tokens, hidden) into the tensors to send."""
    if wire_dtype == "fp32":
        return [x.float().contiguous()]
    if wire_dtype == "fp16":
        return [x.half().contiguous()]
    if wire_dtype == "int8":
        xf = x.float()
        scale = xf.abs().amax(dim=-1) / 127.0
        # An all-zero row would divide by zero; any scale reproduces its zeros.
        scale = torch.where(scale > 0, scale, torch.ones_like(scale))
        q = torch.round(xf / scale.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
        return [q.contiguous(), scale.contiguous()]
    raise ValueError(f"unknown wire dtype {wire_dtype!r}")


def buffers(shape: tuple[int, ...], wire_dtype: str) -> list[torch.Tensor]:
    """Empty receive buffers matching what :func:`encode` sends for ``shape``."""
    if wire_dtype == "fp32":
        return [torch.empty(shape, dtype=torch.float32)]
    if wire_dtype == "fp16":
        return [torch.empty(shape, dtype=torch.float16)]
    if wire_dtype == "int8":
        return [torch.empty(shape, dtype=torch.int8), torch.empty(shape[:-1], dtype=torch.float32)]
    raise ValueError(f"unknown wire dtype {wire_dtype!r}")


def decode(parts: list[torch.Tensor], wire_dtype: str) -> torch.Tensor:
    """Rebuild the fp32 activation from received tensors."""
    if wire_dtype == "int8":
        q, scale = parts
        return q.float() * scale.unsqueeze(-1)
    return parts[0].float()


def nbytes(parts: list[torch.Tensor]) -> int:
    """Bytes of a message's tensors."""
    return sum(t.numel() * t.element_size() for t in parts)
