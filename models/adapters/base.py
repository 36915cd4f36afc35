"""What every family adapter offers: the model as an ordered list of stages.

Stages are ``embed``, ``block.0`` .. ``block.{L-1}`` and ``head`` (final norm plus LM head or
pooler). A shard runs a contiguous range of them and rebuilds what the blocks need (positions,
masks, rotary embeddings) from its own KV cache, so nothing but the activation crosses a cut.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from coinfer.vocab import EMBED, HEAD, block_name, stage_names


@dataclass
class ShardState:
    """Per-request state one shard keeps between calls (its KV cache and token count)."""

    cache: Any | None = None
    past_length: int = 0


@dataclass
class StageContext:
    """What the blocks of one shard need for one forward call; built once per call."""

    position_ids: torch.Tensor | None
    cache: Any | None
    masks: dict[str, Any] = field(default_factory=dict)
    position_embeddings: Any | None = None
    attention_mask: torch.Tensor | None = None


@dataclass
class HeadOutput:
    """What the final stage returns.

    Attributes:
        last_hidden_state: Final (normed, for decoders) hidden states, (batch, tokens, hidden).
        logits: Decoders: logits of the last ``logits_to_keep`` positions.
        pooled: Encoders with a pooler: the pooled output, (batch, hidden).
    """

    last_hidden_state: torch.Tensor
    logits: torch.Tensor | None = None
    pooled: torch.Tensor | None = None


class FamilyAdapter(ABC):
    """One model family's view of a Hugging Face model as stages.

    Subclasses hold every quirk of their family (fused projections, grouped-query attention,
    poolers, rotary embeddings, masks); nothing outside the adapter knows them.
    """

    family: ClassVar[str]
    model_types: ClassVar[tuple[str, ...]]
    is_decoder: ClassVar[bool]
    mlp_gated: ClassVar[bool]

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.config = model.config

    # -- shape facts -------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        """Number of transformer blocks L."""
        return len(self.blocks())

    @property
    def hidden_size(self) -> int:
        """Width of the activation that crosses any cut."""
        return int(self.config.hidden_size)

    @property
    def vocab_size(self) -> int:
        """Vocabulary size."""
        return int(self.config.vocab_size)

    def stage_names(self) -> list[str]:
        """``embed``, ``block.0`` .. ``block.{L-1}``, ``head``."""
        return stage_names(self.num_blocks)

    @abstractmethod
    def blocks(self) -> nn.ModuleList:
        """The transformer blocks, in order."""

    @property
    @abstractmethod
    def block_prefix(self) -> str:
        """Attribute path of the block list in the model, e.g. ``model.layers``."""

    def stage_of(self, tensor_name: str) -> str | None:
        """The stage a state-dict entry belongs to, or None if it belongs to none."""
        bp = self.block_prefix + "."
        if tensor_name.startswith(bp):
            return block_name(int(tensor_name[len(bp):].split('.')[0]))
        for stage, mods in ((EMBED, self.embed_modules()), (HEAD, self.head_modules())):
            if any(tensor_name == p or tensor_name.startswith(p + ".") for p in mods):
                return stage
        return None

    @abstractmethod
    def embed_modules(self) -> dict[str, nn.Module]:
        """Modules of the embedding stage, by attribute path (for parameter counts and export)."""

    @abstractmethod
    def head_modules(self) -> dict[str, nn.Module]:
        """Modules of the final stage, by attribute path."""

    @abstractmethod
    def attention_heads(self, block: int) -> tuple[int, int]:
        """(query heads, key/value heads) of a block, as currently shaped."""

    @abstractmethod
    def mlp_channels(self, block: int) -> int:
        """Inner MLP width of a block, as currently shaped."""

    def head_dim(self) -> int:
        """Width of one attention head."""
        return int(getattr(self.config, "head_dim", None) or self.hidden_size // self.config.num_attention_heads)

    def kv_cache_bytes_per_token(self, block: int, element_bytes: int) -> int:
        """KV-cache bytes one block adds per token of context (0 for encoders)."""
        if not self.is_decoder:
            return 0
        _, kv_heads = self.attention_heads(block)
        return 2 * kv_heads * self.head_dim() * element_bytes

    # -- execution ---------------------------------------------------------------------------
    def new_state(self) -> ShardState:
        """Fresh per-request state (a KV cache for decoders)."""
        return ShardState(cache=self.new_cache() if self.is_decoder else None)

    def new_cache(self) -> Any | None:
        """A KV cache sized for the whole model; a shard fills only its own layers."""
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    def position_ids(self, tokens: int, past_length: int, device: torch.device) -> torch.Tensor:
        """Positions of the new tokens, (1, tokens)."""
        return (torch.arange(tokens, device=device) + past_length).unsqueeze(0)

    @abstractmethod
    def embed(self, input_ids: torch.Tensor, past_length: int) -> torch.Tensor:
        """Token ids to the first hidden state."""

    @abstractmethod
    def context(
        self,
        hidden: torch.Tensor,
        state: ShardState,
        first_block: int,
        attention_mask: torch.Tensor | None,
    ) -> StageContext:
        """Build positions, masks and rotary embeddings for this shard's blocks."""

    @abstractmethod
    def block(self, index: int, hidden: torch.Tensor, ctx: StageContext) -> torch.Tensor:
        """Run block ``index``."""

    @abstractmethod
    def head(self, hidden: torch.Tensor, ctx: StageContext, logits_to_keep: int) -> HeadOutput:
        """Final norm and LM head (decoders) or pooler (encoders)."""

    @abstractmethod
    def reference(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        cache: Any | None,
        logits_to_keep: int,
    ) -> HeadOutput:
        """The unsplit model through the library's own forward, to check shards against."""

    # -- structured pruning (additive; used by coinfer.pruner and shard export) -------------
    #: How the attention projections are laid out in a state dict: ``native`` is the library's
    #: own layout; GPT-2 after :meth:`prepare_for_pruning` is ``split_qkv_linear``.
    def module_layout(self) -> str:
        """Name of the module layout the model currently has (recorded in exported shards)."""
        return "native"

    def prepare_for_pruning(self) -> None:
        """Make the model prunable by torch-pruning, in place; idempotent.

        The default does nothing: separate ``nn.Linear`` q/k/v/out projections already are.
        """
        return None

    def apply_layout(self, layout: str) -> None:
        """Bring a freshly built model to ``layout`` (used when rebuilding an exported shard).

        Raises:
            UnsupportedModelError: The family does not know that layout.
        """
        from coinfer.errors import UnsupportedModelError

        if layout != self.module_layout():
            raise UnsupportedModelError(f"{self.family}: unknown module layout {layout!r}")

    @abstractmethod
    def attention_linears(self, block: int) -> dict[str, nn.Module]:
        """The block's attention projections: keys ``q``, ``k``, ``v`` and ``o``.

        Only meaningful after :meth:`prepare_for_pruning` for families with fused projections.
        """

    @abstractmethod
    def mlp_linears(self, block: int) -> dict[str, nn.Module]:
        """The block's MLP projections: ``in`` (and ``gate`` for gated MLPs) and ``out``."""

    @abstractmethod
    def sync_pruned_attributes(self) -> None:
        """Re-derive head counts and sizes stored as attributes from the (pruned) weight shapes.

        sdpa hides stale values, eager attention crashes on them, so this runs after every prune
        and after rebuilding a pruned model from saved shapes.
        """

    # -- weight precision (additive; used by coinfer.precision) -----------------------------
    def quantizable_linears(self, block: int) -> dict[str, nn.Module]:
        """The block's matrices a weight-only precision replaces: ``attn.q`` .. ``mlp.out``.

        Families with fused projections need :meth:`prepare_for_pruning` first (as for pruning).
        """
        att = {f"attn.{k}": v for k, v in self.attention_linears(block).items()}
        return {**att, **{f"mlp.{k}": v for k, v in self.mlp_linears(block).items()}}

    def head_linears(self) -> dict[str, nn.Module]:
        """The final stage's matrices a weight-only precision replaces (decoders: the LM head)."""
        return {}

    def output_bias(self, block: int, which: str) -> nn.Parameter:
        """The bias of a block's attention (``o``) or MLP (``out``) out-projection, created as
        zeros where the family has none (pruning compensation folds removed units' mean
        contribution into it; shard export carries it and :meth:`bias_owners` rebuilds it).

        Raises:
            UnsupportedModelError: The projection is not an ``nn.Linear``.
        """
        from coinfer.errors import UnsupportedModelError

        lin = self.attention_linears(block)["o"] if which == "o" else self.mlp_linears(block)["out"]
        if not isinstance(lin, nn.Linear):
            raise UnsupportedModelError(f"{self.family}: block {block} {which} projection is not a Linear; cannot add a bias")
        if lin.bias is None:
            w = lin.weight
            lin.bias = nn.Parameter(torch.zeros(w.shape[0], dtype=w.dtype, device=w.device), requires_grad=w.requires_grad)
        return lin.bias

    def bias_owners(self, block: int) -> list[nn.Module]:
        """The modules :meth:`output_bias` may give a bias (a rebuilt shard recreates it there)."""
        return [self.attention_linears(block)["o"], self.mlp_linears(block)["out"]]

    def head_groups(self, block: int) -> dict[nn.Module, int]:
        """Heads per projection for torch-pruning's ``num_heads`` (q: query heads, k/v: kv heads)."""
        q_heads, kv_heads = self.attention_heads(block)
        lin = self.attention_linears(block)
        return {lin["q"]: q_heads, lin["k"]: kv_heads, lin["v"]: kv_heads}

    def block_shape(self, block: int) -> dict[str, int]:
        """The shape facts that rebuild a (pruned) block: query heads, kv heads, MLP width."""
        q_heads, kv_heads = self.attention_heads(block)
        return {"q_heads": q_heads, "kv_heads": kv_heads, "mlp_channels": self.mlp_channels(block)}
