"""What happens to the activation that crosses a cut: the wire codec and the channel. One home.

``coinfer run`` sends with these functions (through :mod:`coinfer.runner.wire`) and ``coinfer
channel`` measures with the very same ones, so a robustness profile describes what a run does.

**Wire precisions** (:data:`coinfer.vocab.WIRE_DTYPES`), encoded by the sender, decoded on receipt;
sizes in :func:`coinfer.models.payload.activation_bytes`:

- ``fp32``, ``fp16``: the tensor in that dtype.
- ``int8``: symmetric per-token absmax. Codes ``q = round(x / s)`` in -127..127 with
  ``s = max|x_row| / 127``: an int8 tensor plus one fp32 scale per token row.
- ``int4``: symmetric grouped absmax. The hidden dimension is cut into groups of 32 (the last
  one zero-padded), ``s = max|x_group| / 7`` stored as fp16, codes ``round(x / s)`` in -7..7
  stored as unsigned nibbles ``q + 8``, two per byte (the even element in the low nibble).

Rounding is torch's (half to even). An all-zero row or group gets scale 1 (any scale keeps zeros).

**Channel impairments**, applied to the activation as the receiver decodes it:

- ``erasure`` with probability p: every element independently arrives as 0 with probability p
  (the model of the adaptive-splitting paper's code; see SCIENCE.md).
- ``awgn`` at ``snr_db``: ``x + n`` with ``n ~ N(0, P / 10^(snr_db / 10))`` i.i.d., where ``P`` is
  the mean of ``x^2`` over one token's row of the transmitted (decoded) tensor. A decode step
  sends one token, so this is the signal power per message; a prefill's tokens are measured row
  by row, so a window sent at once is impaired exactly as the same tokens sent one step at a time.

Random draws come from an explicit :class:`torch.Generator` and are taken token row after token
row (uniforms, turned into Gaussians by Box-Muller here, so the stream does not depend on torch's
vectorised normal sampler): for batch 1, impairing a (1, T, H) window consumes the generator
exactly as impairing its T rows one after another.
"""

from __future__ import annotations

import hashlib
import math

import torch

from coinfer.models.payload import INT4_GROUP, int4_groups
from coinfer.reports.robustness import ChannelCondition


