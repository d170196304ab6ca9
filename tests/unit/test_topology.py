"""Topology builders, files, mixing matrices, their checks, spectral gaps and per-round row renormalization."""
import json
import math
from pathlib import Path

import networkx as nx
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from declora.core.graphs import TopologyError, build_graph, complete, exponential, ring, star
from declora.core.mixing import (
    MIXING_RULES,
    check_mixing,
    laplacian_weights,
    maxdegree_weights,
    metropolis_weights,
    mixing_matrix,
    mixing_row,
    renormalize_row,
    spectral_gap,
)
from declora.core.topology import NodeInfo, topology_from_graph
from declora.core.topology_files import load_topology, topology_to_toml

TOPOLOGIES = Path(__file__).resolve().parents[2] / "topologies"

ALL_KINDS = [
    "ring:8", "ring:2", "torus:4x4", "torus:2x3", "torus:3x5", "complete:8", "star:6", "er:16:0.25:1",
    "regular:16:3:0", "regular:2:1:0", "exp:16", "exp:5", "exp:2", "smallworld:16:4:0.2:0", "smallworld:10:2:0:3",
]


def edge_set(graph):
    return {frozenset(e) for e in graph.edges()}


# ---- builders ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "spec, n, n_edges, degrees",
    [
        ("ring:8", 8, 8, {2}),
        ("ring:2", 2, 1, {1}),
        ("torus:4x4", 16, 32, {4}),
        ("torus:2x3", 6, 9, {3}),  # the two wrap-arounds of a 2-row column are the same edge
        ("complete:8", 8, 28, {7}),
        ("star:6", 6, 5, {1, 5}),
        ("exp:16", 16, 56, {7}),  # +/-1, +/-2, +/-4, and 8 (= -8)
        ("exp:5", 5, 10, {4}),  # +/-1, +/-2, +/-4 = -/+1: complete
        ("exp:2", 2, 1, {1}),
        ("regular:16:3:0", 16, 24, {3}),
        ("regular:2:1:0", 2, 1, {1}),
        ("smallworld:16:4:0.2:0", 16, 32, None),  # rewiring keeps the edge count, not the degrees
        ("smallworld:10:2:0:3", 10, 10, {2}),  # P = 0 is the ring lattice
    ],
)
def test_builder_sizes_and_degrees(spec, n, n_edges, degrees):
    t = load_topology(spec)
    assert t.n == n and list(t.graph.nodes) == list(range(n))
    assert len(t.edges) == n_edges
    assert nx.is_connected(t.graph)
    if degrees is not None:
        assert set(t.degrees) == degrees


def test_ring_links_consecutive_nodes():
    assert load_topology("ring:5").edges == [(0, 1), (0, 4), (1, 2), (2, 3), (3, 4)]


def test_star_hub_is_node_zero():
    t = load_topology("star:6")
    assert t.neighbors(0) == [1, 2, 3, 4, 5] and all(t.neighbors(i) == [0] for i in range(1, 6))


def test_torus_numbers_nodes_row_major_with_wraparound():
    t = load_topology("torus:3x4")
    assert t.neighbors(5) == [1, 4, 6, 9]  # (1, 1): up, left, right, down
    assert t.neighbors(0) == [1, 3, 4, 8]  # (0, 0) wraps to (0, 3) and (2, 0)


def test_exponential_links_powers_of_two_both_ways():
    t = load_topology("exp:16")
    assert t.neighbors(0) == [1, 2, 4, 8, 12, 14, 15]
    assert t.neighbors(5) == sorted({(5 + s * h) % 16 for h in (1, 2, 4, 8) for s in (1, -1)})


@pytest.mark.parametrize("build", [lambda: ring(1), lambda: star(0), lambda: complete(1), lambda: exponential(1)])
def test_builders_called_directly_refuse_fewer_than_two_nodes(build):
    with pytest.raises(TopologyError, match="at least 2 nodes"):
        build()


