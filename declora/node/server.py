"""The parameter-server baseline that gossip is benchmarked against.

A real process with one ROUTER (the same transport as a peer, its neighbours being every client). Each round it
collects the clients' UPDATE messages, aggregates them with weights equal to the clients' data shares, and sends
every client an AGGREGATE:

- `fedit`: average A and B (FedIT); one message for all.
- `flora`: the stack of every client's factors (FLoRA); each client merges it into its base and starts afresh.
- `flexlora`: the exact weighted sum re-factorized by SVD to each client's own rank; one message per client.
- `zeropad`: HetLoRA zero-padding, truncated to each client's rank; one message per client.

Clients are ordinary peers (`declora.node.peer`) whose only neighbour is the server.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from declora.core import aggregate
from declora.node.addressbook import address_book, bind_endpoint
from declora.config import ConfigError, RunConfig, add_server_flags, resolve
from declora.core.factors import Adapter
from declora.node.metrics import MetricsWriter

log = logging.getLogger("declora.node.server")


def aggregate_updates(method: str, updates: dict[int, Adapter], samples: dict[int, int], alpha: float,
                      rslora: bool = False) -> dict[int, Adapter]:
    """Client id -> the adapter it gets back. Pure: no sockets, testable on its own."""
    ids = sorted(updates)
    adapters = [updates[i] for i in ids]
    weights = aggregate.data_share_weights([samples[i] for i in ids])
    if method == "fedit":
        shared = aggregate.gossip(adapters, weights)
        return {i: shared for i in ids}
    if method == "flora":
        shared = aggregate.stack(adapters, weights)
        return {i: shared for i in ids}
    if method == "flexlora":
        return {i: aggregate.svd(adapters, weights, rank=updates[i].ranks(), alpha=alpha, rslora=rslora) for i in ids}
    if method == "zeropad":
        return {i: aggregate.zeropad(adapters, weights, rank=updates[i].ranks(), alpha=alpha, rslora=rslora)
                for i in ids}
    raise ConfigError(f"unknown server aggregation {method!r}; use fedit, flora, flexlora or zeropad")


def run_server(cfg: RunConfig, threads: int = 1, first_round: int = 0) -> None:
    from declora.node.peer import open_transport
    from declora.wire.protocol import AdapterLayout, Kind, ProtocolError, encode_adapter, make_message, message_to_adapter

    torch.set_num_threads(max(1, threads))
    run_dir = Path(cfg.out)
    me = cfg.peers
    clients = list(range(cfg.peers))
    book = address_book(cfg, None, run_dir, n_ids=cfg.peers + 1)
    metrics = MetricsWriter(run_dir / "metrics" / "server.jsonl", truncate_after_round=first_round - 1)
    layout: AdapterLayout | None = None  # the first client's HELLO says what every update must look like

    with open_transport(cfg, me, clients, book, None) as transport:
        missing = transport.wait_for_neighbours(cfg.start_timeout_s, clients)
        if missing:
            log.warning("starting without clients %s", sorted(missing))
        for t in range(first_round, cfg.rounds):
            started = time.time()
            result = transport.collect(t, Kind.UPDATE, set(clients), cfg.deadline_s)
            layout = layout or _layout_from_hello(transport, clients)
            updates, samples = {}, {}
            for j, message in sorted(result.received.items()):
                try:
                    updates[j] = message_to_adapter(message, layout)
                    samples[j] = _sample_count(message)
                except ProtocolError as e:
                    log.warning("dropped round %d update from client %d: %s", t, j, e)
            bytes_out = 0
            if updates:
                replies = aggregate_updates(cfg.server, updates, samples, cfg.alpha, cfg.rslora)
                encoded: dict[int, object] = {}  # one encoding per distinct reply (fedit/flora: one for all)
                for j in transport.live_neighbours() | set(updates):
                    reply = replies.get(j) or next(iter(replies.values()))
                    if cfg.server in ("flexlora", "zeropad") and j not in replies:
                        continue  # its rank is unknown this round; it keeps its local adapter
                    if id(reply) not in encoded:
                        tensors, _ = encode_adapter(reply, cfg.codec, block_size=cfg.block_size,
                                                    stochastic=cfg.stochastic_rounding, return_decoded=False)
                        encoded[id(reply)] = make_message(Kind.AGGREGATE, me, t, tensors)
                    if transport.send(j, encoded[id(reply)]):
                        bytes_out += encoded[id(reply)].nbytes
            record = {"round": t, "clients_heard": len(updates), "clients_missing": sorted(result.missing),
                      "bytes_in": sum(m.nbytes for m in result.received.values()),
                      "bytes_out": bytes_out,
                      "round_seconds": time.time() - started}
            metrics.write(record)
            log.info("round %d: %d updates in (%.2f MB), %.2f MB out", t, len(updates), record["bytes_in"] / 1e6,
                     record["bytes_out"] / 1e6)
        # Let the last aggregates drain before close() says BYE.
        transport.service(timeout_s=0.5)
    metrics.close()


def _layout_from_hello(transport, clients: list[int]):
    from declora.wire.protocol import AdapterLayout, ProtocolError

    for j in clients:
        body = transport.hello(j) or {}
        if "layout" in body:
            try:
                return AdapterLayout.from_body(body["layout"])
            except ProtocolError as e:
                log.warning("client %d sent a bad layout: %s", j, e)
    return None


def _sample_count(message) -> int:
    from declora.wire.protocol import ProtocolError

    n = message.body.get("samples")
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ProtocolError("body", f"an update must state its sample count as a positive integer, got {n!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="declora server", description="run the parameter-server baseline")
    add_server_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s server %(levelname)s %(message)s")
    try:
        cfg = resolve(args)
        if not cfg.server:
            raise ConfigError("the server needs --server fedit|flora|flexlora|zeropad")
        first = args.resume_round + 1 if cfg.resume and args.resume_round is not None else 0
        run_server(cfg, cfg.threads or 1, first)
    except (ConfigError, FileNotFoundError) as e:
        print(f"declora server: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
