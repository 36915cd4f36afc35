"""The wire dtype applied to the activation that crosses a cut (the runner's name for it).

The codec lives in :mod:`coinfer.models.channel` beside the channel impairments, so that
``coinfer channel`` measures exactly what ``coinfer run`` sends; see there for the formats
(fp32, fp16, int8 per-token absmax, int4 grouped absmax). Token ids (cut 0) and results travel as
they are.
"""

from __future__ import annotations

from coinfer.models.channel import buffers, decode, encode, nbytes

__all__ = ["buffers", "decode", "encode", "nbytes"]
