"""Peers on a GPU (issue 12): a randomly initialized ~1B-parameter LLaMA-architecture model built from a config
(hidden 2048, 16 layers, 32 heads, intermediate 5632, vocabulary 32000: 0.95 B parameters), sequence length 512,
LoRA r=16 on q_proj and v_proj, bf16 base. In one invocation, each stage as far as the time budget allows:

- `plain`: a plain peft training loop with no exchange (AdamW on the adapter, autocast), tokens/s and GPU memory;
- `gossip`: `declora simulate` with 4 peers on a ring, all on GPU 0: tokens/s per peer (rounds' training samples x
  sequence length over their wall time, exchange and checkpoints included, first and last round left out) and in sum,
  against `plain`;
- `plain_4bit`, `gossip_4bit`: the same with the base in NF4 (--base-4bit; needs bitsandbytes);
- `shared_N` for N in --shared (default 8,32,64): N peers in one process sharing one frozen base
  (--peers-per-process N), mean round time and GPU memory (peak used on the device, less what was used before);
- `plan`: learn.memory_plan's estimate for the same settings and the peers per GPU it allows.

Records the machine (nvidia-smi, torch.cuda.get_device_name). Results: benchmarks/results/bench_gpu.json, or --out.
`--smoke` runs every stage on a tiny LLaMA config on the CPU (or GPU) in well under a minute: the end-to-end check
that runs without a GPU (tests/integration/test_gpu_bench_smoke.py).

    python benchmarks/bench_gpu.py [--smoke] [--budget-s 330] [--shared 8,32,64] [--out FILE]
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import RESULTS, ROOT, machine_info  # noqa: E402


@dataclass(frozen=True)
class Setup:
    hidden: int = 2048
    layers: int = 16
    heads: int = 32
    intermediate: int = 5632
    vocab: int = 32000
    seq: int = 512
    batch: int = 4
    rank: int = 16
    plain_steps: int = 20
    rounds: int = 4
    local_steps: int = 5


SMOKE = Setup(hidden=64, layers=2, heads=4, intermediate=176, vocab=512, seq=64, batch=2, rank=4, plain_steps=3,
              rounds=3, local_steps=1)


def param_count(s: Setup) -> int:
    """Embeddings and an untied output head, per layer q/k/v/o, the gated MLP and two RMSNorms, a final norm."""
    return 2 * s.vocab * s.hidden + s.layers * (4 * s.hidden ** 2 + 3 * s.hidden * s.intermediate + 2 * s.hidden) \
        + s.hidden


# ---- the model and the data ------------------------------------------------------------------------------------------
def make_model_folder(s: Setup, folder: Path, device: str) -> dict:
    """A random LLaMA of shape `s`, saved in bf16 with a byte tokenizer (ids below 300, within the vocabulary)."""
    import torch
    import transformers as tf

    from declora.learn.tiny_models import byte_tokenizer

    tok = byte_tokenizer("llama")
    config = tf.LlamaConfig(vocab_size=s.vocab, hidden_size=s.hidden, intermediate_size=s.intermediate,
                            num_hidden_layers=s.layers, num_attention_heads=s.heads, num_key_value_heads=s.heads,
                            max_position_embeddings=max(2048, s.seq), tie_word_embeddings=False,
                            bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    started = time.perf_counter()
    torch.manual_seed(0)
    with torch.device(device):
        model = tf.LlamaForCausalLM(config).to(torch.bfloat16)
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    del model
    return {"params": params, "params_by_formula": param_count(s), "build_and_save_s": time.perf_counter() - started}


def write_data(s: Setup, folder: Path, records: int) -> tuple[Path, Path]:
    """Instruction records longer than the sequence length (one byte a token), so every example is `seq` tokens."""
    import random

    rng = random.Random(0)
    words = ["gossip", "peer", "adapter", "rank", "round", "tensor", "mixing", "factor", "token", "graph"]

    def text(n: int) -> str:
        return " ".join(rng.choice(words) for _ in range(n))

    paths = []
    for name, n in (("train.jsonl", records), ("eval.jsonl", 8)):
        rows = [{"instruction": text(s.seq // 12 + 4), "context": "", "response": text(s.seq // 6 + 4)}
                for _ in range(n)]
        (folder / name).write_text("".join(json.dumps(r) + "\n" for r in rows))
        paths.append(folder / name)
    return paths[0], paths[1]


# ---- GPU memory -------------------------------------------------------------------------------------------------------
def gpu_used_mib() -> float | None:
    """Memory used on GPU 0 by every process (nvidia-smi), or None without one."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits", "-i", "0"],
                             capture_output=True, text=True, timeout=10)
        return float(out.stdout.strip().splitlines()[0]) if out.returncode == 0 else None
    except (OSError, ValueError, IndexError, subprocess.TimeoutExpired):
        return None


