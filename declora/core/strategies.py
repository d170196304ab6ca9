"""Aggregation strategies: one object per rule, found by name in one registry.

A strategy owns the policy of a rule, what it needs and what its result means for the peer that receives it; the
arithmetic stays in `aggregate` as free functions over adapters (the split Flower uses between `Strategy` and
`strategy/aggregate.py`). The parameter-server baselines are the same rules under their papers' names, so
`fedit`, `flora` and `flexlora` are aliases of `gossip`, `stack` and `svd`.

A new rule is one subclass and one line in `_RULES`; the peer loop and the server ask the strategy, never its name.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from declora.core import aggregate
from declora.core.factors import Adapter


@dataclass(frozen=True)
class Strategy:
    name: str
    equal_ranks: bool  # every adapter must have the same rank (A and B are averaged entry by entry)
    merges_into_base: bool  # the result is merged into the base weights and the receiver starts a fresh adapter
    per_receiver: bool  # the result depends on the receiver's own rank: a server sends each client its own
    summary: str

    def combine(self, adapters: Sequence[Adapter], weights: Sequence[float], *, rank: int | Mapping[str, int] | None,
                alpha: float, rslora: bool = False) -> Adapter:
        """The combined adapter, from `adapters` mixed with `weights` (non-negative, summing to 1). `rank` is the
        receiver's rank (per module, or one for all); rules that keep the inputs' ranks ignore it."""
        raise NotImplementedError


class FactorAveraging(Strategy):
    def combine(self, adapters, weights, *, rank, alpha, rslora=False):
        return aggregate.gossip(adapters, weights)


class Stacking(Strategy):
    def combine(self, adapters, weights, *, rank, alpha, rslora=False):
        return aggregate.stack(adapters, weights)


class SvdRefactorization(Strategy):
    def combine(self, adapters, weights, *, rank, alpha, rslora=False):
        return aggregate.svd(adapters, weights, rank=rank, alpha=alpha, rslora=rslora)


class ZeroPadding(Strategy):
    def combine(self, adapters, weights, *, rank, alpha, rslora=False):
        return aggregate.zeropad(adapters, weights, rank=rank, alpha=alpha, rslora=rslora)


_RULES = (
    FactorAveraging("gossip", equal_ranks=True, merges_into_base=False, per_receiver=False,
                    summary="average A and B (Dec-LoRA; FedIT behind a server)"),
    Stacking("stack", equal_ranks=False, merges_into_base=True, per_receiver=False,
             summary="stack the factors, merge the exact weighted sum of products into the base (FLoRA)"),
    SvdRefactorization("svd", equal_ranks=False, merges_into_base=False, per_receiver=True,
                       summary="the exact weighted sum of products re-factorized to the receiver's rank (FlexLoRA)"),
    ZeroPadding("zeropad", equal_ranks=False, merges_into_base=False, per_receiver=True,
                summary="zero-pad to the largest rank, average, truncate to the receiver's rank (HetLoRA)"),
)
STRATEGIES: dict[str, Strategy] = {s.name: s for s in _RULES}
# The parameter-server baselines by their papers' names.
SERVER_ALIASES: dict[str, str] = {"fedit": "gossip", "flora": "stack", "flexlora": "svd", "zeropad": "zeropad"}


def get_strategy(name: str) -> Strategy:
    """The strategy called `name` (a gossip mode or a server alias)."""
    key = SERVER_ALIASES.get(name, name)
    if key not in STRATEGIES:
        known = ", ".join([*STRATEGIES, *(a for a in SERVER_ALIASES if a not in STRATEGIES)])
        raise ValueError(f"unknown aggregation {name!r}; use one of {known}")
    return STRATEGIES[key]
