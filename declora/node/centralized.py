"""The centralized reference: one process trains one LoRA adapter on the union of the peers' data.

It gets the same compute as the decentralized run it is compared with: per round, peers x local_steps steps of the
same batch size, so the total number of training samples is the same.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import torch

from declora.config import RunConfig
from declora.node.metrics import MetricsWriter

log = logging.getLogger("declora.node.centralized")


def run_centralized(cfg: RunConfig, threads: int = 1) -> None:
    from declora.learn.model import save_adapter
    from declora.node.peer import build_local_learner, evaluate_if_due

    torch.set_num_threads(max(1, threads))
    run_dir = Path(cfg.out)
    model, _, trainer, eval_set, task = build_local_learner(cfg, 0, cfg.rank_list()[0], n_shards=cfg.peers,
                                                            union=True)
    metrics = MetricsWriter(run_dir / "metrics" / "peer-0.jsonl", truncate_after_round=-1)
    started = time.time()
    steps = cfg.local_steps * cfg.peers
    for t in range(cfg.rounds):
        round_start = time.time()
        stats = trainer.train_steps(steps)
        record = {"round": t, "peer": 0, "train_loss": stats["loss"], "train_samples": stats["samples"],
                  "bytes_sent": 0, "bytes_received": 0}
        record.update(evaluate_if_due(cfg, model, eval_set, task, t))
        record.update(round_seconds=time.time() - round_start, elapsed_s=time.time() - started)
        metrics.write(record)
        log.info("round %d: loss %.4f %s", t, stats["loss"],
                 f"acc {record['eval_accuracy']:.4f}" if "eval_accuracy" in record else "")
    if cfg.save_adapters:
        save_adapter(model, run_dir / "adapters" / "centralized")
    metrics.close()
