"""Several peers in one process (`declora simulate --peers-per-process M`): each peer on a thread of its own, with
its own adapter, head, optimizer, data, random stream, checkpoints and ZeroMQ endpoint, so that on the wire it is a
peer like any other; the frozen base model is held once (learn.shared_base). The peers time-share the process's
compute: a learner holds the process-wide random-stream lock while it trains or evaluates, as in-process runs do.

    python -m declora.node.group --config DIR/config.json --peer-ids 0,1,2,3
"""
from __future__ import annotations

import argparse
import logging
import sys

from declora.config import ConfigError, RunConfig, add_flags

log = logging.getLogger("declora.node.group")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m declora.node.group", description="run several peers in one process, "
                                "sharing the frozen base model")
    p.add_argument("--peer-ids", required=True, help="comma-separated ids of the peers this process runs")
    p.add_argument("--resume-round", type=int, default=None, help="with --resume: the round to resume after")
    add_flags(p)
    return p


def run_group(cfg: RunConfig, peer_ids: list[int], resume_round: int | None = None) -> None:
    from declora.learn.shared_base import share_frozen_weights
    from declora.node.neighbourhood import neighbourhood_for
    from declora.node.peer import run_peer
    from declora.node.peer_threads import run_on_threads
    from declora.node.transports import check_links, open_transport
    from declora.node.workload import build_learner

    bad = [i for i in peer_ids if not 0 <= i < cfg.peers]
    if bad or not peer_ids:
        raise ConfigError(f"--peer-ids must be ids in 0..{cfg.peers - 1}, got {peer_ids}")
    hoods = {i: neighbourhood_for(cfg, i) for i in peer_ids}
    check_links(cfg, peer_ids)
    learners, freed = {}, 0
    for i in peer_ids:  # one after another: building a model seeds torch's global generator
        learners[i] = build_learner(cfg, i)
        if i != peer_ids[0]:
            freed += share_frozen_weights(learners[i].model, learners[peer_ids[0]].model)
    log.info("peers %s in one process share one frozen base (%.0f MB not held twice)", peer_ids, freed / 1e6)
    transports = {i: open_transport(cfg, i, hoods[i].neighbours, hoods[i].inbound_layout(learners[i].adapter()))
                  for i in peer_ids}
    jobs = {i: (run_peer, (cfg, i, learners[i], transports[i], hoods[i], resume_round)) for i in peer_ids}
    run_on_threads(jobs, "peers of this process")


def run_from_args(args: argparse.Namespace) -> int:
    from declora.node.entry import run_process

    try:
        ids = [int(x) for x in args.peer_ids.split(",") if x.strip()]
    except ValueError:
        print(f"declora group: error: --peer-ids must be integers like 0,1,2, got {args.peer_ids!r}", file=sys.stderr)
        return 2
    return run_process("group", "%(threadName)s", args,  # log lines say which peer (thread) wrote them
                       lambda cfg: run_group(cfg, ids, args.resume_round))


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
