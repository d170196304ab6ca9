"""Gossip against a parameter server as the number of peers grows: round time and bytes through the busiest process.

No training. Each peer is a real OS process (benchmarks/scale_worker.py) with a real ZmqTransport over loopback TCP;
its payload is a random Llama-2-7B-shaped adapter (r=16 on q_proj and v_proj: 64 A 16x4096 and 64 B 4096x16)
encoded once with the int8 codec (about 8.9 MB per message). For N = 4, 8, 16, 32, 64 processes:

- `ring`: gossip on ring:N (degree 2): send the encoded adapter to each neighbour and collect theirs
  (transport.exchange; the transport decodes them), mix with declora.core.aggregate.gossip (Metropolis weights);
- `regular4`: the same on regular:N:4:SEED (a random 4-regular graph; at N=4 degree 4 is impossible and the graph
  is complete:4, degree 3);
- `server`: the parameter server (fedit): the server collects N UPDATEs (decoded by its transport), averages them
  with data-share weights (declora.core.strategies' fedit, as the server does), encodes the aggregate (int8) and
  sends it to every client, whose transport decodes it. N clients + 1 server process.

Every round starts at a barrier the parent releases for all processes at once; 1 warm-up round, then `--rounds`
timed ones. Per configuration and N:

- round time: max over processes of (time the process has its mixed / aggregated result - round start);
- bytes through the busiest process per round: sent + received per the transport's counters (the server, for the
  server configuration);
- compute: CPU seconds (time.thread_time of the main thread) of the mix (gossip), or the server's aggregate +
  encode plus a client's taking in the result (server), measured per process so that timesharing does not inflate
  it (median over the peers or clients, who all do the same work). The decode is not in it: transports decode on
  their I/O thread as messages arrive (until they lost decode=False, the main thread decoded and compute included
  it; the recorded results are from then); every other thread's CPU time in a round is kept as io_cpu_s;
- modelled round time for 1 and 10 Gbit/s per process: busiest bytes * 8 / bandwidth + compute. That counts a
  process's sent and received bytes as sharing one link (half duplex). The JSON also holds a full-duplex variant
  (gossip sends and receives at once: max(sent, received); the server cannot overlap: it must hear every update
  before it can send the aggregate, so its model stays sent + received).

The script checks that the server's bytes per round grow linearly with N (least-squares fit, ratios) and that a
gossip peer's stay constant for a fixed degree, prints a table, writes benchmarks/results/bench_scale.json and
bench_scale.png.

All the processes share one host: with more processes than cores, the measured round times at large N are
CPU-bound (every process decodes and mixes on the same cores), not network-bound (benchmarks/README.md). The
modelled times are what the byte counts imply for processes on their own hosts.

The whole run keeps within `--budget-s` (600 s): before each N it predicts each configuration's time from the
previous N and leaves out (cheapest kept first) what would not fit, and an N whose memory estimate does not fit
(`--max-mem-gib`). What is left out is reported as NOT MEASURED, with its bytes and modelled time EXTRAPOLATED from
the bytes model and the measured compute.

On emulated hosts (`--links netns:RATE[,RATE...]`, Mbit/s, root and iproute2 needed): for each rate and N, every
worker process (the N peers or clients, and the server) runs in a network namespace of its own, one emulated host
each, with a tbf cap of the rate on its link in each direction (declora.node.netns), so that round times are
MEASURED on capped links rather than modelled from byte counts. Each worker joins its namespace with setns(2) right
after the zygote forks it, binds its host's private 10.x.y.z address, and talks plain text to the other hosts
(allow_plaintext_nonlocal: the namespaces have no route off the machine; CURVE would add encryption CPU on the shared
cores). The barrier to the parent is an ipc:// socket in the run's temp folder (reachable from any namespace; all
runs use it). Next to each measured time: the model at that rate, half and full duplex (the caps are per direction).
The CPU is still the machine's few shared cores, so at high rates the measured time can be CPU-bound: compare it with
'CPU/cores s' in the table. Defaults there: N = 4, 8, 16, 1 warm-up + 2 timed rounds, --budget-s 900 over all rates;
namespaces are removed after each N, failed or not. Writes benchmarks/results/bench_scale_netns.json (key `links`:
rate -> N -> configuration) and bench_scale_netns.png; the loopback run's files are left alone.

The code: scale_plan.py (configurations, budgets), scale_run.py (the worker processes of one N, and every N),
scale_worker.py (one process), scale_analysis.py (statistics, scaling checks, extrapolation), scale_report.py (table,
notes, plot), scale_links.py (the emulated-host runs: table, notes, plot); this file parses the command line and
writes the results.

    python benchmarks/bench_scale.py [--quick] [--ns 4,8,16,32,64] [--rounds 3] [--budget-s 600]
    python benchmarks/bench_scale.py --links netns:1000,100 [--ns 4,8,16] [--rounds 2] [--budget-s 900]
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench_scale.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, write_result  # noqa: E402
from benchmarks.scale_analysis import extrapolate, scaling_checks, wire_message_bytes  # noqa: E402
from benchmarks.scale_plan import BANDWIDTHS, BLOCK, CONFIGS  # noqa: E402
from benchmarks.scale_links import main_links, parse_links  # noqa: E402
from benchmarks.scale_report import plot, print_checks, print_table, run_notes  # noqa: E402
from benchmarks.scale_run import measure  # noqa: E402


def parse_args(argv: list[str] | None = None) -> tuple[argparse.Namespace, list[int], tuple[str, ...]]:
    """The options, the peer counts and the configurations to measure."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default=None, help="comma-separated peer counts (default 4,8,16,32,64; with --links "
                    "4,8,16)")
    ap.add_argument("--links", default=None, metavar="netns:RATE[,RATE...]",
                    help="measure on emulated hosts, one network namespace per process, links capped at each RATE "
                         "(Mbit/s) in turn, e.g. netns:1000,100 (needs root); writes bench_scale_netns.json/.png")
    ap.add_argument("--quick", action="store_true", help="N = 4, 8, 16 only")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    ap.add_argument("--rounds", type=int, default=None,
                    help="timed rounds per configuration (after the warm-up; default 3, with --links 2)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up rounds per configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline", type=float, default=180.0, help="collect deadline per round (s): generous, so "
                    "that a process starved of CPU is not counted missing")
    ap.add_argument("--start-timeout", type=float, default=120.0, help="wait for neighbours to come up (s)")
    ap.add_argument("--missed-heartbeats", type=int, default=120,
                    help="heartbeat intervals (1 s) before a neighbour counts as down: large, as starved processes "
                         "answer pings late")
    ap.add_argument("--phase-timeout", type=float, default=240.0,
                    help="give up on an N when a barrier waits this long (s); the stuck workers' stacks are reported")
    ap.add_argument("--min-free-gib", type=float, default=3.0,
                    help="abort an N whose run pushes MemAvailable below this (the machine is shared)")
    ap.add_argument("--max-mem-gib", type=float, default=10.0,
                    help="skip (and extrapolate) an N whose estimated memory, scaled from the previous N, exceeds this")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="skip (and extrapolate) an N whose predicted wall time, scaled from the previous N, would "
                         "take the whole run past this many seconds (0: no limit; default 600, with --links 900 "
                         "over all rates, and nothing is extrapolated)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write JSON/PNG")
    args = ap.parse_args(argv)
    if args.links is not None:
        try:
            parse_links(args.links)
        except ValueError as e:
            ap.error(str(e))
    if args.rounds is None:
        args.rounds = 3 if args.links is None else 2
    if args.budget_s is None:
        args.budget_s = 600.0 if args.links is None else 900.0
    if args.ns is None:
        args.ns = "4,8,16,32,64" if args.links is None else "4,8,16"
    ns = [4, 8, 16] if args.quick else sorted({int(x) for x in args.ns.split(",") if x.strip()})
    configs = tuple(c for c in CONFIGS if c in set(args.configs.split(",")))
    if not configs or min(ns) < 3:
        ap.error("need at least one known configuration and N >= 3")
    return args, ns, configs


