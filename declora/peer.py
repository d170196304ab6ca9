"""One peer: train K local steps, send the adapter to the neighbours, mix what arrived, repeat.

Run as `declora peer --config run.toml --peer-id I` (one peer of a multi-node run) or started by
`declora simulate` / `declora launch-node`. The loop in `run_peer` reads top to bottom; the parts it wires
(model, data, codec, transport, aggregation) live in their own modules.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from . import aggregate
from .addressbook import address_book, bind_endpoint
from .checkpoint import adapter_from_state, adapter_to_state, checkpoint_path, load_checkpoint, save_checkpoint
from .config import ConfigError, RunConfig, add_flags, resolve
from .factors import Adapter
from .metrics import MetricsWriter
from .topology import load_topology, mixing_matrix, mixing_row, renormalize_row

log = logging.getLogger("declora.peer")


# ---- the round loop ------------------------------------------------------------------------------------------------
def run_peer(cfg: RunConfig, peer_id: int, threads: int = 1) -> None:
    from .adapter import read_adapter, save_adapter, write_adapter
    from .protocol import AdapterLayout, Kind, make_message
    from .wire import AdapterSender, decode_received

    torch.set_num_threads(max(1, threads))
    run_dir = Path(cfg.out)
    topology = load_topology(cfg.topology_spec())
    if topology.n != cfg.peers:
        raise ConfigError(f"the topology has {topology.n} nodes but --peers is {cfg.peers}")
    neighbours = topology.neighbors(peer_id)
    row = mixing_row(mixing_matrix(topology.graph, cfg.mixing), peer_id)
    rank = cfg.rank_list()[peer_id]

    model, trainer, eval_set, task = build_local_learner(cfg, peer_id, rank, n_shards=cfg.peers)
    layout = AdapterLayout.from_adapter(read_adapter(model), max_rank=max(cfg.rank_list()))
    sender = AdapterSender(cfg, seed=cfg.seed * 1000 + peer_id)
    ckpt = checkpoint_path(run_dir, peer_id)
    merged: dict[str, torch.Tensor] = {}  # stack mode: the sum of the deltas merged into the base so far
    start_round = resume(ckpt, cfg, peer_id, rank, model, trainer, sender, merged) if cfg.resume else 0
    metrics = MetricsWriter(run_dir / "metrics" / f"peer-{peer_id}.jsonl", truncate_after_round=start_round - 1)
    started = time.time()

    with open_transport(cfg, peer_id, neighbours, topology, layout) as transport:
        wait_for_neighbours(transport, neighbours, cfg.start_timeout_s)
        for t in range(start_round, cfg.rounds):
            round_start = time.time()
            train_stats = trainer.train_steps(cfg.local_steps)

            mine = read_adapter(model)
            sent = transport.counters()["bytes_sent_total"]
            received = transport.counters()["bytes_received_total"]
            message = make_message(Kind.FACTORS, peer_id, t, sender.encode(mine))
            result = transport.exchange(t, message, cfg.deadline_s)
            theirs = decode_received(result.received, layout)

            weights = renormalize_row(row, peer_id, heard=set(theirs))
            distance = aggregate.consensus_distance([mine, *theirs.values()]) if theirs else 0.0
            delta = apply_mixing(cfg, model, trainer, mine, theirs, weights, peer_id, rank)
            if delta is not None:
                accumulate(merged, delta)
                sender.reset_residuals()

            record = {"round": t, "peer": peer_id, "train_loss": train_stats["loss"],
                      "train_samples": train_stats["samples"], "neighbours_heard": len(theirs),
                      "neighbours_missing": result.missing, "distance_to_neighbours": distance,
                      "bytes_sent": transport.counters()["bytes_sent_total"] - sent,
                      "bytes_received": transport.counters()["bytes_received_total"] - received,
                      "wait_seconds": result.waited_s}
            record.update(evaluate_if_due(cfg, model, eval_set, task, t))
            record.update(round_seconds=time.time() - round_start, elapsed_s=time.time() - started)
            metrics.write(record)
            save_checkpoint(ckpt, checkpoint_state(t, model, trainer, sender, merged))
            log.info("round %d: loss %.4f, heard %d/%d, %s", t, train_stats["loss"], len(theirs), len(neighbours),
                     _eval_text(record))

        if cfg.save_adapters:
            save_adapter(model, run_dir / "adapters" / f"peer-{peer_id}")
    metrics.close()


def apply_mixing(cfg: RunConfig, model, trainer, mine: Adapter, theirs: dict[int, Adapter],
                 weights: dict[int, float], peer_id: int, rank: int) -> dict[str, torch.Tensor] | None:
    """Mix this peer's exact adapter with the neighbours' decoded ones and put the result into the model.

    Returns the dense delta merged into the base weights (stack mode), else None.
    """
    from .adapter import merge_delta_and_reset, write_adapter

    ids = [peer_id, *sorted(theirs)]
    adapters = [mine if i == peer_id else theirs[i] for i in ids]
    w = [weights[i] for i in ids]
    alpha, rslora = cfg.alpha, cfg.rslora
    if cfg.mode == "gossip":
        write_adapter(model, aggregate.gossip(adapters, w))
    elif cfg.mode == "svd":
        write_adapter(model, aggregate.svd(adapters, w, rank=rank, alpha=alpha, rslora=rslora))
    elif cfg.mode == "zeropad":
        write_adapter(model, aggregate.zeropad(adapters, w, rank=rank, alpha=alpha, rslora=rslora))
    elif cfg.mode == "stack":
        # FLoRA: merge the exact weighted sum of products into the base, start a fresh adapter at our own rank.
        stacked = aggregate.stack(adapters, w)
        delta = aggregate.merged_delta(stacked)
        merge_delta_and_reset(model, delta, rank=rank, seed=cfg.seed * 1000 + peer_id)
        write_dense(model, stacked.dense)
        trainer.reset_optimizer()
        return delta
    else:
        raise ConfigError(f"mode {cfg.mode!r} does not exchange adapters")
    return None


def accumulate(total: dict[str, torch.Tensor], delta: dict[str, torch.Tensor] | None) -> None:
    for key, d in (delta or {}).items():
        total[key] = total[key] + d if key in total else d.clone()


def write_dense(model, dense: dict[str, torch.Tensor]) -> None:
    """Put averaged dense tensors (a classifier head) back without touching the fresh LoRA factors."""
    from .adapter import read_adapter, write_adapter

    current = read_adapter(model)
    current.dense.update(dense)
    write_adapter(model, current)


def evaluate_if_due(cfg: RunConfig, model, eval_set, task: str, t: int) -> dict:
    from .train import evaluate

    last = t == cfg.rounds - 1
    if not last and (t + 1) % cfg.eval_every:
        return {}
    subset = eval_set if last or not cfg.eval_samples else eval_set[: cfg.eval_samples]
    result = evaluate(model, subset, task, batch_size=max(cfg.batch_size, 64))
    return {f"eval_{k}": v for k, v in result.items()}


def _eval_text(record: dict) -> str:
    if "eval_accuracy" in record:
        return f"acc {record['eval_accuracy']:.4f}"
    if "eval_loss" in record:
        return f"eval loss {record['eval_loss']:.4f}"
    return "no eval"


# ---- parts the loop wires -------------------------------------------------------------------------------------------
def build_local_learner(cfg: RunConfig, peer_id: int, rank: int, n_shards: int, union: bool = False):
    """The model with a fresh adapter, this peer's share of the data, its trainer, and the eval set."""
    from .adapter import build_model, pick_device
    from .train import LocalTrainer
    from .workload import load_workload, model_spec, train_config

    device = pick_device(cfg.gpu_list(), peer_id, cfg.cpu)
    # Every peer starts from the same adapter init (the run's seed): averaging independently drawn A's shrinks them.
    model, tokenizer = build_model(model_spec(cfg), rank, cfg.alpha, rslora=cfg.rslora, device=device, seed=cfg.seed)
    work = load_workload(cfg, tokenizer, peer_id, n_shards, union=union)
    log.info("peer %d on %s: rank %d, %s", peer_id, device, rank, work.description)
    trainer = LocalTrainer(model, work.train, train_config(cfg), seed=cfg.seed * 1000 + peer_id)
    return model, trainer, work.eval, work.task