class PeakSampler:
    """The peak of `gpu_used_mib` while a child process runs, less the value before it started."""

    def __init__(self):
        self.before, self.peak, self._done = gpu_used_mib(), None, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._done.wait(0.5):
            used = gpu_used_mib()
            if used is not None:
                self.peak = max(self.peak or 0.0, used)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._done.set()
        self._thread.join()

    def mib(self) -> float | None:
        return None if self.peak is None or self.before is None else self.peak - self.before


# ---- the stages -------------------------------------------------------------------------------------------------------
def plain_loop(s: Setup, folder: Path, device: str, base_4bit: bool) -> dict:
    """A plain peft loop: the same LoRA model as a peer's, AdamW, autocast, fixed random batches, no exchange."""
    import torch

    from declora.learn.model import ModelSpec, build_model
    from declora.learn.training import forward_context

    spec = ModelSpec(path=str(folder), task="causal_lm", target_modules=("q_proj", "v_proj"), base_4bit=base_4bit)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model, _ = build_model(spec, s.rank, 2.0 * s.rank, device=device, seed=0)
    weights = torch.cuda.memory_allocated() if cuda else None
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(3, 259, (s.batch, s.seq), device=device)
    warmup, started = 2, 0.0
    for step in range(warmup + s.plain_steps):
        if step == warmup:
            torch.cuda.synchronize() if cuda else None
            started = time.perf_counter()
        with forward_context(model):
            loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize() if cuda else None
    seconds = time.perf_counter() - started
    result = {"tokens_per_s": s.plain_steps * s.batch * s.seq / seconds, "steps": s.plain_steps,
              "step_s": seconds / s.plain_steps, "loss": float(loss.detach())}
    if cuda:
        result.update(weights_mib=weights / 2**20, peak_allocated_mib=torch.cuda.max_memory_allocated() / 2**20)
    del model, opt, loss
    gc.collect()
    if cuda:  # hand the cached blocks back: the peer processes of the next stages need the memory
        torch.cuda.empty_cache()
    return result


