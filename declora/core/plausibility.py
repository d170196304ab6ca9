"""The plausibility check: a received adapter far larger than anything honest is dropped before it is mixed.

It runs on every received adapter, with or without robust mixing. It compares the adapter's norm (all factors and
dense tensors, `robust.adapter_norm`) with a reference: the larger of the peer's own norm and the median norm of the
neighbours' adapters it accepted over the last `window` rounds. An adapter more than `ratio` times the reference (or
not finite) is implausible. Honest adapters of one run stay within a small factor of each other: A starts from the
same kind of random init everywhere and moves slowly, and ranks change the norm by at most sqrt(max r / min r). A
neighbour sending factors of 1e6, or 1e18 (which would make the next training loss overflow), is far outside.
It does not catch poison of an honest-looking norm (sign flips, noise of the right norm, slow drift): robust mixing
is for that.
"""
from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Mapping


class PlausibilityCheck:
    def __init__(self, ratio: float = 10.0, window: int = 8):
        if not ratio > 1.0 and ratio != 0:
            raise ValueError(f"the plausibility ratio must be > 1 (or 0 to turn the check off), got {ratio}")
        self.ratio = float(ratio)
        self.history: deque[float] = deque(maxlen=max(1, int(window)))  # median accepted norm per round

    @property
    def enabled(self) -> bool:
        return self.ratio > 0

    def reference(self, own_norm: float) -> float:
        return max(own_norm, statistics.median(self.history)) if self.history else own_norm

    def screen(self, own_norm: float, norms: Mapping[int, float]) -> dict[int, str]:
        """The neighbours whose adapters are implausible, with the reason; records the accepted ones' norms."""
        if not self.enabled:
            return {}
        limit = self.ratio * self.reference(own_norm)
        rejected = {}
        for j, norm in norms.items():
            if not math.isfinite(norm):
                rejected[j] = "not finite"
            elif norm > limit:
                rejected[j] = f"norm {norm:.3g} > {self.ratio:g} x reference {limit / self.ratio:.3g}"
        accepted = [n for j, n in norms.items() if j not in rejected]
        if accepted:
            self.history.append(statistics.median(accepted))
        return rejected

    def state_dict(self) -> dict:
        return {"history": list(self.history)}

    def load_state_dict(self, state: dict) -> None:
        self.history.clear()
        self.history.extend(float(x) for x in state.get("history", []))
