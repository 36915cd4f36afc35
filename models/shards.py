"""Cut a model into shards that run contiguous ranges of its stages.

Stage positions: 0 is ``embed``, 1..L are ``block.0`` .. ``block.{L-1}``, L+1 is ``head``. A shard
runs positions ``[start, end)``. ``split(model, k)`` gives the device shard ``[0, k+1)``
(embedding plus blocks 1..k) and the server shard ``[k+1, L+2)`` (the remaining blocks and the
head). Each shard keeps its own KV cache and rebuilds positions, masks and rotary embeddings
itself, so only the activation (and, for padded encoder batches, the attention mask) crosses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from coinfer.errors import UserInputError
from coinfer.models.adapters.base import FamilyAdapter, HeadOutput, ShardState
from coinfer.models.payload import WIRE_ELEMENT_BYTES, activation_bytes, token_ids_bytes

_TORCH_DTYPE_NAMES = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}


def _adapter(model: Any) -> FamilyAdapter:
    return model if isinstance(model, FamilyAdapter) else model.adapter


class Shard(nn.Module):
    """A contiguous range of stages of one model.

    Args:
        adapter: The model's family adapter.
        start: First stage position (0 = embed).
        end: One past the last stage position (L + 2 = through the head).
        logits_to_keep: Decoders: positions whose logits the head computes (0 = all).
    """

    def __init__(self, adapter: FamilyAdapter, start: int, end: int, logits_to_keep: int = 1) -> None:
        super().__init__()
        total = adapter.num_blocks + 2
        if not 0 <= start <= end <= total:
            raise UserInputError(f"shard range [{start}, {end}) outside 0..{total}")
        self.adapter = adapter
        self.start, self.end = start, end
        self.logits_to_keep = logits_to_keep
        # Registered so .to(), .parameters() and export see exactly this shard's weights.
        self.stage_modules = nn.ModuleList(self._modules_of_range())

    # -- what the shard holds ----------------------------------------------------------------
    @property
    def has_embed(self) -> bool:
        return self.start == 0 < self.end

    @property
    def has_head(self) -> bool:
        return self.start <= self.adapter.num_blocks + 1 < self.end

    @property
    def block_indices(self) -> range:
        """Indices of the blocks this shard runs."""
        lo = max(self.start, 1) - 1
        hi = min(self.end, self.adapter.num_blocks + 1) - 1
        return range(lo, max(lo, hi))

    @property
    def is_empty(self) -> bool:
        return self.start == self.end

    def stage_names(self) -> list[str]:
        """Names of the stages this shard runs, in order."""
        return self.adapter.stage_names()[self.start : self.end]

    def _modules_of_range(self) -> list[nn.Module]:
        mods: list[nn.Module] = []
        if self.has_embed:
            mods += list(self.adapter.embed_modules().values())
        mods += [self.adapter.blocks()[i] for i in self.block_indices]
        if self.has_head:
            mods += list(self.adapter.head_modules().values())
        return mods

    def hf_state_dict(self) -> dict[str, torch.Tensor]:
        """This shard's tensors under the model's own (Hugging Face) names.

        Tied weights (GPT-2's embedding and LM head) appear under each name that uses them, so
        each shard is complete on its own.
        """
        names = set(self.stage_names())
        full = self.adapter.model.state_dict()
        return {k: v for k, v in full.items() if self.adapter.stage_of(k) in names}

    def param_bytes(self) -> int:
        """Bytes of this shard's weights (tied weights counted once per shard)."""
        seen: set[int] = set()
        total = 0
        for p in self.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                total += p.numel() * p.element_size()
        return total

    # -- running -----------------------------------------------------------------------------
    def new_state(self) -> ShardState:
        """Fresh per-request state for this shard."""
        return self.adapter.new_state()

    def forward(
        self,
        x: torch.Tensor,
        state: ShardState | None = None,
        attention_mask: torch.Tensor | None = None,
    ) -> torch.Tensor | HeadOutput:
        """Run this shard's stages.

        Args:
            x: Token ids (batch, tokens) when the shard holds the embedding, else the hidden state
                (batch, tokens, hidden) that crossed the cut.
            state: The shard's per-request state; decoders keep their KV cache in it. None runs
                a stateless prefill.
            attention_mask: Optional (batch, past + tokens) padding mask; encoders only.

        Returns:
            The hidden state for the next shard, or the head's output if this shard ends the model.
        """
        if self.is_empty:
            return x
        if state is None:
            state = self.new_state()
        ad = self.adapter
        tokens = x.shape[1]
        h = ad.embed(x, state.past_length) if self.has_embed else x
        blocks = self.block_indices
        first = blocks.start if len(blocks) else ad.num_blocks
        ctx = ad.context(h, state, first, attention_mask) if (len(blocks) or self.has_head) else None
        for i in blocks:
            h = ad.block(i, h, ctx)
        out: torch.Tensor | HeadOutput = ad.head(h, ctx, self.logits_to_keep) if self.has_head else h
        state.past_length += tokens
        return out


@dataclass(frozen=True)
class TensorSpec:
    """Shape, dtype and size of a tensor crossing a cut."""

    shape: tuple[int, ...]
    dtype: str
    nbytes: int


@dataclass(frozen=True)
class CutInfo:
    """What crosses the cut after ``k`` device blocks, for a batch and prompt length."""

    k: int
    prefill: TensorSpec
    per_token: TensorSpec | None

    def payload_bytes(self, wire_dtype: str) -> tuple[int, int | None]:
        """(prefill bytes, per-decode-token bytes) when sent in ``wire_dtype``."""
        if self.prefill.dtype == "int64":
            return self.prefill.nbytes, self.per_token.nbytes if self.per_token else None
        b, t, h = self.prefill.shape
        per = activation_bytes(b, 1, h, wire_dtype) if self.per_token else None
        return activation_bytes(b, t, h, wire_dtype), per


@dataclass
class Split:
    """A device shard, a server shard and what crosses between them."""

    device: Shard
    server: Shard
    k: int

    def cut(self, batch: int, seq_len: int) -> CutInfo:
        """The tensor crossing this split for a prompt of ``seq_len`` tokens."""
        return cut_info(self.device.adapter, self.k, batch, seq_len)


def cut_info(model: Any, k: int, batch: int, seq_len: int, dtype: torch.dtype | None = None) -> CutInfo:
    """Describe the activation crossing the cut after ``k`` device blocks.

    The device always runs the embedding, so even k = 0 sends a hidden state; to send token ids
    (everything on the server) use a shard range starting at 0 on the server.
    """
    ad = _adapter(model)
    if dtype is None:
        dtype = next(ad.model.parameters()).dtype
    name = _TORCH_DTYPE_NAMES.get(dtype, str(dtype))
    el = WIRE_ELEMENT_BYTES.get(name, 4)
    h = ad.hidden_size
    prefill = TensorSpec((batch, seq_len, h), name, batch * seq_len * h * el)
    per = TensorSpec((batch, 1, h), name, batch * h * el) if ad.is_decoder else None
    return CutInfo(k, prefill, per)


def input_ids_spec(batch: int, seq_len: int) -> TensorSpec:
    """Token ids sent when the whole model runs on the server."""
    return TensorSpec((batch, seq_len), "int64", token_ids_bytes(batch, seq_len))


def shard_range(model: Any, start: int, end: int, logits_to_keep: int = 1) -> Shard:
    """A shard over stage positions ``[start, end)`` (for multi-device chains)."""
    return Shard(_adapter(model), start, end, logits_to_keep)


def split(model: Any, k: int, logits_to_keep: int = 1) -> Split:
    """Cut a model after its ``k``-th block.

    Args:
        model: A :class:`~coinfer.models.loading.LoadedModel` or a family adapter.
        k: Blocks on the device, 0..L. The device shard is the embedding plus blocks 1..k; the
            server shard is blocks k+1..L plus the final stage.
        logits_to_keep: Decoders: positions whose logits the head computes (0 = all).

    Raises:
        UserInputError: ``k`` is outside 0..L.
    """
    ad = _adapter(model)
    if not 0 <= k <= ad.num_blocks:
        raise UserInputError(f"split point {k} outside 0..{ad.num_blocks} for a {ad.num_blocks}-block model")
    return Split(Shard(ad, 0, k + 1, logits_to_keep), Shard(ad, k + 1, ad.num_blocks + 2, logits_to_keep), k)


@torch.no_grad()
def generate_greedy(shards: list[Shard], input_ids: torch.Tensor, new_tokens: int) -> torch.Tensor:
    """Greedy generation through a chain of shards, each keeping its own KV cache.

    Args:
        shards: Contiguous shards covering the whole model, in order.
        input_ids: Prompt, (batch, tokens).
        new_tokens: Tokens to generate.

    Returns:
        The generated token ids, (batch, new_tokens).
    """
    states = [s.new_state() for s in shards]
    x: Any = input_ids
    out: list[torch.Tensor] = []
    for _ in range(new_tokens):
        h: Any = x
        for shard, st in zip(shards, states, strict=True):
            h = shard(h, st)
        nxt = h.logits[:, -1, :].argmax(dim=-1, keepdim=True)
        out.append(nxt)
        x = nxt
    return torch.cat(out, dim=1) if out else input_ids[:, :0]
