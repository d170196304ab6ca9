"""The same seed gives the same run: two `declora simulate` runs (real peer processes over loopback ZeroMQ, each a
fresh interpreter with its own random hash seed) save bit-identical adapters and write identical losses, and a run
with --holdout records the validation split's metrics every round and the dev set's at the last.

A third run with another seed must differ, or the comparison would pass on anything."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
PEERS = 2


def write_data(folder: Path, n_train: int = 240, n_dev: int = 40) -> tuple[Path, Path]:
    from tests.tiny_models import sentiment_rows

    rows = sentiment_rows(repeat=(n_train + n_dev) // 12 + 1)
    train, dev = folder / "train.tsv", folder / "dev.tsv"
    train.write_text("sentence\tlabel\n" + "".join(f"{s} {i}\t{y}\n" for i, (s, y) in enumerate(rows[:n_train])))
    dev.write_text("sentence\tlabel\n" + "".join(f"{s}\t{y}\n" for s, y in rows[n_train:n_train + n_dev]))
    return train, dev


def simulate(out: Path, train: Path, dev: Path, seed: int) -> None:
    # No PYTHONHASHSEED: each process hashes strings its own way, as a user's would.
    env = {k: v for k, v in os.environ.items() if k != "PYTHONHASHSEED"}
    env.update(HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--model", "tiny-bert", "--data",
           str(train), "--eval-data", str(dev), "--peers", str(PEERS), "--topology", "complete", "--rounds", "3",
           "--local-steps", "2", "--batch-size", "8", "--max-length", "32", "--codec", "int8", "--group-by-length",
           "--holdout", "24", "--eval-every", "1", "--threads", "1", "--seed", str(seed)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env, cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def fingerprint(out: Path) -> dict:
    """Every saved adapter file's sha256, and per peer and round the numbers the run's training decides."""
    found = {str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted((out / "adapters").rglob("*.safetensors"))}
    for path in sorted((out / "metrics").glob("peer-*.jsonl")):
        for r in map(json.loads, path.read_text().splitlines()):
            for key in ("train_loss", "eval_loss", "eval_accuracy", "dev_loss", "dev_accuracy", "bytes_sent",
                        "neighbours_heard", "distance_to_neighbours"):
                found[f"{path.stem} round {r['round']} {key}"] = r.get(key)
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two runs with seed 3 and one with seed 7, made once for the tests below."""
    folder = tmp_path_factory.mktemp("determinism")
    train, dev = write_data(folder)
    made = {name: folder / name for name in ("a", "b", "other-seed")}
    for name, out in made.items():
        simulate(out, train, dev, seed=7 if name == "other-seed" else 3)
    return made


def test_the_same_seed_gives_bit_identical_adapters_and_another_seed_does_not(runs):
    a, b, other = (fingerprint(out) for out in runs.values())
    assert len([k for k in a if k.endswith(".safetensors")]) == PEERS
    assert a == b, {k: (a[k], b.get(k)) for k in a if a[k] != b.get(k)}
    assert any(a[k] != other.get(k) for k in a if k.endswith(".safetensors"))


def test_a_holdout_run_records_the_validation_split_every_round_and_the_dev_set_at_the_end(runs):
    out = runs["a"]
    for i in range(PEERS):
        records = [json.loads(x) for x in (out / "metrics" / f"peer-{i}.jsonl").read_text().splitlines()]
        assert [r["eval_samples"] for r in records] == [24, 24, 24]  # the held-out 24, every round
        assert [r.get("dev_samples") for r in records] == [None, None, 40]  # the dev set, at the last round only
        assert 0.0 <= records[-1]["dev_accuracy"] <= 1.0
    final = json.loads((out / "summary.json").read_text())["final"]
    assert final["dev"]["metric"] == "accuracy" and set(final["dev"]["per_peer"]) == {str(i) for i in range(PEERS)}
    assert final["dev"]["min"] <= final["dev"]["mean"] <= final["dev"]["max"]
