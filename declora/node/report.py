"""What the launcher reports at the end of a run, besides summary.json and the plots: the line with the final
metric (next to a centralized reference run's when --reference gives one) and the per-peer table. Also the checks,
before any process starts, that the reporting flags can be honoured."""
from __future__ import annotations

import json
from pathlib import Path

from declora.config import ConfigError, RunConfig
from declora.learn.metrics import record_key
from declora.node.metrics import metric_name
from declora.node.tensorboard_log import check_tensorboard
from declora.node.workload import resolve_metric


def check_reporting(cfg: RunConfig) -> str:
    """Before launch: --report-to can be written, --reference is a finished run, --metric fits the task that the
    data decides. Returns the metric that judges the run."""
    check_tensorboard(cfg)
    if cfg.reference and not (Path(cfg.reference) / "summary.json").is_file():
        raise ConfigError(f"--reference {cfg.reference}: no summary.json there; give the folder of a finished run "
                          f"(e.g. one run with --mode centralized)")
    return resolve_metric(cfg)


def load_reference(cfg: RunConfig, metric: str) -> dict | None:
    """The reference run's final value of `metric` (its mean over peers; one peer when centralized), for
    summary.json's `reference` and the plot's dashed line. `value` is None when that run did not measure it."""
    if not cfg.reference:
        return None
    try:
        summary = json.loads((Path(cfg.reference) / "summary.json").read_text())
    except (OSError, ValueError):
        return None  # checked at launch; a reference removed or torn since must not lose this run's results
    final = summary.get("final", {})
    value = final.get("metric_mean") if final.get("metric") == metric else None
    if value is None:
        value = final.get(f"{record_key(metric).removeprefix('eval_')}_mean")
    return {"run": str(cfg.reference), "mode": summary.get("mode"), "metric": metric, "value": value}


def final_line(final: dict, reference: dict | None) -> str | None:
    if "metric_mean" not in final:
        return None
    name = "eval loss" if final["metric"] == "loss" else final["metric"]
    line = (f"declora: final {name} mean {final['metric_mean']:.4f} min {final['metric_min']:.4f} "
            f"max {final['metric_max']:.4f}")
    if final["metric"] == "loss" and "perplexity_mean" in final:
        line += f" (perplexity {final['perplexity_mean']:.2f})"
    if "dev" in final:  # --holdout: the line above is the validation split's
        dev = final["dev"]
        line += (f" on the held-out split; on the eval set mean {dev['mean']:.4f} min {dev['min']:.4f} "
                 f"max {dev['max']:.4f}")
    if reference and reference.get("value") is not None:
        line += f"; centralized reference {reference['value']:.4f}"
    return line


def end_table(per_peer: dict[int, list[dict]], metric: str) -> str:
    """Per peer: the final value of the judging metric, bytes sent and received over the run, and the rounds in which
    it heard every one of its neighbours (a server client: the server)."""
    key = record_key(metric)
    header = ("peer", f"final {metric_name(key)}", "sent MB", "received MB", "rounds heard in full")
    rows = [header]
    for pid, records in sorted(per_peer.items()):
        finals = [r[key] for r in records if r.get(key) is not None]
        full = sum(_heard_all(r) for r in records)
        rows.append((str(pid), f"{finals[-1]:.4f}" if finals else "-",
                     f"{sum(r.get('bytes_sent', 0) for r in records) / 1e6:.2f}",
                     f"{sum(r.get('bytes_received', 0) for r in records) / 1e6:.2f}", f"{full}/{len(records)}"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    # First column left-aligned, numbers right-aligned under their headers.
    return "\n".join("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                               for i, (cell, w) in enumerate(zip(row, widths))) for row in rows)


def _heard_all(record: dict) -> bool:
    if record.get("neighbours") is not None:
        return record.get("neighbours_heard", 0) >= record["neighbours"]
    return not record.get("neighbours_missing")  # records written before `neighbours` was