def simulate(s: Setup, folder: Path, data: tuple[Path, Path], out: Path, peers: int, per_process: int,
             rounds: int, local_steps: int, extra: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--model", str(folder), "--task", "causal_lm",
           "--data", str(data[0]), "--eval-data", str(data[1]), "--peers", str(peers), "--topology", "ring",
           "--peers-per-process", str(per_process), "--target-modules", "q_proj,v_proj", "--ranks", str(s.rank),
           "--alpha", str(2 * s.rank), "--max-length", str(s.seq), "--batch-size", str(s.batch), "--rounds",
           str(rounds), "--local-steps", str(local_steps), "--eval-every", str(rounds), "--eval-samples", "8",
           "--partition", "iid", "--no-save-adapters", "--keep-checkpoints", "1", "--threads", "1",
           "--out", str(out), *extra]
    started = time.monotonic()
    with PeakSampler() as gpu:
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout:.0f} s (budget)"}
    wall = time.monotonic() - started
    if proc.returncode != 0:
        return {"error": f"exit {proc.returncode}: {(proc.stdout + proc.stderr)[-1500:]}"}
    per_peer = []
    for i in range(peers):
        records = [json.loads(line) for line in (out / "metrics" / f"peer-{i}.jsonl").read_text().splitlines()]
        # The first round warms up and the last evaluates everything: time the rounds between, checkpoints included
        # (elapsed_s is written at the end of each round's work, before its checkpoint).
        timed = records[1:-1] if len(records) > 2 else records
        span = records[-2]["elapsed_s"] - records[0]["elapsed_s"] if len(records) > 2 else records[-1]["elapsed_s"]
        per_peer.append({"tokens_per_s": sum(r["train_samples"] for r in timed) * s.seq / span,
                         "round_s": sum(r["round_seconds"] for r in timed) / len(timed),
                         "wait_s": sum(r["wait_seconds"] for r in timed) / len(timed)})
    return {"peers": peers, "peers_per_process": per_process, "wall_s": wall,
            "tokens_per_s_per_peer": sum(p["tokens_per_s"] for p in per_peer) / peers,
            "tokens_per_s_sum": sum(p["tokens_per_s"] for p in per_peer),
            "round_s_mean": sum(p["round_s"] for p in per_peer) / peers,
            "wait_s_mean": sum(p["wait_s"] for p in per_peer) / peers,
            "gpu_used_mib": gpu.mib(), "gpu_mib_per_peer": gpu.mib() and gpu.mib() / peers}


def plan(s: Setup, folder: Path, base_4bit: bool) -> dict:
    from declora.learn import memory_plan as mp
    from declora.learn.model import ModelSpec

    shape = mp.shape_for_spec(ModelSpec(path=str(folder), task="causal_lm", target_modules=("q_proj", "v_proj")),
                              s.rank)
    weights = "nf4" if base_4bit else "bfloat16"
    one = mp.process_plan(shape, 1, s.batch, s.seq, weights)
    total = total_gpu_bytes()
    out = {"per_process_gib": one.total / mp.GIB, "base_gib": one.base / mp.GIB,
           "activations_gib": one.activations / mp.GIB, "trainable_mib_per_peer": one.trainable / 2**20}
    if total:
        out.update(gpu_total_gib=total / mp.GIB,
                   peers_per_gpu_one_per_process=mp.peers_that_fit(shape, total, 1, s.batch, s.seq, weights),
                   peers_per_gpu_shared=mp.peers_that_fit(shape, total, 1 << 12, s.batch, s.seq, weights))
    return out


def total_gpu_bytes() -> int | None:
    import torch

    return torch.cuda.mem_get_info(0)[1] if torch.cuda.is_available() else None


def machine() -> dict:
    info = machine_info()
    try:
        info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                                             "--format=csv,noheader"], capture_output=True, text=True,
                                            timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        info["nvidia_smi"] = None
    return info


