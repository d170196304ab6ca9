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
from dataclasses import dataclass
from pathlib import Path

import torch

from declora.core import aggregate
from declora.node.addressbook import address_book, bind_endpoint
from declora.node.checkpoint import adapter_from_state, adapter_to_state, load_checkpoint, save_checkpoint
from declora.config import ConfigError, RunConfig, add_peer_flags, resolve
from declora.core.factors import Adapter
from declora.node.metrics import MetricsWriter
from declora.core.topology import load_topology, mixing_matrix, mixing_row, renormalize_row

log = logging.getLogger("declora.node.peer")


# ---- the round loop ------------------------------------------------------------------------------------------------
def run_peer(cfg: RunConfig, peer_id: int, threads: int = 1, resume_round: int | None = None) -> None:
    from declora.learn.model import read_adapter
    from declora.wire.adapter_messages import AdapterSender

    torch.set_num_threads(max(1, threads))
    run_dir = Path(cfg.out)
    links = Links.for_peer(cfg, peer_id)
    rank = cfg.rank_list()[peer_id]

    model, tokenizer, trainer, eval_set, task = build_local_learner(cfg, peer_id, rank, n_shards=cfg.peers)
    layout = links.inbound_layout(read_adapter(model))
    sender = AdapterSender(cfg, seed=cfg.seed * 1000 + peer_id)
    merged: dict[str, torch.Tensor] = {}  # stack/flora: the sum of the deltas merged into the base so far
    start_round = resume(cfg, peer_id, resume_round, rank, model, trainer, sender, merged) if cfg.resume else 0
    metrics = MetricsWriter(run_dir / "metrics" / f"peer-{peer_id}.jsonl", truncate_after_round=start_round - 1)
    started = time.time()

    with open_transport(cfg, peer_id, links.neighbours, links.book, layout) as transport:
        wait_for_neighbours(transport, links.neighbours, cfg.start_timeout_s)
        for t in range(start_round, cfg.rounds):
            round_start = time.time()
            train_stats = trainer.train_steps(cfg.local_steps)

            mine = read_adapter(model)
            got = links.exchange(transport, t, sender.encode(mine), len(trainer.dataset), cfg.deadline_s, layout)
            delta = apply_mixing(cfg, model, trainer, mine, got, peer_id, rank)
            if delta is not None:
                accumulate(merged, delta)
                sender.reset_residuals()

            record = {"round": t, "peer": peer_id, "train_loss": train_stats["loss"],
                      "train_samples": train_stats["samples"], "neighbours_heard": len(got.adapters),
                      "neighbours_missing": got.missing, "distance_to_neighbours": got.distance,
                      "bytes_sent": got.bytes_sent,
                      "bytes_received": got.bytes_received, "wait_seconds": got.waited_s}
            record.update(evaluate_if_due(cfg, model, eval_set, task, t))
            record.update(round_seconds=time.time() - round_start, elapsed_s=time.time() - started)
            metrics.write(record)
            save_checkpoint(run_dir, peer_id, t, checkpoint_state(t, model, trainer, sender, merged), cfg.keep_checkpoints)
            log.info("round %d: loss %.4f, heard %d/%d, %s", t, train_stats["loss"], len(got.adapters),
                     len(links.neighbours), _eval_text(record))

        if cfg.save_adapters:
            save_result(model, tokenizer, run_dir / "adapters" / f"peer-{peer_id}", base_changed=bool(merged))
    metrics.close()


def save_result(model, tokenizer, out_dir: Path, base_changed: bool) -> None:
    """The adapter (loadable with PeftModel.from_pretrained on the original base) or, once rounds have merged deltas
    into the base (stack, flora), the whole merged model: the adapter alone would no longer match any base on disk."""
    from declora.learn.model import save_adapter, save_merged_model

    if base_changed:
        save_merged_model(model, tokenizer, out_dir)
    else:
        save_adapter(model, out_dir)


@dataclass
class Received:
    """What one exchange brought: decoded adapters by sender, their mixing weights (self included), and stats."""

    adapters: dict[int, Adapter]
    weights: dict[int, float]
    missing: list[int]
    bytes_received: int
    waited_s: float
    bytes_sent: int
    distance: float = 0.0


