"""Drift correction for gossip with local steps: what a peer adds to its local steps, what it sends, and what it does
with the mix. Pure torch over `Adapter`s; the peer loop and the neighbourhood ask a rule, never its name.

Why: with K local steps on skewed shards each peer walks towards its own optimum between two mixings, and plain
gossip settles at a point biased by that walk (the "client drift"); a centralized run has no such bias. The rules:

- `none`: plain gossip (Dec-LoRA).
- `kgt`: gradient tracking with local steps (K-GT, Liu, Lin, Koloskova and Stich, arXiv 2301.01313). Each peer keeps
  a correction c_i and feeds g_i + c_i to its local optimizer; it sends its trained adapter and the round's mean
  corrected gradient y_i = mean_k (g_i + c_i) (2x the bytes), mixes both with the same row, and sets
  c_i <- sum_j w_ij y_j - (y_i - c_i): the neighbourhood's mean gradient minus its own. With SGD at a constant rate
  y_i is K-GT's displacement / (K eta), so this is K-GT exactly; behind a server with equal weights it is SCAFFOLD.
- `qgm`: quasi-global momentum (Lin, Kong, Stich and Jaggi, ICML 2021): a buffer m_i of the peer's per-step movement
  across whole rounds (local steps and mixing) is added to every local step: no extra bytes.
- `nesterov`: an outer optimizer on the round's pseudo-gradient g = start - mixed (DiLoCo, Douillard et al. 2023,
  here applied per peer after gossip): m <- mu m + g, x <- start - lr_out (g + mu m). No extra bytes.
- `ffa`: FFA-LoRA (Sun et al., ICLR 2024): A stays at its shared initial value and only B (and the head) is trained
  and sent. Averaging the Bs is then exact, sum_j w_j B_j A = sum_j w_j (B_j A), and the bytes of A are saved.

What is corrected, for LoRA factors: A and B themselves (and the dense head), entry by entry, not the product B A.
Factor averaging is already an entry-wise average of A and B, the gradients the local optimizer follows are the
factors' gradients, and a correction of the product would have to be re-factorized every step. This makes every
rule here need factor averaging (equal ranks, `gossip` mode): in svd and zeropad mode each peer's factors live in its
own subspace, so an entry-wise correction between peers means nothing; stack mode restarts a fresh adapter each
round. The config refuses those combinations in one line.

Where a correction enters the local steps (`Correction.kind`): K-GT's is a gradient, added before the optimizer step,
because with AdamW a peer's displacement is a normalized step, not a gradient: tracking displacements (the paper's
form, exact for SGD only) would correct each peer by the difference of its neighbours' normalized, mostly noisy
steps, while AdamW fed the corrected gradient steps along the neighbourhood's mean gradient, as K-GT means to.
QGM's is a displacement, subtracted after each step: its buffer is the peer's movement.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from declora.core.factors import Adapter, LoraFactor

TRACK_SUFFIX = "#track"  # K-GT: module K's mean corrected gradient travels as module K#track in the same message
B_SUFFIX = "#B"  # FFA: module K's B factor travels as the dense tensor K#B (A is not sent)
DRIFT_RULES = ("none", "kgt", "qgm", "nesterov", "ffa")


# ---- adapter arithmetic ---------------------------------------------------------------------------------------------
def combine(terms: list[tuple[float, Adapter]]) -> Adapter:
    """sum_k c_k X_k, entry by entry over A, B and the dense tensors (the adapters must share keys and shapes)."""
    first = terms[0][1]

    def lin(get: Callable[[Adapter], torch.Tensor]) -> torch.Tensor:
        out = torch.zeros_like(get(first), dtype=torch.float32)
        for c, x in terms:
            out.add_(get(x).to(torch.float32), alpha=c)
        return out

    factors = {k: LoraFactor(lin(lambda a, k=k: a.factors[k].A), lin(lambda a, k=k: a.factors[k].B), f.alpha, f.rslora)
               for k, f in first.factors.items()}
    dense = {k: lin(lambda a, k=k: a.dense[k]) for k in first.dense}
    return Adapter(factors, dense)


def zeros_like(x: Adapter) -> Adapter:
    return combine([(0.0, x)])


def norm(x: Adapter) -> float:
    total = sum(float(f.A.double().pow(2).sum() + f.B.double().pow(2).sum()) for f in x.factors.values())
    return (total + sum(float(t.double().pow(2).sum()) for t in x.dense.values())) ** 0.5


# ---- the rules ------------------------------------------------------------------------------------------------------
@dataclass
class Correction:
    """What a rule asks of a round's local steps. kind "step": `value` is subtracted from the trainable tensors after
    every optimizer step (scaled like the step: the learner knows the schedule). kind "gradient": `value` is added to
    the gradients before every optimizer step, and the learner writes the round's mean corrected gradient into
    `mean_gradient`, which the rule then sends."""

    kind: str
    value: Adapter
    mean_gradient: Adapter | None = None


class DriftRule:
    """Plain gossip. The hooks, in the order of a round:

    begin_round(start) -> the Correction of this round's local steps (None: nothing);
    payload(trained) -> what goes on the wire instead of the trained adapter;
    finish(mixed, trained) -> the adapter the peer loads, from the mix of the payloads.
    """

    name = "none"
    frozen_A = False  # FFA: the learner does not train the A factors

    def __init__(self, local_steps: int):
        self.local_steps = max(1, int(local_steps))
        self.start: Adapter | None = None

    def begin_round(self, start: Adapter) -> Correction | None:
        self.start = start
        return None

    def payload(self, trained: Adapter) -> Adapter:
        return trained

    def payload_like(self, adapter: Adapter) -> Adapter:
        """A payload of the right keys and shapes (for the layout that inbound messages are checked against)."""
        return self.payload(adapter)

    def finish(self, mixed: Adapter, trained: Adapter) -> Adapter:
        return mixed

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class GradientTracking(DriftRule):
    """K-GT: the optimizer sees g_i + c_i; c_i tracks the neighbourhood's mean gradient minus the peer's own."""

    name = "kgt"

    def __init__(self, local_steps: int):
        super().__init__(local_steps)
        self.correction: Adapter | None = None
        self.round: Correction | None = None

    def begin_round(self, start: Adapter) -> Correction:
        self.start = start
        self.round = Correction("gradient", self.correction if self.correction is not None else zeros_like(start))
        return self.round

    def payload(self, trained: Adapter) -> Adapter:
        if self.round is None or self.round.mean_gradient is None:
            raise RuntimeError("K-GT: the round's mean gradient was not recorded (begin_round, then train with the "
                               "correction it returned)")
        return pack_tracking(trained, self.round.mean_gradient)

    def payload_like(self, adapter: Adapter) -> Adapter:
        return pack_tracking(adapter, adapter)

    def finish(self, mixed: Adapter, trained: Adapter) -> Adapter:
        model, mixed_y = unpack_tracking(mixed)
        own_y, c = self.round.mean_gradient, self.round.value
        self.correction = combine([(1.0, mixed_y), (-1.0, own_y), (1.0, c)])  # mean y - (own y - c) = mean y - own g
        return model

    def state_dict(self) -> dict:
        return {"correction": self.correction}

    def load_state_dict(self, state: dict) -> None:
        self.correction = state.get("correction")


class QuasiGlobalMomentum(DriftRule):
    """QGM: every local step also moves by beta x the buffer m, the peer's per-step movement over past rounds
    (m <- mu m + (1 - mu) (start - next start) / K). The movement includes the mix, so m points where the
    neighbourhood goes rather than where the peer's own shard pulls."""

    name = "qgm"

    def __init__(self, local_steps: int, beta: float = 0.5, mu: float = 0.9):
        super().__init__(local_steps)
        self.beta, self.mu = float(beta), float(mu)
        self.buffer: Adapter | None = None

    def begin_round(self, start: Adapter) -> Correction | None:
        self.start = start
        return None if self.buffer is None else Correction("step", combine([(self.beta, self.buffer)]))

    def finish(self, mixed: Adapter, trained: Adapter) -> Adapter:
        moved = combine([(1.0 / self.local_steps, self.start), (-1.0 / self.local_steps, mixed)])
        self.buffer = moved if self.buffer is None else combine([(self.mu, self.buffer), (1.0 - self.mu, moved)])
        return mixed

    def state_dict(self) -> dict:
        return {"buffer": self.buffer}

    def load_state_dict(self, state: dict) -> None:
        self.buffer = state.get("buffer")


