"""One peer: train K local steps, exchange the adapter with the neighbourhood, put the result into the model, repeat.

Run as `declora peer --config run.toml --peer-id I` (one peer of a multi-node run) or started by
`declora simulate` / `declora launch-node`. `run_peer` reads top to bottom and is handed everything it talks to:
the learner (model, data, optimizer), the transport (ZeroMQ, or the in-process network of `node.inprocess`), and
the neighbourhood (gossip neighbours, a parameter server, or nobody for the centralized reference).
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import torch

from declora.config import ConfigError, RunConfig, add_peer_flags
from declora.core.attacks import HostileSender
from declora.core.deadlines import AdaptiveDeadline, FixedDeadline
from declora.learn.learner import Learner
from declora.learn.metrics import record_key
from declora.node.catch_up import catch_up, rejoin_if_behind
from declora.node.checkpoint import adapter_from_state, adapter_to_state, load_checkpoint, save_checkpoint
from declora.node.heap import trim_heap
from declora.node.metrics import MetricsWriter
from declora.node.neighbourhood import neighbourhood_for
from declora.node.rollback import Rollback
from declora.node.tensorboard_log import open_peer_board
from declora.node.workload import resolve_metric
from declora.wire.adapter_messages import AdapterSender

log = logging.getLogger("declora.node.peer")


# ---- the round loop ------------------------------------------------------------------------------------------------
def run_peer(cfg: RunConfig, peer_id: int, learner: Learner, transport, hood, resume_round: int | None = None) -> None:
    run_dir = Path(cfg.out)
    sender = AdapterSender(cfg.codec, cfg.block_size, cfg.stochastic_rounding, cfg.error_feedback,
                           seed=cfg.seed * 1000 + peer_id, head_codec=cfg.head_codec)
    if peer_id in cfg.attacker_ids():  # robustness tests and benchmarks: this peer sends poison
        sender = HostileSender(sender, cfg.attack, seed=cfg.seed * 1000 + peer_id)
    merged: dict[str, torch.Tensor] = {}  # stack/flora: the sum of the deltas merged into the base so far
    rollback = Rollback(learner, merged)  # a mix that makes training blow up is undone, not fatal
    start_round = resume(cfg, peer_id, resume_round, learner, sender, merged, rollback, hood) if cfg.resume else 0
    metrics = MetricsWriter(run_dir / "metrics" / f"peer-{peer_id}.jsonl", truncate_after_round=start_round - 1)
    board, metric = open_peer_board(cfg, peer_id, start_round), resolve_metric(cfg)  # --report-to; what judges
    started = time.time()

    deadline = deadline_policy(cfg, hood)
    transport.set_round(start_round)
    if start_round > 0:  # resumed: a neighbour further behind may ask for our state before we finish a round
        publish_state(transport, hood, start_round - 1, learner.adapter())
    with transport:
        wait_for_neighbours(transport, hood.neighbours, cfg.start_timeout_s)
        resumed_at = start_round
        t = start_round = catch_up(transport, hood, learner, start_round, cfg.deadline_s, cfg.rounds)
        while t < cfg.rounds:
            skipped_from, t = t, rejoin_if_behind(transport, hood, learner, t, cfg.stale_rounds, cfg.rounds)
            round_start = time.time()
            correction = hood.begin_round(learner.adapter())  # drift correction: what the local steps also take
            train_stats = rollback.train(t, correction)
            slow_down(cfg, peer_id, time.time() - round_start)  # --slow-peers: fault injection for benchmarks
            compute_s = time.time() - round_start

            mine = learner.adapter()
            got = hood.exchange(transport, t, mine, sender, learner.samples, deadline.seconds(),
                                deadline.quorum_rule(len(hood.neighbours), compute_s))
            deadline.observe(list(got.arrivals.values()), got.awaited, got.waited_s, compute_s)
            result = hood.combine(mine, got)
            if result is not None and not rollback.accept(result.adapter, t):
                result = None  # a non-finite mix is dropped on the spot: we keep our own adapter
            rollback.before_mix(mine)
            if result is not None and result.merge:
                accumulate(merged, learner.merge_and_restart(result.adapter, cfg.keep_moments))
                rollback.merged(result.adapter)
                sender.reset_residuals()
            elif result is not None:
                learner.load(result.adapter)

            record = {"round": t, "peer": peer_id, "train_loss": train_stats["loss"],
                      "train_samples": train_stats["samples"], "lr": train_stats["lr"],
                      "neighbours": len(hood.neighbours),
                      "neighbours_heard": len(got.adapters) - len(got.late),
                      "neighbours_missing": got.missing, "late": {str(j): age for j, age in sorted(got.late.items())},
                      "distance_to_neighbours": got.distance,
                      "bytes_sent": got.bytes_sent, "bytes_received": got.bytes_received, "wait_seconds": got.waited_s,
                      "implausible": sorted(got.implausible), "clipped": got.clipped, "rollbacks": rollback.count}
            if t == start_round and start_round != resumed_at:
                record["caught_up_from_round"] = resumed_at
            if skipped_from != t:
                record["rejoined_from_round"] = skipped_from
            record.update(evaluate_if_due(cfg, learner, t, metric))
            record.update(round_seconds=time.time() - round_start, elapsed_s=time.time() - started)
            metrics.write(record)
            board.write(record)
            after = learner.adapter()  # read once: the checkpoint and the state neighbours may ask for
            state = {"round": t, "adapter": adapter_to_state(after), "trainer": learner.state_dict(),
                     "sender": sender.state_dict(), "merged_delta": merged, "rollback": rollback.state_dict(),
                     # The merged base itself: re-adding the summed delta would round differently from the live
                     # run's one-round-at-a-time additions, so an exact resume needs the weights.
                     "base_weights": learner.base_weights() if merged else None,
                     "neighbourhood": hood.state_dict()}
            save_checkpoint(run_dir, peer_id, t, state, cfg.keep_checkpoints)
            trim_heap()  # node.heap: the round's freed activations would stay resident and fragment
            publish_state(transport, hood, t, after)  # for a neighbour that comes back behind
            log.info("round %d: loss %.4f, heard %d/%d, %s", t, train_stats["loss"], record["neighbours_heard"],
                     len(hood.neighbours), _eval_text(record))
            t += 1

        if cfg.save_adapters:
            learner.save(run_dir / "adapters" / f"peer-{peer_id}", base_changed=bool(merged))
    metrics.close()
    board.close()


def publish_state(transport, hood, t: int, adapter) -> None:
    """Our adapter after round t, for a neighbour that asks for it to catch up (none in stack mode)."""
    published = hood.state_message(t, adapter)
    if published is not None:
        transport.publish_state(published)


def deadline_policy(cfg: RunConfig, hood) -> AdaptiveDeadline | FixedDeadline:
    """Gossip adapts its deadline to its neighbours' arrivals (core.deadlines); a server client waits for the
    aggregate as long as --deadline-s allows, since the server itself already bounds its own wait."""
    if cfg.adaptive_deadline and getattr(hood, "adapts_deadline", False):
        return AdaptiveDeadline(cap_s=cfg.deadline_s, floor_s=cfg.deadline_floor_s)
    return FixedDeadline(cfg.deadline_s)


def slow_down(cfg: RunConfig, peer_id: int, train_s: float) -> None:
    """--slow-peers ID:FACTOR: this peer's local training takes FACTOR times as long (it sleeps the difference);
    how benchmarks and tests make a straggler."""
    factor = cfg.slow_factor(peer_id)
    if factor > 1.0:
        time.sleep((factor - 1.0) * train_s)


def accumulate(total: dict[str, torch.Tensor], delta: dict[str, torch.Tensor]) -> None:
    for key, d in delta.items():
        total[key] = total[key] + d if key in total else d.clone()


def evaluate_if_due(cfg: RunConfig, learner: Learner, t: int, metric: str = "") -> dict:
    """Every eval metric as eval_<name>, and `metric`: the name of the one that judges the run (so that the
    records say it themselves, for readers without the config and its data, e.g. benchmarks)."""
    last = t == cfg.rounds - 1
    if not last and (t + 1) % cfg.eval_every:
        return {}
    result = learner.evaluate(limit=0 if last else cfg.eval_samples)
    dev = learner.evaluate_dev() if last else {}  # --holdout: eval_* are the validation split's, dev_* the report's
    trim_heap()  # the evaluation's freed batches would otherwise stay resident under the next round's training
    return {**{f"eval_{k}": v for k, v in result.items()}, **{f"dev_{k}": v for k, v in dev.items()},
            **({"metric": metric} if metric else {})}


def _eval_text(record: dict) -> str:
    name = record.get("metric") or ("accuracy" if "eval_accuracy" in record else "loss")
    value = record.get(record_key(name))
    if value is None:
        return "no eval" if "eval_loss" not in record else f"{name} undefined, eval loss {record['eval_loss']:.4f}"
    return f"{'eval loss' if name == 'loss' else name} {value:.4f}"


def wait_for_neighbours(transport, neighbours: list[int], timeout_s: float) -> None:
    """Round 0 waits until every neighbour is up, so nobody mixes with an empty neighbourhood at start."""
    missing = transport.wait_for_neighbours(timeout_s, neighbours) if neighbours else set()
    if missing:
        log.warning("starting without neighbours %s: not heard from within %.0f s", sorted(missing), timeout_s)


def resume(cfg: RunConfig, peer_id: int, resume_round: int | None, learner: Learner, sender: AdapterSender,
           merged: dict, rollback: Rollback, hood) -> int:
    """Load the checkpoint of `resume_round` (default: the latest) if there is one; return the first round to run."""
    state = load_checkpoint(cfg.out, peer_id, resume_round)
    if state is None:
        log.info("no checkpoint in %s: starting at round 0", cfg.out)
        return 0
    if state.get("merged_delta"):
        merged.update(state["merged_delta"])
        if state.get("base_weights"):
            learner.restore_base(state["base_weights"])
        else:  # a checkpoint from before base_weights were saved: close, not bit-exact
            learner.remerge(merged)
    learner.load(adapter_from_state(state["adapter"]))
    learner.load_state_dict(state["trainer"])
    sender.load_state_dict(state["sender"])
    if "rollback" in state:
        rollback.load_state_dict(state["rollback"])
    hood.load_state_dict(state.get("neighbourhood", {}))
    log.info("resumed from the checkpoint of round %d", state["round"])
    return int(state["round"]) + 1


# ---- entry point ---------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="declora peer", description="run one peer of a declora network")
    add_peer_flags(p)
    return p


def run_from_args(args: argparse.Namespace) -> int:
    """One peer process from parsed flags (`declora peer` and `python -m declora.node.peer`)."""
    from declora.node.entry import run_process
    from declora.node.transports import check_links, open_transport
    from declora.node.workload import build_learner

    def body(cfg: RunConfig) -> None:
        if not 0 <= args.peer_id < cfg.peers:
            raise ConfigError(f"--peer-id must be in 0..{cfg.peers - 1}, got {args.peer_id}")
        hood = neighbourhood_for(cfg, args.peer_id)
        if hood.neighbours:  # before the model is built: a bad key or address should cost no time
            check_links(cfg, [args.peer_id])
        learner = build_learner(cfg, args.peer_id, alone=cfg.mode == "centralized")
        layout = hood.inbound_layout(learner.adapter())
        transport = open_transport(cfg, args.peer_id, hood.neighbours, layout)
        run_peer(cfg, args.peer_id, learner, transport, hood, args.resume_round)

    return run_process("peer", f"peer {args.peer_id}", args, body)


def main(argv: list[str] | None = None) -> int:
    return run_from_args(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
