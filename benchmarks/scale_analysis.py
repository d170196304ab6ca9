"""bench_scale's analysis: per configuration and N, the round statistics from what the workers recorded; across N,
the checks that the server's bytes grow linearly and a gossip peer's stay constant, and the extrapolation of what was
not measured.
"""
from __future__ import annotations

import os
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):  # `import scale_analysis` from benchmarks/: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.scale_plan import BANDWIDTHS, bytes_model  # noqa: E402


def on_critical_path(conf: dict, recs: dict[int, dict], key: str) -> tuple[float, float]:
    """CPU seconds `key` of one round on its critical path: (typical, with the slowest). Every peer (every client)
    does the same work, so the typical one is the median over them; the max picks up the noise of a contended host.
    Gossip: a peer's; server: the server's plus a client's."""
    if conf["kind"] == "server":
        srv = recs[conf["server"]][key]
        clients = [r[key] for i, r in recs.items() if i != conf["server"]]
        return srv + statistics.median(clients), srv + max(clients)
    values = [r[key] for r in recs.values()]
    return statistics.median(values), max(values)


def summarize(conf: dict, n: int, workers: list[dict], args, bandwidths: dict[str, float] | None = None) -> dict:
    """One configuration at N=n: per timed round and as medians over them; modelled times for `bandwidths` (label ->
    bit/s; default BANDWIDTHS, 1 and 10 Gbit/s)."""
    bandwidths = BANDWIDTHS if bandwidths is None else bandwidths
    name = conf["name"]
    active = [(w["id"], w["configs"][name]) for w in workers if w["configs"][name]["role"] != "idle"]
    rounds = []
    for k in range(args.warmup, args.warmup + args.rounds):
        recs = {i: c["rounds"][k] for i, c in active}
        durations = {i: r["done"] - r["go"] for i, r in recs.items()}
        through = {i: r["bytes_sent"] + r["bytes_received"] for i, r in recs.items()}
        busiest = max(through, key=through.get)
        compute, compute_max = on_critical_path(conf, recs, "compute_cpu_s")
        if conf["kind"] == "server":
            hot = recs[conf["server"]]
            link_half = hot["bytes_sent"] + hot["bytes_received"]
            link_full = link_half  # receive everything, aggregate, then send: no overlap on the server's link
            through_hot = through[conf["server"]]
        else:
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
            # every other thread (the transport's I/O thread: receive, validate, decode; ZeroMQ's): not in the model
            "io_cpu_s": on_critical_path(conf, recs, "io_cpu_s")[0],
            "busiest_process": busiest,
            "busiest_bytes": through_hot,
            "busiest_is_server": conf["kind"] == "server" and busiest == conf["server"],
            "message_bytes": max(r.get("message_bytes", 0) for r in recs.values()),
            "busiest_sent": recs[busiest]["bytes_sent"], "busiest_received": recs[busiest]["bytes_received"],
            "mean_bytes_per_process": statistics.fmean(through.values()),
            "modelled_s": {bw: link_half * 8 / rate + compute for bw, rate in bandwidths.items()},
            "modelled_full_duplex_s": {bw: link_full * 8 / rate + compute for bw, rate in bandwidths.items()},
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
        "compute_cpu_s_median": med("compute_cpu_s"), "io_cpu_s_median": med("io_cpu_s"),
        "busiest_bytes_median": med("busiest_bytes"),
        "cores_used_median": med("cores_used"), "process_cpu_s_total_median": med("process_cpu_s_total"),
        # the round time if this host's cores did nothing else: all the processes' CPU seconds / cores (a floor:
        # the measured round time cannot be lower on this host, and is higher when other work takes CPU)
        "cpu_floor_s_median": med("process_cpu_s_total") / (os.cpu_count() or 1),
        "modelled_s_median": {bw: statistics.median(r["modelled_s"][bw] for r in rounds) for bw in bandwidths},
        "modelled_full_duplex_s_median": {bw: statistics.median(r["modelled_full_duplex_s"][bw] for r in rounds)
                                          for bw in bandwidths},
        "missing": sorted({m for r in rounds for m in r["missing"]}),
        "missing_at_start": sorted({f"{i}<-{j}" for i, c in active for j in c.get("missing_at_start", [])}),
        "send_failed_total": sum(c.get("send_failed_total", 0) for _, c in active),
        "dropped": dropped,
        "went_down": sum(c.get("went_down", 0) for _, c in active),
        "close_hung": sum(bool(c.get("close_hung")) for _, c in active),
        "connect_s_max": max(c.get("start_s", 0.0) for _, c in active),
        "rounds": rounds,
    }


def measured_ns(results: dict[int, dict], name: str) -> list[int]:
    """The N at which configuration `name` was measured, in order."""
    return sorted(n for n in results if name in results[n]["configs"])


def fit_linear(ns: list[int], ys: list[float]) -> dict:
    x, y = np.asarray(ns, float), np.asarray(ys, float)
    slope, intercept = np.polyfit(x, y, 1)
    pred = slope * x + intercept
    ss_res, ss_tot = float(((y - pred) ** 2).sum()), float(((y - y.mean()) ** 2).sum())
    return {"slope_bytes_per_peer": float(slope), "intercept_bytes": float(intercept),
            "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 1.0}


def scaling_checks(results: dict[int, dict], message_bytes: int) -> dict:
    checks = {}
    ns = measured_ns(results, "server")
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
        ns = measured_ns(results, name)
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


def wire_message_bytes(results: dict[int, dict]) -> int:
    """One adapter message's size on the wire (header + payload frames), as the workers built it."""
    # The msgpack header differs by a few bytes (round number, the UPDATE's sample count): take the largest.
    return max(rd["message_bytes"] for r in results.values() for c in r["configs"].values() for rd in c["rounds"])
