"""The Topology: a connected undirected graph on nodes 0..N-1 plus what is known about each node.

A Topology comes from a spec string or a topology file (`topology_files.load_topology`); its graph from the builders
in `graphs`, its gossip weights from `mixing`. Per-node addresses (host, port, LoRA rank) are for multi-node runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import networkx as nx

from declora.core.checks import short_list
from declora.core.graphs import TopologyError


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
        raise TopologyError(f"{spec}: nodes must be numbered 0..{n - 1}, got {short_list(sorted(graph.nodes))}")
    loops = list(nx.selfloop_edges(graph))
    if loops:
        raise TopologyError(f"{spec}: self-loop on node {loops[0][0]}; a peer's own weight is implicit")
    if not nx.is_connected(graph):
        parts = sorted(sorted(c) for c in nx.connected_components(graph))
        shown = "; ".join(short_list(p) for p in parts[:3])
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