def open_transport(cfg: RunConfig, peer_id: int, neighbours: list[int], topology, layout):
    from .security import load_security
    from .transport import Liveness, ZmqTransport

    book = address_book(cfg, topology, Path(cfg.out))
    return ZmqTransport(
        peer_id, bind_endpoint(book[peer_id]), {j: book[j] for j in neighbours}, layout=layout,
        liveness=Liveness(heartbeat_interval_s=cfg.heartbeat_s, missed_intervals_before_down=cfg.missed_heartbeats),
        security=load_security(cfg.keys, peer_id) if cfg.keys else None, allow_plaintext_nonlocal=cfg.insecure,
    )


def wait_for_neighbours(transport, neighbours: list[int], timeout_s: float) -> None:
    """Round 0 waits until every neighbour is up, so nobody mixes with an empty neighbourhood at start."""
    missing = transport.wait_for_neighbours(timeout_s, neighbours)
    if missing:
        log.warning("starting without neighbours %s: not heard from within %.0f s", sorted(missing), timeout_s)


def checkpoint_state(t: int, model, trainer, sender, merged: dict) -> dict:
    from .adapter import read_adapter

    return {"round": t, "adapter": adapter_to_state(read_adapter(model)), "trainer": trainer.state_dict(),
            "sender": sender.state_dict(), "merged_delta": merged}


def resume(path: Path, cfg: RunConfig, peer_id: int, rank: int, model, trainer, sender, merged: dict) -> int:
    """Load the checkpoint if there is one; return the first round still to run."""
    from .adapter import merge_delta_and_reset, write_adapter

    state = load_checkpoint(path)
    if state is None:
        log.info("no checkpoint at %s: starting at round 0", path)
        return 0
    if state.get("merged_delta"):
        # Stack mode: the base weights on disk are the pretrained ones; re-apply what earlier rounds merged.
        merged.update(state["merged_delta"])
        merge_delta_and_reset(model, merged, rank=rank, seed=cfg.seed * 1000 + peer_id)
    write_adapter(model, adapter_from_state(state["adapter"]))
    trainer.load_state_dict(state["trainer"])
    sender.load_state_dict(state["sender"])
    log.info("resumed from %s after round %d", path, state["round"])
    return int(state["round"]) + 1


# ---- entry point ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="declora peer", description="run one peer of a declora network")
    p.add_argument("--peer-id", type=int, required=True, help="this peer's id (0..peers-1)")
    add_flags(p)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s peer {args.peer_id} %(levelname)s %(message)s")
    try:
        cfg = resolve(args)
        if not 0 <= args.peer_id < cfg.peers:
            raise ConfigError(f"--peer-id must be in 0..{cfg.peers - 1}, got {args.peer_id}")
        threads = cfg.threads or 1
        if cfg.mode == "centralized":
            from .centralized import run_centralized

            run_centralized(cfg, threads)
        else:
            run_peer(cfg, args.peer_id, threads)
    except (ConfigError, FileNotFoundError) as e:
        print(f"declora peer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
