"""Gossip against a parameter server as the number of peers grows: round time and bytes through the busiest process.

No training. Each peer is a real OS process (benchmarks/scale_worker.py) with a real ZmqTransport over loopback TCP;
its payload is a random Llama-2-7B-shaped adapter (r=16 on q_proj and v_proj: 64 A 16x4096 and 64 B 4096x16)
encoded once with the int8 codec (8.9 MB per message). For N = 4, 8, 16, 32, 64 processes:

- `ring`: gossip on ring:N (degree 2): send the encoded adapter to each neighbour and collect theirs
  (transport.exchange), decode, mix with declora.core.aggregate.gossip (Metropolis weights);
- `regular4`: the same on regular:N:4:SEED (a random 4-regular graph; at N=4 degree 4 is impossible and the graph
  is complete:4, degree 3);
- `server`: the parameter server (fedit): the server collects N UPDATEs, decodes them, averages them with data-share
  weights (declora.node.server.aggregate_updates), encodes the aggregate (int8) and sends it to every client, which
  decodes it. N clients + 1 server process.

Every round starts at a barrier the parent releases for all processes at once; 1 warm-up round, then `--rounds`
timed ones. Per configuration and N:

- round time: max over processes of (time the process has its mixed / aggregated result - round start);
- bytes through the busiest process per round: sent + received per the transport's counters (the server, for the
  server configuration);
- compute: CPU seconds (time.thread_time) of decode + mix (gossip), or server decode + aggregate + encode plus a
  client's decode (server), measured per process so that timesharing does not inflate it (median over the peers or
  clients, who all do the same work);
- modelled round time for 1 and 10 Gbit/s per process: busiest bytes * 8 / bandwidth + compute. That counts a
  process's sent and received bytes as sharing one link (half duplex). The JSON also holds a full-duplex variant
  (gossip sends and receives at once: max(sent, received); the server cannot overlap: it must hear every update
  before it can send the aggregate, so its model stays sent + received).

The script checks that the server's bytes per round grow linearly with N (least-squares fit, ratios) and that a
gossip peer's stay constant for a fixed degree, prints a table, writes benchmarks/results/bench_scale.json and
bench_scale.png.

On this machine (2 cores shared with other work) 64 processes timeshare two cores: the measured round times at
large N are CPU-bound (every process decodes and mixes on the same two cores), not network-bound. The modelled
times are what the byte counts imply for processes on their own hosts.

The whole run keeps within `--budget-s` (600 s): before each N it predicts each configuration's time from the
previous N and leaves out (cheapest kept first) what would not fit, and an N whose memory estimate does not fit
(`--max-mem-gib`). What is left out is reported as NOT MEASURED, with its bytes and modelled time EXTRAPOLATED from
the bytes model and the measured compute.

    python benchmarks/bench_scale.py [--quick] [--ns 4,8,16,32,64] [--rounds 3] [--budget-s 600]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import zmq  # noqa: E402

from benchmarks.machine import RESULTS, write_result  # noqa: E402
from declora.node.addressbook import free_loopback_ports  # noqa: E402
from declora.core.topology import load_topology, mixing_matrix, mixing_row  # noqa: E402

WORKER = Path(__file__).resolve().parent / "scale_worker.py"
CONFIGS = ("ring", "regular4", "server")
BANDWIDTHS = {"1G": 1e9, "10G": 10e9}  # bit/s per process
LAYERS, RANK, HIDDEN, BLOCK = 32, 16, 4096, 64
NUMEL = RANK * HIDDEN
MESSAGE_PAYLOAD_BYTES = 2 * LAYERS * 2 * (NUMEL + 4 * -(-NUMEL // BLOCK))  # int8 codes + fp32 scales, no header


def mem_available_gib() -> float:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) / 2**20
    return float("nan")


# ---- one N --------------------------------------------------------------------------------------------------------
def build_configs(n: int, seed: int, configs: tuple[str, ...]) -> list[dict]:
    """Per configuration: endpoints, each process's role, neighbours and mixing row. Ids 0..n-1 are peers or
    clients; id n is the server (idle during the gossip configurations)."""
    out = []
    for name in configs:
        ports = free_loopback_ports(n + 1)
        book = {str(i): f"tcp://127.0.0.1:{ports[i]}" for i in range(n + 1)}
        if name == "server":
            roles = {str(i): "client" for i in range(n)} | {str(n): "server"}
            nbrs = {str(i): [n] for i in range(n)} | {str(n): list(range(n))}
            rng = np.random.default_rng(seed)
            samples = {str(i): int(x) for i, x in enumerate(rng.integers(500, 1500, size=n))}
            out.append({"name": name, "kind": "server", "spec": f"star: 1 server + {n} clients", "degree": n,
                        "server": n, "book": book, "roles": roles, "neighbours": nbrs, "samples": samples})
            continue
        spec = f"ring:{n}" if name == "ring" else (f"regular:{n}:4:{seed}" if n > 4 else f"complete:{n}")
        topo = load_topology(spec)
        M = mixing_matrix(topo.graph, "metropolis")
        roles = {str(i): "peer" for i in range(n)} | {str(n): "idle"}
        nbrs = {str(i): topo.neighbors(i) for i in range(n)}
        rows = {str(i): {str(j): w for j, w in mixing_row(M, i).items()} for i in range(n)}
        degrees = sorted(set(topo.degrees))
        out.append({"name": name, "kind": "gossip", "spec": spec, "degree": degrees[0] if len(degrees) == 1 else degrees,
                    "book": book, "roles": roles, "neighbours": nbrs, "rows": rows})
    return out


def run_n(n: int, args, configs: tuple[str, ...]) -> dict:
    """Start n+1 worker processes, drive their barriers, gather their results."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_scale_{n}_"))
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind("tcp://127.0.0.1:*")
    endpoint = router.last_endpoint.decode()
    confs = build_configs(n, args.seed, configs)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT),
           # Fewer malloc arenas (the zmq and I/O threads would each get one), and blocks of 1 MiB or more (the
           # 8.9 MB message frames) always mmapped, so that they go back to the OS when freed: glibc's dynamic
           # threshold would otherwise rise to 8.9 MB after the first free and keep old frames in the heap.
           # The 256 KiB factors stay on the heap (no page faults per round); the worker trims it between rounds.
           "MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    zygote = None
    mem_before = mem_available_gib()
    mem_min = mem_before
    t_start = time.monotonic()
    try:
        paths = []
        for i in range(n + 1):
            cfg = {"id": i, "n": n, "seed": args.seed, "barrier": endpoint, "configs": confs, "warmup": args.warmup,
                   "rounds": args.rounds, "deadline_s": args.deadline, "start_timeout_s": args.start_timeout,
                   "missed_heartbeats": args.missed_heartbeats, "out": str(tmp / f"worker{i}.json")}
            path = tmp / f"config{i}.json"
            path.write_text(json.dumps(cfg))
            paths.append(str(path))
        # One zygote imports torch once and forks the n+1 workers (shared pages; see scale_worker.zygote).
        zygote = subprocess.Popen([sys.executable, str(WORKER), "--zygote", *paths], env=env, cwd=ROOT,
                                  stdout=open(tmp / "zygote.log", "w"), stderr=subprocess.STDOUT)
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        released: dict[str, float] = {}  # barrier tag -> when the parent released it
        phase_started = time.monotonic()
        waiting: dict[bytes, str] = {}
        while True:
            if len(waiting) == n + 1:
                tags = set(waiting.values())
                if len(tags) != 1:
                    raise RuntimeError(f"workers out of step: {sorted(tags)}")
                tag = tags.pop()
                for ident in waiting:
                    router.send_multipart([ident, b"go"])
                waiting.clear()
                released[tag] = phase_started = time.monotonic()
                if tag == "exit":
                    break
            for sock, _ in poller.poll(200):
                ident, tag = router.recv_multipart()
                waiting[ident] = tag.decode()
            mem_min = min(mem_min, mem_available_gib())
            if zygote.poll() is not None:
                said = (tmp / "zygote.log").read_text()[-2000:]
                logs = sorted(tmp.glob("config*.log"), key=lambda p: -p.stat().st_size)
                tail = logs[0].read_text()[-3000:] if logs else ""
                raise RuntimeError(f"N={n}: workers stopped early (zygote status {zygote.returncode}):\n{said}\n{tail}")
            if time.monotonic() - phase_started > args.phase_timeout:
                stuck = sorted(set(range(n + 1)) - {int(i) for i in waiting})
                zygote.send_signal(signal.SIGUSR1)  # every worker dumps its threads' stacks into its log
                time.sleep(3)
                logs = [tmp / f"config{i}.log" for i in stuck[:2]]
                where = "\n".join(f"--- worker {p.stem[6:]}:\n" + (p.read_text()[-4000:] if p.exists() else "(no log)")
                                  for p in logs)
                raise RuntimeError(f"N={n}: no progress for {args.phase_timeout} s: workers {stuck} did not reach "
                                   f"barrier {sorted(set(waiting.values()))}; their stacks:\n{where}")
            if mem_available_gib() < args.min_free_gib:
                raise RuntimeError(f"N={n}: MemAvailable fell under {args.min_free_gib} GiB; stopped to protect the "
                                   f"machine")
        if zygote.wait(timeout=120) != 0:
            raise RuntimeError(f"N={n}: a worker failed at exit:\n{(tmp / 'zygote.log').read_text()[-2000:]}")
        workers = [json.loads((tmp / f"worker{i}.json").read_text()) for i in range(n + 1)]
    finally:
        if zygote is not None and zygote.poll() is None:
            zygote.terminate()  # its SIGTERM handler kills the workers it forked, by their pids
            try:
                zygote.wait(timeout=30)
            except subprocess.TimeoutExpired:
                zygote.kill()
                zygote.wait()
        router.close()
        ctx.term()
    wall = time.monotonic() - t_start
    per_conf = {c["name"]: summarize(c, n, workers, args) for c in confs}
    for c in confs:  # wall time of each configuration, connecting included: what the time budget is planned with
        prev_tag = "start" if c is confs[0] else f"{confs[confs.index(c) - 1]['name']}:close"
        per_conf[c["name"]]["wall_s"] = released[f"{c['name']}:close"] - released[prev_tag]
    return {"n": n, "processes": n + 1, "wall_s": wall, "mem_available_before_gib": mem_before,
            "mem_available_min_gib": mem_min,
            # the machine's MemAvailable drop during the run: includes whatever else ran meanwhile
            "mem_available_drop_gib": mem_before - mem_min,
            "worker_private_mb_max": max(r["private_mb"] for w in workers if w["id"] != n
                                         for c in w["configs"].values() for r in c["rounds"]),
            "server_private_mb_max": max((r["private_mb"] for r in workers[n]["configs"].get("server", {})
                                          .get("rounds", [])), default=None),
            "message_bytes": max(r.get("message_bytes", 0) for w in workers for c in w["configs"].values()
                                 for r in c["rounds"]),
            "encode_cpu_s_median": statistics.median(w["encode_cpu_s"] for w in workers),
            "configs": per_conf, "tmp": str(tmp)}


