"""Many MiniLM peers on one host: one process per peer against several peers per process sharing one frozen base
(`declora simulate --peers-per-process M`), with real training on SST-2 and real ZeroMQ between every peer.

For each layout the script runs `declora simulate` and samples, every 0.5 s, the proportional set size (PSS, from
/proc/PID/smaps_rollup: shared pages split among the processes that map them) of every process of the run, and
records the peak of their sum: the memory the run really takes from the machine. Round time is the mean over
rounds of the peers' mean `round_seconds` (summary.json). Layouts (in one invocation, one after the other):

- `process-per-peer` at N = --small (default 8): the baseline;
- `shared` at the same N, all peers in one process: the same N, the other layout;
- `shared` at N = --large (default 64), all peers in one process: the goal (64 peers within 8 GB).

    python benchmarks/bench_shared_base.py [--small 8] [--large 64] [--rounds 2]

Writes benchmarks/results/bench_shared_base.json. Needs the pretrained MiniLM (the demo extra).
"""
from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import ROOT, write_result  # noqa: E402

GOAL_GIB = 8.0


def pss_kib(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def run_processes(out_dir: str) -> list[int]:
    """The peer processes of the run writing to out_dir (their command line names its config)."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if out_dir in cmd and "declora.node." in cmd:
                pids.append(int(proc.name))
    return pids


def measure(n: int, per_process: int, args, data: tuple[Path, Path], tmp: Path) -> dict:
    out = tmp / f"n{n}-ppp{per_process}"
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--peers", str(n), "--peers-per-process", str(per_process),
           "--topology", "ring", "--rounds", str(args.rounds), "--local-steps", str(args.local_steps),
           "--batch-size", "16", "--data", str(data[0]), "--eval-data", str(data[1]), "--eval-every", str(args.rounds),
           "--threads", "1", "--out", str(out)]
    peak = {"total_kib": 0, "processes": 0}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids = run_processes(str(out))
            total = sum(pss_kib(p) for p in pids)
            if total > peak["total_kib"]:
                peak.update(total_kib=total, processes=len(pids))
            time.sleep(0.5)

    sampler = threading.Thread(target=sample, daemon=True)
    started = time.monotonic()
    sampler.start()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    done.set()
    sampler.join()
    wall = time.monotonic() - started
    if proc.returncode != 0:
        raise RuntimeError(f"N={n} x{per_process}: exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    summary = json.loads((out / "summary.json").read_text())
    rounds = [r["round_seconds"] for r in summary["rounds"] if r.get("round_seconds") is not None]
    result = {"n": n, "peers_per_process": per_process, "processes": -(-n // per_process),
              "peak_pss_gib": peak["total_kib"] / 2**20, "pss_per_peer_mib": peak["total_kib"] / 1024 / n,
              "round_s_mean": sum(rounds) / len(rounds), "wall_s": wall,
              "final_accuracy_mean": summary["final"].get("accuracy_mean"), "rounds": summary["rounds_completed"]}
    print(f"N={n:3d} x{per_process:3d} per process: peak PSS {result['peak_pss_gib']:.2f} GiB "
          f"({result['pss_per_peer_mib']:.0f} MiB per peer), {result['round_s_mean']:.1f} s/round, {wall:.0f} s wall",
          flush=True)
    return result


def slice_sst2(tmp: Path, n_train: int, n_dev: int) -> tuple[Path, Path]:
    from declora.learn.examples import default_dataset

    paths = default_dataset()
    out = []
    for src, n, name in ((paths.train, n_train, "train.tsv"), (paths.eval, n_dev, "dev.tsv")):
        lines = gzip.open(src, "rt").read().splitlines()
        (tmp / name).write_text("\n".join(lines[: n + 1]) + "\n")
        out.append(tmp / name)
    return out[0], out[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--small", type=int, default=8, help="N for both layouts")
    p.add_argument("--large", type=int, default=64, help="N for the shared layout only")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--local-steps", type=int, default=2)
    p.add_argument("--train", type=int, default=0, help="training sentences (0 = all of SST-2)")
    p.add_argument("--dev", type=int, default=200, help="dev sentences every peer evaluates on")
    args = p.parse_args(argv)
    tmp = Path(tempfile.mkdtemp(prefix="bench_shared_base_"))
    data = slice_sst2(tmp, args.train or 10**9, args.dev)
    runs = [measure(args.small, 1, args, data, tmp), measure(args.small, args.small, args, data, tmp),
            measure(args.large, args.large, args, data, tmp)]
    base, same_n, large = runs
    ratios = {"pss_shared_over_process_per_peer": same_n["peak_pss_gib"] / base["peak_pss_gib"],
              "round_time_shared_over_process_per_peer": same_n["round_s_mean"] / base["round_s_mean"]}
    goal = {"goal_gib": GOAL_GIB, "n": args.large, "peak_pss_gib": large["peak_pss_gib"],
            "holds": large["peak_pss_gib"] <= GOAL_GIB and large["rounds"] == args.rounds}
    print(f"same N={args.small}: shared/process-per-peer PSS {ratios['pss_shared_over_process_per_peer']:.3f}, "
          f"round time {ratios['round_time_shared_over_process_per_peer']:.2f}; {args.large} peers: "
          f"{large['peak_pss_gib']:.2f} GiB (goal <= {GOAL_GIB} GiB: {'holds' if goal['holds'] else 'does NOT hold'})")
    path = write_result("bench_shared_base", {"settings": vars(args), "runs": runs, "ratios": ratios, "goal": goal})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
