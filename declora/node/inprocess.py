"""A whole run inside one process: every peer (and the server) on a thread of its own, talking over the in-process
network (`wire="inproc"`) or over real ZeroMQ sockets on loopback (`wire="zmq"`).

The threads run the same `run_peer` and `run_server` as peer processes do, with the same learners, neighbourhoods
and checkpoints; only the transport differs. That makes the in-process network a faithful twin that can be checked
against the real wire bit for bit (tests/integration/test_golden.py), and a way to run a small swarm in seconds.
Learners are built one after another before any thread starts (building a model seeds torch's global generator);
afterwards each learner's random stream keeps the peers' dropout draws apart.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from declora.config import RunConfig
from declora.node.addressbook import free_loopback_ports
from declora.node.neighbourhood import neighbourhood_for
from declora.node.peer import run_peer
from declora.node.peer_threads import run_on_threads
from declora.node.server import run_server
from declora.node.transports import liveness_of, stale_rounds_of
from declora.node.workload import build_learner, server_expectations
from declora.wire.inproc import InProcNetwork
from declora.wire.zmq_transport import ZmqTransport

log = logging.getLogger("declora.node.inprocess")
WIRES = ("inproc", "zmq")


def run_in_process(cfg: RunConfig, wire: str = "inproc") -> None:
    """Run every peer of `cfg` (and its server) to the end; raises if any of them failed."""
    if wire not in WIRES:
        raise ValueError(f"wire must be one of {', '.join(WIRES)}, got {wire!r}")
    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(max(1, cfg.threads or 1))
    alone = cfg.mode == "centralized"
    peers = [0] if alone else list(range(cfg.peers))
    hoods = {i: neighbourhood_for(cfg, i) for i in peers}
    learners = {i: build_learner(cfg, i, alone=alone) for i in peers}
    links = {i: (hoods[i].neighbours, hoods[i].inbound_layout(learners[i].adapter())) for i in peers}
    if cfg.server:
        server_layout, samples = server_expectations(cfg)
        links[cfg.server_id] = (peers, server_layout)
    transports = _transports(cfg, links, wire)

    jobs = {i: (run_peer, (cfg, i, learners[i], transports[i], hoods[i])) for i in peers}
    if cfg.server:
        jobs[cfg.server_id] = (run_server, (cfg, transports[cfg.server_id], server_layout, samples))
    run_on_threads(jobs, "in-process peers")


def _transports(cfg: RunConfig, links: dict, wire: str) -> dict:
    liveness, stale = liveness_of(cfg), stale_rounds_of(cfg)
    if wire == "inproc":
        net = InProcNetwork()
        return {i: net.transport(i, nbrs, layout=layout, liveness=liveness, max_stale_rounds=stale)
                for i, (nbrs, layout) in links.items()}
    book = dict(zip(sorted(links), (f"tcp://127.0.0.1:{p}" for p in free_loopback_ports(len(links)))))
    return {i: ZmqTransport(i, book[i], {j: book[j] for j in nbrs}, layout=layout, liveness=liveness,
                            max_stale_rounds=stale)
            for i, (nbrs, layout) in links.items()}