def plan_configs(prev: dict, n: int, configs, elapsed: float, budget: float, skipped: dict) -> list[str]:
    """The configurations to run at N=n within the time budget, predicted from the previous N (each
    configuration's wall time, and the start-up, scaled by the number of processes). Cheapest first, so that a
    tight budget keeps as many as it can; the rest go into `skipped`."""
    scale = (n + 1) / prev["processes"]
    startup = max(0.0, prev["wall_s"] - sum(c["wall_s"] for c in prev["configs"].values())) * scale
    plan = startup
    chosen = []
    for name in sorted(configs, key=lambda c: prev["configs"].get(c, {}).get("wall_s", float("inf"))):
        if name not in prev["configs"]:
            skipped[f"{name}@N={n}"] = f"not measured at N={prev['n']} either"
            continue
        t = prev["configs"][name]["wall_s"] * scale
        if elapsed + plan + t <= budget:
            chosen.append(name)
            plan += t
        else:
            skipped[f"{name}@N={n}"] = (f"time budget: predicted {t:.0f} s ({prev['configs'][name]['wall_s']:.0f} s at "
                                        f"N={prev['n']}, scaled by processes) + start-up {startup:.0f} s after "
                                        f"{elapsed:.0f} s would pass --budget-s {budget:.0f}")
    for name in configs:
        if f"{name}@N={n}" in skipped:
            print(f"N={n}: {name} skipped: {skipped[f'{name}@N={n}']}", flush=True)
    return [c for c in configs if c in chosen]


