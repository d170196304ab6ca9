"""bench_scale --links netns:RATE[,RATE...]: the same configurations on emulated hosts, round times measured on real
capped links next to what the bytes model predicts at that cap.

For each rate (Mbit/s) and each N, n+1 network namespaces are made (declora.node.netns.EmulatedHosts: one per worker
process, the N peers or clients and the server, joined by a bridge, a tbf cap of the rate on each host's link in each
direction) and removed after that N, failed or not; namespaces left by a killed run are removed at the start. Each
worker joins its namespace after the zygote forks it (scale_worker.join_netns) and binds its host's private address;
peers talk plain text (allow_plaintext_nonlocal) inside the namespaces, as the loopback runs do on loopback.

What is recorded per rate, N and configuration is what the loopback run records (scale_analysis.summarize), with
the modelled times at the cap instead of 1 and 10 Gbit/s: half duplex (sent + received over the cap) and full duplex
(max(sent, received): the emulated links are capped each way separately, so gossip can send and receive at once;
the server's model is sent + received either way, as it must hear every update before it sends).
"""
from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # `import scale_links` from benchmarks/: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, pyplot, write_result  # noqa: E402
from benchmarks.scale_analysis import scaling_checks, wire_message_bytes  # noqa: E402
from benchmarks.scale_plan import BLOCK, CONFIGS  # noqa: E402
from benchmarks.scale_run import measure, rate_label  # noqa: E402
from declora.node import netns  # noqa: E402

NAME = "bench_scale_netns"


def parse_links(spec: str) -> list[float]:
    """'netns:1000,100' -> [1000.0, 100.0] (Mbit/s, in the order given)."""
    kind, _, rates = spec.partition(":")
    if kind != "netns" or not rates:
        raise ValueError(f"--links: expected netns:RATE[,RATE...] in Mbit/s, got {spec!r}")
    out = [float(x) for x in rates.split(",") if x.strip()]
    if not out or min(out) <= 0:
        raise ValueError(f"--links: rates must be > 0 Mbit/s, got {spec!r}")
    return out


def run_links(rates: list[float], ns: list[int], configs: tuple[str, ...], args) -> dict:
    """Rate label -> {rate_mbit, results (N -> run_n's), skipped, failed_attempts, scaling}. One time budget
    (--budget-s) for all rates."""
    why = netns.available()
    if why:
        raise SystemExit(f"--links netns: cannot emulate hosts here: {why}")
    stale = netns.remove_stale()
    if stale:
        print(f"removed stale namespaces: {stale}", flush=True)
    started = time.monotonic()
    out = {}
    for rate in rates:
        print(f"--- emulated hosts at {rate:g} Mbit/s each way", flush=True)
        results, skipped, failures = measure(ns, configs, args, rate_mbit=rate, started=started)
        for r in results.values():
            r.pop("tmp", None)
        out[rate_label(rate)] = {
            "rate_mbit": rate, "results": {str(n): r for n, r in results.items()}, "skipped": skipped,
            "failed_attempts": failures,
            "scaling": scaling_checks(results, wire_message_bytes(results)) if results else {}}
    return out


def rows(links: dict):
    """(rate label, rate, N, config name, its summary) for everything measured, by config, N, rate."""
    out = []
    for label, run in links.items():
        for n, r in run["results"].items():
            for name, c in r["configs"].items():
                out.append((label, run["rate_mbit"], int(n), name, c))
    return sorted(out, key=lambda x: (CONFIGS.index(x[3]), x[2], -x[1]))


def links_table(links: dict) -> list[str]:
    head = (f"{'config':9s} {'N':>3s} {'Mbit/s':>6s} {'measured s':>10s} {'model full s':>12s} {'model half s':>12s} "
            f"{'compute s':>9s} {'io CPU s':>8s} {'CPU/cores s':>11s} {'busiest MB':>10s} {'missing':>7s}")
    lines = [head, "-" * len(head)]
    for label, rate, n, name, c in rows(links):
        lines.append(f"{name:9s} {n:3d} {rate:6g} {c['round_s_median']:10.2f} "
                     f"{c['modelled_full_duplex_s_median'][label]:12.2f} {c['modelled_s_median'][label]:12.2f} "
                     f"{c['compute_cpu_s_median']:9.3f} {c['io_cpu_s_median']:8.3f} {c['cpu_floor_s_median']:11.2f} "
                     f"{c['busiest_bytes_median'] / 1e6:10.1f} {len(c['missing']):7d}")
    print("\n".join(lines))
    return lines


