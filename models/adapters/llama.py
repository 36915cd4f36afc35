"""Llama, Mistral and Qwen2: RMSNorm, rotary positions, grouped-query attention."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from coinfer.models.adapters.base import FamilyAdapter, HeadOutput, ShardState, StageContext


class LlamaAdapter(FamilyAdapter):
    """Adapter for ``LlamaForCausalLM`` and its close relatives (Mistral, Qwen2)."""

    family = "llama"
    model_types = ("llama", "mistral", "qwen2")
    mlp_gated = True  # gated MLPs have three matrices (gate, up, down), plain ones two
    is_decoder = True

    @property
    def base(self) -> nn.Module:
        return self.model.model

    @property
    def block_prefix(self) -> str:
        return "model.layers"

    def blocks(self) -> nn.ModuleList:
        return self.base.layers

    def embed_modules(self) -> dict[str, nn.Module]:
        return {"model.embed_tokens": self.base.embed_tokens}

    def head_modules(self) -> dict[str, nn.Module]:
        return {"model.norm": self.base.norm, "lm_head": self.model.lm_head}

    def attention_heads(self, block: int) -> tuple[int, int]:
        attn = self.blocks()[block].self_attn
        d = attn.head_dim
        return int(attn.q_proj.out_features // d), int(attn.k_proj.out_features // d)

    def head_dim(self) -> int:
        return int(self.blocks()[0].self_attn.head_dim)

    def mlp_channels(self, block: int) -> int:
        return int(self.blocks()[block].mlp.gate_proj.out_features)

    def _layer_type(self, index: int) -> str:
        types = getattr(self.config, "layer_types", None)
        if types:
            return types[index]
        # Mistral without layer_types: sliding everywhere when a window is set.
        return "sliding_attention" if getattr(self.config, "sliding_window", None) else "full_attention"

    def embed(self, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        return self.base.embed_tokens(input_ids)

    def context(
        self, hidden: torch.Tensor, state: ShardState, first_block: int, attention_mask: torch.Tensor | None
    ) -> StageContext:
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        pos = self.position_ids(hidden.shape[1], state.past_length, hidden.device)
        kwargs = dict(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=state.cache,
            position_ids=pos,
        )
        masks: dict[str, Any] = {}
        last = self.num_blocks
        for i in range(first_block, last):
            kind = self._layer_type(i)
            if kind in masks:
                continue
            maker = create_sliding_window_causal_mask if kind == "sliding_attention" else create_causal_mask
            masks[kind] = maker(**kwargs, layer_idx=i) if maker is create_causal_mask else maker(**kwargs)
        pe = self.base.rotary_emb(hidden, pos) if first_block < last else None
        return StageContext(position_ids=pos, cache=state.cache, masks=masks, position_embeddings=pe)

    def block(self, index: int, hidden: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        out = self.blocks()[index](
            hidden,
            attention_mask=ctx.masks[self._layer_type(index)],
            position_embeddings=ctx.position_embeddings,
            position_ids=ctx.position_ids,
            past_key_values=ctx.cache,
            use_cache=ctx.cache is not None,
        )
        return out[0] if isinstance(out, tuple) else out

    def head(self, hidden: torch.Tensor, ctx: StageContext, logits_to_keep: int) -> HeadOutput:
        normed = self.base.norm(hidden)
        kept = normed[:, -logits_to_keep:, :] if logits_to_keep else normed
        return HeadOutput(last_hidden_state=normed, logits=self.model.lm_head(kept))

    def reference(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any, logits_to_keep: int
    ) -> HeadOutput:
        out = self.base(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=cache is not None)
        hidden = out.last_hidden_state
        kept = hidden[:, -logits_to_keep:, :] if logits_to_keep else hidden
        return HeadOutput(last_hidden_state=hidden, logits=self.model.lm_head(kept))

    def head_linears(self) -> dict[str, nn.Module]:
        return {"lm_head": self.model.lm_head}

    # -- structured pruning ------------------------------------------------------------------
    def attention_linears(self, block: int) -> dict[str, nn.Module]:
        a = self.blocks()[block].self_attn
        return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.o_proj}

    def mlp_linears(self, block: int) -> dict[str, nn.Module]:
        m = self.blocks()[block].mlp
        return {"gate": m.gate_proj, "in": m.up_proj, "out": m.down_proj}

    def sync_pruned_attributes(self) -> None:
        for i in range(self.num_blocks):
            attn = self.blocks()[i].self_attn
            q_heads, kv_heads = self.attention_heads(i)
            # repeat_kv expands each kv head to this many query heads; stale values break eager.
            attn.num_key_value_groups = q_heads // kv_heads
            mlp = self.blocks()[i].mlp
            if hasattr(mlp, "intermediate_size"):
                mlp.intermediate_size = int(mlp.gate_proj.out_features)
