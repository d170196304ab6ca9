"""Metrics: one JSONL file per peer (one line per round), a run summary, and PNG plots.

Peers append; the launcher reads the files while the run goes (progress lines) and at the end (summary, plots).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from statistics import mean

from declora.learn.metrics import METRICS, record_key


class MetricsWriter:
    """Appends one JSON object per line and flushes it, so a reader (or a crash) never sees half a round."""

    def __init__(self, path: str | Path, truncate_after_round: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if truncate_after_round is not None and self.path.exists():
            # On resume, drop lines of rounds that the checkpoint does not cover, so no round appears twice.
            kept = [r for r in read_jsonl(self.path) if r.get("round", -1) <= truncate_after_round]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = open(self.path, "a", buffering=1)

    def write(self, record: dict) -> None:
        self._file.write(json.dumps(record, default=_jsonable) + "\n")
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        self._file.close()


def _jsonable(value):
    if hasattr(value, "item"):
        return value.item()
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


def read_jsonl(path: str | Path) -> list[dict]:
    """Read complete lines; a torn last line (the writer is mid-write) is ignored."""
    records = []
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return records
    for line in text.splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def read_run_metrics(run_dir: str | Path) -> dict[int, list[dict]]:
    """peer id -> its round records, from DIR/metrics/peer-*.jsonl."""
    out = {}
    for path in sorted(Path(run_dir, "metrics").glob("peer-*.jsonl")):
        out[int(path.stem.split("-")[1])] = read_jsonl(path)
    return out


# Eval keys that count something rather than measure the model: no means of these in the tables.
COUNT_KEYS = ("eval_samples", "eval_tokens", "eval_mc_questions")


def eval_key(records: list[dict], metric: str | None = None) -> str | None:
    """The record key of the metric that judges the run: `metric` when given (the config's, resolved), else the
    name the peers wrote into their eval records (`metric`), else what records from before that carry (accuracy for
    classification, loss for causal LM)."""
    if metric:
        return record_key(metric)
    named = [r["metric"] for r in records if r.get("metric")]
    if named:
        return record_key(named[-1])
    for r in records:
        for key in ("eval_accuracy", "eval_loss"):
            if r.get(key) is not None:
                return key
    return None


def metric_name(key: str) -> str:
    """eval_f1_macro -> f1-macro: the name a user gives --metric."""
    return key.removeprefix("eval_").replace("_", "-")


def eval_keys(records: list[dict]) -> list[str]:
    """Every eval metric the records carry, in first-seen order."""
    keys: dict[str, None] = {}
    for r in records:
        keys.update((k, None) for k, v in r.items() if k.startswith("eval_") and k not in COUNT_KEYS
                    and isinstance(v, (int, float)) and not isinstance(v, bool))
    return list(keys)


def round_table(per_peer: dict[int, list[dict]], metric: str | None = None) -> list[dict]:
    """Per-round means (and min/max of the judging metric) over the peers that finished that round."""
    by_round: dict[int, list[dict]] = {}
    for records in per_peer.values():
        for r in records:
            by_round.setdefault(r["round"], []).append(r)
    every = [r for rs in per_peer.values() for r in rs]
    chosen, measured = eval_key(every, metric), eval_keys(every)
    rows = []
    for t in sorted(by_round):
        rs = by_round[t]
        row = {"round": t, "peers_reporting": len(rs)}
        for key in ("train_loss", "round_seconds", "bytes_sent", "bytes_received", "neighbours_heard",
                    "distance_to_neighbours", *measured):
            vals = [r[key] for r in rs if r.get(key) is not None]
            if vals:
                row[f"{key}_mean" if key in measured else key] = mean(vals)
        vals = [r[chosen] for r in rs if r.get(chosen) is not None] if chosen else []
        if vals:
            row["metric"] = metric_name(chosen)
            row[f"{chosen}_mean"], row[f"{chosen}_min"], row[f"{chosen}_max"] = mean(vals), min(vals), max(vals)
        row["bytes_sent_total"] = sum(r.get("bytes_sent", 0) for r in rs)
        row["elapsed_s"] = max(r.get("elapsed_s", 0.0) for r in rs)
        rows.append(row)
    return rows


def final_metrics(per_peer: dict[int, list[dict]], metric: str | None = None) -> dict:
    """summary.json's `final`: the judging metric (name, mean/min/max over peers, per peer), the mean of every
    metric measured in each peer's last record, and the accuracy_* / loss_* keys that readers written before
    --metric look for."""
    last = {pid: rs[-1] for pid, rs in sorted(per_peer.items()) if rs}
    final: dict = {}
    key = eval_key([r for rs in per_peer.values() for r in rs], metric)
    values = [r[key] for r in last.values() if key and r.get(key) is not None]
    if values:
        final.update(metric=metric_name(key), metric_mean=mean(values), metric_min=min(values),
                     metric_max=max(values), metric_per_peer={pid: r.get(key) for pid, r in last.items()})
        known = METRICS.get(metric_name(key))
        final["metric_higher_is_better"] = known.higher_is_better if known else True
    dev_key = "dev_" + key.removeprefix("eval_") if key else ""
    devs = {pid: r[dev_key] for pid, r in last.items() if r.get(dev_key) is not None}
    if devs:  # --holdout: the eval_* values are the validation split's; the dev set's are the run's result
        final["dev"] = {"metric": metric_name(key), "mean": mean(devs.values()), "min": min(devs.values()),
                        "max": max(devs.values()), "per_peer": devs}
    for k in eval_keys(list(last.values())):
        vals = [r[k] for r in last.values() if r.get(k) is not None]
        if vals:
            final[f"{k.removeprefix('eval_')}_mean"] = mean(vals)
    accs = [r["eval_accuracy"] for r in last.values() if r.get("eval_accuracy") is not None]
    losses = [r["eval_loss"] for r in last.values() if r.get("eval_loss") is not None]
    if accs:
        final.update(accuracy_min=min(accs), accuracy_max=max(accs),
                     accuracy_per_peer={pid: r.get("eval_accuracy") for pid, r in last.items()})
    if losses:
        final.update(loss_min=min(losses), loss_max=max(losses))
    if losses and any("eval_perplexity" in r for r in last.values()):  # causal LM: as before --metric
        final["perplexity_mean"] = mean(math.exp(min(x, 50.0)) for x in losses)
    return final


def summarize(cfg_json: dict, per_peer: dict[int, list[dict]], wall_seconds: float, extra: dict | None = None,
              metric: str | None = None) -> dict:
    rows = round_table(per_peer, metric)
    summary = {
        "mode": cfg_json.get("server") and f"server:{cfg_json['server']}" or cfg_json.get("mode"),
        "peers": len(per_peer),
        "rounds": max((len(rs) for rs in per_peer.values()), default=0),
        "codec": cfg_json.get("codec"),
        "topology": cfg_json.get("topology"),
        "final": final_metrics(per_peer, metric),
        "bytes_sent_total": sum(sum(r.get("bytes_sent", 0) for r in rs) for rs in per_peer.values()),
        "bytes_received_total": sum(sum(r.get("bytes_received", 0) for r in rs) for rs in per_peer.values()),
        "wall_seconds": wall_seconds,
        "rounds_table": rows,
    }
    # `rounds` is the per-round list asked for by users of summary.json; keep the count under `rounds_completed`.
    summary["rounds_completed"] = summary["rounds"]
    summary["rounds"] = rows
    if extra:
        summary.update(extra)
    return summary


def progress_line(row: dict, total_rounds: int) -> str:
    parts = [f"round {row['round'] + 1:>3}/{total_rounds}"]
    if "metric" in row:
        key = record_key(row["metric"])
        label = {"accuracy": "acc", "loss": "eval loss"}.get(row["metric"], row["metric"])
        parts.append(f"{label} mean {row[key + '_mean']:.4f} min {row[key + '_min']:.4f} max {row[key + '_max']:.4f}")
    if "train_loss" in row:
        parts.append(f"loss {row['train_loss']:.4f}")
    parts.append(f"sent {row['bytes_sent_total'] / 1e6:.2f} MB")
    if "round_seconds" in row:
        parts.append(f"{row['round_seconds']:.1f} s")
    parts.append(f"t={row['elapsed_s']:.0f}s")
    return " | ".join(parts)


def plot_run(run_dir: str | Path, per_peer: dict[int, list[dict]], metric: str | None = None, title: str = "",
             reference: float | None = None) -> list[Path]:
    """The judging metric per round per peer (with the centralized run's final value as a dashed line when
    `reference` is given), and distance to neighbours per round (the consensus picture). `title`: what was run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    written = []
    metric = eval_key([r for rs in per_peer.values() for r in rs], metric)
    if metric:
        fig, ax = plt.subplots(figsize=(6, 4))
        for pid, rs in sorted(per_peer.items()):
            pts = [(r["round"] + 1, r[metric]) for r in rs if r.get(metric) is not None]
            if pts:
                ax.plot(*zip(*pts), marker="o", label=f"peer {pid}")
        if reference is not None:
            ax.axhline(reference, linestyle="--", color="black", linewidth=1, label="centralized")
        ax.set_xlabel("round")
        ax.set_ylabel(f"eval {metric_name(metric)}")
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        written.append(run_dir / f"{metric}.png")
        fig.savefig(written[-1], dpi=120, metadata={"Title": title})  # readable without OCR: PIL .text
        plt.close(fig)
    rows = round_table(per_peer)
    pts = [(r["round"] + 1, r["distance_to_neighbours"]) for r in rows if r.get("distance_to_neighbours")]
    if pts:
        fig, ax = plt.subplots(figsize=(6, 4))
        ax.semilogy(*zip(*pts), marker="o")
        ax.set_xlabel("round")
        ax.set_ylabel("disagreement in a neighbourhood (before mixing)")
        ax.set_title(title, fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        written.append(run_dir / "consensus.png")
        fig.savefig(written[-1], dpi=120, metadata={"Title": title})  # readable without OCR: PIL .text
        plt.close(fig)
    return written
