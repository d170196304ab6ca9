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
from collections import Counter
from pathlib import Path

from declora.config import ConfigError, RunConfig, add_server_flags
from declora.core import aggregate
from declora.core.factors import Adapter
from declora.core.strategies import Strategy, get_strategy
from declora.node.metrics import MetricsWriter
from declora.wire.adapter_messages import encode_adapter, message_to_adapter
from declora.wire.protocol import AdapterLayout, Kind, ProtocolError, make_message

log = logging.getLogger("declora.node.server")


def aggregate_updates(strategy: Strategy, updates: dict[int, Adapter], samples: dict[int, int], alpha: float,
                      rslora: bool = False) -> dict[int, Adapter]:
    """Client id -> the adapter it gets back, weighted by data shares. Pure: no sockets, testable on its own. A
    strategy whose result depends on the receiver's rank gives each client its own; the others one for all."""
    ids = sorted(updates)
    adapters = [updates[i] for i in ids]
    weights = aggregate.data_share_weights([samples[i] for i in ids])
    if strategy.per_receiver:
        return {i: strategy.combine(adapters, weights, rank=updates[i].ranks(), alpha=alpha, rslora=rslora)
                for i in ids}
    shared = strategy.combine(adapters, weights, rank=None, alpha=alpha, rslora=rslora)
    return {i: shared for i in ids}


def run_server(cfg: RunConfig, transport, layout: AdapterLayout, samples: dict[int, int],
               first_round: int = 0) -> None:
    """The server's rounds. `layout` (what every update must look like) and `samples` (each client's training
    examples, the aggregation weights) come from the run config, never from what a client claims."""
    run_dir = Path(cfg.out)
    me, clients = cfg.server_id, list(range(cfg.peers))
    strategy = get_strategy(cfg.server)
    ranks = cfg.rank_list()
    metrics = MetricsWriter(run_dir / "metrics" / "server.jsonl", truncate_after_round=first_round - 1)

    with transport:
        missing = transport.wait_for_neighbours(cfg.start_timeout_s, clients)
        if missing:
            log.warning("starting without clients %s", sorted(missing))
        for t in range(first_round, cfg.rounds):
            started = time.time()
            result = transport.collect(t, Kind.UPDATE, set(clients), cfg.deadline_s)
            updates, dropped = {}, Counter()
            for j, message in sorted(result.received.items()):
                try:
                    updates[j] = checked_update(message, layout, ranks[j], samples[j])
                except ProtocolError as e:
                    dropped[e.reason] += 1
                    log.warning("dropped round %d update from client %d: %s", t, j, e)
            bytes_out = 0
            if updates:
                replies = aggregate_updates(strategy, updates, samples, cfg.alpha, cfg.rslora)
                encoded: dict[int, object] = {}  # one encoding per distinct reply (fedit/flora: one for all)
                for j in transport.live_neighbours() | set(updates):
                    if strategy.per_receiver and j not in replies:
                        continue  # its rank is unknown this round; it keeps its local adapter
                    reply = replies.get(j) or next(iter(replies.values()))
                    if id(reply) not in encoded:
                        tensors = encode_adapter(reply, cfg.codec, block_size=cfg.block_size,
                                                 stochastic=cfg.stochastic_rounding, dense_codec=cfg.head_codec)
                        encoded[id(reply)] = make_message(Kind.AGGREGATE, me, t, tensors)
                    if transport.send(j, encoded[id(reply)]):
                        bytes_out += encoded[id(reply)].nbytes
            record = {"round": t, "clients_heard": len(updates), "clients_missing": sorted(result.missing),
                      "updates_dropped": dict(dropped),
                      "bytes_in": sum(m.nbytes for m in result.received.values()), "bytes_out": bytes_out,
                      "round_seconds": time.time() - started}
            metrics.write(record)
            log.info("round %d: %d updates in (%.2f MB), %.2f MB out", t, len(updates), record["bytes_in"] / 1e6,
                     record["bytes_out"] / 1e6)
        # Let the last aggregates drain before close() says BYE.
        transport.service(timeout_s=0.5)
    metrics.close()


def checked_update(message, layout: AdapterLayout, rank: int, samples: int) -> Adapter:
    """A client's update, or ProtocolError: it must match the layout, carry the client's own rank (from the config)
    in every module, and state the sample count the server computed for that client."""
    adapter = message_to_adapter(message, layout)
    wrong = sorted({r for r in adapter.ranks().values() if r != rank})
    if wrong:
        raise ProtocolError("rank", f"update of rank {wrong[0]}, this client's rank is {rank}")
    claimed = message.body.get("samples")
    if claimed != samples or isinstance(claimed, bool):
        raise ProtocolError("samples", f"update states {claimed!r} samples, this client's shard has {samples}")
    return adapter


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="declora server", description="run the parameter-server baseline")
    add_server_flags(p)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    """The server process from parsed flags (`declora server` and `python -m declora.node.server`)."""
    from declora.node.entry import run_process
    from declora.node.transports import check_links, open_transport
    from declora.node.workload import server_expectations

    def body(cfg: RunConfig) -> None:
        if not cfg.server:
            raise ConfigError("the server needs --server fedit|flora|flexlora|zeropad")
        first = args.resume_round + 1 if cfg.resume and args.resume_round is not None else 0
        check_links(cfg, [cfg.server_id])
        layout, samples = server_expectations(cfg)
        transport = open_transport(cfg, cfg.server_id, list(range(cfg.peers)), layout)
        run_server(cfg, transport, layout, samples, first)

    return run_process("server", "server", args, body)


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