def memory_estimate_gib(prev: dict, n: int) -> float:
    """Memory that N=n would need, from the private memory the workers had at the previous N: every process as
    much as the largest non-server one, plus the server's received updates (one message per client)."""
    per_proc_mb = prev["worker_private_mb_max"]
    server_mb = n * prev["message_bytes"] * 1.5 / 2**20
    return (1.2 * (n + 1) * per_proc_mb + server_mb + 300) / 1024  # + the zygote, socket buffers


def summarize(conf: dict, n: int, workers: list[dict], args) -> dict:
    name = conf["name"]
    active = [(w["id"], w["configs"][name]) for w in workers if w["configs"][name]["role"] != "idle"]
    rounds = []
    for k in range(args.warmup, args.warmup + args.rounds):
        recs = {i: c["rounds"][k] for i, c in active}
        durations = {i: r["done"] - r["go"] for i, r in recs.items()}
        through = {i: r["bytes_sent"] + r["bytes_received"] for i, r in recs.items()}
        busiest = max(through, key=through.get)
        # Compute on the critical path. Every peer (every client) does the same work, so the typical one is taken:
        # the median over processes; the max (also kept) picks up the noise of a contended host.
        if conf["kind"] == "server":
            srv, clients = conf["server"], [i for i in recs if i != conf["server"]]
            compute = recs[srv]["compute_cpu_s"] + statistics.median(recs[i]["compute_cpu_s"] for i in clients)
            compute_max = recs[srv]["compute_cpu_s"] + max(recs[i]["compute_cpu_s"] for i in clients)
            hot = recs[srv]
            link_half = hot["bytes_sent"] + hot["bytes_received"]
            link_full = link_half  # receive everything, aggregate, then send: no overlap on the server's link
            through_hot = through[srv]
        else:
            compute = statistics.median(r["compute_cpu_s"] for r in recs.values())
            compute_max = max(r["compute_cpu_s"] for r in recs.values())
            link_half = max(through.values())
            link_full = max(max(r["bytes_sent"], r["bytes_received"]) for r in recs.values())
            through_hot = through[busiest]
        rounds.append({
            "round": k,
            "round_s": max(durations.values()),  # the brief's definition: max over processes
            "span_s": max(r["done"] for r in recs.values()) - min(r["go"] for r in recs.values()),
            "start_skew_s": max(r["go"] for r in recs.values()) - min(r["go"] for r in recs.values()),
            "wait_s_max": max(r["received_at"] - r["go"] for r in recs.values()),
            # CPU seconds all this configuration's processes used in the round / the round's span: how many of the
            # machine's cores this benchmark actually got (the rest went to other work on the machine)
            "cores_used": sum(r["process_cpu_s"] for r in recs.values())
                          / max(1e-9, max(r["done"] for r in recs.values()) - min(r["go"] for r in recs.values())),
            "process_cpu_s_total": sum(r["process_cpu_s"] for r in recs.values()),
            "compute_cpu_s": compute,
            "compute_cpu_s_with_slowest": compute_max,
            "busiest_process": busiest,
            "busiest_bytes": through_hot,
            "busiest_is_server": conf["kind"] == "server" and busiest == conf["server"],
            "message_bytes": max(r.get("message_bytes", 0) for r in recs.values()),
            "busiest_sent": recs[busiest]["bytes_sent"], "busiest_received": recs[busiest]["bytes_received"],
            "mean_bytes_per_process": statistics.fmean(through.values()),
            "modelled_s": {bw: link_half * 8 / rate + compute for bw, rate in BANDWIDTHS.items()},
            "modelled_full_duplex_s": {bw: link_full * 8 / rate + compute for bw, rate in BANDWIDTHS.items()},
            "missing": sorted({f"{i}<-{j}" for i, r in recs.items() for j in r["missing"]}),
            "send_failed": sorted({j for r in recs.values() for j in r.get("send_failed", [])}),
        })
    med = lambda key: statistics.median(r[key] for r in rounds)  # noqa: E731
    dropped: dict[str, int] = {}
    for _, c in active:
        for reason, count in c.get("dropped", {}).items():
            dropped[reason] = dropped.get(reason, 0) + count
    return {
        "spec": conf["spec"], "kind": conf["kind"], "degree": conf["degree"], "processes": len(active),
        "round_s_median": med("round_s"), "round_s_min": min(r["round_s"] for r in rounds),
        "span_s_median": med("span_s"), "start_skew_s_median": med("start_skew_s"),
        "compute_cpu_s_median": med("compute_cpu_s"), "busiest_bytes_median": med("busiest_bytes"),
        "cores_used_median": med("cores_used"), "process_cpu_s_total_median": med("process_cpu_s_total"),
        # the round time if this host's cores did nothing else: all the processes' CPU seconds / cores (a floor:
        # the measured round time cannot be lower on this host, and is higher when other work takes CPU)
        "cpu_floor_s_median": med("process_cpu_s_total") / (os.cpu_count() or 1),
        "modelled_s_median": {bw: statistics.median(r["modelled_s"][bw] for r in rounds) for bw in BANDWIDTHS},
        "modelled_full_duplex_s_median": {bw: statistics.median(r["modelled_full_duplex_s"][bw] for r in rounds)
                                          for bw in BANDWIDTHS},
        "missing": sorted({m for r in rounds for m in r["missing"]}),
        "missing_at_start": sorted({f"{i}<-{j}" for i, c in active for j in c.get("missing_at_start", [])}),
        "send_failed_total": sum(c.get("send_failed_total", 0) for _, c in active),
        "dropped": dropped,
        "went_down": sum(c.get("went_down", 0) for _, c in active),
        "close_hung": sum(bool(c.get("close_hung")) for _, c in active),
        "connect_s_max": max(c.get("start_s", 0.0) for _, c in active),
        "rounds": rounds,
    }


