"""Robust mixing and the plausibility check (declora.core.robust, declora.core.plausibility), and a five-neighbour
peer that mixes through the real `Gossip` neighbourhood while one neighbour attacks in each of the five forms."""
from __future__ import annotations

import math

import pytest
import torch

from declora.core.aggregate import product_distances
from declora.core.attacks import ATTACKS, poison
from declora.core.factors import Adapter, LoraFactor
from declora.core.plausibility import PlausibilityCheck
from declora.core.robust import (RobustRule, adapter_norm, clip_radius, clipped_weights, coordinatewise,
                                 factor_distances)
from declora.core.strategies import get_strategy
from declora.core.topology_files import load_topology
from declora.node.neighbourhood import Gossip, Received


def adapter(seed: int, r: int = 4, scale: float = 1.0, center: Adapter | None = None) -> Adapter:
    g = torch.Generator().manual_seed(seed)
    def rnd(*shape):
        return torch.randn(*shape, generator=g) * scale
    if center is not None:
        return Adapter({k: LoraFactor(f.A + rnd(*f.A.shape), f.B + rnd(*f.B.shape), f.alpha)
                        for k, f in center.factors.items()}, {k: t + rnd(*t.shape) for k, t in center.dense.items()})
    return Adapter({f"m{i}": LoraFactor(rnd(r, 12), rnd(10, r), 8.0) for i in range(2)}, {"head": rnd(2, 10)})


def flat(a: Adapter) -> torch.Tensor:
    return torch.cat([torch.cat([f.A.reshape(-1), f.B.reshape(-1)]) for _, f in sorted(a.factors.items())]
                     + [t.reshape(-1) for _, t in sorted(a.dense.items())])


def test_clip_keeps_honest_weights_and_caps_the_far_one():
    w = [0.4, 0.15, 0.15, 0.15, 0.15]
    new, tau = clipped_weights(w, [1.0, 2.0, 1.5, 100.0], trim=1)
    assert tau == 2.0
    assert new[1:4] == w[1:4]  # honest neighbours are not clipped
    assert new[4] == pytest.approx(0.15 * 2.0 / 100.0)  # the far one pulls no further than tau
    assert sum(new) == pytest.approx(1.0)
    assert clip_radius([3.0], trim=1) == 0.0
    alone, _ = clipped_weights([0.5, 0.5], [3.0], trim=1)  # too few heard to tell anyone apart: keep our own
    assert alone == [1.0, 0.0]
    inf, _ = clipped_weights(w, [1.0, 1.0, 1.0, math.inf], trim=1)
    assert inf[4] == 0.0 and sum(inf) == pytest.approx(1.0)


def test_coordinate_rules_ignore_one_outlier():
    honest = [adapter(1, scale=0.0, center=adapter(0)) for _ in range(4)]  # four equal adapters
    bad = poison("huge", honest[0], 0)
    for rule in ("trimmed-mean", "median"):
        out = coordinatewise([*honest, bad], rule, trim=1)
        torch.testing.assert_close(flat(out), flat(honest[0]))
    with pytest.raises(ValueError, match="equal shapes"):
        coordinatewise([adapter(0, r=4), adapter(1, r=2)], "median", trim=1)


def test_product_distances_match_the_dense_products_for_mixed_ranks():
    mine, others = adapter(0, r=4), [adapter(1, r=2), adapter(2, r=8)]
    got = product_distances(mine, others)
    for o, d in zip(others, got):
        want = math.sqrt(sum(float((o.factors[k].product() - f.product()).pow(2).sum()) for k, f in mine.factors.items())
                         + float((o.dense["head"] - mine.dense["head"]).pow(2).sum()))
        assert d == pytest.approx(want, rel=1e-6)  # want is computed in fp32
    assert factor_distances(mine, [mine])[0] == 0.0


def test_coordinate_rules_are_refused_for_the_exact_modes():
    for mode in ("stack", "svd", "zeropad"):
        with pytest.raises(ValueError, match="gossip only|mode 'gossip' only"):
            RobustRule("median").check_mode(mode, get_strategy(mode).equal_ranks)
        RobustRule("clip").check_mode(mode, get_strategy(mode).equal_ranks)
    with pytest.raises(ValueError, match="unknown robust rule"):
        RobustRule("krum")


