"""Where each peer listens: peer id -> ZeroMQ endpoint, from one of (first match wins)

1. `addresses.json` in the run folder (written by `declora simulate`, which picks free loopback ports);
2. a topology file whose nodes carry `host` and `port`;
3. `--hosts h0,h1,...` (one per node) with `--base-port P`: peer i listens on host[i // peers_per_node], port P + i;
4. `--base-port P` alone: every peer on 127.0.0.1, port P + i.
"""
from __future__ import annotations

import json
import socket
from pathlib import Path

from declora.config import ConfigError, RunConfig
from declora.wire.security import is_loopback

ADDRESSES_FILE = "addresses.json"


def free_loopback_ports(n: int) -> list[int]:
    """Ask the OS for n free TCP ports on 127.0.0.1 (held open together so they are distinct)."""
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def write_addresses(run_dir: str | Path, book: dict[int, str]) -> Path:
    path = Path(run_dir) / ADDRESSES_FILE
    path.write_text(json.dumps({str(k): v for k, v in sorted(book.items())}, indent=2) + "\n")
    return path


def read_addresses(path: Path, n_ids: int) -> dict[int, str]:
    """The address book a run wrote: {"0": "tcp://127.0.0.1:PORT", ...} for ids 0..n_ids-1."""
    fix = "delete it (declora simulate picks new ports and writes it again) or repair it"
    try:
        raw = json.loads(path.read_text())
        book = {int(k): v for k, v in raw.items()}
    except (OSError, ValueError, AttributeError) as e:
        raise ConfigError(f"{path}: not a valid address book ({type(e).__name__}: {e}); {fix}") from None
    missing = [i for i in range(n_ids) if not isinstance(book.get(i), str) or "://" not in book[i]]
    if missing:
        raise ConfigError(f"{path}: no endpoint like tcp://HOST:PORT for peer {missing[0]}; {fix}")
    return book


def node_of_peer(cfg: RunConfig, peer_id: int) -> int:
    hosts = cfg.host_list()
    per_node = cfg.peers_per_node or max(1, -(-cfg.peers // max(1, len(hosts))))
    return peer_id // per_node


def address_book(cfg: RunConfig, topology, run_dir: str | Path | None = None, n_ids: int | None = None) -> dict[int, str]:
    """peer id -> tcp://host:port for ids 0..n_ids-1 (default: the config's peer count)."""
    n_ids = cfg.peers if n_ids is None else n_ids
    if run_dir is not None and (Path(run_dir) / ADDRESSES_FILE).is_file():
        return read_addresses(Path(run_dir) / ADDRESSES_FILE, n_ids)
    nodes = {node.id: (node.host, node.port) for node in getattr(topology, "nodes", ()) if node.host and node.port}
    if nodes and all(i in nodes for i in range(n_ids)):
        return {i: f"tcp://{nodes[i][0]}:{nodes[i][1]}" for i in range(n_ids)}
    if cfg.emulated_hosts():
        raise ConfigError(f"--hosts {cfg.hosts} is for `declora simulate`, which makes the namespaces and writes "
                          f"{Path(run_dir or cfg.out) / ADDRESSES_FILE}; other commands take real host names")
    hosts = cfg.host_list()
    if hosts:
        if not cfg.base_port:
            raise ConfigError("--hosts needs --base-port P (peer i listens on port P + i)")
        book = {}
        for i in range(n_ids):
            node = node_of_peer(cfg, i)
            if node >= len(hosts):
                raise ConfigError(f"peer {i} falls on node {node} but --hosts lists only {len(hosts)} hosts; "
                                  f"add hosts or raise --peers-per-node")
            book[i] = f"tcp://{hosts[node]}:{cfg.base_port + i}"
        return book
    if cfg.base_port:
        return {i: f"tcp://127.0.0.1:{cfg.base_port + i}" for i in range(n_ids)}
    raise ConfigError("no peer addresses: pass --base-port (one host), --hosts with --base-port (several hosts), "
                      "or a topology file whose nodes carry host and port")


def bind_endpoint(endpoint: str) -> str:
    """What a peer binds for its advertised endpoint: loopback stays loopback, other hosts bind all interfaces."""
    if not endpoint.startswith("tcp://"):
        return endpoint
    host, port = endpoint[len("tcp://"):].rsplit(":", 1)
    return f"tcp://127.0.0.1:{port}" if is_loopback(host) else f"tcp://*:{port}"
