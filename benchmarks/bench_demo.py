"""The demo's wall time and accuracy: `declora simulate` with the run defaults (what `scripts/demo.sh` runs), beside
the same run with candidate changes of the defaults, in one invocation on the same machine.

Issue 15 asks for the demo under 3 minutes on 2 cores with every peer at or above 82% SST-2 dev accuracy. Each
variant is one real `declora simulate` (4 MiniLM peers on a ring, the shipped SST-2, the run's own defaults plus
the variant's flags), timed from process start to exit (start-up, training, evaluation, summary), the venv built.
Run it on an otherwise idle machine: the wall time is the point.

    python benchmarks/bench_demo.py [--only default,group-by-length] [--seeds 0]

Writes benchmarks/results/bench_demo.json (per variant and seed: wall s, each peer's final dev accuracy, MB sent).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench_demo.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, write_result  # noqa: E402

# name -> flags added to the defaults. "default" is what scripts/demo.sh runs today.
VARIANTS = {
    "default": [],  # length-grouped batches and intermediate evaluations on 256 examples since issue 15
    "group-by-length": ["--group-by-length"],
    "no-group-by-length": ["--no-group-by-length"],
    # Fewer rounds to fit 3 minutes; gossip's own learning rate, twice the default (bench_lr_sweep picked x2 for
    # gossip on SST-2 and Dolly, x0.5-x1 for centralized LoRA).
    "rounds-20": ["--rounds", "20"],
    "lr-x2-rounds-20": ["--lr", "8e-3", "--head-lr", "2e-2", "--rounds", "20"],
}
GOAL_WALL_S, GOAL_PEER_ACC = 180.0, 0.82


def run(name: str, flags: list[str], seed: int) -> dict:
    out = ROOT / "runs" / "bench_demo" / f"{name}-seed{seed}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--seed", str(seed), *flags]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.time()
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / f"{name}-seed{seed}.log", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    wall = time.time() - started
    if code != 0:
        return {"flags": flags, "seed": seed, "returncode": code}
    summary = json.loads((out / "summary.json").read_text())
    per_peer = summary["final"]["accuracy_per_peer"]
    return {"flags": flags, "seed": seed, "returncode": 0, "wall_s": round(wall, 1),
            "peer_accuracy": per_peer, "peer_accuracy_min": min(per_peer.values()),
            "peer_accuracy_mean": sum(per_peer.values()) / len(per_peer),
            "mb_sent_total": summary["bytes_sent_total"] / 1e6,
            "goal_met": wall < GOAL_WALL_S and min(per_peer.values()) >= GOAL_PEER_ACC}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--only", default="", help="comma-separated variant names (default: all)")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0: the demo's)")
    args = p.parse_args(argv)
    names = [n for n in VARIANTS if not args.only or n in args.only.split(",")]
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results = []
    for seed in seeds:
        for name in names:
            r = {"variant": name, **run(name, VARIANTS[name], seed)}
            results.append(r)
            print(f"{name} seed {seed}: " + (f"{r['wall_s']:.0f} s, peers {100 * r['peer_accuracy_min']:.2f}-"
                                             f"{100 * max(r['peer_accuracy'].values()):.2f} %" if r["returncode"] == 0
                                             else f"failed (exit {r['returncode']})"), flush=True)
    path = write_result("bench_demo", {"benchmark": "bench_demo", "goal": {"wall_s_under": GOAL_WALL_S,
                                                                           "every_peer_at_least": GOAL_PEER_ACC},
                                       "load_after": os.getloadavg()[0], "runs": results})
    print(f"wrote {path}")
    return 0 if all(r["returncode"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
