"""BERT-style encoders (BERT, MiniLM): absolute positions, bidirectional mask, optional pooler."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from coinfer.models.adapters.base import FamilyAdapter, HeadOutput, ShardState, StageContext


class BertAdapter(FamilyAdapter):
    """Adapter for ``BertModel``; the final stage is the pooler (identity when absent)."""

    family = "bert"
    model_types = ("bert",)
    mlp_gated = False  # gated MLPs have three matrices (gate, up, down), plain ones two
    is_decoder = False

    @property
    def block_prefix(self) -> str:
        return "encoder.layer"

    def blocks(self) -> nn.ModuleList:
        return self.model.encoder.layer

    def embed_modules(self) -> dict[str, nn.Module]:
        return {"embeddings": self.model.embeddings}

    def head_modules(self) -> dict[str, nn.Module]:
        return {"pooler": self.model.pooler} if self.model.pooler is not None else {}

    def attention_heads(self, block: int) -> tuple[int, int]:
        attn = self.blocks()[block].attention.self
        heads = int(attn.query.out_features // attn.attention_head_size)
        return heads, heads

    def head_dim(self) -> int:
        return int(self.blocks()[0].attention.self.attention_head_size)

    def mlp_channels(self, block: int) -> int:
        return int(self.blocks()[block].intermediate.dense.out_features)

    def new_cache(self) -> Any | None:
        return None

    def embed(self, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        return self.model.embeddings(input_ids=input_ids)

    def context(
        self, hidden: torch.Tensor, state: ShardState, first_block: int, attention_mask: torch.Tensor | None
    ) -> StageContext:
        from transformers.masking_utils import create_bidirectional_mask

        mask = create_bidirectional_mask(config=self.config, inputs_embeds=hidden, attention_mask=attention_mask)
        return StageContext(position_ids=None, cache=None, masks={"full_attention": mask}, attention_mask=attention_mask)

    def block(self, index: int, hidden: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        out = self.blocks()[index](hidden, ctx.masks["full_attention"])
        return out[0] if isinstance(out, tuple) else out

    def head(self, hidden: torch.Tensor, ctx: StageContext, logits_to_keep: int) -> HeadOutput:
        pooled = self.model.pooler(hidden) if self.model.pooler is not None else None
        return HeadOutput(last_hidden_state=hidden, pooled=pooled)

    def reference(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, cache: Any, logits_to_keep: int
    ) -> HeadOutput:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask)
        return HeadOutput(last_hidden_state=out.last_hidden_state, pooled=out.pooler_output)

    # -- structured pruning ------------------------------------------------------------------
    def attention_linears(self, block: int) -> dict[str, nn.Module]:
        layer = self.blocks()[block].attention
        s = layer.self
        return {"q": s.query, "k": s.key, "v": s.value, "o": layer.output.dense}

    def mlp_linears(self, block: int) -> dict[str, nn.Module]:
        layer = self.blocks()[block]
        return {"in": layer.intermediate.dense, "out": layer.output.dense}

    def sync_pruned_attributes(self) -> None:
        for i in range(self.num_blocks):
            s = self.blocks()[i].attention.self
            heads, _ = self.attention_heads(i)
            s.num_attention_heads = heads
            s.all_head_size = heads * s.attention_head_size
