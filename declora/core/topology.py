"""Peer graphs, their gossip mixing matrices, and the checks that keep those matrices honest.

A topology is an undirected, connected networkx graph on nodes 0..N-1, built from a spec string (`ring:8`,
`er:16:0.3:1`, ...) or read from a file (TOML, JSON or a plain edge list; see topologies/README.md), plus optional
per-node addresses (host, port, LoRA rank) for multi-node runs. Mixing matrices are numpy float64 arrays.

Pure: networkx and numpy only, no sockets, no torch, no peft.
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import networkx as nx
import numpy as np

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib


class TopologyError(ValueError):
    """A bad topology spec or file. The message is one line: what is wrong and what is valid."""


SPEC_USAGE = (
    "ring:N, torus:RxC, complete:N, star:N, er:N:P:SEED, regular:N:D:SEED, exp:N, smallworld:N:K:P:SEED, "
    "or a topology file (.toml, .json, or an edge list)"
)
MIXING_RULES = ("metropolis", "maxdegree", "laplacian")
CONNECT_TRIES = 100  # random graphs are resampled (seed, seed+1, ...) this many times before giving up
FILE_SUFFIXES = (".toml", ".json", ".txt", ".edges", ".edgelist")
NODE_KEYS = ("id", "host", "port", "rank")
FILE_KEYS = ("nodes", "edges", "description")


# ---- the Topology ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NodeInfo:
    """Where peer `id` runs and with which LoRA rank; each field is None when the topology does not say."""

    id: int
    host: str | None = None
    port: int | None = None
    rank: int | None = None

    def has_address(self) -> bool:
        return self.host is not None or self.port is not None or self.rank is not None

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items() if v is not None}


@dataclass(frozen=True, eq=False)
class Topology:
    """A connected undirected graph on nodes 0..n-1 plus what is known about each node."""

    graph: nx.Graph
    spec: str
    nodes: tuple[NodeInfo, ...]
    description: str = ""

    @property
    def n(self) -> int:
        return self.graph.number_of_nodes()

    @property
    def edges(self) -> list[tuple[int, int]]:
        """Each undirected edge once, as (i, j) with i < j, sorted."""
        return sorted((min(i, j), max(i, j)) for i, j in self.graph.edges())

    @property
    def degrees(self) -> list[int]:
        return [self.graph.degree(i) for i in range(self.n)]

    def neighbors(self, i: int) -> list[int]:
        return sorted(self.graph.neighbors(i))

    def has_addresses(self) -> bool:
        return any(node.has_address() for node in self.nodes)


def topology_from_graph(graph: nx.Graph, spec: str, nodes=None, description: str = "") -> Topology:
    """Wrap a graph after checking it is usable: nodes exactly 0..n-1, n >= 2, no self-loops, connected."""
    n = graph.number_of_nodes()
    if n < 2:
        raise TopologyError(f"{spec}: a topology needs at least 2 nodes, got {n}")
    if set(graph.nodes) != set(range(n)):
        raise TopologyError(f"{spec}: nodes must be numbered 0..{n - 1}, got {_short_list(sorted(graph.nodes))}")
    loops = list(nx.selfloop_edges(graph))
    if loops:
        raise TopologyError(f"{spec}: self-loop on node {loops[0][0]}; a peer's own weight is implicit")
    if not nx.is_connected(graph):
        parts = sorted(sorted(c) for c in nx.connected_components(graph))
        shown = "; ".join(_short_list(p) for p in parts[:3])
        raise TopologyError(
            f"{spec}: graph is not connected ({len(parts)} components: {shown}); every peer must reach every other"
        )
    ordered = nx.Graph()
    ordered.add_nodes_from(range(n))  # node order 0..n-1, whatever order the input came in
    ordered.add_edges_from(graph.edges())
    infos = tuple(nodes) if nodes is not None else tuple(NodeInfo(i) for i in range(n))
    if [info.id for info in infos] != list(range(n)):
        raise TopologyError(f"{spec}: node infos must be given for ids 0..{n - 1} in order")
    return Topology(graph=ordered, spec=spec, nodes=infos, description=description)


def load_topology(spec_or_path: str | os.PathLike) -> Topology:
    """A Topology from a spec string (`ring:8`) or from a topology file; raises TopologyError on bad input."""
    text = os.fspath(spec_or_path).strip()
    if os.path.isfile(text):
        return load_topology_file(text)
    if _looks_like_path(text):
        raise TopologyError(f"no such topology file: {text}; give an existing file or a spec such as ring:8")
    return topology_from_graph(build_graph(text), spec=text)


def _looks_like_path(text: str) -> bool:
    return os.sep in text or "/" in text or text.lower().endswith(FILE_SUFFIXES)


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


# ---- files -------------------------------------------------------------------------------------------------------
def load_topology_file(path: str | os.PathLike) -> Topology:
    """Read a TOML or JSON topology ({nodes, edges}) or a plain edge list (`i j` per line, `#` comments)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise TopologyError(f"no such topology file: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise TopologyError(f"cannot read topology file {path}: {_one_line(e)}") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return _from_document(_parse_toml(text, path), str(path))
    if suffix == ".json":
        return _from_document(_parse_json(text, path), str(path))
    return _from_edge_list(text, str(path))


def _parse_toml(text: str, path: Path) -> dict:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise TopologyError(f"{path}: not valid TOML: {_one_line(e)}") from None


def _parse_json(text: str, path: Path) -> dict:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as e:
        raise TopologyError(f"{path}: not valid JSON: {_one_line(e)}") from None
    if not isinstance(doc, dict):
        raise TopologyError(f"{path}: expected a JSON object with 'nodes' and 'edges'")
    return doc


def _from_document(doc: dict, where: str) -> Topology:
    unknown = sorted(set(doc) - set(FILE_KEYS))
    if unknown:
        raise TopologyError(f"{where}: unknown key {unknown[0]!r}; valid keys: {', '.join(FILE_KEYS)}")
    edges = _edges_from(doc.get("edges"), where)
    if "nodes" in doc:
        nodes = _nodes_from(doc["nodes"], where)
    else:  # nodes may be left out when the edges name them all
        nodes = tuple(NodeInfo(i) for i in range(1 + max((max(e) for e in edges), default=-1)))
    n = len(nodes)
    for i, j in edges:
        if not (0 <= i < n and 0 <= j < n):
            raise TopologyError(f"{where}: edge [{i}, {j}] names a node outside 0..{n - 1}")
    description = doc.get("description", "")
    if not isinstance(description, str):
        raise TopologyError(f"{where}: 'description' must be a string")
    return topology_from_graph(_graph_with(n, edges), where, nodes, description)


def _edges_from(raw, where: str) -> list[tuple[int, int]]:
    if not isinstance(raw, list):
        raise TopologyError(f"{where}: 'edges' must be a list of [i, j] pairs")
    edges = []
    for item in raw:
        if not (isinstance(item, list) and len(item) == 2 and all(_is_int(v) for v in item)):
            raise TopologyError(f"{where}: bad edge {item!r}; each edge is a pair of node ids [i, j]")
        edges.append((item[0], item[1]))
    return edges


def _nodes_from(raw, where: str) -> tuple[NodeInfo, ...]:
    if not isinstance(raw, list) or not raw:
        raise TopologyError(f"{where}: 'nodes' must be a non-empty list of tables with an 'id'")
    infos = [_node_from(item, where) for item in raw]
    ids = sorted(info.id for info in infos)
    if ids != list(range(len(infos))):
        raise TopologyError(f"{where}: node ids must be 0..{len(infos) - 1}, each once; got {_short_list(ids)}")
    _check_unique_addresses(infos, where)
    return tuple(sorted(infos, key=lambda info: info.id))


def _node_from(item, where: str) -> NodeInfo:
    if not isinstance(item, dict) or "id" not in item:
        raise TopologyError(f"{where}: bad node {item!r}; each node needs an 'id'")
    unknown = sorted(set(item) - set(NODE_KEYS))
    if unknown:
        raise TopologyError(f"{where}: node {item['id']!r}: unknown key {unknown[0]!r}; valid: {', '.join(NODE_KEYS)}")
    node_id, host, port, rank = (item.get(k) for k in NODE_KEYS)
    problem = _node_problem(node_id, host, port, rank)
    if problem:
        raise TopologyError(f"{where}: node {node_id!r}: {problem}")
    return NodeInfo(node_id, host, port, rank)


def _node_problem(node_id, host, port, rank) -> str | None:
    if not _is_int(node_id) or node_id < 0:
        return "'id' must be an integer >= 0"
    if host is not None and (not isinstance(host, str) or not host):
        return "'host' must be a non-empty string"
    if port is not None and (not _is_int(port) or not 1 <= port <= 65535):
        return "'port' must be an integer in 1..65535"
    if rank is not None and (not _is_int(rank) or rank < 1):
        return "'rank' (LoRA rank) must be an integer >= 1"
    return None


def _check_unique_addresses(infos: list[NodeInfo], where: str) -> None:
    # Two peers cannot bind the same host:port; catching it here beats an EADDRINUSE on a remote machine.
    seen: dict[tuple[str, int], int] = {}
    for info in infos:
        if info.host is None or info.port is None:
            continue
        key = (info.host, info.port)
        if key in seen:
            raise TopologyError(f"{where}: nodes {seen[key]} and {info.id} both use {info.host}:{info.port}")
        seen[key] = info.id


def _from_edge_list(text: str, where: str) -> Topology:
    edges = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) != 2 or not all(f.isdecimal() for f in fields):
            raise TopologyError(f"{where}:{number}: expected two node ids 'i j', got {line.strip()!r}")
        edges.append((int(fields[0]), int(fields[1])))
    if not edges:
        raise TopologyError(f"{where}: no edges; an edge list has one 'i j' pair per line")
    n = 1 + max(max(e) for e in edges)
    return topology_from_graph(_graph_with(n, edges), where)


