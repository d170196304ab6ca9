"""Drift-correction rules on problems whose answer is known (declora.core.drift).

The quadratic: peer i minimizes f_i(x) = 1/2 sum h_i * (x - b_i)^2 entry by entry over every entry of an adapter
(A, B and a dense tensor), with its own curvature h_i and minimum b_i. The global optimum is
x* = sum_i h_i b_i / sum_i h_i. Gossip with K local gradient steps provably settles at a biased point when the h_i
differ; gradient tracking (K-GT) removes the bias.
"""
from __future__ import annotations

import networkx as nx
import pytest
import torch

from declora.core import aggregate
from declora.core.drift import (DRIFT_RULES, FrozenA, b_only, combine, make_drift_rule, norm, pack_tracking,
                                unpack_tracking, with_b)
from declora.core.factors import Adapter, LoraFactor
from declora.core.mixing import mixing_matrix

N, K, LR = 6, 5, 0.1


def adapter_of(gen: torch.Generator, scale: float = 1.0) -> Adapter:
    return Adapter({"m": LoraFactor(scale * torch.randn(2, 3, generator=gen), scale * torch.randn(4, 2, generator=gen),
                                    alpha=4.0)},
                   {"head": scale * torch.randn(3, generator=gen)})


def entrywise(x: Adapter, fn) -> Adapter:
    return Adapter({k: LoraFactor(fn(f.A, ("A", k)), fn(f.B, ("B", k)), f.alpha) for k, f in x.factors.items()},
                   {k: fn(t, ("d", k)) for k, t in x.dense.items()})


class Problem:
    def __init__(self, seed: int = 0, heterogeneous: bool = True):
        gen = torch.Generator().manual_seed(seed)
        self.minima = [adapter_of(gen, 3.0) for _ in range(N)]
        curv = [0.5 + 2.0 * i / (N - 1) if heterogeneous else 1.0 for i in range(N)]
        self.curv = [entrywise(b, lambda t, _, c=c: torch.full_like(t, c)) for b, c in zip(self.minima, curv)]
        W = mixing_matrix(nx.cycle_graph(N), "metropolis")
        self.rows = [[float(W[i, j]) for j in range(N)] for i in range(N)]

    def optimum(self) -> Adapter:
        num = combine([(1.0, entrywise(b, lambda t, key, h=h: t * _get(h, key))) for b, h in zip(self.minima, self.curv)])
        den = combine([(1.0, h) for h in self.curv])
        return entrywise(num, lambda t, key: t / _get(den, key))

    def grad(self, i: int, x: Adapter) -> Adapter:
        return entrywise(x, lambda t, key: _get(self.curv[i], key) * (t - _get(self.minima[i], key)))

    def run(self, rule_name: str, rounds: int, **kw) -> list[Adapter]:
        rules = [make_drift_rule(rule_name, K, **kw) for _ in range(N)]
        xs = [adapter_of(torch.Generator().manual_seed(99)) for _ in range(N)]  # a shared start, as in a real run
        for _ in range(rounds):
            xs = self.round(rules, xs)
        return xs

    def round(self, rules, xs: list[Adapter]) -> list[Adapter]:
        """Every peer: K local steps under its rule, then the gossip mix of the payloads and the rule's finish."""
        trained = [sgd(xs[i], rules[i].begin_round(xs[i]), lambda x, i=i: self.grad(i, x)) for i in range(N)]
        payloads = [rules[i].payload(z) for i, z in enumerate(trained)]
        return [rules[i].finish(aggregate.gossip(payloads, self.rows[i]), trained[i]) for i in range(N)]


def sgd(x: Adapter, correction, grad, steps: int = K) -> Adapter:
    """K SGD steps as the learner takes them: a "gradient" correction added to every gradient (and the mean
    corrected gradient written back), a "step" one subtracted after every step."""
    total = None
    for _ in range(steps):
        g = grad(x)
        if correction is not None and correction.kind == "gradient":
            g = combine([(1.0, g), (1.0, correction.value)])
            total = g if total is None else combine([(1.0, total), (1.0, g)])
        x = combine([(1.0, x), (-LR, g)])
        if correction is not None and correction.kind == "step":
            x = combine([(1.0, x), (-1.0, correction.value)])
    if total is not None:
        correction.mean_gradient = combine([(1.0 / steps, total)])
    return x


def _get(x: Adapter, key) -> torch.Tensor:
    role, k = key
    return x.dense[k] if role == "d" else getattr(x.factors[k], role)


def distance(x: Adapter, y: Adapter) -> float:
    return norm(combine([(1.0, x), (-1.0, y)]))


def average(xs: list[Adapter]) -> Adapter:
    return combine([(1.0 / len(xs), x) for x in xs])


def test_plain_gossip_with_local_steps_stalls_at_a_biased_point_and_kgt_reaches_the_optimum():
    p = Problem()
    star = p.optimum()
    plain = p.run("none", 300)
    kgt = p.run("kgt", 300)
    # Plain gossip has converged (another 100 rounds change nothing), but not to the optimum: even the peers'
    # average is off, and each peer is further off.
    assert max(distance(a, b) for a, b in zip(plain, p.run("none", 400))) < 1e-6
    assert distance(average(plain), star) > 0.5
    assert max(distance(x, star) for x in plain) > 2.0
    assert max(distance(x, star) for x in kgt) < 1e-5


def test_without_heterogeneous_curvature_the_average_is_unbiased_but_the_peers_are_not():
    """With one curvature the peers' average reaches the optimum under plain gossip; each peer still sits off it
    (pulled to its own minimum by its last K steps), and K-GT removes that too."""
    p = Problem(heterogeneous=False)
    star = p.optimum()
    plain = p.run("none", 400)
    assert distance(average(plain), star) < 1e-4
    assert max(distance(x, star) for x in plain) > 2.0
    assert max(distance(x, star) for x in p.run("kgt", 400)) < 1e-4


