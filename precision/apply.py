"""Give a scope of a model (its device blocks, and the head when the device holds it) a weight precision.

The family adapter names the matrices (:meth:`FamilyAdapter.quantizable_linears`,
:meth:`FamilyAdapter.head_linears`); each is replaced by a :mod:`coinfer.precision.modules`
module. Embeddings and norms stay fp32. :func:`quantized_copy` works on a copy of the model's
module tree that shares every tensor with the original, so several precisions of one model cost
only their own quantized weights.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from coinfer.errors import UnsupportedModelError, UserInputError
from coinfer.models.adapters.base import FamilyAdapter
from coinfer.precision import modules as qm
from coinfer.precision.quant import DEFAULT_GROUP_SIZE, INT4_GROUP_SIZES


@dataclass(frozen=True)
class Scope:
    """What a precision applies to: some blocks, and the head or not."""

    blocks: tuple[int, ...]
    head: bool

    @classmethod
    def of_stages(cls, adapter: FamilyAdapter, start: int, end: int) -> Scope:
        """The blocks (and head) among stage positions ``[start, end)`` (0 = embed, L+1 = head)."""
        L = adapter.num_blocks
        return cls(tuple(b for b in range(L) if start <= b + 1 < end), start <= L + 1 < end)


@dataclass
class Quantized:
    """A model copy with a precision applied, and what was replaced (module path -> spec)."""

    adapter: FamilyAdapter
    precision: str
    group_size: int | None
    modules: dict[str, dict[str, Any]] = field(default_factory=dict)

    def weight_bytes(self, scope_modules: list[nn.Module]) -> int:
        """Bytes of the weights (parameters) of ``scope_modules`` as they now are."""
        seen: set[int] = set()
        total = 0
        for m in scope_modules:
            for p in m.parameters():
                if id(p) not in seen:
                    seen.add(id(p))
                    total += p.numel() * p.element_size()
        return total


def check_group_size(group_size: int) -> int:
    """``group_size`` when the int4 kernel takes it.

    Raises:
        UserInputError: Any other value.
    """
    if group_size not in INT4_GROUP_SIZES:
        raise UserInputError(f"--group-size {group_size}: expected one of {', '.join(map(str, INT4_GROUP_SIZES))}")
    return group_size


def _paths(model: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in model.named_modules() if name}


def scope_linears(adapter: FamilyAdapter, scope: Scope) -> dict[str, nn.Module]:
    """The matrices of ``scope`` by module path in the model.

    Raises:
        UnsupportedModelError: A matrix the adapter names is not an ``nn.Linear``.
    """
    paths = _paths(adapter.model)
    found: dict[str, nn.Module] = {}
    mods = [m for b in scope.blocks for m in adapter.quantizable_linears(b).values()]
    if scope.head:
        mods += list(adapter.head_linears().values())
    for m in mods:
        if not isinstance(m, nn.Linear):
            raise UnsupportedModelError(f"{adapter.family}: {type(m).__name__} is not an nn.Linear; cannot change its precision")
        found[paths[id(m)]] = m
    return found


def _replace(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, attr = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, new)


def shared_copy(model: nn.Module) -> nn.Module:
    """A copy of the module tree sharing every parameter and buffer with ``model``."""
    memo: dict[int, Any] = {id(t): t for t in (*model.parameters(), *model.buffers())}
    return copy.deepcopy(model, memo)


def quantized_copy(adapter: FamilyAdapter, precision: str, scope: Scope, group_size: int = DEFAULT_GROUP_SIZE) -> Quantized:
    """The model with ``scope``'s matrices at ``precision``; the original is left as it was.

    ``fp32`` returns the original adapter itself (nothing to replace).

    Args:
        adapter: The model (prepared for pruning where the family needs it, e.g. GPT-2).
        precision: fp32, bf16, fp16, int8 or int4.
        scope: Blocks (and head) to convert.
        group_size: int4 group width (32, 64, 128 or 256).
    """
    if precision == "fp32":
        return Quantized(adapter, precision, None)
    group = check_group_size(group_size) if precision == "int4" else None
    model = shared_copy(adapter.model)
    ad = type(adapter)(model)
    out = Quantized(ad, precision, group)
    with torch.no_grad():
        for path, lin in scope_linears(ad, scope).items():
            new = qm.from_linear(lin, precision, group or DEFAULT_GROUP_SIZE)
            _replace(model, path, new)
            out.modules[path] = new.spec()
    return out


def install_empty(model: nn.Module, specs: dict[str, dict[str, Any]]) -> None:
    """Put empty modules of the recorded shapes at ``specs``' paths (before loading their weights)."""
    for path, spec in specs.items():
        _replace(model, path, qm.empty_from_spec(spec))