def test_topology_from_graph_wants_one_node_info_per_node():
    with pytest.raises(TopologyError, match="node infos must be given for ids 0..2"):
        topology_from_graph(ring(3), "ring:3", nodes=[NodeInfo(0), NodeInfo(1)])


@pytest.mark.parametrize("spec", ["er:16:0.3:4", "regular:12:4:7", "smallworld:16:4:0.3:2"])
def test_random_builders_are_deterministic_under_seed(spec):
    assert edge_set(build_graph(spec)) == edge_set(build_graph(spec))
    other = spec.rsplit(":", 1)[0] + ":" + str(int(spec.rsplit(":", 1)[1]) + 100)
    assert edge_set(build_graph(spec)) != edge_set(build_graph(other))


def test_erdos_renyi_resamples_seed_plus_k_until_connected():
    n, p, seed = 12, 0.2, 0
    k = next(k for k in range(100) if nx.is_connected(nx.gnp_random_graph(n, p, seed=seed + k)))
    assert k > 0, "pick n, p, seed whose first sample is disconnected"
    expected = nx.gnp_random_graph(n, p, seed=seed + k)
    assert edge_set(build_graph(f"er:{n}:{p}:{seed}")) == edge_set(expected)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("er:30:0.01:0", "no connected graph in 100 tries"),
        ("regular:6:1:0", "no connected graph in 100 tries"),
    ],
)
def test_random_builders_give_up_with_a_clear_error(spec, expected):
    with pytest.raises(TopologyError, match=expected):
        load_topology(spec)


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("foo:8", "unknown topology 'foo:8'; valid: ring:N"),
        ("", "unknown topology"),
        ("ring", "expected ring:N"),
        ("ring:8:2", "expected ring:N"),
        ("ring:1", "N must be an integer >= 2"),
        ("complete:0", "N must be an integer >= 2"),
        ("ring:eight", "N must be an integer"),
        ("torus:4", "expected RxC"),
        ("torus:1x8", "R and C must be integers >= 2"),
        ("torus:4xb", "C must be an integer"),
        ("er:8:1.5:0", "P must be a number in [0, 1]"),
        ("er:8:nan:0", "P must be a number in [0, 1]"),
        ("er:8:0:0", "P must be a number in (0, 1]"),
        ("er:8:0.5:-1", "SEED must be an integer >= 0"),
        ("regular:5:3:0", "N*D must be even"),
        ("regular:5:5:0", "D must be an integer in [1, N-1]"),
        ("smallworld:10:3:0.1:0", "K must be an even integer"),
        ("smallworld:10:4:2:0", "P must be a number in [0, 1]"),
        ("nowhere/ring.toml", "no such topology file"),
        ("missing.toml", "no such topology file"),
    ],
)
def test_bad_specs_raise_one_line_topology_errors(spec, expected):
    with pytest.raises(TopologyError) as info:
        load_topology(spec)
    message = str(info.value)
    assert expected in message and "\n" not in message
    assert isinstance(info.value, ValueError)


# ---- files -------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, spec", [("ring-8", "ring:8"), ("torus-4x4", "torus:4x4"), ("exp-16", "exp:16"), ("er-16", "er:16:0.25:1")]
)
def test_shipped_files_match_their_builders(name, spec):
    t = load_topology(TOPOLOGIES / f"{name}.toml")
    assert t.edges == load_topology(spec).edges
    assert spec in t.description and not t.has_addresses()


def test_shipped_two_node_file_carries_addresses():
    t = load_topology(str(TOPOLOGIES / "ring-4-two-nodes.toml"))
    assert t.edges == load_topology("ring:4").edges
    assert {node.host for node in t.nodes} == {"127.0.0.1"}
    assert len({node.port for node in t.nodes}) == 4
    assert [node.rank for node in t.nodes] == [8, 8, 4, 4]