class OuterNesterov(DriftRule):
    """DiLoCo's outer step on gossip: the pseudo-gradient g = start - mixed through Nesterov momentum. With
    lr_out = 1 and mu = 0 it is plain gossip exactly."""

    name = "nesterov"

    def __init__(self, local_steps: int, lr: float = 1.0, mu: float = 0.5):
        super().__init__(local_steps)
        self.lr, self.mu = float(lr), float(mu)
        self.momentum: Adapter | None = None

    def finish(self, mixed: Adapter, trained: Adapter) -> Adapter:
        g = combine([(1.0, self.start), (-1.0, mixed)])
        self.momentum = g if self.momentum is None else combine([(self.mu, self.momentum), (1.0, g)])
        return combine([(1.0, self.start), (-self.lr, g), (-self.lr * self.mu, self.momentum)])

    def state_dict(self) -> dict:
        return {"momentum": self.momentum}

    def load_state_dict(self, state: dict) -> None:
        self.momentum = state.get("momentum")


class FrozenA(DriftRule):
    """FFA-LoRA: A frozen at its shared initial value; only B and the dense tensors are sent and mixed."""

    name = "ffa"
    frozen_A = True

    def payload(self, trained: Adapter) -> Adapter:
        return b_only(trained)

    def finish(self, mixed: Adapter, trained: Adapter) -> Adapter:
        return with_b(trained, mixed)


