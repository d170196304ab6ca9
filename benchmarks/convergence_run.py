"""bench_convergence's runner: one `declora simulate` run per Spec, read back round by round.

A run's folder holds the peers' metrics and per-round checkpoints; `collect` turns them into per-round numbers,
evaluating the average model of the peers (declora.node.average_model) at the rounds the preset asks for.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

if __package__ in (None, ""):  # `import convergence_run` from benchmarks/: make the repo root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, judged_value  # noqa: E402
from benchmarks.convergence_plan import (  # noqa: E402
    HEAD_LR, LABELS, LR, PRESETS, THREADS, Preset, Spec, avg_eval_rounds, estimate_seconds, for_spec)
from benchmarks.convergence_report import fmt_pct  # noqa: E402

RUNS = ROOT / "runs" / "bench_convergence"


def majority_accuracy(eval_file: Path | None) -> float:
    """Accuracy of always predicting the most frequent label of the eval set (the trivial classifier)."""
    from declora.learn.examples import default_dataset

    path = eval_file or default_dataset().eval
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        lines = [line for line in f.read().splitlines() if line.strip()]
    if str(path).endswith(".jsonl"):  # --task dolly
        labels = [json.loads(line)["label"] for line in lines]
    else:
        labels = [line.rstrip("\n").rsplit("\t", 1)[-1] for line in lines[1:]]
    return max(labels.count(v) for v in set(labels)) / len(labels)


DOLLY = ROOT / "runs" / "data" / "dolly_categories"


def task_files(task: str) -> tuple[list[str], Path | None]:
    """(simulate flags, eval file) of a task: SST-2 ships with declora; --task dolly is made from ../shared once
    (scripts/make_dolly_categories.py) and evaluated on its whole dev set."""
    if task == "sst2":
        return [], None
    if not (DOLLY / "dev.jsonl").exists():
        from scripts.make_dolly_categories import main as make_dolly
        if make_dolly(["--out", str(DOLLY)]) != 0:
            raise SystemExit("bench_convergence --task dolly: could not make the Dolly categories data")
    labels = (DOLLY / "labels.txt").read_text().strip()
    return ["--data", str(DOLLY / "train.jsonl"), "--num-labels", str(len(labels.split(","))),
            "--label-names", labels, "--task", "classification"], DOLLY / "dev.jsonl"


def eval_subset_file(n: int, folder: Path) -> Path | None:
    """The first n examples of the shipped SST-2 dev set as a TSV (None: use the whole set)."""
    if n <= 0:
        return None
    from declora.learn.examples import default_dataset

    lines = gzip.open(default_dataset().eval, "rt").read().splitlines()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"dev-first{n}.tsv"
    path.write_text("\n".join(lines[: n + 1]) + "\n")
    return path


def simulate(spec: Spec, preset: Preset, out: Path, eval_file: Path | None, timeout_s: float,
             model: str = "", lr: float = LR, head_lr: float = HEAD_LR, data_flags: list[str] = ()) -> dict:
    if out.exists():
        shutil.rmtree(out)  # a fresh run: old checkpoints or metrics would mix into this one
    out.mkdir(parents=True)
    every = preset.avg_eval_every if spec.centralized else preset.peer_eval_every
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--peers", str(preset.peers),
           "--rounds", str(preset.rounds), "--local-steps", str(preset.local_steps), "--schedule", "cosine",
           "--lr", str(lr), "--head-lr", str(head_lr), "--eval-every", str(every), "--keep-checkpoints", "0",
           "--no-save-adapters", "--group-by-length", "--seed", str(spec.seed), "--threads", str(THREADS),
           # Every round waits for every neighbour (up to the 300 s cap): the benchmark measures the methods, not the
           # machine's load. With the adaptive deadline, a loaded machine made neighbours late, mixed a round later,
           # which changes the numbers and, for gradient tracking, breaks the correction's bookkeeping.
           "--no-adaptive-deadline",
           "--eval-samples", "0",  # every round's evaluation on the whole holdout (the curves), whatever the default
           *spec.flags(preset.peers), *data_flags]
    if preset.holdout:
        cmd += ["--holdout", str(preset.holdout)]
    if eval_file is not None:
        cmd += ["--eval-data", str(eval_file)]
    if model:
        cmd += ["--model", model]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    started = time.time()
    with open(out / "simulate.log", "w") as log:
        try:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, timeout=timeout_s)
            code = proc.returncode
        except subprocess.TimeoutExpired:
            code = 124
    return {"command": cmd[2:], "returncode": code, "wall_s_outer": time.time() - started}


def collect(spec: Spec, preset: Preset, out: Path, avg_model) -> dict:
    """Per-round numbers of a finished run: metrics files, server metrics, and the average model per round."""
    from declora.node.checkpoint import common_rounds
    from declora.node.metrics import read_jsonl, read_run_metrics

    per_peer = read_run_metrics(out)
    server = read_jsonl(out / "metrics" / "server.jsonl") if (out / "metrics" / "server.jsonl").exists() else []
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").exists() else {}
    server_by_round = {r["round"]: r for r in server}
    kept = set(common_rounds(out)) & set(avg_eval_rounds(preset)) if not spec.centralized else set()
    rounds, sent_cum, per_process = [], 0.0, {}
    for t in range(preset.rounds):
        recs = [rs[t] for rs in per_peer.values() if len(rs) > t and rs[t].get("round") == t]
        if not recs:
            break
        row: dict = {"round": t}
        # With --holdout the eval_* values are the validation split's (the curves) and dev_* (last round) the dev
        # set's (the final report); without, eval_* are the dev set's and serve both.
        accs = [judged_value(r) for r in recs if judged_value(r) is not None]
        if accs:
            row.update(peer_accuracy_mean=sum(accs) / len(accs), peer_accuracy_min=min(accs),
                       peer_accuracy_max=max(accs))
        devs = [judged_value(r, "dev_") for r in recs if judged_value(r, "dev_") is not None]
        if devs:
            row.update(peer_dev_accuracy_mean=sum(devs) / len(devs), peer_dev_accuracy_min=min(devs))
        row["train_loss_mean"] = sum(r["train_loss"] for r in recs) / len(recs)
        # A neighbour heard late (past --deadline-s) changes the mix: the one way timing enters a run's numbers.
        row["peers_missing_neighbours"] = sum(bool(r.get("neighbours_missing")) for r in recs)
        sent = [r.get("bytes_sent", 0) for r in recs]
        row["bytes_sent_per_peer_mean"] = sum(sent) / len(sent)
        row["bytes_sent_per_peer_max"] = max(sent)
        sent_cum += row["bytes_sent_per_peer_mean"]
        row["bytes_sent_per_peer_cumulative"] = sent_cum
        through = {f"peer {r['peer']}": r.get("bytes_sent", 0) + r.get("bytes_received", 0) for r in recs}
        if t in server_by_round:
            through = {"server": server_by_round[t]["bytes_in"] + server_by_round[t]["bytes_out"]}
        busiest = max(through, key=through.get)
        row.update(busiest_process=busiest, busiest_process_bytes=through[busiest])
        for who, nbytes in through.items():
            per_process[who] = per_process.get(who, 0) + nbytes
        row["elapsed_s"] = max(r.get("elapsed_s", 0.0) for r in recs)
        row["round_seconds_mean"] = sum(r.get("round_seconds", 0.0) for r in recs) / len(recs)
        if spec.centralized:
            if accs:
                row["avg_model"] = {"accuracy": accs[0], "loss": recs[0].get("eval_loss")}
            if devs:
                row["avg_model_dev"] = {"accuracy": devs[0], "loss": recs[0].get("dev_loss")}
        elif t in kept and avg_model is not None:
            started = time.process_time()
            result = avg_model.evaluate_round(out, t, holdout=bool(preset.holdout))
            result["eval_cpu_s"] = time.process_time() - started
            row["avg_model"] = {k: v for k, v in result.items() if k != "round"}
            if preset.holdout and t == preset.rounds - 1:
                dev = avg_model.evaluate_round(out, t)
                row["avg_model_dev"] = {k: v for k, v in dev.items() if k != "round"}
        rounds.append(row)
    final = rounds[-1] if rounds else {}
    dev_row = final if preset.holdout else {"avg_model_dev": final.get("avg_model", {}),
                                            "peer_dev_accuracy_mean": final.get("peer_accuracy_mean"),
                                            "peer_dev_accuracy_min": final.get("peer_accuracy_min")}
    # The process that moved the most bytes (sent + received; the server's in + out) over the whole run.
    busiest = max(per_process, key=per_process.get) if per_process and max(per_process.values()) > 0 else None
    return {
        "rounds": rounds,
        "final": {
            # The dev set's: the final report. The holdout's: what model selection (the best method) reads.
            "avg_model_accuracy": dev_row.get("avg_model_dev", {}).get("accuracy"),
            "avg_model_holdout_accuracy": final.get("avg_model", {}).get("accuracy") if preset.holdout else None,
            "peer_accuracy_mean": dev_row.get("peer_dev_accuracy_mean"),
            "peer_accuracy_min": dev_row.get("peer_dev_accuracy_min"),
            "mb_sent_per_peer": sent_cum / 1e6,
            "mb_busiest_process": per_process[busiest] / 1e6 if busiest else 0.0,
            "busiest_process": busiest,
            "wall_s": summary.get("wall_seconds"),
            "rounds_completed": len(rounds),
            "rounds_with_missed_neighbours": sum(bool(row["peers_missing_neighbours"]) for row in rounds),
        },
    }


def checkpoint_disk_mb(out: Path) -> float:
    folder = out / "checkpoints"
    return sum(p.stat().st_size for p in folder.rglob("*.pt")) / 1e6 if folder.is_dir() else 0.0


def run_one(spec: Spec, preset: Preset, run_root: Path, eval_file: Path | None, state: dict, args) -> dict:
    preset = for_spec(preset, spec)
    out = run_root / spec.name
    estimate = estimate_seconds(spec, preset, state["eval_examples"], os.cpu_count() or 1)
    print(f"[{time.strftime('%H:%M:%S')}] {spec.name}: {LABELS[spec.method]}, ranks {spec.ranks}, "
          f"{spec.codec_label}, {spec.partition} (estimate {estimate / 60:.1f} min, load {os.getloadavg()[0]:.1f})",
          flush=True)
    ran = simulate(spec, preset, out, eval_file, timeout_s=max(900.0, 5 * estimate), model=args.model,
                   lr=args.lr, head_lr=args.head_lr, data_flags=task_files(getattr(args, "task", "sst2"))[0])
    record = {"spec": asdict(spec), "name": spec.name,
              "label": LABELS[spec.method] + (f" (seed {spec.seed})" if spec.seed else ""), **ran,
              "status": "ok" if ran["returncode"] == 0 else "failed", "run_dir": str(out.relative_to(ROOT))}
    if ran["returncode"] != 0:
        log = out / "simulate.log"
        tail = log.read_text(errors="replace").splitlines()[-15:] if log.exists() else []
        print(f"  FAILED (exit {ran['returncode']}):\n    " + "\n    ".join(tail), flush=True)
        return record
    record["checkpoint_disk_mb"] = checkpoint_disk_mb(out)
    avg_model = None
    if not spec.centralized:
        avg_model = average_model_for(out, state)
    started = time.time()
    record.update(collect(spec, preset, out, avg_model))
    record["avg_model_eval_wall_s"] = time.time() - started
    if not args.keep_checkpoints:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    f = record["final"]
    print(f"  avg model {fmt_pct(f['avg_model_accuracy'])}, peers mean {fmt_pct(f['peer_accuracy_mean'])} "
          f"min {fmt_pct(f['peer_accuracy_min'])}, {f['mb_sent_per_peer']:.2f} MB/peer, busiest "
          f"{f['mb_busiest_process']:.2f} MB, run {f['wall_s']:.0f} s + avg-model eval "
          f"{record['avg_model_eval_wall_s']:.0f} s", flush=True)
    return record


def average_model_for(out: Path, state: dict):
    """One AverageModel (base built once, eval set tokenized once) for every run that shares model and eval set."""
    from declora.node.average_model import AverageModel
    from declora.config import load_run_config

    cfg = load_run_config(out / "config.json")
    current = state.get("avg_model")
    if current is None or not current.compatible(cfg):
        current = state["avg_model"] = AverageModel(cfg)
    return current



def cache_path(preset: Preset, spec: Spec, args) -> Path:
    """Where one run's record is kept (committed with the results, so that the suite can go on in another session):
    in a folder named by the preset and by whatever settings differ from its defaults (task, model, rounds, learning
    rates), never by --tag or --only, so that runs made a few at a time, by any invocation, add up to the suite."""
    base = preset.name.split("_")[0]
    return RESULTS / f"bench_convergence_{base}{settings_suffix(preset, args)}_runs" / f"{spec.name}.json"


def settings_suffix(preset: Preset, args) -> str:
    """'' at the preset's own settings, else e.g. '_dolly_lr0.008_hlr0.02' (the settings that differ)."""
    default = PRESETS[preset.name.split("_")[0]]
    task = getattr(args, "task", "sst2")
    parts = [task if task != "sst2" else "", Path(args.model).name if args.model else "",
             f"R{preset.rounds}" if preset.rounds != default.rounds else "",
             f"lr{args.lr:g}" if args.lr != LR else "", f"hlr{args.head_lr:g}" if args.head_lr != HEAD_LR else ""]
    return "".join(f"_{p}" for p in parts if p)


def run_settings(preset: Preset, args) -> dict:
    """Everything besides the spec that decides a run's numbers: a cached record is reused only under the same."""
    base = preset.name.split("_")[0]
    task = getattr(args, "task", "sst2")
    return {"preset": asdict(replace(preset, name=base)), "model": args.model, "lr": args.lr,
            "head_lr": args.head_lr, "threads": THREADS, **({"task": task} if task != "sst2" else {})}


def cached_run(preset: Preset, spec: Spec, args) -> dict | None:
    """The successful record of this run from an earlier invocation with the same settings, if there is one."""
    path = cache_path(preset, spec, args)
    if not path.exists():
        return None
    record = json.loads(path.read_text())
    ok = record.get("status") == "ok" and record.get("settings") == run_settings(preset, args)
    return record if ok else None


def cache_run(preset: Preset, record: dict, args) -> None:
    path = cache_path(preset, Spec(**record["spec"]), args)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**record, "settings": run_settings(preset, args)}, indent=1) + "\n")


def suite_wall_s(records: list[dict]) -> float:
    """Wall time of every run plus its average-model evaluation, whichever invocation (--resume) ran it."""
    return sum(r.get("wall_s_outer", 0.0) + r.get("avg_model_eval_wall_s", 0.0) for r in records)
