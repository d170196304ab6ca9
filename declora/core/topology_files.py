"""Where a Topology comes from: a spec string (`ring:8`) or a file, TOML or JSON ({nodes, edges}) or a plain edge
list (`i j` per line); and the TOML that writes one back. The formats are described in topologies/README.md.

Every problem with a file raises TopologyError with one line saying where and what; a node's address (host, port,
LoRA rank) is checked here, before any peer tries to bind it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import networkx as nx

from declora.core.checks import is_int, short_list
from declora.core.graphs import TopologyError, build_graph
from declora.core.topology import NodeInfo, Topology, topology_from_graph

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

FILE_SUFFIXES = (".toml", ".json", ".txt", ".edges", ".edgelist")
NODE_KEYS = ("id", "host", "port", "rank")
FILE_KEYS = ("nodes", "edges", "description")


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
        if not (isinstance(item, list) and len(item) == 2 and all(is_int(v) for v in item)):
            raise TopologyError(f"{where}: bad edge {item!r}; each edge is a pair of node ids [i, j]")
        edges.append((item[0], item[1]))
    return edges


def _nodes_from(raw, where: str) -> tuple[NodeInfo, ...]:
    if not isinstance(raw, list) or not raw:
        raise TopologyError(f"{where}: 'nodes' must be a non-empty list of tables with an 'id'")
    infos = [_node_from(item, where) for item in raw]
    ids = sorted(info.id for info in infos)
    if ids != list(range(len(infos))):
        raise TopologyError(f"{where}: node ids must be 0..{len(infos) - 1}, each once; got {short_list(ids)}")
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
    if not is_int(node_id) or node_id < 0:
        return "'id' must be an integer >= 0"
    if host is not None and (not isinstance(host, str) or not host):
        return "'host' must be a non-empty string"
    if port is not None and (not is_int(port) or not 1 <= port <= 65535):
        return "'port' must be an integer in 1..65535"
    if rank is not None and (not is_int(rank) or rank < 1):
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
    # Unlike graphs._graph, keeps self-loops so that topology_from_graph can name them.
    graph = nx.Graph()
    graph.add_nodes_from(range(n))
    graph.add_edges_from(edges)
    return graph


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split())


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