def make_drift_rule(name: str, local_steps: int, *, qgm_beta: float = 0.5, qgm_mu: float = 0.9,
                    outer_lr: float = 1.0, outer_momentum: float = 0.5) -> DriftRule:
    if name == "none":
        return DriftRule(local_steps)
    if name == "kgt":
        return GradientTracking(local_steps)
    if name == "qgm":
        return QuasiGlobalMomentum(local_steps, qgm_beta, qgm_mu)
    if name == "nesterov":
        return OuterNesterov(local_steps, outer_lr, outer_momentum)
    if name == "ffa":
        return FrozenA(local_steps)
    raise ValueError(f"unknown drift correction {name!r}; use one of {', '.join(DRIFT_RULES)}")


# ---- payload forms --------------------------------------------------------------------------------------------------
def pack_tracking(model: Adapter, tracked: Adapter) -> Adapter:
    """One adapter holding both: the tracked variable's factors under K#track, its dense tensors under name#track."""
    factors = {**model.factors, **{k + TRACK_SUFFIX: f for k, f in tracked.factors.items()}}
    dense = {**model.dense, **{k + TRACK_SUFFIX: t for k, t in tracked.dense.items()}}
    return Adapter(factors, dense)


def unpack_tracking(packed: Adapter) -> tuple[Adapter, Adapter]:
    def split(d: dict) -> tuple[dict, dict]:
        return ({k: v for k, v in d.items() if not k.endswith(TRACK_SUFFIX)},
                {k[: -len(TRACK_SUFFIX)]: v for k, v in d.items() if k.endswith(TRACK_SUFFIX)})

    (mf, df), (md, dd) = split(packed.factors), split(packed.dense)
    return Adapter(mf, md), Adapter(df, dd)


def b_only(adapter: Adapter) -> Adapter:
    """The B factors as dense tensors K#B, with the adapter's own dense tensors; no A."""
    return Adapter({}, {**{k + B_SUFFIX: f.B for k, f in adapter.factors.items()}, **adapter.dense})


def with_b(own: Adapter, mixed: Adapter) -> Adapter:
    """Our A factors with the mixed Bs and the mixed dense tensors."""
    factors = {k: LoraFactor(f.A, mixed.dense[k + B_SUFFIX], f.alpha, f.rslora) for k, f in own.factors.items()}
    return Adapter(factors, {k: v for k, v in mixed.dense.items() if not k.endswith(B_SUFFIX)})