# ---- scaling checks -------------------------------------------------------------------------------------------------
def fit_linear(ns: list[int], ys: list[float]) -> dict:
    x, y = np.asarray(ns, float), np.asarray(ys, float)
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"slope_bytes_per_peer": float(slope), "intercept_bytes": float(intercept),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def scaling_checks(results: dict[int, dict], message_bytes: int) -> dict:
    checks = {}
    ns = sorted(n for n in results if "server" in results[n]["configs"])
    if len(ns) >= 2:
        ys = [results[n]["configs"]["server"]["busiest_bytes_median"] for n in ns]
        fit = fit_linear(ns, ys)
        per_peer = [y / n for n, y in zip(ns, ys)]
        checks["server"] = {
            "ns": ns, "busiest_bytes": ys, **fit,
            "slope_over_2_messages": fit["slope_bytes_per_peer"] / (2 * message_bytes),
            "bytes_per_client": per_peer,
            "ratio_to_first": [y / ys[0] for y in ys], "n_ratio_to_first": [n / ns[0] for n in ns],
            "linear": fit["r2"] > 0.999 and abs(fit["slope_bytes_per_peer"] / (2 * message_bytes) - 1) < 0.01,
        }
    for name in ("ring", "regular4"):
        # regular4 at N=4 is complete:4 (degree 3): leave it out of the constant-degree check.
        use = [n for n in sorted(results) if name in results[n]["configs"]
               and results[n]["configs"][name]["degree"] == (2 if name == "ring" else 4)]
        if len(use) < 2:
            continue
        ys = [results[n]["configs"][name]["busiest_bytes_median"] for n in use]
        fit = fit_linear(use, ys)
        checks[name] = {
            "ns": use, "busiest_bytes": ys, **fit,
            "ratio_to_first": [y / ys[0] for y in ys],
            "max_relative_spread": (max(ys) - min(ys)) / statistics.fmean(ys),
            "bytes_over_2_degree_messages": statistics.fmean(ys) / (2 * (2 if name == "ring" else 4) * message_bytes),
            "constant": (max(ys) - min(ys)) / statistics.fmean(ys) < 0.01,
        }
    return checks


