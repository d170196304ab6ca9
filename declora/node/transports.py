"""The transport a peer process (or the server) talks through, built from the run config: ZeroMQ with the address
book, liveness and CURVE settings of the run; nobody to talk to (the centralized reference) gets a private
in-process transport, so the loop has no special case and no socket is opened for nothing."""
from __future__ import annotations

from pathlib import Path

from declora.config import RunConfig
from declora.node.addressbook import address_book, bind_endpoint
from declora.wire.inproc import InProcNetwork
from declora.wire.liveness import Liveness
from declora.wire.protocol import AdapterLayout
from declora.wire.security import load_security
from declora.wire.zmq_transport import ZmqTransport


def liveness_of(cfg: RunConfig) -> Liveness:
    return Liveness(heartbeat_interval_s=cfg.heartbeat_s, missed_intervals_before_down=cfg.missed_heartbeats)


def open_transport(cfg: RunConfig, me: int, neighbours: list[int], topology, layout: AdapterLayout | None):
    """Peer (or server) `me`'s transport to `neighbours`; `topology` may carry the nodes' addresses."""
    if not neighbours:
        return InProcNetwork().transport(me, [], layout=layout, liveness=liveness_of(cfg))
    n_ids = cfg.peers + 1 if cfg.server else cfg.peers
    book = address_book(cfg, topology, Path(cfg.out), n_ids=n_ids)
    return ZmqTransport(
        me, bind_endpoint(book[me]), {j: book[j] for j in neighbours}, layout=layout, liveness=liveness_of(cfg),
        security=load_security(cfg.keys, me) if cfg.keys else None, allow_plaintext_nonlocal=cfg.insecure,
    )
