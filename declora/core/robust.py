"""Byzantine-robust mixing: what a peer does when a neighbour may send poison that is well-formed.

A poisoned adapter passes every wire check (right shapes, finite values), so the defence is in the mixing. Three rules,
chosen per run (`robust = ...`), each assuming at most `trim` of the neighbours heard in a round are hostile:

- `clip`, ClippedGossip (He, Karimireddy and Jaggi, "Byzantine-robust decentralized learning via ClippedGossip",
  2022): `x_i + sum_j m_j clip(x_j - x_i, tau)`, with `clip(v, tau) = v * min(1, tau / |v|)`. That is linear in what
  the strategy mixes, so it is the run's own strategy with a re-weighted row: neighbour j keeps `m_j min(1, tau/d_j)`
  and the weight it loses goes onto the peer itself. The distance `d_j` is measured in the space the strategy mixes
  in: the factors (A, B and the dense tensors) for gossip, the products `s B A` (plus the dense tensors) for stack,
  svd and zeropad. So it is exact ClippedGossip for gossip, stack and svd, and a re-weighting in product space for
  zeropad. The radius adapts to what honest neighbours send: it is the largest distance left once the `trim`
  farthest neighbours are set aside, so honest neighbours are not clipped while a hostile one can pull the peer no
  further than an honest one. With `trim` or fewer neighbours heard nobody can be told apart and the peer keeps its
  own adapter for the round.
- `trimmed-mean`: per coordinate, over the peer and the neighbours heard, drop the `trim` largest and the `trim`
  smallest values and average the rest (unweighted, as in BRIDGE-T; the mixing weights do not apply).
- `median`: per coordinate, the median over the peer and the neighbours heard.

The coordinate-wise rules need an entry to mean the same thing on every peer. That holds for gossip only (equal
ranks, A and B averaged entry by entry): a factorization is unique only up to an invertible r x r transform, and the
products of the exact modes are (out x in) matrices that are never formed. So stack, svd and zeropad accept `clip`
only; `RobustRule.check_mode` says so in one line.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from declora.core.aggregate import product_distances
from declora.core.factors import Adapter, LoraFactor

ROBUST_RULES = ("none", "clip", "trimmed-mean", "median")
COORDINATE_RULES = ("trimmed-mean", "median")


# ---- distances and norms ----------------------------------------------------------------------------------------------
def adapter_norm(adapter: Adapter) -> float:
    """|| (all A, all B, all dense tensors) ||_2: what the plausibility check compares."""
    total = sum(float(f.A.double().pow(2).sum() + f.B.double().pow(2).sum()) for f in adapter.factors.values())
    total += sum(float(t.double().pow(2).sum()) for t in adapter.dense.values())
    return math.sqrt(total) if math.isfinite(total) else math.inf


def factor_distances(mine: Adapter, others: Sequence[Adapter]) -> list[float]:
    """|| x_j - x_i || over the factors and dense tensors (equal shapes: gossip)."""
    out = []
    for other in others:
        total = 0.0
        for key, f in mine.factors.items():
            g = other.factors[key]
            total += float((g.A.double() - f.A.double()).pow(2).sum() + (g.B.double() - f.B.double()).pow(2).sum())
        for name, t in mine.dense.items():
            total += float((other.dense[name].double() - t.double()).pow(2).sum())
        out.append(math.sqrt(total) if math.isfinite(total) else math.inf)
    return out


def distances_for(strategy_equal_ranks: bool, mine: Adapter, others: Sequence[Adapter]) -> list[float]:
    """Distances in the space the strategy mixes in: factors when it averages factors, products otherwise."""
    return factor_distances(mine, others) if strategy_equal_ranks else product_distances(mine, others)


# ---- the rules ---------------------------------------------------------------------------------------------------------------
def clip_radius(distances: Sequence[float], trim: int) -> float:
    """The largest distance once the `trim` farthest are set aside; 0 when `trim` or fewer were heard."""
    kept = sorted(distances)[: max(0, len(distances) - trim)]
    return kept[-1] if kept else 0.0


def clipped_weights(weights: Sequence[float], distances: Sequence[float], trim: int) -> tuple[list[float], float]:
    """ClippedGossip as a re-weighted row. `weights[0]` is the peer's own, `weights[1:]` its neighbours' (summing to 1)
    at `distances` from the peer. Returns the new row (same sum) and the radius used."""
    tau = clip_radius(distances, trim)
    out = [float(weights[0])]
    for w, d in zip(weights[1:], distances):
        keep = 1.0 if d <= tau else (tau / d if math.isfinite(d) and d > 0 else 0.0)
        out.append(float(w) * keep)
        out[0] += float(w) * (1.0 - keep)
    return out, tau


def _coordinatewise(tensors: Sequence[torch.Tensor], rule: str, trim: int) -> torch.Tensor:
    dtype = tensors[0].dtype
    X = torch.stack([t.to(torch.float32) for t in tensors])
    n = X.shape[0]
    S = X.sort(dim=0).values
    if rule == "trimmed-mean" and n > 2 * trim:
        return S[trim: n - trim].mean(dim=0).to(dtype)
    # The median (also the trimmed mean's limit when too few are left to trim): the middle one, or the middle two's mean.
    mid = (n - 1) // 2
    med = S[mid] if n % 2 else (S[mid] + S[mid + 1]) / 2
    return med.to(dtype)


def coordinatewise(adapters: Sequence[Adapter], rule: str, trim: int) -> Adapter:
    """Trimmed mean or median of every entry of A, B and the dense tensors (equal ranks: gossip)."""
    if rule not in COORDINATE_RULES:
        raise ValueError(f"unknown coordinate-wise rule {rule!r}; use one of {', '.join(COORDINATE_RULES)}")
    first = adapters[0]
    factors = {}
    for key, f in first.factors.items():
        fs = [a.factors[key] for a in adapters]
        if any(g.A.shape != f.A.shape or g.B.shape != f.B.shape for g in fs):
            raise ValueError(f"module {key!r}: coordinate-wise rules need equal shapes (gossip mode)")
        factors[key] = LoraFactor(_coordinatewise([g.A for g in fs], rule, trim),
                                  _coordinatewise([g.B for g in fs], rule, trim), f.alpha, f.rslora)
    dense = {name: _coordinatewise([a.dense[name] for a in adapters], rule, trim) for name in first.dense}
    return Adapter(factors, dense)


@dataclass(frozen=True)
class RobustRule:
    """A run's robust-mixing choice: the rule and how many neighbours per round it assumes may be hostile."""

    name: str = "none"
    trim: int = 1

    def __post_init__(self) -> None:
        if self.name not in ROBUST_RULES:
            raise ValueError(f"unknown robust rule {self.name!r}; use one of {', '.join(ROBUST_RULES)}")
        if self.trim < 0:
            raise ValueError(f"robust trim must be >= 0, got {self.trim}")

    def check_mode(self, mode: str, equal_ranks: bool) -> None:
        """Coordinate-wise rules need entries that mean the same on every peer: gossip only."""
        if self.name in COORDINATE_RULES and not equal_ranks:
            raise ValueError(f"robust = {self.name!r} works with mode 'gossip' only (coordinates of {mode!r} "
                             f"factors are not comparable across peers); use robust = 'clip' with {mode!r}")