# -- the wire codec ---------------------------------------------------------------------------------
def encode(x: torch.Tensor, wire_dtype: str) -> list[torch.Tensor]:
    """Turn an fp32 activation (batch, tokens, hidden) into the tensors to send."""
    if wire_dtype == "fp32":
        return [x.float().contiguous()]
    if wire_dtype == "fp16":
        return [x.half().contiguous()]
    if wire_dtype == "int8":
        xf = x.float()
        scale = _nonzero(xf.abs().amax(dim=-1) / 127.0)
        q = torch.round(xf / scale.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
        return [q.contiguous(), scale.contiguous()]
    if wire_dtype == "int4":
        return _encode_int4(x.float())
    raise ValueError(f"unknown wire dtype {wire_dtype!r}")


def buffers(shape: tuple[int, ...], wire_dtype: str) -> list[torch.Tensor]:
    """Empty receive buffers matching what :func:`encode` sends for ``shape``."""
    if wire_dtype == "fp32":
        return [torch.empty(shape, dtype=torch.float32)]
    if wire_dtype == "fp16":
        return [torch.empty(shape, dtype=torch.float16)]
    if wire_dtype == "int8":
        return [torch.empty(shape, dtype=torch.int8), torch.empty(shape[:-1], dtype=torch.float32)]
    if wire_dtype == "int4":
        g = int4_groups(shape[-1])
        return [torch.empty((*shape[:-1], g * INT4_GROUP // 2), dtype=torch.uint8),
                torch.empty((*shape[:-1], g), dtype=torch.float16)]
    raise ValueError(f"unknown wire dtype {wire_dtype!r}")


def decode(parts: list[torch.Tensor], wire_dtype: str, hidden: int | None = None) -> torch.Tensor:
    """Rebuild the fp32 activation from received tensors.

    Args:
        parts: What :func:`encode` produced (or buffers filled with it).
        wire_dtype: The precision it was sent in.
        hidden: int4: the hidden size when it is not a multiple of 32 (the padding is dropped);
            None keeps whole groups.
    """
    if wire_dtype == "int8":
        q, scale = parts
        return q.float() * scale.unsqueeze(-1)
    if wire_dtype == "int4":
        return _decode_int4(parts, hidden)
    return parts[0].float()


def nbytes(parts: list[torch.Tensor]) -> int:
    """Bytes of a message's tensors."""
    return sum(t.numel() * t.element_size() for t in parts)


def roundtrip(x: torch.Tensor, wire_dtype: str) -> torch.Tensor:
    """What the receiver decodes when ``x`` is sent in ``wire_dtype`` over a perfect channel."""
    if wire_dtype == "fp32":
        return x.float()
    return decode(encode(x, wire_dtype), wire_dtype, x.shape[-1])


def _nonzero(scale: torch.Tensor) -> torch.Tensor:
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def _encode_int4(x: torch.Tensor) -> list[torch.Tensor]:
    *lead, h = x.shape
    g = int4_groups(h)
    xp = torch.nn.functional.pad(x, (0, g * INT4_GROUP - h)).reshape(*lead, g, INT4_GROUP)
    # The scale travels as fp16, so quantise with the rounded value the receiver will use.
    scale = _nonzero((xp.abs().amax(dim=-1) / 7.0).half().float())
    q = (torch.round(xp / scale.unsqueeze(-1)).clamp_(-7, 7) + 8).to(torch.uint8).reshape(*lead, g * INT4_GROUP)
    packed = q[..., 0::2] | (q[..., 1::2] << 4)
    return [packed.contiguous(), scale.half().contiguous()]


def _decode_int4(parts: list[torch.Tensor], hidden: int | None) -> torch.Tensor:
    packed, scale = parts
    *lead, half = packed.shape
    codes = torch.stack([packed & 0x0F, packed >> 4], dim=-1).reshape(*lead, scale.shape[-1], INT4_GROUP)
    x = (codes.float() - 8.0) * scale.float().unsqueeze(-1)
    x = x.reshape(*lead, 2 * half)
    return x if hidden is None else x[..., :hidden].contiguous()


# -- the channel ------------------------------------------------------------------------------------
def impair(x: torch.Tensor, condition: ChannelCondition, generator: torch.Generator | None) -> torch.Tensor:
    """The activation as it arrives through the channel of ``condition`` (its impairment only).

    Args:
        x: The received, decoded activation (batch, tokens, hidden), fp32.
        condition: Which impairment, with its parameter (its wire precision is not applied here).
        generator: The seeded source of the random draws (unused without an impairment).

    Raises:
        ValueError: A random impairment without a generator.
    """
    if condition.impairment == "none":
        return x
    if generator is None:
        raise ValueError(f"{condition.label()}: a random impairment needs a seeded generator")
    if condition.impairment == "erasure":
        assert condition.erasure_p is not None
        return erase(x, condition.erasure_p, generator)
    assert condition.snr_db is not None
    return awgn(x, condition.snr_db, generator)


def transmit(x: torch.Tensor, condition: ChannelCondition, generator: torch.Generator | None) -> torch.Tensor:
    """Send ``x`` in the condition's wire precision through its channel: what the receiver gets."""
    return impair(roundtrip(x, condition.wire_dtype), condition, generator)


def erase(x: torch.Tensor, p: float, generator: torch.Generator) -> torch.Tensor:
    """Each element arrives as 0 with probability ``p``, independently (one uniform per element)."""
    u = torch.rand(x.shape, generator=generator, dtype=torch.float32)
    return x.masked_fill(u < p, 0.0)


def awgn(x: torch.Tensor, snr_db: float, generator: torch.Generator) -> torch.Tensor:
    """Add white Gaussian noise at ``snr_db`` relative to each token row's mean power."""
    xf = x.float()
    power = xf.pow(2).mean(dim=-1, keepdim=True)
    sigma = (power / 10.0 ** (snr_db / 10.0)).sqrt()
    return xf + sigma * standard_normal(xf.shape, generator)


def standard_normal(shape: tuple[int, ...] | torch.Size, generator: torch.Generator) -> torch.Tensor:
    """N(0, 1) samples by Box-Muller from 2 uniforms per element, drawn row by row (last dim)."""
    *lead, h = shape
    u = torch.rand((*lead, 2, h), generator=generator, dtype=torch.float64)
    radius = torch.sqrt(-2.0 * torch.log1p(-u[..., 0, :]))  # 1 - u in (0, 1]: log never sees 0
    return (radius * torch.cos(2.0 * math.pi * u[..., 1, :])).float()


def generator(seed: int, *keys: object) -> torch.Generator:
    """A CPU generator seeded from ``seed`` and any keys (e.g. cut, condition, draw, window).

    The keys are hashed, so each (cut, condition, draw, window) has its own stream whatever else
    is measured beside it: adding a condition never changes another's numbers.
    """
    text = "/".join(str(k) for k in (seed, *keys))
    return torch.Generator().manual_seed(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") >> 1)