def plot_links(links: dict, path: Path) -> None:
    """One panel per configuration: round time vs N, measured solid, modelled (full duplex) dashed, half duplex
    dotted, one colour per rate."""
    plt = pyplot()
    names = [c for c in CONFIGS if any(c == x[3] for x in rows(links))]
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5.5), squeeze=False)
    colours = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange"]
    for ax, name in zip(axes[0], names):
        for k, (label, run) in enumerate(links.items()):
            ns = sorted(int(n) for n, r in run["results"].items() if name in r["configs"])
            if not ns:
                continue
            cs = [run["results"][str(n)]["configs"][name] for n in ns]
            col = colours[k % len(colours)]
            ax.plot(ns, [c["round_s_median"] for c in cs], "o-", color=col, label=f"{run['rate_mbit']:g} Mbit/s: measured")
            ax.plot(ns, [c["modelled_full_duplex_s_median"][label] for c in cs], "s--", color=col, alpha=0.8,
                    label=f"{run['rate_mbit']:g} Mbit/s: modelled (full duplex)")
            if name != "server":  # the server's half- and full-duplex models are the same
                ax.plot(ns, [c["modelled_s_median"][label] for c in cs], ":", color=col, alpha=0.6,
                        label=f"{run['rate_mbit']:g} Mbit/s: modelled (half duplex)")
            ax.plot(ns, [c["cpu_floor_s_median"] for c in cs], "-.", color=col, lw=1, alpha=0.4,
                    label=f"{run['rate_mbit']:g} Mbit/s: CPU of all processes / {os.cpu_count()} cores")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        all_ns = sorted({int(n) for run in links.values() for n in run["results"]})
        ax.set_xticks(all_ns)
        ax.set_xticklabels([str(n) for n in all_ns])
        ax.set_xlabel("N (peers / clients), one emulated host each (+1 for the server)")
        ax.set_ylabel("round time (s)")
        ax.set_title(f"{name}: measured on capped links vs modelled\n(model = busiest bytes / cap + compute)",
                     fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6.5, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def links_notes(links: dict, args, load_before: tuple) -> list[str]:
    cores = os.cpu_count()
    out = [
        f"Each worker process (N peers or clients, and the server) ran in a network namespace of its own: one emulated "
        f"host per process, all on one machine with {cores} CPU cores (load average {load_before[0]:.1f} before the "
        f"run, {os.getloadavg()[0]:.1f} after). The links are veth pairs to a bridge with a tbf cap of the rate on "
        "each host's link in each direction (upload and download capped separately: full duplex); no added latency "
        "(no netem). Transfers are real TCP through the caps; CPU is not emulated: every process still timeshares "
        f"the same {cores} cores.",
        "Measured round time: max over processes of (result in hand - that process's round start), median over the "
        f"{args.rounds} timed rounds (after {args.warmup} warm-up round(s); fewer than the loopback run's 3 so that "
        "every rate and N fits the time budget). Modelled: busiest bytes * 8 / cap + compute (main-thread CPU of the "
        "mix, or the server's aggregate + encode plus a client's taking it in), full duplex (max(sent, received) "
        "for gossip) and half duplex (sent + received); the server's two are the same. The decode (on each "
        "transport's I/O thread, 'io CPU s') is not in the model.",
        "'CPU/cores s': all the processes' CPU seconds in a round / the host's cores: the round time these cores "
        "allow even with infinitely fast links. Where it is near or above the modelled time, the measured round "
        "time is set by the shared CPU (decoding and mixing 8.9 MB int8 messages in every process on "
        f"{cores} cores), not by the links.",
        "Security: plain text (allow_plaintext_nonlocal) between the namespaces, which exist only on this machine "
        "and have no route out; the loopback run is plain text too, and CURVE would add its encryption's CPU to the "
        "shared cores.",
    ]
    for label, run in links.items():
        if run["skipped"]:
            out.append(f"{label}: NOT MEASURED: " + "; ".join(f"{k}: {v}" for k, v in run["skipped"].items()))
        if run["failed_attempts"]:
            out.append(f"{label}: failed attempts: {run['failed_attempts']}")
    missing = {f"{name}@N={n}@{label}": c["missing"] for label, _, n, name, c in rows(links) if c["missing"]}
    out.append(f"Messages that missed their deadline: {missing}" if missing else
               "No message missed its deadline: every process heard all it waited for in every timed round.")
    return out


def main_links(args, ns: list[int], configs: tuple[str, ...], description: str) -> int:
    rates = parse_links(args.links)
    # A SIGTERM (not only ^C) unwinds too, so that every EmulatedHosts in flight is closed (its `with`).
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = time.monotonic()
    load_before = os.getloadavg()
    try:
        links = run_links(rates, ns, configs, args)
    finally:
        left = netns.remove_stale()  # ours are gone by now (EmulatedHosts.close); this catches anything stale
        if left:
            print(f"removed leftover namespaces: {left}", flush=True)
    total_s = time.monotonic() - started
    if not any(run["results"] for run in links.values()):
        print("nothing measured")
        return 1
    print()
    table = links_table(links)
    notes = links_notes(links, args, load_before)
    print("\nnotes:")
    for line in notes:
        print(f"- {line}")
    if args.no_write:
        return 0
    message_bytes = max(wire_message_bytes({int(n): r for n, r in run["results"].items()})
                        for run in links.values() if run["results"])
    payload = {
        "description": description + " On emulated hosts (network namespaces, tbf-capped links): measured vs modelled.",
        "settings": {"links": args.links, "rates_mbit": rates, "ns": ns, "configs": list(configs),
                     "rounds": args.rounds, "warmup": args.warmup, "seed": args.seed, "deadline_s": args.deadline,
                     "missed_heartbeats": args.missed_heartbeats, "codec": "int8", "block": BLOCK,
                     "adapter": "Llama-2-7B r=16 q_proj+v_proj (64 A 16x4096, 64 B 4096x16)",
                     "message_bytes": message_bytes, "security": "plain text (allow_plaintext_nonlocal)"},
        "total_wall_s": total_s, "load_average_before": load_before, "load_average_after": os.getloadavg(),
        "links": links, "table": table, "notes": notes,
    }
    path = write_result(NAME, payload)
    png = RESULTS / f"{NAME}.png"
    plot_links(links, png)
    print(f"\nwrote {path} and {png} ({total_s:.0f} s)")
    return 0
