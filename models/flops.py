"""FLOPs of each stage, computed from the model's current shapes (pruned blocks included).

The one FLOPs model of coinfer: the profiler and the pruner both use it.

Counted: matrix products only, 2 FLOPs per multiply-add, as ``torch.utils.flop_counter`` counts
them; element-wise work (norms, activations, softmax, rotary, bias adds) is left out. Attention
scores and the weighted sum are counted over the full (new tokens x all keys) rectangle, causal
or not, because that is what dense attention kernels compute. Lookups (embeddings) cost 0.
"""

from __future__ import annotations

from typing import Any

from coinfer.vocab import EMBED, HEAD, block_name


def block_flops(adapter: Any, index: int, batch: int, new_tokens: int, past_tokens: int) -> float:
    """FLOPs of block ``index`` for ``new_tokens`` tokens attending to ``past_tokens`` cached ones.

    Args:
        adapter: The model's family adapter (shapes are read per block, so pruned blocks count right).
        index: Block index.
        batch: Sequences in the batch.
        new_tokens: Tokens computed now (prompt length for prefill, 1 for a decode step).
        past_tokens: Tokens already in the KV cache (0 for prefill).

    Returns:
        FLOPs as a float.
    """
    d = adapter.hidden_size
    q_heads, kv_heads = adapter.attention_heads(index)
    hd = adapter.head_dim()
    m = adapter.mlp_channels(index)
    rows = batch * new_tokens
    keys = past_tokens + new_tokens
    proj = 2 * rows * d * (q_heads * hd + 2 * kv_heads * hd)  # q, k, v projections
    out = 2 * rows * (q_heads * hd) * d  # output projection
    attn = 2 * 2 * batch * q_heads * new_tokens * keys * hd  # scores and weighted sum
    mlp = (3 if adapter.mlp_gated else 2) * 2 * rows * d * m
    return float(proj + out + attn + mlp)


def head_flops(adapter: Any, batch: int, new_tokens: int, logits_to_keep: int) -> float:
    """FLOPs of the final stage: the LM head over the kept positions, or BERT's pooler.

    Args:
        adapter: The model's family adapter.
        batch: Sequences in the batch.
        new_tokens: Tokens computed now.
        logits_to_keep: Decoders: positions whose logits are computed (0 = all).
    """
    d = adapter.hidden_size
    if adapter.is_decoder:
        kept = new_tokens if logits_to_keep <= 0 else min(logits_to_keep, new_tokens)
        return float(2 * batch * kept * d * adapter.vocab_size)
    pooler = getattr(adapter.model, "pooler", None)
    return float(2 * batch * d * d) if pooler is not None else 0.0


def stage_flops(
    adapter: Any, batch: int, new_tokens: int, past_tokens: int = 0, logits_to_keep: int = 1
) -> dict[str, float]:
    """FLOPs of every stage, keyed by stage name (``embed``, ``block.<i>``, ``head``)."""
    out = {EMBED: 0.0}
    for i in range(adapter.num_blocks):
        out[block_name(i)] = block_flops(adapter, i, batch, new_tokens, past_tokens)
    out[HEAD] = head_flops(adapter, batch, new_tokens, logits_to_keep)
    return out
