"""A model's stages, their weights and the tensor crossing each cut; and a split self-check."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from coinfer.models.loading import LoadedModel
from coinfer.models.payload import activation_bytes, token_ids_bytes
from coinfer.models.shards import split
from coinfer.vocab import HEAD


@dataclass(frozen=True)
class StageSummary:
    """One stage's weights and the payload of a cut placed right after it."""

    name: str
    param_bytes: int
    cut_shape: tuple[int, ...]
    prefill_payload_bytes: int
    per_token_payload_bytes: int | None


def stage_param_bytes(loaded: LoadedModel) -> dict[str, int]:
    """Weight bytes per stage name; tied weights count in each stage that uses them."""
    ad = loaded.adapter
    out = dict.fromkeys(ad.stage_names(), 0)
    for name, t in ad.model.state_dict().items():
        stage = ad.stage_of(name)
        if stage is not None and t.is_floating_point():
            out[stage] += t.numel() * t.element_size()
    return out


def shared_param_bytes(loaded: LoadedModel) -> int:
    """Bytes of weights tied across stages (e.g. the embedding and the LM head), counted in each
    stage that uses them beyond the first: what to subtract when those stages share a machine."""
    ad = loaded.adapter
    seen: dict[int, str] = {}
    extra = 0
    for name, t in ad.model.state_dict(keep_vars=True).items():
        stage = ad.stage_of(name)
        if stage is None or not t.is_floating_point():
            continue
        ptr = t.data_ptr()
        if ptr in seen and seen[ptr] != stage:
            extra += t.numel() * t.element_size()
        seen.setdefault(ptr, stage)
    return extra


def summarize(loaded: LoadedModel, batch: int = 1, seq_len: int = 128, wire_dtype: str = "fp32") -> list[StageSummary]:
    """Describe every stage; the cut after ``head`` sends nothing (all on device)."""
    ad = loaded.adapter
    pbytes = stage_param_bytes(loaded)
    rows = []
    for name in ad.stage_names():
        if name == HEAD:
            rows.append(StageSummary(name, pbytes[name], (), 0, 0 if ad.is_decoder else None))
            continue
        shape = (batch, seq_len, ad.hidden_size)
        per = activation_bytes(batch, 1, ad.hidden_size, wire_dtype) if ad.is_decoder else None
        rows.append(StageSummary(name, pbytes[name], shape, activation_bytes(batch, seq_len, ad.hidden_size, wire_dtype), per))
    return rows


def input_payload_bytes(batch: int, seq_len: int) -> int:
    """Token ids sent when everything runs on the server."""
    return token_ids_bytes(batch, seq_len)


@torch.no_grad()
def verify_split(loaded: LoadedModel, k: int, seq_len: int = 16, decode_steps: int = 4, seed: int = 0) -> float:
    """Largest absolute difference between split and unsplit outputs at cut ``k``.

    Runs a random prompt through device then server shard and through the unsplit model; for
    decoders also ``decode_steps`` cached decode steps, comparing logits at every step.
    """
    ad = loaded.adapter
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, ad.vocab_size, (1, seq_len), generator=gen)
    s = split(loaded, k)
    ds, ss = s.device.new_state(), s.server.new_state()
    ref_cache = ad.new_cache() if ad.is_decoder else None
    worst = 0.0
    x = ids
    for _ in range(1 + (decode_steps if ad.is_decoder else 0)):
        got = s.server(s.device(x, ds), ss)
        ref = ad.reference(x, None, ref_cache, 1)
        worst = max(worst, float((got.last_hidden_state - ref.last_hidden_state).abs().max()))
        if ad.is_decoder:
            worst = max(worst, float((got.logits - ref.logits).abs().max()))
            x = ref.logits[:, -1:, :].argmax(-1)
    return worst
