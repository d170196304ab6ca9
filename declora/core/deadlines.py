"""How long a round waits for its neighbours: a deadline that adapts to what the peer observes, and how much a late
neighbour's message still counts (bounded staleness).

A fixed deadline is either too short for a slow network (everyone mixes alone) or far too long for a dead or hung
neighbour (every round waits it out). `AdaptiveDeadline` instead watches, each round, how long after this peer was
ready the first half of its neighbours' messages arrived (the quorum time: a straggler, always last, does not set
it), and waits at most `factor` times a high percentile of its recent values. Two floors keep it from cutting off
healthy neighbours: a fixed `floor_s`, and a `slack` fraction of this peer's own compute time (peers that train at
the same speed drift apart by a fraction of it). `cap_s` (the run's --deadline-s) bounds it from above, and is the
deadline until the first round has been observed; in that first round the rest of the neighbours get at most the
floors after the quorum has arrived (`quorum_rule`).

A neighbour cut off by the deadline is not lost: its message arrives during a later round and is mixed then, with
its weight scaled by `stale_weight(age)`, up to `max_age` rounds late.
"""
from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class AdaptiveDeadline:
    cap_s: float
    floor_s: float = 2.0
    factor: float = 2.0
    slack: float = 0.25
    quantile: float = 0.9
    window: int = 8
    _quorum: deque = field(default_factory=deque, repr=False)
    _compute_s: float | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name in ("cap_s", "floor_s", "factor", "slack"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
        if not 0 < self.quantile <= 1:
            raise ValueError(f"quantile must be in (0, 1], got {self.quantile!r}")
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window!r}")
        self._quorum = deque(maxlen=self.window)

    def observe(self, lateness: list[float], expected: int, waited_s: float, compute_s: float) -> None:
        """One round: `lateness` of each neighbour heard (seconds after this peer was ready; 0 for one already
        there), out of `expected` neighbours; `waited_s`, how long the round waited; `compute_s`, how long this
        peer's own local training took. A round that heard fewer than a quorum records what it waited: a censored
        value, and a lower bound on the quorum time."""
        if expected <= 0:
            return
        need = quorum_size(expected)
        late = sorted(max(0.0, float(x)) for x in lateness)
        self._quorum.append(late[need - 1] if len(late) >= need else float(waited_s))
        c = max(0.0, float(compute_s))
        self._compute_s = c if self._compute_s is None else 0.7 * self._compute_s + 0.3 * c

    def seconds(self) -> float:
        """The deadline of the next round."""
        if not self._quorum:
            return self.cap_s
        floor = max(self.floor_s, self.slack * (self._compute_s or 0.0))
        return min(self.cap_s, max(floor, self.factor * percentile(list(self._quorum), self.quantile)))

    def quorum_rule(self, neighbours: int, compute_s: float) -> tuple[int, float] | None:
        """Before any round was observed (the first round, or the first after a resume) the deadline is the cap,
        which a straggler among the neighbours would make every round's wait: instead, once the quorum of
        `neighbours` has arrived, wait at most the floors (of `compute_s`, this round's own training) for the
        rest. None once the deadline has been learned."""
        if self._quorum or neighbours <= 0:
            return None
        return quorum_size(neighbours), max(self.floor_s, self.slack * max(0.0, float(compute_s)))

    def state_dict(self) -> dict:
        return {"quorum": list(self._quorum), "compute_s": self._compute_s}

    def load_state_dict(self, state: dict) -> None:
        self._quorum.clear()
        self._quorum.extend(float(x) for x in state.get("quorum", [])[-self.window:])
        self._compute_s = state.get("compute_s")


@dataclass(frozen=True)
class FixedDeadline:
    """The old rule, for runs that want it (--no-adaptive-deadline): always `cap_s`."""

    cap_s: float

    def observe(self, lateness: list[float], expected: int, waited_s: float, compute_s: float) -> None:
        pass

    def seconds(self) -> float:
        return self.cap_s

    def quorum_rule(self, neighbours: int, compute_s: float) -> None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def quorum_size(expected: int) -> int:
    """How many neighbours make the quorum whose arrival sets the deadline: half, rounded down, and at least one
    (of 2 neighbours the first, of 5 the second): a single slow neighbour never sets the pace for the others."""
    return max(1, expected // 2)


def percentile(values: list[float], q: float) -> float:
    """The q-quantile of `values` by linear interpolation between order statistics (numpy's default rule)."""
    xs = sorted(values)
    pos = (len(xs) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def stale_weight(age: int, max_age: int, decay: float) -> float:
    """How much of its mixing weight a message `age` rounds late keeps: decay**age, and 0 beyond `max_age`.
    An on-time message (age 0) keeps all of it."""
    if age < 0:
        raise ValueError(f"age must be >= 0, got {age}")
    if age > max_age:
        return 0.0
    return float(decay) ** age