def test_plausibility_drops_huge_and_non_finite_keeps_honest():
    check = PlausibilityCheck(ratio=10.0)
    mine = adapter(0)
    honest = {j: adapter_norm(adapter(j, center=mine, scale=0.1)) for j in (1, 2, 3)}
    assert check.screen(adapter_norm(mine), honest) == {}
    bad = {**honest, 4: adapter_norm(poison("huge", mine, 0)), 5: math.inf}
    rejected = check.screen(adapter_norm(mine), bad)
    assert set(rejected) == {4, 5} and "not finite" in rejected[5]
    assert PlausibilityCheck(ratio=0).screen(1.0, {1: 1e30}) == {}  # 0 = off
    with pytest.raises(ValueError):
        PlausibilityCheck(ratio=0.5)


# ---- a five-neighbour peer, one neighbour hostile ------------------------------------------------------------------
HONEST = (1, 2, 3, 4)
HOSTILE = 5


def run_five_neighbour_peer(attack: str, robust: str, rounds: int = 30, plausible_ratio: float = 10.0):
    """Peer 0 of a complete graph of 6 mixes for `rounds` through the real Gossip neighbourhood. Honest neighbours
    send noisy copies of a slowly moving target; peer 5 sends poison made from what an honest peer would send.
    Returns the peer's distance to the honest average in each round, and the hood."""
    topo = load_topology("complete:6")
    from declora.core.mixing import mixing_matrix, mixing_row
    hood = Gossip(0, topo, mixing_row(mixing_matrix(topo.graph, "metropolis"), 0), get_strategy("gossip"), rank=4,
                  max_rank=4, alpha=8.0, rslora=False, robust=RobustRule(robust, 1),
                  plausibility=PlausibilityCheck(plausible_ratio))
    target = adapter(100)
    mine = adapter(0, center=target, scale=0.05)
    distances = []
    for t in range(rounds):
        honest = {j: adapter(1000 * t + j, center=target, scale=0.05) for j in HONEST}
        got = {**honest, HOSTILE: poison(attack, adapter(1000 * t + HOSTILE, center=target, scale=0.05), t, seed=5)}
        if attack == "nan":  # the wire drops NaN before a neighbourhood sees it (tests/integration/test_wire_hostile)
            del got[HOSTILE]
        norms = {j: adapter_norm(a) for j, a in got.items()}
        for j in hood.plausibility.screen(adapter_norm(mine), norms):
            del got[j]
        from declora.core.mixing import renormalize_row
        received = Received(got, renormalize_row(hood.row, 0, heard=set(got)))
        mine = hood.combine(mine, received).adapter
        honest_mean = flat(target)  # the honest neighbours are unbiased around the target
        distances.append(float((flat(mine) - honest_mean).norm()))
    return distances, hood


@pytest.mark.parametrize("attack", [a for a in ATTACKS if a not in ("none", "nan")])
@pytest.mark.parametrize("robust", ["clip", "trimmed-mean", "median"])
def test_robust_rules_keep_the_peer_near_the_honest_average(attack, robust):
    clean, _ = run_five_neighbour_peer("none", "none")
    attacked, _ = run_five_neighbour_peer(attack, robust)
    # What honest noise alone gives, with some slack for the rule's own variance: stated bound = 1.5x the clean distance.
    bound = 1.5 * max(clean[10:])
    assert max(attacked[10:]) <= bound, (attack, robust, max(attacked[10:]), bound)


@pytest.mark.parametrize("attack", ["signflip", "noise", "drift"])
def test_without_robust_mixing_plausible_poison_does_move_the_peer(attack):
    """The robust rules are needed: the same attacks, mixed plainly, pull the peer far from the honest average."""
    clean, _ = run_five_neighbour_peer("none", "none")
    attacked, _ = run_five_neighbour_peer(attack, "none")
    assert max(attacked[10:]) > 3 * max(clean[10:])


def test_plausibility_alone_stops_huge_values():
    attacked, hood = run_five_neighbour_peer("huge", "none")
    clean, _ = run_five_neighbour_peer("none", "none")
    assert max(attacked) <= 3 * max(clean)
