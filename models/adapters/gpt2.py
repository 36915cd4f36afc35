"""GPT-2: learned positions, fused Conv1D attention, tied LM head."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from coinfer.models.adapters.base import FamilyAdapter, HeadOutput, ShardState, StageContext


class GPT2Adapter(FamilyAdapter):
    """Adapter for ``GPT2LMHeadModel``."""

    family = "gpt2"
    model_types = ("gpt2",)
    mlp_gated = False  # gated MLPs have three matrices (gate, up, down), plain ones two
    is_decoder = True

    @property
    def base(self) -> nn.Module:
        return self.model.transformer

    @property
    def hidden_size(self) -> int:
        return int(self.config.n_embd)

    @property
    def block_prefix(self) -> str:
        return "transformer.h"

    def blocks(self) -> nn.ModuleList:
        return self.base.h

    def embed_modules(self) -> dict[str, nn.Module]:
        return {"transformer.wte": self.base.wte, "transformer.wpe": self.base.wpe}

    def head_modules(self) -> dict[str, nn.Module]:
        return {"transformer.ln_f": self.base.ln_f, "lm_head": self.model.lm_head}

    def attention_heads(self, block: int) -> tuple[int, int]:
        attn = self.blocks()[block].attn
        return int(attn.num_heads), int(attn.num_heads)

    def head_dim(self) -> int:
        return int(self.blocks()[0].attn.head_dim)

    def mlp_channels(self, block: int) -> int:
        fc = self.blocks()[block].mlp.c_fc
        return int(fc.weight.shape[1] if hasattr(fc, "nf") else fc.weight.shape[0])

    def embed(self, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        pos = self.position_ids(input_ids.shape[1], past_length, input_ids.device)
        hidden = self.base.wte(input_ids) + self.base.wpe(pos)
        return self.base.drop(hidden)

    def context(
        self, hidden: torch.Tensor, state: ShardState, first_block: int, attention_mask: torch.Tensor | None
    ) -> StageContext:
        from transformers.masking_utils import create_causal_mask

        pos = self.position_ids(hidden.shape[1], state.past_length, hidden.device)
        mask = create_causal_mask(
            config=self.config,
            inputs_embeds=hidden,
            attention_mask=attention_mask,
            past_key_values=state.cache,
            position_ids=pos,
            layer_idx=first_block,
        )
        return StageContext(position_ids=pos, cache=state.cache, masks={"full_attention": mask})

    def block(self, index: int, hidden: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        out = self.blocks()[index](
            hidden,
            ctx.cache,
            ctx.masks["full_attention"],
            None,
            encoder_attention_mask=None,
            use_cache=ctx.cache is not None,
            position_ids=ctx.position_ids,
        )
        return out[0] if isinstance(out, tuple) else out

    def head(self, hidden: torch.Tensor, ctx: StageContext, logits_to_keep: int) -> HeadOutput:
        normed = self.base.ln_f(hidden)
        kept = normed[:, -logits_to_keep:, :] if logits_to_keep else normed
        return HeadOutput(last_hidden_state=normed, logits=self.model.lm_head(kept))

    def reference(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any, logits_to_keep: int
    ) -> HeadOutput:
        base_out = self.base(input_ids=input_ids, attention_mask=attention_mask, past_key_values=cache, use_cache=cache is not None)
        hidden = base_out.last_hidden_state
        kept = hidden[:, -logits_to_keep:, :] if logits_to_keep else hidden
        return HeadOutput(last_hidden_state=hidden, logits=self.model.lm_head(kept))
