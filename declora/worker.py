"""One peer started by a cluster launcher: `torchrun ... -m declora.worker` or `srun ... declora worker`.

The launcher decides who is who: this process is peer RANK of WORLD_SIZE (`--peers` is the world size). Peers find
each other through the launcher's rendezvous store (declora.node.rendezvous), so no address book or host list is
needed; --keys (pre-shared key files) is optional, and without it each peer makes a CURVE key pair of its own and
publishes the public half. When every peer is done, rank 0 gathers their metrics through the store and writes the
run's summary, plots and final lines into its --out, as `declora simulate` does.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path

from declora.config import ConfigError, RunConfig, add_flags, write_run_config
from declora.node import rendezvous
from declora.node.neighbourhood import neighbourhood_for

log = logging.getLogger("declora.worker")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="declora worker", description="run one peer under torchrun or srun; peers "
                                "find each other through the launcher's rendezvous")
    add_flags(p)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    from declora.node.entry import run_process

    try:
        slot = rendezvous.launcher_slot()
    except ConfigError as e:
        print(f"declora worker: error: {e}", file=sys.stderr)
        return 2
    if slot is None:
        print("declora worker: error: not started by torchrun or srun (no RANK/MASTER_ADDR or SLURM_PROCID); start "
              "it with `torchrun --nnodes N --nproc-per-node L -m declora.worker ...` or `srun -n N declora "
              "worker ...`, or use `declora launch-node` with an address book", file=sys.stderr)
        return 2
    if args.peers is not None and args.peers != slot.world:
        print(f"declora worker: error: --peers {args.peers} but the launcher started {slot.world} workers; drop "
              f"--peers (the world size is the peer count)", file=sys.stderr)
        return 2
    return run_process("worker", f"peer {slot.rank}", args, lambda cfg: run_worker(cfg, slot),
                       overrides={"peers": slot.world})


def run_worker(cfg: RunConfig, slot: rendezvous.Slot) -> None:
    from declora.node.peer import run_peer
    from declora.node.transports import open_transport
    from declora.node.workload import build_learner, check_data

    if cfg.server or cfg.mode == "centralized":
        raise ConfigError("declora worker runs gossip peers; run the server baseline or the centralized reference "
                          "with `declora simulate` or `declora launch-node`")
    started = time.time()
    run_dir = Path(cfg.out)
    if slot.local_rank == 0:
        check_data(cfg)
        write_run_config(cfg, run_dir / "config.json")  # each node's copy: --resume reads it there
    hood = neighbourhood_for(cfg, slot.rank)
    store = rendezvous.open_store(slot, cfg.start_timeout_s)
    host = rendezvous.local_address(slot.store_host)
    endpoint = f"tcp://{host}:{rendezvous.free_port(host)}"
    security = _own_security(cfg, slot.rank)
    card = {"endpoint": endpoint, "public_key": security.public_key.decode() if security else ""}
    cards = rendezvous.exchange_cards(store, slot, card, cfg.start_timeout_s)
    if security is not None and not cfg.keys:
        security = replace(security, public_keys={r: c["public_key"].encode() for r, c in cards.items()})
    log.info("peer %d of %d (%s) at %s; neighbours %s", slot.rank, slot.world, slot.launcher, endpoint,
             {j: cards[j]["endpoint"] for j in hood.neighbours})
    learner = build_learner(cfg, slot.rank)
    transport = open_transport(cfg, slot.rank, hood.neighbours, hood.inbound_layout(learner.adapter()),
                               book={r: c["endpoint"] for r, c in cards.items()}, security=security)
    run_peer(cfg, slot.rank, learner, transport, hood)
    metrics_path = run_dir / "metrics" / f"peer-{slot.rank}.jsonl"
    rendezvous.publish_metrics(store, slot.rank, metrics_path.read_text() if metrics_path.exists() else "")
    if slot.rank == 0:
        _write_summary(cfg, run_dir, store, slot, time.time() - started)


def _own_security(cfg: RunConfig, rank: int):
    """This peer's CURVE keys: from --keys, or a fresh pair (None with --insecure: plain text)."""
    from declora.wire.security import SecurityConfig, load_security, new_keypair

    if cfg.keys:
        return load_security(cfg.keys, rank)
    if cfg.insecure:
        return None
    public, secret = new_keypair()
    return SecurityConfig(rank, public, secret, {})


def _write_summary(cfg: RunConfig, run_dir: Path, store, slot, wall_s: float) -> None:
    """Rank 0: the other nodes' metrics files (peers on this node wrote theirs here already), then the summary."""
    from declora.launch import finish

    gathered = rendezvous.gather_metrics(store, slot.world, cfg.start_timeout_s)
    for rank, text in gathered.items():
        path = run_dir / "metrics" / f"peer-{rank}.jsonl"
        if not path.exists() and text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
    missing = sorted(set(range(slot.world)) - set(gathered))
    if missing:
        log.warning("no metrics from peers %s: the summary leaves them out", missing)
    finish(cfg, run_dir, wall_s, 0 if not missing else 1, sys.stdout)


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
