"""bench_scale's runner: for one N, start the n+1 worker processes (benchmarks/scale_worker.py), release their
barriers all at once, watch memory and progress, and gather what they measured; `measure` does every N within the
time and memory budgets, retrying a failed N once. With `rate_mbit`, every N runs on n+1 emulated hosts
(declora.node.netns: one network namespace per process, a tbf cap of that rate each way), made before and removed
after it, failed or not.

The barrier socket is ipc:// in the run's temp folder: a path on the file system, which workers reach from inside
any network namespace (127.0.0.1 inside a namespace is that namespace's own loopback).
"""
from __future__ import annotations

import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # `import scale_run` from benchmarks/: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import zmq  # noqa: E402

from benchmarks.common import ROOT, worker_env  # noqa: E402
from benchmarks.scale_analysis import summarize  # noqa: E402
from benchmarks.scale_plan import build_configs, mem_available_gib, memory_estimate_gib, plan_configs  # noqa: E402
from declora.node import netns  # noqa: E402

WORKER = Path(__file__).resolve().parent / "scale_worker.py"


def measure(ns: list[int], configs: tuple[str, ...], args, rate_mbit: float | None = None,
            started: float | None = None) -> tuple[dict[int, dict], dict[str, str], list[str]]:
    """(N -> what run_n measured, what was not measured -> why, failed attempts). Before each N, the memory it
    would need and the time each configuration would take are predicted from the previous N; what does not fit is
    left out (and later extrapolated). `rate_mbit`: on emulated hosts capped at that rate (see the module's
    docstring); `started`: when the time budget began (default now)."""
    results: dict[int, dict] = {}
    skipped: dict[str, str] = {}  # "N=64" or "regular4@N=64" -> why it was not measured
    failures: list[str] = []  # attempts that failed (and were retried or skipped)
    started = time.monotonic() if started is None else started
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
                if rate_mbit is None:
                    results[n] = run_n(n, args, tuple(chosen))
                else:
                    with netns.EmulatedHosts(n + 1, rate_mbit) as hosts:  # removed on leaving, failed or not
                        results[n] = run_n(n, args, tuple(chosen), hosts)
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
        if n in results:
            r = results[n]
            print(f"N={n}: {time.monotonic() - t0:.0f} s wall, at most {r['worker_private_mb_max']:.0f} MB private "
                  f"per process (server {r['server_private_mb_max'] or 0:.0f} MB), "
                  + ", ".join(f"{k} {c['round_s_median']:.2f} s/round" for k, c in r["configs"].items()), flush=True)
    return results, skipped, failures


def run_n(n: int, args, configs: tuple[str, ...], hosts: "netns.EmulatedHosts | None" = None) -> dict:
    """Start n+1 worker processes, drive their barriers, gather their results. `hosts`: n+1 emulated hosts,
    process i in namespace hosts.names[i] at hosts.address(i); modelled times then at the hosts' cap."""
    tmp = Path(tempfile.mkdtemp(prefix=f"bench_scale_{n}_"))
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    router.bind(f"ipc://{tmp}/barrier")
    addresses = None if hosts is None else [hosts.address(i) for i in range(n + 1)]
    confs = build_configs(n, args.seed, configs, addresses)
    bandwidths = None if hosts is None else {rate_label(hosts.rate_mbit): hosts.rate_mbit * 1e6}
    zygote = None
    mem_before = mem_available_gib()
    t_start = time.monotonic()
    try:
        paths = write_worker_configs(n, args, router.last_endpoint.decode(), confs, tmp, hosts)
        zygote = start_zygote(paths, tmp)
        released, mem_min = drive_barriers(n, router, zygote, tmp, args, mem_before)
        if zygote.wait(timeout=120) != 0:
            raise RuntimeError(f"N={n}: a worker failed at exit:\n{(tmp / 'zygote.log').read_text()[-2000:]}")
        workers = [json.loads((tmp / f"worker{i}.json").read_text()) for i in range(n + 1)]
    finally:
        stop_zygote(zygote)
        router.close()
        ctx.term()
    wall = time.monotonic() - t_start
    per_conf = {c["name"]: summarize(c, n, workers, args, bandwidths) for c in confs}
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


def rate_label(rate_mbit: float) -> str:
    """'1000M', '100M': the key of a cap's modelled times."""
    return f"{rate_mbit:g}M"


def write_worker_configs(n: int, args, barrier: str, confs: list[dict], tmp: Path, hosts=None) -> list[str]:
    """One config file per worker process (ids 0..n); their paths. With `hosts`, worker i joins namespace
    hosts.names[i] first thing after the fork ("netns")."""
    paths = []
    for i in range(n + 1):
        cfg = {"id": i, "n": n, "seed": args.seed, "barrier": barrier, "configs": confs, "warmup": args.warmup,
               "rounds": args.rounds, "deadline_s": args.deadline, "start_timeout_s": args.start_timeout,
               "missed_heartbeats": args.missed_heartbeats, "out": str(tmp / f"worker{i}.json"),
               "netns": None if hosts is None else hosts.names[i]}
        path = tmp / f"config{i}.json"
        path.write_text(json.dumps(cfg))
        paths.append(str(path))
    return paths


def start_zygote(paths: list[str], tmp: Path) -> subprocess.Popen:
    """One zygote imports torch once and forks the n+1 workers (shared pages; see scale_worker.zygote)."""
    # Fewer malloc arenas (the zmq and I/O threads would each get one), and blocks of 1 MiB or more (the 8.9 MB
    # message frames) always mmapped, so that they go back to the OS when freed: glibc's dynamic threshold would
    # otherwise rise to 8.9 MB after the first free and keep old frames in the heap. The 256 KiB factors stay on the
    # heap (no page faults per round); the worker trims it between rounds.
    env = worker_env(PYTHONPATH=str(ROOT), MALLOC_ARENA_MAX="2", MALLOC_MMAP_THRESHOLD_=str(1 << 20))
    return subprocess.Popen([sys.executable, str(WORKER), "--zygote", *paths], env=env, cwd=ROOT,
                            stdout=open(tmp / "zygote.log", "w"), stderr=subprocess.STDOUT)


def drive_barriers(n: int, router: zmq.Socket, zygote: subprocess.Popen, tmp: Path, args,
                   mem_before: float) -> tuple[dict[str, float], float]:
    """Release each barrier once all n+1 workers wait at it, until `exit`: (barrier tag -> when it was released,
    the lowest MemAvailable seen). Raises RuntimeError when workers die, get stuck or memory runs low."""
    poller = zmq.Poller()
    poller.register(router, zmq.POLLIN)
    released: dict[str, float] = {}  # barrier tag -> when the parent released it
    phase_started = time.monotonic()
    waiting: dict[bytes, str] = {}
    mem_min = mem_before
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
                return released, mem_min
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


def stop_zygote(zygote: subprocess.Popen | None) -> None:
    if zygote is not None and zygote.poll() is None:
        zygote.terminate()  # its SIGTERM handler kills the workers it forked, by their pids
        try:
            zygote.wait(timeout=30)
        except subprocess.TimeoutExpired:
            zygote.kill()
            zygote.wait()
