"""What share of a gossip round the exchange takes, against local training (issue 12, "Overlap"): if it is small, a
background exchange thread would win little and is not worth its complexity.

Runs N real peer processes over real ZeroMQ (ring, int8, plain text on loopback) with the default model (MiniLM-L6,
the demo extra) on a slice of SST-2. Each worker is `declora peer`'s own code path (node.peer.run_peer with the
learner, neighbourhood and transport built as a peer builds them); the learner and the neighbourhood are wrapped in
a stopwatch that times each call, so the peer loop itself is untouched. Per round:

- train: the K local optimizer steps (learner.train);
- exchange: encode, send, receive and decode (neighbourhood.exchange), less the wait for neighbours, which is
  reported on its own (it is the slowest neighbour's lateness, not work);
- mix: the strategy's combine plus writing the result into the model (learner.load), and reading the adapter out;
- checkpoint: the rest of the round (saving the checkpoint, publishing the state), from elapsed time.

The first round (warm-up) and the last (full evaluation) are left out. Results: benchmarks/results/bench_overlap.json.

    python benchmarks/bench_overlap.py [--peers 4] [--rounds 6] [--local-steps 5] [--batch-size 32] [--model PATH]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, worker_env, write_result  # noqa: E402

TIMED = {"learner": ("train", "adapter", "load"), "hood": ("exchange", "combine")}


class Stopwatch:
    """Wraps an object; calls of the named methods are timed into `calls[name]` (a list per round order)."""

    def __init__(self, inner, names: tuple[str, ...], calls: dict[str, list[float]]):
        self._inner, self._names, self._calls = inner, names, calls

    def __getattr__(self, name: str):
        attr = getattr(self._inner, name)
        if name not in self._names:
            return attr

        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attr(*args, **kwargs)
            finally:
                self._calls.setdefault(name, []).append(time.perf_counter() - started)
        return timed


def worker(config: Path, peer_id: int) -> None:
    import torch

    from declora.config import load_run_config
    from declora.node.neighbourhood import neighbourhood_for
    from declora.node.peer import run_peer
    from declora.node.transports import open_transport
    from declora.node.workload import build_learner

    cfg = load_run_config(config)
    torch.set_num_threads(1)
    hood = neighbourhood_for(cfg, peer_id)
    learner = build_learner(cfg, peer_id)
    transport = open_transport(cfg, peer_id, hood.neighbours, hood.inbound_layout(learner.adapter()))
    calls: dict[str, list[float]] = {}
    waits: list[float] = []

    class Hood(Stopwatch):  # the wait for neighbours, from the exchange's own result
        def __getattr__(self, name):
            attr = super().__getattr__(name)
            if name != "exchange":
                return attr

            def exchange(*args, **kwargs):
                got = attr(*args, **kwargs)
                waits.append(got.waited_s)
                return got
            return exchange

    run_peer(cfg, peer_id, Stopwatch(learner, TIMED["learner"], calls), transport, Hood(hood, TIMED["hood"], calls))
    (Path(cfg.out) / f"timings-{peer_id}.json").write_text(json.dumps({**calls, "wait": waits}))


def per_round(run_dir: Path, peer: int, rounds: int) -> list[dict]:
    """Seconds by part for each timed round of one peer."""
    timings = json.loads((run_dir / f"timings-{peer}.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics" / f"peer-{peer}.jsonl").read_text().splitlines()]
    reads = len(timings["adapter"]) // rounds  # adapter reads per round (the round's own and the checkpoint's)
    out = []
    for t in range(1, rounds - 1):
        elapsed = records[t]["elapsed_s"] - records[t - 1]["elapsed_s"]
        row = {"train": timings["train"][t], "wait": timings["wait"][t],
               "exchange": timings["exchange"][t] - timings["wait"][t],
               "mix": timings["combine"][t] + timings["load"][t] + sum(timings["adapter"][t * reads:(t + 1) * reads]),
               "round": records[t]["round_seconds"]}
        row["checkpoint"] = max(0.0, elapsed - row["round"])
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--config", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--peer-id", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--model", default="", help="default: the pretrained MiniLM-L6 (demo extra); tiny-bert works too")
    p.add_argument("--codec", default="int8")
    p.add_argument("--name", default="bench_overlap")
    args = p.parse_args(argv)
    if args.worker:
        worker(args.config, args.peer_id)
        return 0

    from benchmarks.bench_shared_base import slice_sst2
    from declora.config import RunConfig, validate
    from declora.launch import prepare_run_dir

    tmp = Path(tempfile.mkdtemp(prefix="bench_overlap_"))
    train, dev = slice_sst2(tmp, 2000, 200)
    cfg = validate(RunConfig(model=args.model, data=str(train), eval_data=str(dev), peers=args.peers, rounds=args.rounds,
                             local_steps=args.local_steps, batch_size=args.batch_size, codec=args.codec,
                             eval_every=args.rounds, eval_samples=64, threads=1, out=str(tmp / "run"), insecure=True,
                             save_adapters=False))
    cfg, config_path = prepare_run_dir(cfg)
    started, load_before = time.monotonic(), os.getloadavg()
    procs = [subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker", "--config", str(config_path),
                               "--peer-id", str(i)], cwd=ROOT, env=worker_env(), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for i in range(cfg.peers)]
    for i, proc in enumerate(procs):
        output, _ = proc.communicate(timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"peer {i} failed (exit {proc.returncode}):\n{output[-3000:]}")
    rows = [row for i in range(cfg.peers) for row in per_round(Path(cfg.out), i, cfg.rounds)]
    mean = {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}
    work = mean["train"] + mean["exchange"] + mean["mix"]
    result = {"peers": cfg.peers, "rounds": cfg.rounds, "local_steps": cfg.local_steps, "batch_size": cfg.batch_size,
              "model": args.model or "MiniLM-L6", "codec": cfg.codec, "seconds_mean": mean,
              "exchange_and_mix_share_of_work": (mean["exchange"] + mean["mix"]) / work,
              "wait_share_of_round": mean["wait"] / mean["round"], "wall_s": time.monotonic() - started,
              "load_average_before_after": [list(load_before), list(os.getloadavg())]}
    path = write_result(args.name, result)
    print(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