@pytest.mark.parametrize("rule,kw", [("nesterov", {"outer_lr": 0.7, "outer_momentum": 0.9}),
                                     ("qgm", {"qgm_beta": 0.5, "qgm_mu": 0.9})])
def test_momentum_rules_keep_plain_gossips_biased_fixed_point(rule, kw):
    """What holds for the no-extra-bytes rules: momentum does not remove the heterogeneity bias; at the fixed point
    they sit where plain gossip sits."""
    p = Problem()
    for x, y in zip(p.run(rule, 300, **kw), p.run("none", 300)):
        assert distance(x, y) < 1e-4


def test_kgt_corrections_sum_to_zero_over_the_peers():
    """With a doubly stochastic W the mean correction stays zero: tracking moves drift between peers, never adds
    a net force of its own."""
    p = Problem(seed=1)
    rules = [make_drift_rule("kgt", K) for _ in range(N)]
    xs = [adapter_of(torch.Generator().manual_seed(5)) for _ in range(N)]
    for _ in range(3):
        xs = p.round(rules, xs)
    total = combine([(1.0, r.correction) for r in rules])
    assert norm(total) < 1e-5
    assert norm(rules[0].correction) > 1e-2  # and it is not trivially zero


@pytest.mark.parametrize("rule,kw", [("nesterov", {"outer_lr": 1.0, "outer_momentum": 0.0}),
                                     ("qgm", {"qgm_beta": 0.0})])
def test_outer_rules_at_their_neutral_settings_are_plain_gossip(rule, kw):
    p = Problem(seed=2)
    for x, y in zip(p.run(rule, 20, **kw), p.run("none", 20)):
        assert distance(x, y) < 1e-5


def test_nesterov_and_qgm_move_the_average_faster_along_a_flat_direction():
    """What momentum is for: with one shared, flat direction (curvature 0.05 on B) plain gossip crawls; outer
    Nesterov and quasi-global momentum move the peers' average along it. No heterogeneity, so every rule's average
    goes to the optimum."""
    p = Problem(heterogeneous=False)
    p.curv = [entrywise(c, lambda t, key: torch.full_like(t, 0.05 if key[0] == "B" else 1.0)) for c in p.curv]
    star = p.optimum()
    plain15, plain60 = (distance(average(p.run("none", r)), star) for r in (15, 60))
    nesterov15 = distance(average(p.run("nesterov", 15, outer_lr=0.7, outer_momentum=0.9)), star)
    qgm60 = distance(average(p.run("qgm", 60, qgm_beta=0.5, qgm_mu=0.9)), star)
    assert nesterov15 < 0.1 * plain15, (nesterov15, plain15)
    assert qgm60 < 0.5 * plain60, (qgm60, plain60)


def test_ffa_sends_no_a_and_its_mix_is_the_exact_average_of_the_products():
    gen = torch.Generator().manual_seed(3)
    A = torch.randn(2, 3, generator=gen)
    peers = [Adapter({"m": LoraFactor(A.clone(), torch.randn(4, 2, generator=gen), alpha=4.0)},
                     {"head": torch.randn(3, generator=gen)}) for _ in range(4)]
    weights = [0.4, 0.3, 0.2, 0.1]
    payloads = [b_only(a) for a in peers]
    assert not payloads[0].factors and set(payloads[0].dense) == {"m#B", "head"}
    assert payloads[0].num_parameters() == peers[0].num_parameters() - A.numel()
    mixed = FrozenA(K).finish(aggregate.gossip(payloads, weights), peers[0])
    exact = sum(w * a.factors["m"].product() for w, a in zip(weights, peers))
    torch.testing.assert_close(mixed.factors["m"].product(), exact, rtol=1e-6, atol=1e-6)
    assert torch.equal(mixed.factors["m"].A, A)
    # Factor averaging of A and B together is not exact when the As differ; with a shared A it is, as here.
    torch.testing.assert_close(with_b(peers[0], aggregate.gossip(payloads, weights)).factors["m"].B,
                               sum(w * a.factors["m"].B for w, a in zip(weights, peers)))


def test_kgt_payload_carries_model_and_tracked_gradient_and_unpacks_exactly():
    gen = torch.Generator().manual_seed(4)
    x, d = adapter_of(gen), adapter_of(gen)
    packed = pack_tracking(x, d)
    assert packed.num_parameters() == 2 * x.num_parameters()
    back_x, back_d = unpack_tracking(packed)
    assert distance(back_x, x) == 0.0 and distance(back_d, d) == 0.0


@pytest.mark.parametrize("name", DRIFT_RULES)
def test_state_dict_round_trip_continues_identically(name):
    p = Problem(seed=5)
    gen = torch.Generator().manual_seed(6)
    rule = make_drift_rule(name, K)
    x = adapter_of(gen)
    for _ in range(2):
        z = sgd(x, rule.begin_round(x), lambda y: p.grad(0, y), steps=1)
        x = rule.finish(aggregate.gossip([rule.payload(z), rule.payload(z)], [0.5, 0.5]), z)
    twin = make_drift_rule(name, K)
    twin.load_state_dict(rule.state_dict())
    a, b = rule.begin_round(x), twin.begin_round(x)
    assert (a is None) == (b is None) and (a is None or (a.kind == b.kind and distance(a.value, b.value) == 0.0))


def test_unknown_rule_is_refused():
    with pytest.raises(ValueError, match="unknown drift correction"):
        make_drift_rule("adam", K)
