"""What a bench_faults run did, read from its per-peer metrics: who finished, the survivors' accuracy, who came back
and how fast it rejoined consensus, how the others' rounds were slowed, and the markdown table for the README."""
from __future__ import annotations

import json
import statistics
from pathlib import Path

from benchmarks.common import judged_value


def read_rows(out: Path, peer: int) -> list[dict]:
    path = out / "metrics" / f"peer-{peer}.jsonl"
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


def rounds_to_consensus(rows: dict[int, list[dict]], peer: int, from_round: int, others: list[int]) -> int | None:
    """Rounds from `from_round` until `peer`'s distance to its neighbours is no larger than the largest distance of
    a peer that had no fault, in the same round (1 = already in the round it came back)."""
    by_round = {p: {r["round"]: r["distance_to_neighbours"] for r in rows[p]} for p in (peer, *others)}
    for k, t in enumerate(sorted(r for r in by_round[peer] if r >= from_round), start=1):
        ref = [by_round[o][t] for o in others if t in by_round[o]]
        if ref and by_round[peer][t] <= max(ref):
            return k
    return None


def mean_round_s(rows: dict[int, list[dict]], peers: list[int]) -> float | None:
    """Mean round time of `peers`, leaving out round 0 (start-up) and the final round (the full evaluation)."""
    vals = [r["round_seconds"] for p in peers for r in rows[p][1:-1]]
    return round(statistics.mean(vals), 3) if vals else None


def mean_wait_s(rows: dict[int, list[dict]], peers: list[int]) -> float | None:
    """Mean seconds per round that `peers` waited for their neighbours (same rounds as mean_round_s)."""
    vals = [r["wait_seconds"] for p in peers for r in rows[p][1:-1]]
    return round(statistics.mean(vals), 3) if vals else None


def summarize(out: Path, peers: int, rounds: int, cell: dict) -> dict:
    rows = {p: read_rows(out, p) for p in range(peers)}
    finished = [p for p in range(peers) if rows[p] and rows[p][-1]["round"] == rounds - 1]
    accs = [judged_value(rows[p][-1]) for p in finished]
    accs = [a for a in accs if a is not None]
    killed = sorted({k["peer"] for k in cell["kills"]})
    faulty = set(killed) | ({cell["slow_peer"]} if cell["slow_peer"] is not None else set())
    healthy = [p for p in range(peers) if p not in faulty]
    returned = []
    for p in killed:
        back = next((r for r in rows[p] if "caught_up_from_round" in r), None)
        if back is not None:
            returned.append({"peer": p, "resumed_at": back["caught_up_from_round"], "joined_at": back["round"],
                             "rounds_to_consensus": rounds_to_consensus(rows, p, back["round"], healthy)})
    skipped = {p: rounds - len({r["round"] for r in rows[p]}) for p in finished}
    result = {
        "finished": finished, "survivor_accuracy_mean": statistics.mean(accs) if accs else None,
        "survivor_accuracy_min": min(accs) if accs else None, "returned": returned,
        "rounds_skipped": {str(p): n for p, n in skipped.items() if n},
        "late_mixed": sum(len(r.get("late", {})) for rs in rows.values() for r in rs),
        "missing_neighbour_rounds": sum(len(r.get("neighbours_missing", [])) for rs in rows.values() for r in rs),
        "healthy_round_s": mean_round_s(rows, healthy),
        "healthy_wait_s": mean_wait_s(rows, healthy),
        "final_distance": statistics.mean(r[-1]["distance_to_neighbours"] for r in rows.values() if r) if finished
        else None,
    }
    if cell.get("cut"):
        a, b = cell["cut"]
        during = [r["distance_to_neighbours"] for rs in rows.values() for r in rs if r["round"] == b - 1]
        result["distance_end_of_cut"] = statistics.mean(during) if during else None
    result["happened"] = happened(cell, result, peers, rounds)
    result["lost"] = lost(cell, result, peers, rounds)
    return result


def happened(cell: dict, s: dict, peers: int, rounds: int) -> str:
    parts = [f"{len(s['finished'])}/{peers} peers finished all {rounds} rounds"]
    if cell["returncode"] not in (0, None):
        parts.append(f"launcher exit {cell['returncode']}")
    for r in s["returned"]:
        parts.append(f"peer {r['peer']} came back at round {r['resumed_at']}, joined round {r['joined_at']}, "
                     f"in consensus after {r['rounds_to_consensus']} round(s)")
    if s.get("distance_end_of_cut") is not None:
        parts.append(f"consensus distance {s['distance_end_of_cut']:.3g} at the end of the cut, "
                     f"{s['final_distance']:.3g} at the end")
    if s["late_mixed"]:
        parts.append(f"{s['late_mixed']} late messages mixed")
    return "; ".join(parts)


def lost(cell: dict, s: dict, peers: int, rounds: int) -> str:
    gone = [p for p in range(peers) if p not in s["finished"]]
    parts = []
    if gone:
        parts.append(f"peers {gone} (their shards) after they died")
    if s["rounds_skipped"]:
        parts.append("rounds skipped by catch-up: " + ", ".join(f"peer {p}: {n}" for p, n in
                                                                  s["rounds_skipped"].items()))
    if cell["returncode"] not in (0, None) and not gone:
        parts.append("the run reported an error")
    return "; ".join(parts) or "nothing"


def table(cells: list[dict]) -> str:
    base = next((c for c in cells if c["fault"] == "none"), None)
    head = ("| fault | how it was injected | what happened | what was lost | survivors' accuracy (vs no fault) | "
            "healthy peers' round time (vs no fault) | of which waiting | wall time (vs no fault) |")
    lines = [head, "|" + "---|" * 8]
    for c in cells:
        acc = c.get("survivor_accuracy_mean")
        acc_txt = "n/a" if acc is None else f"{100 * acc:.2f}%"
        if base and acc is not None and base.get("survivor_accuracy_mean") is not None and c is not base:
            acc_txt += f" ({100 * (acc - base['survivor_accuracy_mean']):+.2f} pt)"
        rt = c.get("healthy_round_s")
        rt_txt = "n/a" if rt is None else f"{rt:.2f} s"
        if base and rt and base.get("healthy_round_s") and c is not base:
            rt_txt += f" ({rt / base['healthy_round_s']:.2f}x)"
        wall = f"{c['wall_s']:.0f} s" + (f" ({c['wall_s'] / base['wall_s']:.2f}x)" if base and c is not base else "")
        wait = c.get("healthy_wait_s")
        wait_txt = "n/a" if wait is None else f"{wait:.2f} s"
        how = c["how"].replace("|", "\\|")  # a --cut's sides, inside a markdown cell
        lines.append(f"| {c['fault']} | {how} | {c['happened']} | {c['lost']} | {acc_txt} | {rt_txt} | {wait_txt} "
                     f"| {wall} |")
    return "\n".join(lines)