@dataclass
class Links:
    """Who this peer talks to and how a round's exchange goes: gossip with graph neighbours, or a client of the
    parameter server (the server's id is the one after the last client)."""

    peer_id: int
    neighbours: list[int]
    book: dict[int, str]
    row: dict[int, float]  # gossip: this peer's mixing row; empty for a server client
    cfg: RunConfig

    @classmethod
    def for_peer(cls, cfg: RunConfig, peer_id: int) -> "Links":
        if cfg.server:
            server = cfg.peers
            return cls(peer_id, [server], address_book(cfg, None, Path(cfg.out), n_ids=cfg.peers + 1), {}, cfg)
        topology = load_topology(cfg.topology_spec())
        if topology.n != cfg.peers:
            raise ConfigError(f"the topology has {topology.n} nodes but --peers is {cfg.peers}")
        row = mixing_row(mixing_matrix(topology.graph, cfg.mixing), peer_id)
        return cls(peer_id, topology.neighbors(peer_id), address_book(cfg, topology, Path(cfg.out)), row, cfg)

    def inbound_layout(self, mine: Adapter):
        """What a neighbour's message must look like: our modules and dense tensors; gossip needs our rank, the
        exact modes any rank up to the largest; a server's FLoRA stack is as wide as all ranks together."""
        from declora.wire.protocol import AdapterLayout

        ranks = self.cfg.rank_list()
        if self.cfg.server:
            return AdapterLayout.from_adapter(mine, max_rank=sum(ranks), same_alpha=False)
        return AdapterLayout.from_adapter(mine, max_rank=max(ranks), equal_rank=self.cfg.mode == "gossip")

    def exchange(self, transport, t: int, tensors, samples: int, deadline_s: float, layout) -> Received:
        from declora.wire.protocol import Kind, make_message
        from declora.wire.adapter_messages import decode_received

        if self.cfg.server:
            # A client sends its update (with its sample count: the server weighs by data share) and waits for
            # the aggregate.
            server = self.neighbours[0]
            update = make_message(Kind.UPDATE, self.peer_id, t, tensors, body={"samples": samples})
            sent = update.nbytes if transport.send(server, update) else 0
            result = transport.collect(t, Kind.AGGREGATE, {server}, deadline_s)
            result.bytes_sent = sent
            weights = {}
        else:
            result = transport.exchange(t, make_message(Kind.FACTORS, self.peer_id, t, tensors), deadline_s)
        adapters = decode_received(result.received, layout)
        if not self.cfg.server:
            weights = renormalize_row(self.row, self.peer_id, heard=set(adapters))
        return Received(adapters, weights, list(result.missing), sum(m.nbytes for m in result.received.values()),
                        result.waited_s, result.bytes_sent)


def apply_mixing(cfg: RunConfig, model, trainer, mine: Adapter, got: Received, peer_id: int,
                 rank: int) -> dict[str, torch.Tensor] | None:
    """Put the round's result into the model: the mix of this peer's exact adapter with the neighbours' decoded
    ones, or the server's aggregate. Returns the dense delta merged into the base weights (stack, flora), else None.
    """
    from declora.learn.model import write_adapter

    if cfg.server:
        if not got.adapters:  # no aggregate this round (server slow or gone): keep training the local adapter
            return None
        result = next(iter(got.adapters.values()))
        if cfg.server == "flora":
            return merge_stack(cfg, model, trainer, result, peer_id, rank)
        write_adapter(model, result)
        return None

    ids = [peer_id, *sorted(got.adapters)]
    adapters = [mine if i == peer_id else got.adapters[i] for i in ids]
    w = [got.weights[i] for i in ids]
    got.distance = aggregate.consensus_distance(adapters) if len(adapters) > 1 else 0.0
    if cfg.mode == "gossip":
        write_adapter(model, aggregate.gossip(adapters, w))
    elif cfg.mode == "svd":
        write_adapter(model, aggregate.svd(adapters, w, rank=rank, alpha=cfg.alpha, rslora=cfg.rslora))
    elif cfg.mode == "zeropad":
        write_adapter(model, aggregate.zeropad(adapters, w, rank=rank, alpha=cfg.alpha, rslora=cfg.rslora))
    elif cfg.mode == "stack":
        return merge_stack(cfg, model, trainer, aggregate.stack(adapters, w), peer_id, rank)
    else:
        raise ConfigError(f"mode {cfg.mode!r} does not exchange adapters")
    return None