def _graph_with(n: int, edges) -> nx.Graph:
    # Unlike _graph, keeps self-loops so that topology_from_graph can name them.
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges)
    return graph


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def _short_list(values, limit: int = 8) -> str:
    values = list(values)
    shown = ", ".join(str(v) for v in values[:limit])
    return f"[{shown}{', ...' if len(values) > limit else ''}]"


def topology_to_toml(topology: Topology) -> str:
    """The TOML form that load_topology_file reads back (used to write the files in topologies/)."""
    lines = ["# declora topology; the format is described in topologies/README.md"]
    if topology.description:
        lines.append(f"description = {json.dumps(topology.description)}")
    per_line = 1 if topology.has_addresses() else 8  # addressed nodes read best one per line
    nodes = [_inline_table(node.as_dict()) for node in topology.nodes]
    lines += ["nodes = [", *_rows(nodes, per_line), "]"]
    edges = [f"[{i}, {j}]" for i, j in topology.edges]
    lines += ["edges = [", *_rows(edges, 8), "]"]
    return "\n".join(lines) + "\n"


def _inline_table(fields: dict) -> str:
    return "{ " + ", ".join(f"{k} = {json.dumps(v)}" for k, v in fields.items()) + " }"


def _rows(items: list[str], per_line: int) -> list[str]:
    return ["  " + " ".join(f"{item}," for item in items[k:k + per_line]) for k in range(0, len(items), per_line)]


