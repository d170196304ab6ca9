"""A peer never dies from a neighbour's numbers: roll back a mix that makes training blow up.

The plausibility check and robust mixing keep most poison out, but a mix can still leave an adapter whose next
training step gives a non-finite loss (e.g. with both turned off, or poison just under the plausibility limit).
`Rollback` remembers the last adapter that trained to a finite loss (the one the peer had just before it mixed) and,
in the modes that merge into the base, the stack that mix merged. When training after a mix raises
`FloatingPointError`, it takes that stack's delta back out of the base, loads that last good adapter, counts the rollback and
trains again: the round's mix is dropped. A second failure on a good adapter is the peer's own (learning rate, data),
and is raised. The same state goes into every checkpoint, so a peer resumed onto a poisoned mix rolls back too.
"""
from __future__ import annotations

import logging

import torch

from declora.core.aggregate import merged_delta
from declora.core.factors import Adapter
from declora.learn.learner import Learner
from declora.node.checkpoint import adapter_from_state, adapter_to_state

log = logging.getLogger("declora.node.rollback")


class Rollback:
    def __init__(self, learner: Learner, merged: dict[str, torch.Tensor]):
        self.learner = learner
        self.merged_sum = merged  # the peer's running sum of merged deltas: a rollback takes the last one out again
        self.good: Adapter | None = None
        self.stack: Adapter | None = None  # the merged stack (low rank: cheaper to keep than its dense delta)
        self.count = 0

    def train(self, t: int, correction=None) -> dict:
        try:
            return self.learner.train(correction=correction)
        except FloatingPointError as e:
            if self.good is None:  # nothing was mixed in yet: the problem is ours, not a neighbour's
                raise
            log.warning("round %d: %s after the last mix; rolled back to the adapter from before it and dropped that "
                        "mix (%d rollbacks so far)", t, e, self.count + 1)
            if self.stack is not None:
                delta = merged_delta(self.stack)  # the same bits merge_and_restart merged
                self.learner.unmerge(delta)
                for key, d in delta.items():
                    self.merged_sum[key] = self.merged_sum[key] - d
            self.learner.load(self.good)
            self.good, self.stack = None, None
            self.count += 1
            return self.learner.train()

    def before_mix(self, mine: Adapter) -> None:
        """`mine` just trained to a finite loss: the state to come back to."""
        self.good, self.stack = mine.clone(), None

    def merged(self, stack: Adapter) -> None:
        """The mix was merged into the base (stack, flora): a rollback must take it out again."""
        self.stack = stack

    def accept(self, mixed: Adapter, t: int) -> bool:
        """A mixed adapter with an inf or NaN is not loaded at all: False, logged and counted as a rollback."""
        finite = all(bool(torch.isfinite(f.A).all() and torch.isfinite(f.B).all()) for f in mixed.factors.values()) \
            and all(bool(torch.isfinite(x).all()) for x in mixed.dense.values())
        if not finite:
            self.count += 1
            log.warning("round %d: the mix is not finite; kept our own adapter (%d rollbacks so far)", t, self.count)
        return finite

    def state_dict(self) -> dict:
        def pack(a: Adapter | None):
            return adapter_to_state(a) if a is not None else None

        return {"good": pack(self.good), "stack": pack(self.stack), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        def unpack(s: dict | None):
            return adapter_from_state(s) if s is not None else None

        self.good, self.stack, self.count = unpack(state.get("good")), unpack(state.get("stack")), int(state["count"])