def merge_stack(cfg: RunConfig, model, trainer, stacked: Adapter, peer_id: int, rank: int) -> dict[str, torch.Tensor]:
    """FLoRA: merge the exact weighted sum of products into the base and start a fresh adapter at our own rank."""
    from declora.learn.model import merge_delta_and_reset

    delta = aggregate.merged_delta(stacked)
    merge_delta_and_reset(model, delta, rank=rank, seed=cfg.seed * 1000 + peer_id)
    write_dense(model, stacked.dense)
    trainer.reset_optimizer()
    return delta


def accumulate(total: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> None:
    for key, d in delta.items():
        total[key] = total[key] + d if key in total else d.clone()


def write_dense(model, dense: dict[str, torch.Tensor]) -> None:
    """Put averaged dense tensors (a classifier head) back without touching the fresh LoRA factors."""
    from declora.learn.model import read_adapter, write_adapter

    current = read_adapter(model)
    current.dense.update(dense)
    write_adapter(model, current)


def evaluate_if_due(cfg: RunConfig, model, eval_set, task: str, t: int) -> dict:
    from declora.learn.training import evaluate

    last = t == cfg.rounds - 1
    if not last and (t + 1) % cfg.eval_every:
        return {}
    subset = eval_set if last or not cfg.eval_samples else eval_set.head(cfg.eval_samples)
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
    from declora.learn.model import build_model, pick_device
    from declora.learn.training import LocalTrainer
    from declora.node.workload import load_workload, model_spec, train_config

    device = pick_device(cfg.gpu_list(), peer_id, cfg.cpu)
    # Every peer starts from the same adapter init (the run's seed): averaging independently drawn A's shrinks them.
    model, tokenizer = build_model(model_spec(cfg), rank, cfg.alpha, rslora=cfg.rslora, device=device, seed=cfg.seed)
    work = load_workload(cfg, tokenizer, peer_id, n_shards, union=union)
    log.info("peer %d on %s: rank %d, %s", peer_id, device, rank, work.description)
    steps_per_round = cfg.local_steps * n_shards if union else cfg.local_steps  # centralized: the same compute
    trainer = LocalTrainer(model, work.train, train_config(cfg, steps_per_round), seed=cfg.seed * 1000 + peer_id)
    # Dropout draws from torch's global generator, which torch seeds at random in every new process: seed it, so
    # that the same config gives the same run.
    torch.manual_seed(cfg.seed * 1000 + peer_id)
    return model, tokenizer, trainer, work.eval, work.task


def open_transport(cfg: RunConfig, peer_id: int, neighbours: list[int], book: dict[int, str], layout):
    from declora.wire.security import load_security
    from declora.wire.transport import Liveness, ZmqTransport

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
    from declora.learn.model import read_adapter

    return {"round": t, "adapter": adapter_to_state(read_adapter(model)), "trainer": trainer.state_dict(),
            "sender": sender.state_dict(), "merged_delta": merged}


def resume(cfg: RunConfig, peer_id: int, resume_round: int | None, rank: int, model, trainer, sender,
           merged: dict) -> int:
    """Load the checkpoint of `resume_round` (default: the latest) if there is one; return the first round to run."""
    from declora.learn.model import merge_delta_and_reset, write_adapter

    state = load_checkpoint(cfg.out, peer_id, resume_round)
    if state is None:
        log.info("no checkpoint in %s: starting at round 0", cfg.out)
        return 0
    if state.get("merged_delta"):
        # Stack mode: the base weights on disk are the pretrained ones; re-apply what earlier rounds merged.
        merged.update(state["merged_delta"])
        merge_delta_and_reset(model, merged, rank=rank, seed=cfg.seed * 1000 + peer_id)
    write_adapter(model, adapter_from_state(state["adapter"]))
    trainer.load_state_dict(state["trainer"])
    sender.load_state_dict(state["sender"])
    log.info("resumed from the checkpoint of round %d", state["round"])
    return int(state["round"]) + 1


# ---- entry point ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="declora peer", description="run one peer of a declora network")
    add_peer_flags(p)
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
            from declora.node.centralized import run_centralized

            run_centralized(cfg, threads)
        else:
            run_peer(cfg, args.peer_id, threads, args.resume_round)
    except (ConfigError, FileNotFoundError) as e:
        print(f"declora peer: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
