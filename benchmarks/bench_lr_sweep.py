"""Each method at its own best learning rates (issue 15): the LoRA and head learning rates scaled together by a few
factors, the factor chosen per method on the holdout split, the dev set read only at the chosen factor.

A comparison at one method's tuned rate is fair to neither: the defaults (lr 4e-3, head lr 1e-2) were tuned for
gossip on SST-2. Every (method, factor, seed) is one bench_convergence --drift run, cached where the suite caches it
(factor 1 is the suite's own run, so it is not made twice):

    python benchmarks/bench_lr_sweep.py [--task sst2|dolly] [--methods RUN,...] [--factors 0.5,1,2] [--seeds 0]
                                        [--cached-only]

Prints, per method, the holdout and dev accuracy of the average model at every factor, the factor the holdout picks
and its dev accuracy against factor 1's. Writes benchmarks/results/bench_lr_sweep[_dolly].json.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench_lr_sweep.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import bench_convergence  # noqa: E402
from benchmarks.common import write_result  # noqa: E402
from benchmarks.convergence_plan import HEAD_LR, LR  # noqa: E402

METHODS = "centralized-r8-fp32-dir0.5,gossip-exp-r8-fp32-dir0.5"


def suite_argv(task: str, methods: str, factor: float, seeds: str, cached_only: bool) -> list[str]:
    """bench_convergence's command line for one factor (its own --tag, so that its JSON is not the suite's)."""
    tag = "_".join(x for x in (task if task != "sst2" else "", f"lrx{factor:g}") if x)
    return (["--drift", "--task", task, "--only", methods, "--seeds", seeds, "--lr", f"{LR * factor:g}",
             "--head-lr", f"{HEAD_LR * factor:g}", "--tag", tag] + (["--cached-only"] if cached_only else []))


def pick(rows: dict[float, dict]) -> float | None:
    """The factor with the best mean holdout accuracy (ties: the one nearest 1, then the smaller); None if none ran."""
    done = {f: r for f, r in rows.items() if r.get("holdout") is not None}
    if not done:
        return None
    return max(done, key=lambda f: (round(done[f]["holdout"], 6), -abs(f - 1.0), -f))


def method_rows(report: dict) -> dict[str, dict]:
    """name -> mean holdout/dev/worst-peer accuracy and seeds, from one bench_convergence JSON."""
    return {m["name"]: {"holdout": m["final"].get("avg_model_holdout_accuracy"),
                        "dev": m["final"].get("avg_model_accuracy"), "worst_peer": m["final"].get("peer_accuracy_min"),
                        "seeds": m["seeds"]} for m in report["methods"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=tuple(bench_convergence.TASK_NAMES), default="sst2")
    p.add_argument("--methods", default=METHODS, help=f"comma-separated bench_convergence run names (default "
                                                      f"{METHODS})")
    p.add_argument("--factors", default="0.5,1,2", help="comma-separated multipliers of lr 4e-3 and head lr 1e-2")
    p.add_argument("--seeds", default="0")
    p.add_argument("--cached-only", action="store_true", help="run nothing new: report the runs already cached")
    args = p.parse_args(argv)
    try:
        factors = sorted({float(x) for x in args.factors.split(",") if x.strip()})
    except ValueError:
        raise SystemExit(f"--factors must be numbers like 0.5,1,2, got {args.factors!r}") from None
    table: dict[str, dict[float, dict]] = {}
    for factor in factors:
        argv_f = suite_argv(args.task, args.methods, factor, args.seeds, args.cached_only)
        print(f"[lr x{factor:g}] bench_convergence {' '.join(argv_f)}", flush=True)
        with contextlib.redirect_stdout(io.StringIO()) if args.cached_only else contextlib.nullcontext():
            bench_convergence.main(argv_f)
        preset = bench_convergence.chosen_preset(bench_convergence.parse_args(argv_f))
        report = json.loads((bench_convergence.RESULTS / f"bench_convergence_{preset.name}.json").read_text())
        for name, row in method_rows(report).items():
            table.setdefault(name, {})[factor] = row
    summary = {}
    for name, rows in table.items():
        best = pick(rows)
        base = rows.get(1.0, {})
        summary[name] = {"by_factor": {f"{f:g}": r for f, r in sorted(rows.items())}, "chosen_factor": best,
                         "chosen_dev": rows[best]["dev"] if best is not None else None,
                         "dev_at_default": base.get("dev")}
        cells = "  ".join(f"x{f:g}: holdout {r['holdout'] * 100:.2f} dev {r['dev'] * 100:.2f} "
                          f"(seeds {','.join(map(str, r['seeds']))})" for f, r in sorted(rows.items()))
        print(f"{name}: {cells}  -> chosen x{best:g}" if best is not None else f"{name}: nothing ran", flush=True)
    path = write_result("bench_lr_sweep" + (f"_{args.task}" if args.task != "sst2" else ""),
                        {"benchmark": "bench_lr_sweep", "task": args.task, "factors": factors, "seeds": args.seeds,
                         "lr": LR, "head_lr": HEAD_LR, "selection": "best mean holdout accuracy of the average model",
                         "methods": summary})
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
