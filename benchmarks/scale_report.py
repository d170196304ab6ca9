"""bench_scale's report: the table, the scaling checks in words, the notes written with the results, and the plot."""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # `import scale_report` from benchmarks/: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import pyplot  # noqa: E402
from benchmarks.scale_analysis import measured_ns  # noqa: E402
from benchmarks.scale_plan import CONFIGS, MESSAGE_PAYLOAD_BYTES, degree  # noqa: E402


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
            rows.append((n, CONFIGS.index(name), f"{name:9s} {n:3d} {degree(name, n):>4d} {'-':>8s} {'-':>9s} {e['compute_cpu_s']:9.3f} "
                         f"{e['busiest_bytes'] / 1e6:10.1f} {e['modelled_s']['1G']:10.3f} "
                         f"{e['modelled_s']['10G']:11.3f}   EXTRAPOLATED (not measured)"))
    lines += [row for _, _, row in sorted(rows)]
    print("\n".join(lines))
    return lines


def plot(results: dict[int, dict], extrapolated: dict, path: Path) -> None:
    plt = pyplot()
    colours = {"ring": "tab:blue", "regular4": "tab:green", "server": "tab:red"}
    labels = {"ring": "gossip ring (deg 2)", "server": "server (fedit)",
              "regular4": "gossip 4-regular" + (" (N=4: complete, deg 3)" if 4 in results else "")}
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(14, 7))
    for name in CONFIGS:
        ns = measured_ns(results, name)
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


def print_checks(checks: dict, extrapolated: dict) -> None:
    """The scaling checks and the extrapolated configurations, in words."""
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


def run_notes(results: dict[int, dict], args, message_bytes: int, load_before: tuple, skipped: dict[str, str],
          failures: list[str]) -> list[str]:
    """What a reader of the JSON needs to know to read the numbers: the host, the model, the transport, the memory
    tricks, and what was not measured or went wrong."""
    cores = os.cpu_count()
    biggest = max(results)
    shares = {n: statistics.median(c["cores_used_median"] for c in r["configs"].values()) for n, r in results.items()}
    out = [
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
        "the main thread), not wall time, so timesharing does not inflate it: gossip = a peer's aggregate.gossip "
        "mix; server = the fedit strategy over N updates (data-share weights) + int8 encode of the aggregate, plus "
        "a client's taking it in. Decoding is not in it: the transport decodes each message on its I/O thread as it "
        "arrives, overlapping the next one's transfer; that CPU time is in 'io_cpu_s' (all threads but the main "
        "one: receive, validation, decode, ZeroMQ). Every peer (client) does the same work, so the median over them "
        "is used; with the slowest instead ('compute_cpu_s_with_slowest') the model picks up the noise of the "
        "contended host. Encoding one's own adapter is outside the round (the payload "
        f"is built once; it costs about {statistics.median(r['encode_cpu_s_median'] for r in results.values()):.3f} "
        "s CPU per process, the same for every configuration). The model counts sent and received on one link; "
        "'modelled_full_duplex_s' lets gossip send and receive at once (the server cannot: it hears every update "
        "before it sends). Latency, TCP slow start and switch contention are not modelled.",
        "The transport decodes every received message on its I/O thread, as a real peer's does, and validates it "
        "against the receiver's AdapterLayout. (Results recorded before the transports lost decode=False timed "
        "the decode on the main thread, inside compute.)",
        "Rounds start at a barrier released by the parent; 'round_s' is max over processes of (result in hand - "
        "that process's round start); 'span_s' is the last result minus the first start (includes barrier skew).",
        f"Message: {message_bytes / 1e6:.2f} MB (int8 codes + fp32 scales per 64-value block + msgpack header), "
        "so a gossip peer moves 2 x degree messages per round and the server 2 x N.",
        f"Liveness is relaxed (a neighbour counts as down after {args.missed_heartbeats} missed 1 s heartbeats) and the "
        f"collect deadline is {args.deadline:.0f} s, so that processes starved of CPU are not marked missing; 'missing' lists any that still were.",
        "To fit 65 processes in the shared machine's memory: one zygote imports torch and forks the workers (after "
        "gc.freeze, so their pages stay shared), messages of 1 MiB or more are mmapped and the heap is trimmed "
        "between rounds, and received adapters are mixed module by module (64 modules; each through "
        "message_to_adapter and aggregate.gossip / the fedit strategy: the same arithmetic as one call on whole "
        "adapters, as both treat every tensor on its own). Each mixed module is computed and dropped; a "
        "real peer would write it into its model. Private memory per process: see 'worker_private_mb_max'.",
    ]
    if skipped:
        out.append("NOT MEASURED: " + "; ".join(f"{what}: {why}" for what, why in skipped.items())
                     + ". For them 'extrapolated' gives the busiest bytes from the bytes model (server 2*N*message, "
                     "gossip 2*degree*message), compute extrapolated from the measured N (gossip: the largest N's; "
                     "server: a line fitted in N) and the modelled times from both; no measured round time.")
    any_missing = {f"{name}@N={n}": c["missing"] for n, r in results.items() for name, c in r["configs"].items()
                   if c["missing"]}
    if any_missing:
        out.append(f"Some messages missed their deadline: {any_missing}")
    else:
        out.append("No message missed its deadline: every process heard every neighbour (or the server / every "
                     "client) in every round, at every N measured.")
    keys = ("send_failed_total", "went_down", "dropped", "missing_at_start", "close_hung")
    trouble = {f"{name}@N={n}": {k: c[k] for k in keys if c[k]}
               for n, r in results.items() for name, c in r["configs"].items() if any(c[k] for k in keys)}
    if failures:
        out.append(f"Failed attempts (a stuck or failed worker; the N was retried once if the budget allowed): "
                     f"{failures}")
    if trouble:
        out.append(f"Transport events during the timed rounds (failed sends, neighbours marked down, drops, "
                     f"neighbours not up at the start): {trouble}")
    return out
