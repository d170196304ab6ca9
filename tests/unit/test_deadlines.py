"""Adaptive deadlines, bounded staleness and what happens to the mixing matrix when peers die (declora.core)."""
import networkx as nx
import numpy as np
import pytest

from declora.core.deadlines import AdaptiveDeadline, FixedDeadline, percentile, quorum_size, stale_weight
from declora.core.graphs import build_graph
from declora.core.mixing import discount_row, mixing_matrix, mixing_row, renormalize_row


def test_the_first_round_waits_the_cap():
    assert AdaptiveDeadline(cap_s=300).seconds() == 300
    assert FixedDeadline(300).seconds() == 300


def test_a_straggler_does_not_set_the_pace():
    """5 neighbours, four within 0.1-0.4 s, one always 20 s late: the deadline follows the first half."""
    d = AdaptiveDeadline(cap_s=300, floor_s=0.5, slack=0.25)
    for _ in range(8):
        d.observe([0.1, 0.2, 0.3, 0.4, 20.0], expected=5, waited_s=20.0, compute_s=4.0)
    # quorum = 2nd arrival = 0.2 s; 2 x 0.2 = 0.4 < the floors: max(0.5, 0.25 x 4 s) = 1 s
    assert d.seconds() == pytest.approx(1.0)


def test_a_slow_network_raises_the_deadline_up_to_the_cap():
    d = AdaptiveDeadline(cap_s=30, floor_s=1)
    for late in (5.0, 6.0, 7.0):
        d.observe([late, late + 1], expected=2, waited_s=late + 1, compute_s=1.0)
    assert d.seconds() == pytest.approx(2 * percentile([5.0, 6.0, 7.0], 0.9))
    d.observe([40.0, 41.0], expected=2, waited_s=41, compute_s=1.0)
    assert d.seconds() == 30


def test_a_round_short_of_a_quorum_records_what_it_waited():
    d = AdaptiveDeadline(cap_s=100, floor_s=0, factor=2, quantile=1.0)
    d.observe([], expected=4, waited_s=3.0, compute_s=0.0)  # nobody came within 3 s: the quorum took >= 3 s
    assert d.seconds() == 6.0


def test_the_window_forgets_old_rounds():
    d = AdaptiveDeadline(cap_s=100, floor_s=0, factor=1, quantile=1.0, window=2)
    for late in (50.0, 1.0, 1.0):
        d.observe([late], expected=1, waited_s=late, compute_s=0.0)
    assert d.seconds() == 1.0


def test_state_round_trips():
    d = AdaptiveDeadline(cap_s=100)
    d.observe([3.0, 4.0], expected=2, waited_s=4.0, compute_s=2.0)
    e = AdaptiveDeadline(cap_s=100)
    e.load_state_dict(d.state_dict())
    assert e.seconds() == d.seconds()


@pytest.mark.parametrize("bad", [dict(cap_s=-1), dict(cap_s=float("nan")), dict(cap_s=1, quantile=0),
                                 dict(cap_s=1, window=0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        AdaptiveDeadline(**bad)


def test_quorum_is_half_the_neighbours_and_at_least_one():
    assert [quorum_size(n) for n in (1, 2, 3, 4, 5, 8)] == [1, 1, 1, 2, 2, 4]


def test_percentile_matches_numpy():
    xs = [0.3, 5.0, 1.0, 2.5, 9.0]
    for q in (0.1, 0.5, 0.9, 1.0):
        assert percentile(xs, q) == pytest.approx(np.quantile(xs, q))


def test_stale_weight_decays_and_stops_at_the_bound():
    assert [stale_weight(a, 2, 0.5) for a in (0, 1, 2, 3)] == [1.0, 0.5, 0.25, 0.0]
    with pytest.raises(ValueError):
        stale_weight(-1, 2, 0.5)


def test_discount_moves_the_lost_weight_onto_self():
    row = {0: 0.4, 1: 0.3, 2: 0.3}
    out = discount_row(row, 0, {1: 0.5})
    assert out == pytest.approx({0: 0.55, 1: 0.15, 2: 0.3})
    assert sum(out.values()) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        discount_row(row, 0, {1: 1.5})


def survivors_matrix(graph, rule, dead):
    """The matrix the survivors actually mix with: each survivor's row with the dead neighbours' weight moved onto
    itself (renormalize_row, what a peer does with a neighbour it does not hear)."""
    M = mixing_matrix(graph, rule)
    alive = [i for i in graph.nodes if i not in dead]
    W = np.zeros((len(alive), len(alive)))
    for a, i in enumerate(alive):
        row = renormalize_row(mixing_row(M, i), i, heard=set(alive) - {i})
        for b, j in enumerate(alive):
            W[a, b] = row.get(j, 0.0)
    return W, alive


@pytest.mark.parametrize("spec,dead", [("ring:8", {3}), ("exp:8", {1, 6}), ("torus:3x3", {4}),
                                       ("er:12:0.4:1", {0, 5, 7})])
@pytest.mark.parametrize("rule", ["metropolis", "maxdegree", "laplacian"])
def test_dropping_dead_peers_keeps_the_survivors_doubly_stochastic(spec, dead, rule):
    W, _ = survivors_matrix(build_graph(spec), rule, dead)
    assert np.allclose(W.sum(axis=0), 1) and np.allclose(W.sum(axis=1), 1) and np.allclose(W, W.T)
    assert (W >= 0).all()


def test_a_disconnected_survivor_graph_mixes_within_each_part():
    """ring:6 minus 0 and 3: two paths {1,2} and {4,5}. Each part keeps its own average: repeated mixing converges
    to the average of each component, never across."""
    graph = build_graph("ring:6")
    W, alive = survivors_matrix(graph, "metropolis", {0, 3})
    x = np.array([1.0, 3.0, 10.0, 30.0])  # values at peers 1, 2, 4, 5
    for _ in range(200):
        x = W @ x
    assert np.allclose(x, [2.0, 2.0, 20.0, 20.0])
    assert nx.number_connected_components(graph.subgraph(alive)) == 2


def test_the_first_round_stops_waiting_soon_after_a_quorum():
    d = AdaptiveDeadline(cap_s=300, floor_s=1.0, slack=0.25)
    assert d.quorum_rule(5, compute_s=8.0) == (2, 2.0)  # 2 of 5, then max(1 s, 0.25 x 8 s)
    d.observe([0.1, 0.2], expected=2, waited_s=0.2, compute_s=8.0)
    assert d.quorum_rule(5, compute_s=8.0) is None  # learned: seconds() rules from now on
    assert FixedDeadline(300).quorum_rule(5, 8.0) is None
