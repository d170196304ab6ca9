"""Byzantine peers on MiniLM SST-2: the honest peers' final accuracy under each attack, with plain gossip and with
each robust rule, against the no-attack run of the same rule (issue 14's benchmark).

8 peers on exp:8 (each has 3 neighbours), gossip mode, one hostile peer (id 3) that trains like the others but sends
poison (declora.core.attacks): huge, signflip, nan, noise, drift. Rules: none (plain gossip; the plausibility check
stays on, as by default), clip (ClippedGossip), trimmed-mean, median, each with trim 1. One run per cell, every run
with the same seed and data split. Each cell is a real `declora simulate` (8 processes).

    python benchmarks/bench_robust.py            # the default preset (below), about 1.5 min per run on 2 cores
    python benchmarks/bench_robust.py --rounds 20 --local-steps 8   # longer runs

Writes benchmarks/results/bench_robust.json and bench_robust.png; prints the table for benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, judged_value, pyplot, write_result  # noqa: E402

ATTACKS = ("none", "huge", "signflip", "nan", "noise", "drift")
RULES = ("none", "clip", "trimmed-mean", "median")
PEERS, HOSTILE = 8, 3


def run_cell(attack: str, rule: str, args, out: Path) -> dict:
    if args.reuse and (out / "summary.json").exists():  # finished by an earlier invocation with the same settings
        return collect(attack, out, json.loads((out / "summary.json").read_text()).get("wall_seconds", 0.0), 0)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--peers", str(PEERS),
           "--topology", f"exp:{PEERS}", "--mode", "gossip", "--rounds", str(args.rounds),
           "--local-steps", str(args.local_steps), "--eval-every", str(args.rounds), "--keep-checkpoints", "1",
           "--no-save-adapters", "--group-by-length", "--seed", str(args.seed), "--robust", rule,
           "--partition", args.partition, "--threads", "1", "--deadline-s", "120"]
    if attack != "none":
        cmd += ["--attack", attack, "--attackers", str(HOSTILE)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.time()
    with open(out / "simulate.log", "w") as log:
        code = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT).returncode
    return collect(attack, out, time.time() - started, code)


def collect(attack: str, out: Path, wall: float, code: int) -> dict:
    honest = [i for i in range(PEERS) if attack == "none" or i != HOSTILE]
    accs, implausible, clipped, rollbacks = [], 0, 0, 0
    for i in honest:
        path = out / "metrics" / f"peer-{i}.jsonl"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        if rows and judged_value(rows[-1]) is not None:
            accs.append(judged_value(rows[-1]))
        implausible += sum(len(r.get("implausible", [])) for r in rows)
        clipped += sum(HOSTILE in r.get("clipped", []) for r in rows)
        rollbacks += rows[-1].get("rollbacks", 0) if rows else 0
    return {"attack": attack, "rule": out.name[len(attack) + 1:], "returncode": code, "wall_s": round(wall, 1),
            "honest_accuracy_mean": statistics.mean(accs) if len(accs) == len(honest) else None,
            "honest_accuracy_min": min(accs) if accs else None, "implausible_drops": implausible,
            "hostile_clipped_rounds": clipped, "rollbacks": rollbacks}


def table(cells: list[dict]) -> str:
    by = {(c["attack"], c["rule"]): c for c in cells}
    head = "| attack | " + " | ".join(f"{r} (mean / min %)" for r in RULES) + " |"
    lines = [head, "|---|" + "---|" * len(RULES)]
    for a in ATTACKS:
        row = [a]
        for r in RULES:
            c = by.get((a, r))
            if c is None or c["honest_accuracy_mean"] is None:
                row.append("failed" if c else "-")
            else:
                base = by.get(("none", r), {}).get("honest_accuracy_mean")
                delta = f" ({100 * (c['honest_accuracy_mean'] - base):+.2f})" if base is not None and a != "none" else ""
                row.append(f"{100 * c['honest_accuracy_mean']:.2f}{delta} / {100 * c['honest_accuracy_min']:.2f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def plot(cells: list[dict], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(9, 4))
    width = 0.8 / len(RULES)
    for k, r in enumerate(RULES):
        ys = [next((100 * c["honest_accuracy_mean"] for c in cells if c["attack"] == a and c["rule"] == r
                    and c["honest_accuracy_mean"] is not None), 0.0) for a in ATTACKS]
        ax.bar([i + k * width for i in range(len(ATTACKS))], ys, width, label=r)
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(ATTACKS))], ATTACKS)
    ax.set_ylabel("honest peers' mean accuracy (%)")
    ax.set_ylim(40, 100)
    ax.set_title(f"one Byzantine peer of {PEERS} on exp:{PEERS}, MiniLM SST-2")
    ax.legend(title="robust rule", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--partition", default="dirichlet:0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--attacks", default=",".join(ATTACKS))
    p.add_argument("--rules", default=",".join(RULES))
    p.add_argument("--reuse", action="store_true", help="keep cells an earlier invocation finished (same settings!)")
    args = p.parse_args()
    runs = ROOT / "runs" / "bench_robust"
    cells = []
    started = time.time()
    for attack in args.attacks.split(","):
        for rule in args.rules.split(","):
            cell = run_cell(attack, rule, args, runs / f"{attack}-{rule}")
            cells.append(cell)
            acc = cell["honest_accuracy_mean"]
            print(f"{attack:9s} {rule:13s} honest acc {'failed' if acc is None else f'{100 * acc:.2f} %'}  "
                  f"drops {cell['implausible_drops']}  clipped {cell['hostile_clipped_rounds']}  "
                  f"rollbacks {cell['rollbacks']}  {cell['wall_s']:.0f} s", flush=True)
    settings = {k: getattr(args, k) for k in ("rounds", "local_steps", "partition", "seed")}
    path = write_result("bench_robust", {"settings": {**settings, "peers": PEERS, "topology": f"exp:{PEERS}",
                                                      "hostile": HOSTILE, "trim": 1},
                                         "cells": cells, "wall_s": round(time.time() - started, 1)})
    plot(cells, RESULTS / "bench_robust.png")
    print(table(cells))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
