"""GPT-2: learned positions, fused Conv1D attention, tied LM head."""

from __future__ import annotations

from functools import cache
from typing import Any

import torch
from torch import nn

from coinfer.models.adapters.base import FamilyAdapter, HeadOutput, ShardState, StageContext

SPLIT_QKV_LAYOUT = "split_qkv_linear"


def _linear_from_conv1d(conv: nn.Module) -> nn.Linear:
    # Conv1D computes x @ W + b with W (in, out); Linear stores W transposed.
    w = conv.weight.detach()
    lin = nn.Linear(w.shape[0], w.shape[1], bias=conv.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        lin.weight.copy_(w.t())
        if conv.bias is not None:
            lin.bias.copy_(conv.bias.detach())
    return lin


@cache
def split_qkv_attention_class() -> type:
    """A GPT-2 self-attention with separate q/k/v ``nn.Linear`` projections.

    torch-pruning cannot follow the fused ``c_attn`` (it prunes nothing), so pruning and pruned
    shards use this subclass. It runs self-attention only (GPT-2 LM has no cross-attention).
    """
    from transformers.models.gpt2.modeling_gpt2 import (
        ALL_ATTENTION_FUNCTIONS,
        GPT2Attention,
        eager_attention_forward,
    )

    class SplitQKVGPT2Attention(GPT2Attention):
        def forward(
            self,
            hidden_states: torch.Tensor,
            past_key_values: Any = None,
            attention_mask: torch.Tensor | None = None,
            encoder_hidden_states: torch.Tensor | None = None,
            encoder_attention_mask: torch.Tensor | None = None,
            output_attentions: bool | None = False,
            **kwargs: Any,
        ) -> tuple[torch.Tensor, torch.Tensor | None]:
            if encoder_hidden_states is not None:
                raise NotImplementedError("split q/k/v GPT-2 attention does not do cross-attention")
            shape = (*hidden_states.shape[:-1], -1, self.head_dim)
            q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
            k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
            v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
            if past_key_values is not None:
                k, v = past_key_values.update(k, v, self.layer_idx)
            attend = ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation, eager_attention_forward)
            out, weights = attend(
                self, q, k, v, attention_mask,
                dropout=self.attn_dropout.p if self.training else 0.0, scaling=self.scaling, **kwargs,
            )
            out = out.reshape(*out.shape[:-2], -1).contiguous()
            return self.resid_dropout(self.c_proj(out)), weights

    return SplitQKVGPT2Attention


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
        return int(fc.weight.shape[1] if hasattr(fc, "nf") else fc.out_features)

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

    def head_linears(self) -> dict[str, nn.Module]:
        return {"lm_head": self.model.lm_head}

    # -- structured pruning ------------------------------------------------------------------
    def module_layout(self) -> str:
        cls = split_qkv_attention_class()
        return SPLIT_QKV_LAYOUT if isinstance(self.blocks()[0].attn, cls) else "conv1d"

    def prepare_for_pruning(self) -> None:
        """Replace fused Conv1D attention and Conv1D MLP by separate ``nn.Linear`` projections.

        The numbers the model computes do not change (up to float rounding of x @ W vs x @ W.T.T).

        Raises:
            UnsupportedModelError: Cross-attention or reordered/upcast attention (not handled).
        """
        from coinfer.errors import UnsupportedModelError

        if getattr(self.config, "add_cross_attention", False) or getattr(self.config, "reorder_and_upcast_attn", False):
            raise UnsupportedModelError("gpt2: pruning needs plain self-attention (no cross/reordered attention)")
        cls = split_qkv_attention_class()
        for blk in self.blocks():
            attn = blk.attn
            if not isinstance(attn, cls):
                fused = _linear_from_conv1d(attn.c_attn)
                e = attn.split_size
                parts = []
                for j in range(3):
                    lin = nn.Linear(fused.in_features, e, bias=True, dtype=fused.weight.dtype)
                    with torch.no_grad():
                        lin.weight.copy_(fused.weight[j * e : (j + 1) * e])
                        lin.bias.copy_(fused.bias[j * e : (j + 1) * e])
                    parts.append(lin)
                attn.__class__ = cls
                del attn.c_attn
                attn.q_proj, attn.k_proj, attn.v_proj = parts
                attn.c_proj = _linear_from_conv1d(attn.c_proj)
            if not isinstance(blk.mlp.c_fc, nn.Linear):
                blk.mlp.c_fc = _linear_from_conv1d(blk.mlp.c_fc)
                blk.mlp.c_proj = _linear_from_conv1d(blk.mlp.c_proj)

    def apply_layout(self, layout: str) -> None:
        from coinfer.errors import UnsupportedModelError

        if layout == SPLIT_QKV_LAYOUT:
            self.prepare_for_pruning()
        elif layout != self.module_layout():
            raise UnsupportedModelError(f"gpt2: unknown module layout {layout!r}")

    def _require_split(self) -> None:
        from coinfer.errors import UnsupportedModelError

        if self.module_layout() != SPLIT_QKV_LAYOUT:
            raise UnsupportedModelError("gpt2: call prepare_for_pruning() first (fused Conv1D attention)")

    def attention_linears(self, block: int) -> dict[str, nn.Module]:
        self._require_split()
        a = self.blocks()[block].attn
        return {"q": a.q_proj, "k": a.k_proj, "v": a.v_proj, "o": a.c_proj}

    def mlp_linears(self, block: int) -> dict[str, nn.Module]:
        self._require_split()
        m = self.blocks()[block].mlp
        return {"in": m.c_fc, "out": m.c_proj}

    def sync_pruned_attributes(self) -> None:
        if self.module_layout() != SPLIT_QKV_LAYOUT:
            return
        for blk in self.blocks():
            a = blk.attn
            a.num_heads = a.q_proj.out_features // a.head_dim
            a.split_size = a.q_proj.out_features
