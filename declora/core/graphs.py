"""Peer graphs: the builders (ring, torus, exp, er, ...) and the spec strings that name them (`ring:8`, `er:16:0.3:1`).

Every builder returns an undirected networkx graph on nodes 0..N-1; random ones are resampled until connected, so a
spec always names one connected graph. Pure networkx, no numpy arrays, no files.
"""
from __future__ import annotations

import math
from typing import Callable

import networkx as nx


class TopologyError(ValueError):
    """A bad topology spec or file. The message is one line: what is wrong and what is valid."""


SPEC_USAGE = (
    "ring:N, torus:RxC, complete:N, star:N, er:N:P:SEED, regular:N:D:SEED, exp:N, smallworld:N:K:P:SEED, "
    "or a topology file (.toml, .json, or an edge list)"
)
CONNECT_TRIES = 100  # random graphs are resampled (seed, seed+1, ...) this many times before giving up


# ---- builders ----------------------------------------------------------------------------------------------------
def ring(n: int) -> nx.Graph:
    return _graph(n, ((i, (i + 1) % n) for i in range(n)))


def torus(rows: int, cols: int) -> nx.Graph:
    """A rows x cols grid with wrap-around; node (r, c) is r * cols + c. A side of 2 gives degree 3, not 4."""
    if rows < 2 or cols < 2:
        raise TopologyError(f"torus:{rows}x{cols}: R and C must be integers >= 2 (use ring:N for one row)")
    edges = []
    for r in range(rows):
        for c in range(cols):
            here = r * cols + c
            edges.append((here, r * cols + (c + 1) % cols))
            edges.append((here, ((r + 1) % rows) * cols + c))
    return _graph(rows * cols, edges)


def complete(n: int) -> nx.Graph:
    return _graph(n, ((i, j) for i in range(n) for j in range(i + 1, n)))


def star(n: int) -> nx.Graph:
    """Node 0 is the hub."""
    return _graph(n, ((0, i) for i in range(1, n)))


def exponential(n: int) -> nx.Graph:
    """Node i linked to i +/- 2^k (mod n) for every 2^k < n, as in stochastic gradient push, made undirected."""
    hops = [2**k for k in range((n - 1).bit_length())]  # every power of two below n
    return _graph(n, ((i, (i + h) % n) for i in range(n) for h in hops))


def erdos_renyi(n: int, p: float, seed: int, tries: int = CONNECT_TRIES) -> nx.Graph:
    """G(n, p), resampled with seed, seed+1, ... until connected."""
    spec = f"er:{n}:{p}:{seed}"
    if not 0 < p <= 1:
        raise TopologyError(f"{spec}: P must be a number in (0, 1]")
    hint = f"raise P (connected G(n,p) needs P well above ln(N)/N = {math.log(n) / n:.3f})"
    return _first_connected(lambda s: nx.gnp_random_graph(n, p, seed=s), seed, tries, spec, hint)


def random_regular(n: int, d: int, seed: int, tries: int = CONNECT_TRIES) -> nx.Graph:
    """A random D-regular graph, resampled with seed, seed+1, ... until connected."""
    spec = f"regular:{n}:{d}:{seed}"
    if not 1 <= d < n:
        raise TopologyError(f"{spec}: D must be an integer in [1, N-1]")
    if n * d % 2:
        raise TopologyError(f"{spec}: N*D must be even (each edge uses two of the N*D edge ends)")
    hint = "use D >= 2 (D = 1 connects only N = 2)"
    return _first_connected(lambda s: nx.random_regular_graph(d, n, seed=s), seed, tries, spec, hint)


def small_world(n: int, k: int, p: float, seed: int, tries: int = CONNECT_TRIES) -> nx.Graph:
    """A connected Watts-Strogatz graph: a ring where each node joins K/2 neighbours per side, rewired with P."""
    spec = f"smallworld:{n}:{k}:{p}:{seed}"
    if k < 2 or k % 2 or k >= n:
        raise TopologyError(f"{spec}: K must be an even integer in [2, N-1] (K/2 neighbours on each side)")
    if not 0 <= p <= 1:
        raise TopologyError(f"{spec}: P must be a number in [0, 1]")
    try:
        graph = nx.connected_watts_strogatz_graph(n, k, p, tries=tries, seed=seed)
    except nx.NetworkXException as e:
        raise TopologyError(f"{spec}: no connected graph in {tries} tries ({e}); lower P") from None
    return _graph(n, graph.edges())


def _graph(n: int, edges) -> nx.Graph:
    if n < 2:  # builders called directly, without the spec parser's checks
        raise TopologyError(f"a topology needs at least 2 nodes, got {n}")
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from((i, j) for i, j in edges if i != j)
    return graph


def _first_connected(sample: Callable[[int], nx.Graph], seed: int, tries: int, spec: str, hint: str) -> nx.Graph:
    for k in range(tries):
        graph = sample(seed + k)
        if nx.is_connected(graph):
            return _graph(graph.number_of_nodes(), graph.edges())
    raise TopologyError(f"{spec}: no connected graph in {tries} tries (seeds {seed}..{seed + tries - 1}); {hint}")


# ---- spec strings ------------------------------------------------------------------------------------------------
def _count(text: str) -> int:
    value = _integer(text, "N")
    if value < 2:
        raise TopologyError(f"N must be an integer >= 2, got {text!r}")
    return value


def _integer(text: str, name: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise TopologyError(f"{name} must be an integer, got {text!r}") from None


def _seed(text: str) -> int:
    value = _integer(text, "SEED")
    if value < 0:
        raise TopologyError(f"SEED must be an integer >= 0, got {text!r}")
    return value


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:  # NaN fails this too
        raise TopologyError(f"P must be a number in [0, 1], got {text!r}")
    return value


def _grid(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2:
        raise TopologyError(f"expected RxC such as 4x4, got {text!r}")
    return _integer(parts[0], "R"), _integer(parts[1], "C")


# kind -> (usage, parser of each ':'-separated field, builder taking the parsed fields)
_KINDS: dict[str, tuple[str, tuple[Callable, ...], Callable[..., nx.Graph]]] = {
    "ring": ("ring:N", (_count,), ring),
    "torus": ("torus:RxC", (_grid,), lambda rc: torus(*rc)),
    "complete": ("complete:N", (_count,), complete),
    "star": ("star:N", (_count,), star),
    "er": ("er:N:P:SEED", (_count, _probability, _seed), erdos_renyi),
    "regular": ("regular:N:D:SEED", (_count, lambda t: _integer(t, "D"), _seed), random_regular),
    "exp": ("exp:N", (_count,), exponential),
    "smallworld": ("smallworld:N:K:P:SEED", (_count, lambda t: _integer(t, "K"), _probability, _seed), small_world),
}


def build_graph(spec: str) -> nx.Graph:
    """The graph a spec string names; TopologyError (one line) when the spec is not valid."""
    kind, *fields = spec.strip().split(":")
    if kind not in _KINDS:
        raise TopologyError(f"unknown topology {spec!r}; valid: {SPEC_USAGE}")
    usage, parsers, build = _KINDS[kind]
    if len(fields) != len(parsers):
        raise TopologyError(f"{spec}: expected {usage}")
    try:
        values = [parse(field.strip()) for parse, field in zip(parsers, fields)]
    except TopologyError as e:
        raise TopologyError(f"{spec}: {e} (expected {usage})") from None
    return build(*values)