def extrapolate(results: dict[int, dict], wanted: list[int], configs, message_bytes: int) -> dict:
    """For each configuration and N not measured: busiest bytes from the bytes model, compute from the measured N
    (gossip: the largest N's, as a peer's work does not depend on N; server: a least-squares line in N), and the
    modelled times from both. EXTRAPOLATED, not measured; no measured round time."""
    out: dict = {}
    for name in configs:
        ns = sorted(n for n in results if name in results[n]["configs"])
        if not ns:
            continue
        for n in [m for m in wanted if m not in ns]:
            b = bytes_model(name, n, message_bytes)
            if name == "server" and len(ns) >= 2:
                slope, icpt = np.polyfit(ns, [results[m]["configs"][name]["compute_cpu_s_median"] for m in ns], 1)
                compute = float(slope * n + icpt)
            else:
                compute = results[ns[-1]]["configs"][name]["compute_cpu_s_median"]
            out.setdefault(name, {})[str(n)] = {
                "extrapolated": True, "busiest_bytes": b, "compute_cpu_s": compute,
                "modelled_s": {bw: b * 8 / rate + compute for bw, rate in BANDWIDTHS.items()}}
    return out


def bytes_model(name: str, n: int, message_bytes: int) -> int:
    """Bytes through the busiest process per round, payload only: what the counters show up to pings."""
    degree = {"ring": 2, "regular4": 4 if n > 4 else n - 1}.get(name)
    return 2 * n * message_bytes if name == "server" else 2 * degree * message_bytes


# ---- output ---------------------------------------------------------------------------------------------------------
def print_table(results: dict[int, dict], extrapolated: dict) -> list[str]:
    head = (f"{'config':9s} {'N':>3s} {'deg':>4s} {'round s':>8s} {'CPU/cores':>9s} {'compute s':>9s} {'busiest MB':>10s} "
            f"{'model 1G s':>10s} {'model 10G s':>11s} {'missing':>7s}")
    lines = [head, "-" * len(head)]
    rows = []
    for n, r in results.items():
        for name, c in r["configs"].items():
            deg = str(c["degree"]) if not isinstance(c["degree"], list) else "/".join(map(str, c["degree"]))
            rows.append((n, CONFIGS.index(name), f"{name:9s} {n:3d} {deg:>4s} {c['round_s_median']:8.2f} "
                         f"{c['cpu_floor_s_median']:9.2f} {c['compute_cpu_s_median']:9.3f} {c['busiest_bytes_median'] / 1e6:10.1f} "
                         f"{c['modelled_s_median']['1G']:10.3f} {c['modelled_s_median']['10G']:11.3f} "
                         f"{len(c['missing']):7d}"))
    for name, by_n in extrapolated.items():
        for key, e in by_n.items():
            n = int(key)
            deg = {"ring": 2, "regular4": 4 if n > 4 else n - 1, "server": n}[name]
            rows.append((n, CONFIGS.index(name), f"{name:9s} {n:3d} {deg:>4d} {'-':>8s} {'-':>9s} {e['compute_cpu_s']:9.3f} "
                         f"{e['busiest_bytes'] / 1e6:10.1f} {e['modelled_s']['1G']:10.3f} "
                         f"{e['modelled_s']['10G']:11.3f}   EXTRAPOLATED (not measured)"))
    lines += [row for _, _, row in sorted(rows)]
    print("\n".join(lines))
    return lines