# ---- driver -----------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="a tiny LLaMA config: checks the whole script in seconds")
    p.add_argument("--budget-s", type=float, default=330.0, help="stop starting stages after this many seconds")
    p.add_argument("--shared", default="", help="peer counts of the shared-base stages (default 8,32,64; smoke 2,4)")
    p.add_argument("--only", default="", help="comma-separated stages to run (default: all; model always runs)")
    p.add_argument("--out", default="", help="result file (default benchmarks/results/bench_gpu[_smoke].json)")
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)  # on the CPU, as each peer process runs (--threads 1); a GPU run does not care
    s = SMOKE if args.smoke else Setup()
    only = {x.strip() for x in args.only.split(",") if x.strip()}
    cuda = torch.cuda.is_available()
    device, extra = ("cuda:0", ["--gpus", "0"]) if cuda else ("cpu", ["--cpu"])
    shared = [int(n) for n in (args.shared or ("2,4" if args.smoke else "8,32,64")).split(",")]
    out_path = Path(args.out) if args.out else RESULTS / f"bench_gpu{'_smoke' if args.smoke else ''}.json"
    result: dict = {"setup": asdict(s), "machine": machine(), "device": device, "stages": {}}
    started = time.monotonic()

    def left() -> float:
        return args.budget_s - (time.monotonic() - started)

    def save() -> None:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_text(json.dumps(result, indent=2) + "\n")

    def stage(name: str, run) -> None:
        if only and name not in only and name != "model":
            return
        if left() <= 0:
            result["stages"][name] = {"skipped": "time budget spent"}
        else:
            t0 = time.monotonic()
            try:
                result["stages"][name] = {**run(), "stage_s": time.monotonic() - t0}
            except Exception as e:  # noqa: BLE001 - one failed stage must not lose the others' figures
                result["stages"][name] = {"error": f"{type(e).__name__}: {e}"}
        print(f"{name}: {json.dumps(result['stages'][name])[:400]}", flush=True)
        save()

    four_bit = cuda and importlib.util.find_spec("bitsandbytes") is not None
    with tempfile.TemporaryDirectory(prefix="bench_gpu_") as tmp_name:
        tmp = Path(tmp_name)
        folder = tmp / "model"
        stage("model", lambda: make_model_folder(s, folder, device))
        data = write_data(s, tmp, records=max(64, 4 * s.rounds * s.local_steps * s.batch))
        stage("plan", lambda: {"bf16": plan(s, folder, False), "nf4": plan(s, folder, True)})
        no_4bit = {"skipped": "needs CUDA and bitsandbytes"}
        stage("plain", lambda: plain_loop(s, folder, device, False))
        stage("plain_4bit", lambda: plain_loop(s, folder, device, True) if four_bit else no_4bit)
        gossip = (lambda out, ext: simulate(s, folder, data, tmp / out, 4, 1, s.rounds, s.local_steps, extra + ext,
                                            left()))
        stage("gossip", lambda: gossip("gossip", []))
        for n in shared:  # the order given: gpu_check.sh asks for 64 before 32, the goal before the middle
            stage(f"shared_{n}", lambda n=n: simulate(s, folder, data, tmp / f"shared{n}", n, n, 2, 1, extra, left()))
        stage("gossip_4bit", lambda: gossip("gossip4", ["--base-4bit"]) if four_bit else no_4bit)
    result["summary"] = summary(result["stages"])
    result["wall_s"] = time.monotonic() - started
    save()
    print(json.dumps(result["summary"], indent=2))
    print(f"wrote {out_path}")
    return 0


def summary(stages: dict) -> dict:
    """The issue's goals, from the stages that ran."""
    def get(stage: str, key: str):
        return stages.get(stage, {}).get(key)

    out = {}
    plain, gossip = get("plain", "tokens_per_s"), get("gossip", "tokens_per_s_sum")
    if plain and gossip:
        out["gossip_sum_over_plain"] = gossip / plain  # goal: >= 0.95 (four peers time-share the one GPU)
    bf16, nf4 = get("gossip", "gpu_mib_per_peer"), get("gossip_4bit", "gpu_mib_per_peer")
    if bf16 and nf4:
        out["nf4_over_bf16_memory_per_peer"] = nf4 / bf16  # goal: <= 0.4
    w16, w4 = get("plain", "peak_allocated_mib"), get("plain_4bit", "peak_allocated_mib")
    if w16 and w4:
        out["nf4_over_bf16_plain_peak"] = w4 / w16
    out["shared_round_s"] = {k: v.get("round_s_mean") for k, v in stages.items() if k.startswith("shared_")}
    out["shared_gpu_mib"] = {k: v.get("gpu_used_mib") for k, v in stages.items() if k.startswith("shared_")}
    return out


if __name__ == "__main__":
    sys.exit(main())
