"""The transport a peer process (or the server) talks through, built from the run config: ZeroMQ with the address
book, liveness and CURVE settings of the run; nobody to talk to (the centralized reference) gets a private
in-process transport, so the loop has no special case and no socket is opened for nothing."""
from __future__ import annotations

from pathlib import Path

from declora.config import RunConfig
from declora.node.addressbook import address_book, bind_endpoint
from declora.wire.chaos import attach as attach_chaos
from declora.wire.chaos import parse
from declora.wire.inproc import InProcNetwork
from declora.wire.liveness import Liveness
from declora.wire.protocol import AdapterLayout
from declora.wire.security import SecurityConfig, check_plaintext, load_security
from declora.wire.zmq_transport import ZmqTransport


def liveness_of(cfg: RunConfig) -> Liveness:
    return Liveness(heartbeat_interval_s=cfg.heartbeat_s, missed_intervals_before_down=cfg.missed_heartbeats)


def stale_rounds_of(cfg: RunConfig) -> int:
    """How late a round message may be and still be kept: gossip mixes late messages (bounded staleness); the
    server baseline's rounds are synchronous, so there a late message is only old."""
    return 0 if cfg.server else cfg.stale_rounds


def run_address_book(cfg: RunConfig) -> dict[int, str]:
    """Every process id of the run -> its endpoint; a gossip topology file's nodes may carry the addresses."""
    topology = None if cfg.server or cfg.mode == "centralized" else cfg.gossip_topology()
    return address_book(cfg, topology, Path(cfg.out), n_ids=cfg.peers + 1 if cfg.server else cfg.peers)


def open_transport(cfg: RunConfig, me: int, neighbours: list[int], layout: AdapterLayout | None,
                   book: dict[int, str] | None = None, security: SecurityConfig | None = None):
    """Peer (or server) `me`'s transport to `neighbours`. `book` and `security` default to the run's address book
    and key files; a peer that found the others through a launcher's rendezvous passes what it found there."""
    if not neighbours:
        return InProcNetwork().transport(me, [], layout=layout, liveness=liveness_of(cfg))
    book = run_address_book(cfg) if book is None else book
    if security is None and cfg.keys:
        security = load_security(cfg.keys, me)
    transport = ZmqTransport(
        me, bind_endpoint(book[me]), {j: book[j] for j in neighbours}, layout=layout, liveness=liveness_of(cfg),
        security=security, allow_plaintext_nonlocal=cfg.insecure, max_stale_rounds=stale_rounds_of(cfg),
    )
    return attach_chaos(transport, parse(cfg.chaos, cfg.cut), seed=cfg.seed)  # --chaos, --cut: nothing by default


def check_links(cfg: RunConfig, ids: list[int]) -> None:
    """Before anything starts: the address book is readable, every local peer's keys load, and without keys no plain
    text would leave this host unless --insecure. Raises ConfigError or SecurityError, with the fix in the message."""
    if cfg.mode == "centralized":
        return  # a peer that is alone has no links
    book = run_address_book(cfg)
    if cfg.keys:
        for i in ids:
            load_security(cfg.keys, i)
    else:
        check_plaintext([*(bind_endpoint(book[i]) for i in ids), *book.values()], cfg.insecure)