def plot(results: dict[int, dict], extrapolated: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colours = {"ring": "tab:blue", "regular4": "tab:green", "server": "tab:red"}
    labels = {"ring": "gossip ring (deg 2)", "server": "server (fedit)",
              "regular4": "gossip 4-regular" + (" (N=4: complete, deg 3)" if 4 in results else "")}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 7))
    for name in CONFIGS:
        ns = sorted(n for n in results if name in results[n]["configs"])
        if not ns:
            continue
        cs = [results[n]["configs"][name] for n in ns]
        ax1.plot(ns, [c["round_s_median"] for c in cs], "o-", color=colours[name], label=f"{labels[name]}: measured")
        ax1.plot(ns, [c["cpu_floor_s_median"] for c in cs], "-.", color=colours[name], lw=1, alpha=0.6,
                 label=f"{labels[name]}: CPU of all processes / {os.cpu_count()} cores")
        ax1.plot(ns, [c["modelled_s_median"]["1G"] for c in cs], "s--", color=colours[name], alpha=0.8,
                 label=f"{labels[name]}: model 1 Gbit/s")
        ax1.plot(ns, [c["modelled_s_median"]["10G"] for c in cs], "^:", color=colours[name], alpha=0.8,
                 label=f"{labels[name]}: model 10 Gbit/s")
        ax2.plot(ns, [c["busiest_bytes_median"] / 1e6 for c in cs], "o-", color=colours[name],
                 label=f"{labels[name]}: measured")
        ex = sorted(extrapolated.get(name, {}).items(), key=lambda kv: int(kv[0]))
        if ex:
            xs = [ns[-1]] + [int(k) for k, _ in ex]
            ys = [cs[-1]["busiest_bytes_median"] / 1e6] + [e["busiest_bytes"] / 1e6 for _, e in ex]
            ax2.plot(xs, ys, "x:", color=colours[name], label=f"{labels[name]}: EXTRAPOLATED (bytes model)")
            for bw, marker in (("1G", "s"), ("10G", "^")):
                ys = [cs[-1]["modelled_s_median"][bw]] + [e["modelled_s"][bw] for _, e in ex]
                ax1.plot(xs, ys, ":", color=colours[name], alpha=0.5)
                ax1.plot(xs[1:], ys[1:], marker, mfc="none", color=colours[name], alpha=0.8)
    all_ns = sorted(set(results) | {int(k) for e in extrapolated.values() for k in e})
    for ax in (ax1, ax2):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(all_ns)
        ax.set_xticklabels([str(n) for n in all_ns])
        ax.set_xlabel("N (peers / clients)")
        ax.grid(True, which="both", alpha=0.3)
    ax1.set_ylabel("round time (s)")
    ax1.set_title("Round time: measured on 2 shared cores (CPU-bound) vs modelled\n"
                  "(model = busiest bytes / link bandwidth + measured compute"
                  + ("; hollow markers: EXTRAPOLATED N)" if extrapolated else ")"), fontsize=9)
    ax2.set_ylabel("MB through the busiest process per round (sent + received)")
    ax2.set_title("Bytes through the busiest process per round\n(Llama-2-7B r=16 q,v adapter, int8: "
                  f"{MESSAGE_PAYLOAD_BYTES / 1e6:.1f} MB per message)", fontsize=9)
    ax1.legend(fontsize=6.5, ncol=2, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    ax2.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.13))
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ns", default="4,8,16,32,64", help="comma-separated peer counts (default 4,8,16,32,64)")
    ap.add_argument("--quick", action="store_true", help="N = 4, 8, 16 only")
    ap.add_argument("--configs", default=",".join(CONFIGS), help=f"subset of {','.join(CONFIGS)}")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds per configuration (after the warm-up)")
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
    ap.add_argument("--budget-s", type=float, default=600.0,
                    help="skip (and extrapolate) an N whose predicted wall time, scaled from the previous N, would "
                         "take the whole run past this many seconds (0: no limit)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not write JSON/PNG")
    args = ap.parse_args()
    ns = [4, 8, 16] if args.quick else sorted({int(x) for x in args.ns.split(",") if x.strip()})
    configs = tuple(c for c in CONFIGS if c in set(args.configs.split(",")))
    if not configs or min(ns) < 3:
        ap.error("need at least one known configuration and N >= 3")

    results: dict[int, dict] = {}
    skipped: dict[str, str] = {}  # "N=64" or "regular4@N=64" -> why it was not measured
    failures: list[str] = []  # attempts that failed (and were retried or skipped)
    started = time.monotonic()
    load_before = os.getloadavg()
    for n in ns:
        if results:
            estimate = memory_estimate_gib(results[max(results)], n)
            if estimate > args.max_mem_gib or estimate > mem_available_gib() - args.min_free_gib:
                skipped[f"N={n}"] = (f"estimated {estimate:.1f} GiB of memory (scaled from N={max(results)}) > "
                                     f"--max-mem-gib {args.max_mem_gib} or MemAvailable "
                                     f"{mem_available_gib():.1f} GiB - {args.min_free_gib}")
                print(f"N={n}: skipped: {skipped[f'N={n}']}", flush=True)
                continue
        chosen = list(configs)
        if results and args.budget_s > 0:
            chosen = plan_configs(results[max(results)], n, configs, time.monotonic() - started, args.budget_s,
                                  skipped)
            if not chosen:
                continue
        t0 = time.monotonic()
        for attempt in (1, 2):
            try:
                results[n] = run_n(n, args, tuple(chosen))
                break
            except RuntimeError as e:
                print(f"N={n}: attempt {attempt} failed: {e}", flush=True)
                failures.append(f"N={n} attempt {attempt}: {str(e).splitlines()[0]}")
                took = time.monotonic() - t0
                if attempt == 2 or (args.budget_s > 0 and time.monotonic() - started + took > args.budget_s):
                    skipped[f"N={n}"] = str(e).splitlines()[0]
                    break
                print(f"N={n}: trying once more", flush=True)
                t0 = time.monotonic()
        if n not in results:
            continue
        r = results[n]
        print(f"N={n}: {time.monotonic() - t0:.0f} s wall, at most {r['worker_private_mb_max']:.0f} MB private per "
              f"process (server {r['server_private_mb_max'] or 0:.0f} MB), "
              + ", ".join(f"{k} {c['round_s_median']:.2f} s/round" for k, c in r["configs"].items()), flush=True)
    if not results:
        print("nothing measured")
        return 1
    total_s = time.monotonic() - started
    message_bytes = _message_bytes(results)
    print()
    checks = scaling_checks(results, message_bytes)
    extrapolated = extrapolate(results, ns, configs, message_bytes)
    table = print_table(results, extrapolated)
    print()
    for name, c in checks.items():
        if name == "server":
            print(f"server: busiest bytes = {c['slope_bytes_per_peer'] / 1e6:.2f} MB x N + "
                  f"{c['intercept_bytes'] / 1e6:.2f} MB (R^2 {c['r2']:.6f}; slope / (2 x message) = "
                  f"{c['slope_over_2_messages']:.4f}); bytes ratio to N={c['ns'][0]}: "
                  + ", ".join(f"{y:.2f} (N ratio {x:.2f})" for y, x in zip(c["ratio_to_first"], c["n_ratio_to_first"]))
                  + f" -> linear in N: {c['linear']}")
        else:
            print(f"{name}: busiest bytes per round over N={c['ns']}: "
                  + ", ".join(f"{y / 1e6:.2f}" for y in c["busiest_bytes"])
                  + f" MB; ratio to N={c['ns'][0]}: " + ", ".join(f"{r:.4f}" for r in c["ratio_to_first"])
                  + f"; slope {c['slope_bytes_per_peer'] / 1e3:.2f} kB per extra peer -> constant: {c['constant']}")
    for name, by_n in extrapolated.items():
        for n, e in sorted(by_n.items(), key=lambda kv: int(kv[0])):
            print(f"{name} at N={n}: NOT MEASURED; EXTRAPOLATED busiest bytes {e['busiest_bytes'] / 1e6:.1f} MB, "
                  f"modelled 1G {e['modelled_s']['1G']:.3f} s, 10G {e['modelled_s']['10G']:.3f} s")
    cores = os.cpu_count()
    biggest = max(results)
    shares = {n: statistics.median(c["cores_used_median"] for c in r["configs"].values()) for n, r in results.items()}
    notes = [
        f"All processes run on one host with {cores} CPU cores, shared with other work (load average "
        f"{load_before[0]:.1f} before the run, {os.getloadavg()[0]:.1f} after). At N={biggest} there are "
        f"{biggest + 1} processes timesharing {cores} cores: the measured round times at large N are CPU-bound "
        "(every process decodes and mixes, or the server decodes N updates, on the same cores), not network-bound; "
        "loopback TCP has no link bandwidth limit that matters here ('CPU/cores' in the table: all the processes' "
        "CPU seconds in a round / the host's cores, the round time this host could reach if it did nothing else, "
        "grows with N for every configuration). The benchmark's processes used "
        + ", ".join(f"{v:.2f}" for v in shares.values()) + f" of the {cores} cores on average during a round at N = "
        + ", ".join(map(str, shares)) + " (CPU seconds of all its processes / round span)"
        + (": other work on the machine took the rest, which inflates the measured round times"
           if min(shares.values()) < 0.8 * cores else "")
        + ". The measured times depend on what else runs on the host and vary from run to run; the byte counts "
        "do not.",
        "Modelled round time = bytes through the busiest process per round (sent + received, transport counters) * 8 "
        "/ link bandwidth (1 or 10 Gbit/s per process) + measured compute. Compute is CPU time (time.thread_time of "
        "the main thread), not wall time, so timesharing does not inflate it: gossip = a peer's decode + "
        "aggregate.gossip mix; server = server decode of N updates + aggregate_updates('fedit') + int8 encode of the "
        "aggregate, plus a client's decode of it. Every peer (client) does the same work, so the median over them "
        "is used; with the slowest instead ('compute_cpu_s_with_slowest') the model picks up the noise of the "
        "contended host. Encoding one's own adapter is outside the round (the payload "
        f"is built once; it costs about {statistics.median(r['encode_cpu_s_median'] for r in results.values()):.3f} "
        "s CPU per process, the same for every configuration). The model counts sent and received on one link; "
        "'modelled_full_duplex_s' lets gossip send and receive at once (the server cannot: it hears every update "
        "before it sends). Latency, TCP slow start and switch contention are not modelled.",
        "The transport runs with decode=False and the main thread decodes after collect (so compute can be timed); "
        "the real peer decodes on the I/O thread as messages arrive. Every message is validated against the "
        "receiver's AdapterLayout either way.",
        "Rounds start at a barrier released by the parent; 'round_s' is max over processes of (result in hand - "
        "that process's round start); 'span_s' is the last result minus the first start (includes barrier skew).",
        f"Message: {message_bytes / 1e6:.2f} MB (int8 codes + fp32 scales per 64-value block + msgpack header), "
        "so a gossip peer moves 2 x degree messages per round and the server 2 x N.",
        f"Liveness is relaxed (a neighbour counts as down after {args.missed_heartbeats} missed 1 s heartbeats) and the "
        f"collect deadline is {args.deadline:.0f} s, so that processes starved of CPU are not marked missing; 'missing' lists any that still were.",
        "To fit 65 processes in the shared machine's memory: one zygote imports torch and forks the workers (after "
        "gc.freeze, so their pages stay shared), messages of 1 MiB or more are mmapped and the heap is trimmed "
        "between rounds, and received adapters are decoded and mixed module by module (64 modules; each through "
        "protocol.message_to_adapter and aggregate.gossip / server.aggregate_updates, with bit-identical results "
        "to one call on whole adapters, checked during development). Each mixed module is computed and dropped; a "
        "real peer would write it into its model. Private memory per process: see 'worker_private_mb_max'.",
    ]
    if skipped:
        notes.append("NOT MEASURED: " + "; ".join(f"{what}: {why}" for what, why in skipped.items())
                     + ". For them 'extrapolated' gives the busiest bytes from the bytes model (server 2*N*message, "
                     "gossip 2*degree*message), compute extrapolated from the measured N (gossip: the largest N's; "
                     "server: a line fitted in N) and the modelled times from both; no measured round time.")
    any_missing = {f"{name}@N={n}": c["missing"] for n, r in results.items() for name, c in r["configs"].items()
                   if c["missing"]}
    if any_missing:
        notes.append(f"Some messages missed their deadline: {any_missing}")
    else:
        notes.append("No message missed its deadline: every process heard every neighbour (or the server / every "
                     "client) in every round, at every N measured.")
    keys = ("send_failed_total", "went_down", "dropped", "missing_at_start", "close_hung")
    trouble = {f"{name}@N={n}": {k: c[k] for k in keys if c[k]}
               for n, r in results.items() for name, c in r["configs"].items() if any(c[k] for k in keys)}
    if failures:
        notes.append(f"Failed attempts (a stuck or failed worker; the N was retried once if the budget allowed): "
                     f"{failures}")
    if trouble:
        notes.append(f"Transport events during the timed rounds (failed sends, neighbours marked down, drops, "
                     f"neighbours not up at the start): {trouble}")
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


def _message_bytes(results: dict[int, dict]) -> int:
    """One adapter message's size on the wire (header + payload frames), as the workers built it."""
    # The msgpack header differs by a few bytes (round number, the UPDATE's sample count): take the largest.
    return max(rd["message_bytes"] for r in results.values() for c in r["configs"].values() for rd in c["rounds"])


if __name__ == "__main__":
    sys.exit(main())