def main(argv: list[str] | None = None) -> int:
    args, ns, configs = parse_args(argv)
    if args.links is not None:
        return main_links(args, ns, configs, __doc__.split("\n\n")[0])
    started = time.monotonic()
    load_before = os.getloadavg()
    results, skipped, failures = measure(ns, configs, args)
    if not results:
        print("nothing measured")
        return 1
    total_s = time.monotonic() - started
    message_bytes = wire_message_bytes(results)
    print()
    checks = scaling_checks(results, message_bytes)
    extrapolated = extrapolate(results, ns, configs, message_bytes)
    table = print_table(results, extrapolated)
    print()
    print_checks(checks, extrapolated)
    notes = run_notes(results, args, message_bytes, load_before, skipped, failures)
    print()
    print("notes:")
    for line in notes:
        print(f"- {line}")
    if args.no_write:
        return 0
    for r in results.values():
        r.pop("tmp", None)
    payload = {
        "description": __doc__.split("\n\n")[0],
        "settings": {"ns": ns, "configs": list(configs), "rounds": args.rounds, "warmup": args.warmup,
                     "seed": args.seed, "deadline_s": args.deadline, "missed_heartbeats": args.missed_heartbeats,
                     "codec": "int8", "block": BLOCK, "adapter": "Llama-2-7B r=16 q_proj+v_proj (64 A 16x4096, 64 B 4096x16)",
                     "bandwidths_bit_per_s": BANDWIDTHS, "message_bytes": message_bytes},
        "total_wall_s": total_s, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "results": {str(n): r for n, r in results.items()},
        "scaling": checks,
        "skipped": skipped,
        "failed_attempts": failures,
        "extrapolated": extrapolated,
        "table": table,
        "notes": notes,
    }
    path = write_result("bench_scale", payload)
    png = RESULTS / "bench_scale.png"
    plot(results, extrapolated, png)
    print(f"\nwrote {path} and {png} ({total_s:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
