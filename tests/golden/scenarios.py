"""The golden scenarios: small fixed-seed runs whose every peer's adapter, at every round, is hashed and committed
(`golden-<cpu capability>.json`), so that a change that should not alter the math proves it did not, bit for bit.

Each scenario is 3 peers (tiny BERT, one torch thread each), 3 rounds of 2 local steps, on a fixed tiny sentiment
set. A record is kept per peer and round: the hash of the adapter after mixing (and of the delta merged into the base,
for the modes that merge), the train loss, the eval metrics and the bytes of the round's messages. A run in which
some peer did not hear every neighbour in some round is not deterministic, and `check_complete` says so instead of
letting a comparison fail or pass by chance.

Regenerate (only when a change is meant to alter results, and say why in the commit):
    .venv/bin/python -m tests.golden.record
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from tests.tiny_models import sentiment_rows, write_sst_tsv

# The bits depend on the CPU's kernels (torch picks AVX-512, AVX2 or plain code at run time, and MKL likewise), so the
# hashes are kept per kernel family: golden-avx512.json, golden-avx2.json. A machine of a family with no file has
# nothing to compare with; record one there from a commit that still matches another family's file.
CPU_CAPABILITY = torch.backends.cpu.get_cpu_capability().lower()
GOLDEN_FILE = Path(__file__).with_name(f"golden-{CPU_CAPABILITY}.json")
ROUNDS = 3
PEERS = 3

COMMON = {"model": "tiny-bert", "task": "classification", "peers": PEERS, "topology": "ring", "rounds": ROUNDS,
          "local_steps": 2, "batch_size": 4, "max_length": 32, "partition": "iid", "eval_every": 1, "threads": 1,
          "keep_checkpoints": 0, "deadline_s": 60.0, "start_timeout_s": 60.0, "seed": 0,
          "group_by_length": False, "eval_samples": 0}  # pinned: the hashes were recorded with these (old defaults)

SCENARIOS: dict[str, dict] = {
    "gossip-int8": {"mode": "gossip", "codec": "int8"},
    "svd-int4-ef-sr-mixed": {"mode": "svd", "codec": "int4", "error_feedback": True, "stochastic_rounding": True,
                             "ranks": "4,2,2"},
    "stack-fp16": {"mode": "stack", "codec": "fp16"},
    "zeropad-mixed": {"mode": "zeropad", "ranks": "4,4,2"},
    "server-fedit": {"server": "fedit", "ranks": "4"},
    "server-flora-mixed": {"server": "flora", "ranks": "4,2,2"},
    "server-flexlora-mixed": {"server": "flexlora", "ranks": "4,2,2"},
    "centralized": {"mode": "centralized"},
}


def load_golden() -> dict:
    """This machine's kernel family's hashes; a skip of the calling test module where none were recorded."""
    if not GOLDEN_FILE.exists():
        import pytest

        pytest.skip(f"no golden hashes for CPU capability {CPU_CAPABILITY} ({GOLDEN_FILE.name}): record them with "
                    "`.venv/bin/python -m tests.golden.record` from a commit that matches another family's file",
                    allow_module_level=True)
    return json.loads(GOLDEN_FILE.read_text())


RECORD_KEYS = ("train_loss", "eval_accuracy", "eval_loss", "bytes_sent", "bytes_received", "neighbours_heard")


def write_data(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    return write_sst_tsv(folder / "sentiment.tsv", sentiment_rows(repeat=4))


def scenario_config(name: str, data: Path, out: Path) -> dict:
    return {**COMMON, **SCENARIOS[name], "data": str(data), "eval_data": str(data), "out": str(out)}


def tensor_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key in sorted(tensors):
        t = tensors[key].detach().to("cpu").contiguous()
        h.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.numpy().tobytes() if t.dtype != torch.bfloat16 else t.view(torch.int16).numpy().tobytes())
    return h.hexdigest()[:16]


def adapter_state_tensors(state: dict) -> dict[str, torch.Tensor]:
    """A checkpoint's adapter as flat name -> tensor (alpha and rsLoRA folded into the names)."""
    out = {}
    for key, f in state["factors"].items():
        tag = f"{key}|alpha={f['alpha']}|rslora={f['rslora']}"
        out[f"{tag}|A"], out[f"{tag}|B"] = f["A"], f["B"]
    out.update({f"dense|{k}": v for k, v in state["dense"].items()})
    return out


def read_metrics(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def collect(run_dir: Path, name: str) -> dict:
    """peer -> list of per-round records, from a finished run's metrics and checkpoints."""
    run_dir = Path(run_dir)
    peers = [0] if SCENARIOS[name].get("mode") == "centralized" else list(range(PEERS))
    result = {}
    for p in peers:
        rows = []
        for rec in read_metrics(run_dir / "metrics" / f"peer-{p}.jsonl"):
            row = {"round": rec["round"], **{k: rec[k] for k in RECORD_KEYS if k in rec}}
            ckpt = run_dir / "checkpoints" / f"peer-{p}" / f"round-{rec['round']}.pt"
            if ckpt.is_file():
                state = torch.load(ckpt, map_location="cpu", weights_only=True)
                row["adapter"] = tensor_hash(adapter_state_tensors(state["adapter"]))
                if state.get("merged_delta"):
                    row["merged_delta"] = tensor_hash(state["merged_delta"])
            rows.append(row)
        result[str(p)] = rows
    # Recorded when centralized training saved to adapters/centralized; it is now peer 0 like any other.
    saved = next((p for p in (run_dir / "adapters" / d / "adapter_model.safetensors" for d in ("peer-0", "centralized"))
                  if p.is_file()), None)
    if SCENARIOS[name].get("mode") == "centralized" and saved is not None:
        from safetensors.torch import load_file

        result["final_saved_adapter"] = tensor_hash(load_file(str(saved)))
    return result


def check_complete(name: str, records: dict) -> list[str]:
    """Why this run cannot be compared bit for bit (a peer missed a neighbour, or a round is missing), or []."""
    problems = []
    server = "server" in SCENARIOS[name]
    for peer, rows in records.items():
        if not isinstance(rows, list):
            continue
        if [r["round"] for r in rows] != list(range(ROUNDS)):
            problems.append(f"{name}: peer {peer} reported rounds {[r['round'] for r in rows]}")
        expected = 0 if SCENARIOS[name].get("mode") == "centralized" else (1 if server else 2)
        for r in rows:
            if r.get("neighbours_heard", expected) != expected:
                problems.append(f"{name}: peer {peer} heard {r['neighbours_heard']} of {expected} in round {r['round']}")
    return problems


def compare(name: str, expected: dict, actual: dict) -> list[str]:
    """Every recorded value must be identical; values the golden file lacks are not compared."""
    diffs = []
    for peer, rows in expected.items():
        if not isinstance(rows, list):
            if actual.get(peer) != rows:
                diffs.append(f"{name}: {peer}: {actual.get(peer)} != {rows}")
            continue
        got = {r["round"]: r for r in actual.get(peer, [])}
        for row in rows:
            have = got.get(row["round"], {})
            for key, value in row.items():
                if have.get(key) != value:
                    diffs.append(f"{name}: peer {peer} round {row['round']} {key}: {have.get(key)!r} != {value!r}")
    return diffs
