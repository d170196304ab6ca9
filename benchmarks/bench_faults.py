"""A realistic swarm through the faults of a multi-machine run (issue 10's benchmark): 8 MiniLM peers on SST-2, exp:8,
each fault injected into a real `declora simulate` (8 processes over loopback ZeroMQ), against the no-fault run of
the same invocation, seed and data split.

Faults (all runs use --fault-tolerant, so the only difference between them is the fault):
- none: the baseline;
- kill: SIGKILL of 25% of the peers (2 of 8), each at a random round (seeded), not restarted;
- kill+restart: the same kills, with `--restart-dead` (the launcher restarts them; they rejoin by catch-up);
- slow: one peer three times slower (`--slow-peers P:3`: it sleeps twice its training time every round);
- partition: the graph cut in two halves (`--cut`) for 5 rounds, then healed;
- loss: 5% message loss on every link plus 0-0.4 s added delay (`--chaos`).

    python benchmarks/bench_faults.py                 # the preset below: about 3-4 min per fault on 2 cores
    python benchmarks/bench_faults.py --only none,slow --reuse

Writes benchmarks/results/bench_faults.json and prints the table for benchmarks/README.md (faults_report.py).
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, write_result  # noqa: E402
from benchmarks.faults_report import summarize, table  # noqa: E402

PEERS, SLOW_PEER, KILLED = 8, 5, 2
HALVES = ("0,1,2,3", "4,5,6,7")


def scenarios(args) -> dict[str, dict]:
    """name -> how the fault is injected: extra flags, and the (peer, round) kills the benchmark itself does."""
    draw = random.Random(args.seed)
    victims = sorted(draw.sample(range(1, PEERS), KILLED))  # peer 0 stays: it is the one the launcher prints
    kills = [(p, draw.randrange(2, args.rounds - 4)) for p in victims]
    cut_from = max(2, (args.rounds - 5) // 2)
    return {
        "none": {"how": "no fault", "flags": []},
        "kill": {"how": f"SIGKILL peers {', '.join(f'{p} after round {r}' for p, r in kills)}; no restart",
                 "flags": [], "kills": kills},
        "kill+restart": {"how": "the same kills; --restart-dead", "flags": ["--restart-dead"], "kills": kills},
        "slow": {"how": f"--slow-peers {SLOW_PEER}:3 (peer {SLOW_PEER} trains 3x slower)",
                 "flags": ["--slow-peers", f"{SLOW_PEER}:3"]},
        "partition": {"how": f"--cut {'|'.join(HALVES)}@{cut_from}:{cut_from + 5} (5 rounds, then healed)",
                      "flags": ["--cut", f"{'|'.join(HALVES)}@{cut_from}:{cut_from + 5}"],
                      "cut": (cut_from, cut_from + 5)},
        "loss": {"how": "--chaos drop=0.05,delay=0.0,jitter=0.4 on every link",
                 "flags": ["--chaos", "drop=0.05,delay=0.0,jitter=0.4"]},
    }


def find_peer_pid(out: Path, peer: int) -> int | None:
    config = str(out / "config.json")
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (proc / "cmdline").read_bytes().split(b"\0")]
        except OSError:
            continue
        if "declora.node.peer" in argv and config in argv and "--peer-id" in argv \
                and argv[argv.index("--peer-id") + 1] == str(peer):
            return int(proc.name)
    return None


def last_round(out: Path, peer: int) -> int:
    path = out / "metrics" / f"peer-{peer}.jsonl"
    try:
        lines = [x for x in path.read_text().splitlines() if x.strip()]
        return json.loads(lines[-1])["round"] if lines else -1
    except (OSError, ValueError, KeyError):
        return -1


def killer(out: Path, kills: list[tuple[int, int]], done: threading.Event, log: list) -> None:
    """SIGKILL each (peer, round) once that peer has finished the round: a crash, no BYE, no checkpoint after it."""
    pending = dict(kills)
    while pending and not done.is_set():
        for peer, round_ in list(pending.items()):
            if last_round(out, peer) >= round_:
                pid = find_peer_pid(out, peer)
                if pid is not None:
                    os.kill(pid, 9)
                    log.append({"peer": peer, "after_round": last_round(out, peer), "at_s": time.time()})
                del pending[peer]
        time.sleep(0.2)


def run_fault(name: str, spec: dict, args, out: Path) -> dict:
    if args.reuse and (out / "bench_cell.json").exists():
        return json.loads((out / "bench_cell.json").read_text())
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--peers", str(PEERS),
           "--topology", args.topology, "--rounds", str(args.rounds), "--local-steps", str(args.local_steps),
           "--eval-every", str(args.rounds), "--keep-checkpoints", "2", "--no-save-adapters", "--group-by-length",
           "--seed", str(args.seed), "--partition", args.partition, "--threads", "1", "--fault-tolerant",
           "--heartbeat-s", "1", "--missed-heartbeats", "5", *spec["flags"]]
    if args.model:  # a smoke run of this script on a tiny model (tests/CI use tiny-bert); the default is MiniLM
        cmd += ["--model", args.model]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    done, kills = threading.Event(), []
    watcher = threading.Thread(target=killer, args=(out, spec.get("kills", []), done, kills), daemon=True)
    started = time.time()
    with open(out / "simulate.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT)
        watcher.start()
        code = proc.wait()
    done.set()
    watcher.join()
    cell = {"fault": name, "how": spec["how"], "returncode": code, "wall_s": round(time.time() - started, 1),
            "kills": [{**k, "at_s": round(k["at_s"] - started, 1)} for k in kills], "cut": spec.get("cut"),
            "slow_peer": SLOW_PEER if name == "slow" else None}
    cell.update(summarize(out, PEERS, args.rounds, cell))
    (out / "bench_cell.json").write_text(json.dumps(cell, indent=1))
    return cell


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--topology", default=f"exp:{PEERS}")
    p.add_argument("--partition", default="dirichlet:0.5")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="", help="default: the pretrained MiniLM; tiny-bert for a smoke run")
    p.add_argument("--only", default="", help="comma list of faults to run (default: all)")
    p.add_argument("--reuse", action="store_true", help="keep faults an earlier invocation finished (same settings!)")
    args = p.parse_args()
    if args.rounds < 10:
        p.error("--rounds must be >= 10: kills land in rounds 2..rounds-5 and the partition lasts 5 rounds")
    specs = scenarios(args)
    wanted = [n for n in (args.only.split(",") if args.only else specs)]
    unknown = [n for n in wanted if n not in specs]
    if unknown:
        p.error(f"unknown fault(s) {unknown}; choose from {', '.join(specs)}")
    if "none" not in wanted:
        wanted.insert(0, "none")  # every ratio is against the no-fault run
    runs, cells, started = ROOT / "runs" / ("bench_faults" + (f"-{args.model}" if args.model else "")), [], time.time()
    for name in wanted:
        cell = run_fault(name, specs[name], args, runs / name)
        cells.append(cell)
        acc = cell.get("survivor_accuracy_mean")
        print(f"{name:13s} exit {cell['returncode']}  survivors' accuracy "
              f"{'n/a' if acc is None else f'{100 * acc:.2f} %'}  {cell['wall_s']:.0f} s  {cell['happened']}",
              flush=True)
    settings = {k: getattr(args, k) for k in ("rounds", "local_steps", "topology", "partition", "seed")}
    path = write_result("bench_faults" + (f"_{args.model}" if args.model else ""), {"settings": {**settings, "peers": PEERS, "model": args.model or "all-MiniLM-L6-v2",
                                                      "data": "SST-2 (shipped)"},
                                         "cells": cells, "wall_s": round(time.time() - started, 1)})
    print(table(cells))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