@pytest.mark.parametrize("path", sorted(TOPOLOGIES.glob("*.toml")), ids=lambda p: p.name)
def test_shipped_files_round_trip_through_toml(path, tmp_path):
    t = load_topology(path)
    copy = tmp_path / "copy.toml"
    copy.write_text(topology_to_toml(t))
    again = load_topology(copy)
    assert (again.edges, again.nodes, again.description) == (t.edges, t.nodes, t.description)
    assert path.read_text() == topology_to_toml(t), "shipped file is not in canonical form"


def test_json_file_with_addresses(tmp_path):
    doc = {
        "nodes": [{"id": 1, "host": "10.0.0.2", "port": 5000}, {"id": 0, "host": "10.0.0.1", "port": 5000, "rank": 4}],
        "edges": [[0, 1]],
    }
    path = tmp_path / "pair.json"
    path.write_text(json.dumps(doc))
    t = load_topology(path)
    assert t.n == 2 and t.edges == [(0, 1)]
    assert t.nodes == (NodeInfo(0, "10.0.0.1", 5000, 4), NodeInfo(1, "10.0.0.2", 5000, None))


def test_toml_file_without_nodes_takes_them_from_edges(tmp_path):
    path = tmp_path / "tri.toml"
    path.write_text("edges = [[0, 1], [1, 2], [2, 0], [2, 1]]\n")
    t = load_topology(path)
    assert t.n == 3 and t.edges == [(0, 1), (0, 2), (1, 2)] and not t.has_addresses()


def test_edge_list_with_comments(tmp_path):
    path = tmp_path / "square.edges"
    path.write_text("# a square\n0 1\n1 2  # inline comment\n\n2 3\n3 0\n")
    assert load_topology(path).edges == load_topology("ring:4").edges