# ---- mixing matrices ---------------------------------------------------------------------------------------------
def mixing_matrix(graph: nx.Graph, rule: str = "metropolis") -> np.ndarray:
    """The n x n gossip matrix of `rule` (one of MIXING_RULES) for a graph on nodes 0..n-1."""
    builders = {"metropolis": metropolis_weights, "maxdegree": maxdegree_weights, "laplacian": laplacian_weights}
    if rule not in builders:
        raise ValueError(f"unknown mixing rule {rule!r}; valid: {', '.join(MIXING_RULES)}")
    return builders[rule](graph)


def metropolis_weights(graph: nx.Graph) -> np.ndarray:
    """Metropolis-Hastings: 1 / (1 + max(deg i, deg j)) on each edge, the rest of the row on the diagonal."""
    degree = _degrees(graph)
    M = np.zeros((len(degree), len(degree)))
    for i, j in graph.edges():
        M[i, j] = M[j, i] = 1.0 / (1 + max(degree[i], degree[j]))
    return _fill_diagonal(M)


def maxdegree_weights(graph: nx.Graph) -> np.ndarray:
    """1 / (1 + max degree) on each edge, the rest on the diagonal: simple, but slow on irregular graphs."""
    degree = _degrees(graph)
    M = _adjacency(graph) / (1.0 + degree.max())
    return _fill_diagonal(M)


def laplacian_weights(graph: nx.Graph) -> np.ndarray:
    """Dec-LoRA's I - 2L / (3 lambda_max(L)); the 2/3 keeps every eigenvalue in [1/3, 1], so no sign flips."""
    A = _adjacency(graph)
    L = np.diag(A.sum(axis=1)) - A
    lambda_max = np.linalg.eigvalsh(L)[-1]
    if lambda_max == 0:  # no edges at all: nobody to mix with
        return np.eye(len(A))
    return np.eye(len(A)) - 2.0 * L / (3.0 * lambda_max)


def _degrees(graph: nx.Graph) -> np.ndarray:
    return np.array([graph.degree(i) for i in range(graph.number_of_nodes())], dtype=np.int64)


def _adjacency(graph: nx.Graph) -> np.ndarray:
    n = graph.number_of_nodes()
    A = np.zeros((n, n))
    for i, j in graph.edges():
        if i != j:
            A[i, j] = A[j, i] = 1.0
    return A


def _fill_diagonal(M: np.ndarray) -> np.ndarray:
    np.fill_diagonal(M, 0.0)
    np.fill_diagonal(M, 1.0 - M.sum(axis=1))
    return M


def check_mixing(M: np.ndarray, graph: nx.Graph, atol: float = 1e-9) -> None:
    """Raise ValueError naming the first problem unless M is a valid gossip matrix for the connected graph."""
    n = graph.number_of_nodes()
    if set(graph.nodes) != set(range(n)):
        raise ValueError(f"graph nodes must be 0..{n - 1}")
    if n == 0 or not nx.is_connected(graph):
        parts = nx.number_connected_components(graph) if n else 0
        raise ValueError(f"graph is not connected ({parts} components): gossip cannot reach consensus")
    M = np.asarray(M, dtype=np.float64)
    if M.shape != (n, n):
        raise ValueError(f"mixing matrix has shape {M.shape}, expected ({n}, {n}) for a graph of {n} nodes")
    if not np.isfinite(M).all():
        raise ValueError("mixing matrix has NaN or Inf entries")
    _check_no_negative(M, atol)
    _check_support(M, graph, atol)
    _check_symmetric(M, atol)
    _check_doubly_stochastic(M, atol)


def _check_no_negative(M: np.ndarray, atol: float) -> None:
    bad = np.argwhere(M < -atol)
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"mixing matrix has negative entries, first M[{i}, {j}] = {M[i, j]:.6g}")


def _check_support(M: np.ndarray, graph: nx.Graph, atol: float) -> None:
    allowed = _adjacency(graph) + np.eye(len(M))
    bad = np.argwhere((np.abs(M) > atol) & (allowed == 0))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"mixing matrix has weight off the graph: M[{i}, {j}] = {M[i, j]:.6g} but {i}-{j} is no edge")


def _check_symmetric(M: np.ndarray, atol: float) -> None:
    bad = np.argwhere(np.abs(M - M.T) > atol)
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"mixing matrix is not symmetric: M[{i}, {j}] = {M[i, j]:.6g} != M[{j}, {i}] = {M[j, i]:.6g}")


def _check_doubly_stochastic(M: np.ndarray, atol: float) -> None:
    for axis, name in ((1, "row"), (0, "column")):
        sums = M.sum(axis=axis)
        bad = np.flatnonzero(np.abs(sums - 1.0) > atol)
        if len(bad):
            k = bad[0]
            raise ValueError(f"mixing matrix is not doubly stochastic: {name} {k} sums to {sums[k]:.12g}, not 1")


def spectral_gap(M: np.ndarray) -> float:
    """1 - |lambda_2|, lambda_2 the eigenvalue of second largest magnitude: how fast gossip reaches consensus."""
    M = np.asarray(M, dtype=np.float64)
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] < 2:
        raise ValueError(f"spectral gap needs a square matrix of size >= 2, got shape {M.shape}")
    eigenvalues = np.linalg.eigvalsh(M) if np.allclose(M, M.T) else np.linalg.eigvals(M)
    magnitudes = np.sort(np.abs(eigenvalues))[::-1]
    return float(1.0 - magnitudes[1])


def mixing_row(M: np.ndarray, i: int) -> dict[int, float]:
    """Peer i's row as {peer: weight}, self included, zero weights left out."""
    return {int(j): float(M[i, j]) for j in np.flatnonzero(M[i])}


def renormalize_row(row_weights: dict[int, float], self_id: int, heard: set[int]) -> dict[int, float]:
    """Drop the neighbours not heard from this round and move their weight onto self, so the row still sums to 1.

    `row_weights` is this peer's row (self and neighbours; self may be absent, meaning weight 0). Ids in `heard`
    that are not in the row are ignored. With every neighbour heard the row comes back unchanged, bit for bit.
    """
    _check_row(row_weights)
    kept = {self_id: row_weights.get(self_id, 0.0)}
    lost = 0.0
    for peer, weight in row_weights.items():
        if peer == self_id:
            continue
        if peer in heard:
            kept[peer] = weight
        else:
            lost += weight
    kept[self_id] += lost
    return kept


def _check_row(row_weights: dict[int, float]) -> None:
    # A row that does not sum to 1 would silently rescale the adapter; refuse it rather than renormalize it.
    total = 0.0
    for peer, weight in row_weights.items():
        if not weight >= 0:  # NaN fails this too
            raise ValueError(f"mixing row has weight {weight!r} for peer {peer}; weights must be >= 0")
        total += weight
    if abs(total - 1.0) > 1e-6:
        raise ValueError(f"mixing row sums to {total:.12g}, not 1")