@pytest.mark.parametrize(
    "name, text, expected",
    [
        ("split.toml", "edges = [[0, 1], [2, 3]]", "not connected (2 components"),
        ("lonely.toml", "nodes = [{id = 0}, {id = 1}, {id = 2}]\nedges = [[0, 1]]", "not connected"),
        ("loop.toml", "edges = [[0, 1], [1, 1]]", "self-loop on node 1"),
        ("range.toml", "nodes = [{id = 0}, {id = 1}]\nedges = [[0, 2]]", "outside 0..1"),
        ("ids.toml", "nodes = [{id = 0}, {id = 2}]\nedges = [[0, 1]]", "node ids must be 0..1"),
        ("dupe.toml", "nodes = [{id = 0}, {id = 0}]\nedges = [[0, 1]]", "node ids must be 0..1"),
        ("key.toml", "edge = [[0, 1]]", "unknown key 'edge'"),
        ("nodekey.toml", "nodes = [{id = 0, prot = 1}, {id = 1}]\nedges = [[0, 1]]", "unknown key 'prot'"),
        ("port.toml", "nodes = [{id = 0, port = 70000}, {id = 1}]\nedges = [[0, 1]]", "'port' must be"),
        ("rank.toml", "nodes = [{id = 0, rank = 0}, {id = 1}]\nedges = [[0, 1]]", "'rank' (LoRA rank)"),
        ("host.toml", "nodes = [{id = 0, host = 3}, {id = 1}]\nedges = [[0, 1]]", "'host' must be"),
        (
            "same.toml",
            'nodes = [{id = 0, host = "h", port = 1}, {id = 1, host = "h", port = 1}]\nedges = [[0, 1]]',
            "both use h:1",
        ),
        ("pair.toml", "edges = [[0, 1, 2]]", "bad edge"),
        ("noedges.toml", "nodes = [{id = 0}]", "'edges' must be a list"),
        ("broken.toml", "edges = [[0, 1]", "not valid TOML"),
        ("broken.json", '{"edges": [[0, 1]', "not valid JSON"),
        ("list.json", "[[0, 1]]", "expected a JSON object"),
        ("bad.edges", "0 1\n1 two\n", "bad.edges:2: expected two node ids"),
        ("empty.edges", "# nothing\n", "no edges"),
        ("one.edges", "0 0\n", "at least 2 nodes"),
    ],
)
def test_bad_files_raise_one_line_topology_errors(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert expected in str(info.value) and "\n" not in str(info.value)


# ---- mixing matrices ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, gap", [("ring:8", 0.1953), ("torus:4x4", 0.4000), ("complete:8", 1.0)])
def test_metropolis_spectral_gaps(spec, gap):
    M = mixing_matrix(load_topology(spec).graph)
    assert round(spectral_gap(M), 4) == gap


def test_ring_gap_matches_closed_form():
    # Metropolis on a ring is the circulant (1/3, 1/3, 1/3): eigenvalues 1/3 + 2/3 cos(2 pi k / n).
    M = mixing_matrix(load_topology("ring:8").graph)
    assert spectral_gap(M) == pytest.approx(1 - (1 / 3 + 2 / 3 * math.cos(2 * math.pi / 8)), abs=1e-12)


@pytest.mark.parametrize("rule", MIXING_RULES)
@pytest.mark.parametrize("spec", ALL_KINDS)
def test_every_rule_passes_check_mixing_on_every_builder(spec, rule):
    graph = load_topology(spec).graph
    M = mixing_matrix(graph, rule)
    assert M.dtype == np.float64
    check_mixing(M, graph)
    assert 0 < spectral_gap(M) <= 1 + 1e-12


def test_metropolis_weights_on_a_star():
    M = metropolis_weights(load_topology("star:4").graph)
    assert M[0, 1] == M[1, 0] == pytest.approx(1 / 4)  # 1 / (1 + max(3, 1))
    assert M[0, 0] == pytest.approx(1 / 4) and M[1, 1] == pytest.approx(3 / 4)
    assert M[1, 2] == 0


def test_maxdegree_weights_on_a_star():
    M = maxdegree_weights(load_topology("star:6").graph)
    assert M[0, 3] == pytest.approx(1 / 6) and M[3, 3] == pytest.approx(5 / 6) and M[0, 0] == pytest.approx(1 / 6)


@pytest.mark.parametrize("spec", ["ring:8", "star:6", "er:16:0.25:1", "torus:3x5"])
def test_laplacian_mixing_is_doubly_stochastic_with_eigenvalues_in_a_third_to_one(spec):
    graph = load_topology(spec).graph
    M = laplacian_weights(graph)
    assert np.allclose(M.sum(axis=0), 1) and np.allclose(M.sum(axis=1), 1) and np.allclose(M, M.T)
    eigenvalues = np.linalg.eigvalsh(M)
    assert eigenvalues.min() == pytest.approx(1 / 3) and eigenvalues.max() == pytest.approx(1)
    L = _laplacian(graph)
    assert np.allclose(M, np.eye(len(L)) - 2 * L / (3 * np.linalg.eigvalsh(L).max()))


def test_unknown_mixing_rule():
    with pytest.raises(ValueError, match="unknown mixing rule 'uniform'; valid: metropolis, maxdegree, laplacian"):
        mixing_matrix(load_topology("ring:4").graph, "uniform")


def _laplacian(graph):
    A = nx.to_numpy_array(graph, nodelist=range(graph.number_of_nodes()))
    return np.diag(A.sum(axis=1)) - A


def _triangle():
    return load_topology("complete:3").graph


@pytest.mark.parametrize(
    "make, expected",
    [
        # each bad matrix breaks exactly one property, so the message shows the check that caught it
        (lambda: (np.eye(3) * 0.5 + np.roll(np.eye(3), 1, axis=1) * 0.5, _triangle()), "not symmetric"),
        (lambda: (mixing_matrix(_triangle()) * 0.9, _triangle()), "not doubly stochastic: row 0 sums to 0.9"),
        (lambda: (np.eye(4) - 0.6 * _laplacian(nx.cycle_graph(4)), nx.cycle_graph(4)),
         "negative entries, first M[0, 0]"),
        (lambda: (np.full((4, 4), 0.25), nx.cycle_graph(4)), "weight off the graph: M[0, 2]"),
        (lambda: (np.kron(np.eye(2), np.full((2, 2), 0.5)), nx.Graph([(0, 1), (2, 3)])), "not connected (2 components"),
        (lambda: (np.eye(2), _triangle()), "shape (2, 2), expected (3, 3)"),
        (lambda: (np.full((3, 3), np.nan), _triangle()), "NaN or Inf"),
    ],
)
def test_check_mixing_rejects_each_kind_of_bad_matrix(make, expected):
    M, graph = make()
    with pytest.raises(ValueError) as info:
        check_mixing(M, graph)
    assert expected in str(info.value)


def test_spectral_gap_of_a_disconnected_average_is_zero():
    assert spectral_gap(np.kron(np.eye(2), np.full((2, 2), 0.5))) == pytest.approx(0)


def test_spectral_gap_needs_a_square_matrix():
    with pytest.raises(ValueError, match="square matrix of size >= 2"):
        spectral_gap(np.ones((2, 3)))


def test_mixing_row_lists_self_and_neighbours():
    M = mixing_matrix(load_topology("ring:8").graph)
    row = mixing_row(M, 0)
    assert sorted(row) == [0, 1, 7] and sum(row.values()) == pytest.approx(1)


# ---- renormalize_row ---------------------------------------------------------------------------------------------
@st.composite
def rows_and_heard(draw):
    n_neighbours = draw(st.integers(0, 12))
    raw = draw(st.lists(st.floats(0.01, 1.0), min_size=n_neighbours + 1, max_size=n_neighbours + 1))
    peers = draw(st.lists(st.integers(1, 50), min_size=n_neighbours, max_size=n_neighbours, unique=True))
    row = {0: raw[0] / sum(raw)} | {p: w / sum(raw) for p, w in zip(peers, raw[1:])}
    heard = draw(st.sets(st.integers(0, 60)))  # may include self and peers that are not neighbours
    return row, heard


@given(rows_and_heard())
def test_renormalize_row_moves_lost_weight_onto_self(case):
    row, heard = case
    out = renormalize_row(row, 0, heard)
    neighbours = set(row) - {0}
    assert set(out) == {0} | (neighbours & heard)
    assert sum(out.values()) == pytest.approx(1, abs=1e-12)
    assert all(out[p] == row[p] for p in neighbours & heard)
    lost = sum(row[p] for p in neighbours - heard)
    assert out[0] == pytest.approx(row[0] + lost, abs=1e-15)
    assert all(w >= 0 for w in out.values())


@given(rows_and_heard())
def test_renormalize_row_with_everyone_heard_is_the_identity(case):
    row, _ = case
    assert renormalize_row(row, 0, set(row)) == row


def test_renormalize_row_with_nobody_heard_keeps_only_self():
    assert renormalize_row({3: 0.5, 1: 0.25, 2: 0.25}, 3, set()) == {3: 1.0}


def test_renormalize_row_without_a_self_entry():
    assert renormalize_row({1: 0.5, 2: 0.5}, 0, {1}) == {0: 0.5, 1: 0.5}


@pytest.mark.parametrize(
    "row, expected",
    [({0: 0.5, 1: 0.25}, "sums to 0.75"), ({0: 1.5, 1: -0.5}, "weights must be >= 0"), ({0: math.nan}, ">= 0")],
)
def test_renormalize_row_refuses_rows_that_are_not_stochastic(row, expected):
    with pytest.raises(ValueError, match=expected):
        renormalize_row(row, 0, {1})


def test_renormalized_rows_of_a_matrix_stay_stochastic():
    graph = load_topology("er:16:0.25:1").graph
    M = mixing_matrix(graph)
    rng = np.random.default_rng(0)
    for i in range(16):
        heard = {j for j in graph.neighbors(i) if rng.random() < 0.5}
        out = renormalize_row(mixing_row(M, i), i, heard)
        assert sum(out.values()) == pytest.approx(1, abs=1e-12) and set(out) - {i} == heard
