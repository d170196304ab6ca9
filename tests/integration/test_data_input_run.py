"""`declora simulate` on the user's own data: raw GLUE CoLA (headerless, columns by index) end to end."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
WORDS = ["the", "cat", "sat", "on", "a", "mat", "dogs", "run", "fast", "we", "saw", "it"]


def raw_cola(path: Path, n: int) -> Path:
    """CoLA's raw layout: source, label, original mark, sentence; no header."""
    rows = []
    for i in range(n):
        label = i % 2
        sentence = " ".join(WORDS[(i + j) % len(WORDS)] for j in range(4 + i % 5)) + "."
        rows.append(f"gj04\t{label}\t{'' if label else '*'}\t{sentence}")
    path.write_text("\n".join(rows) + "\n")
    return path


def test_simulate_on_headerless_cola(tmp_path):
    train, dev = raw_cola(tmp_path / "in_domain_train.tsv", 80), raw_cola(tmp_path / "in_domain_dev.tsv", 16)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--threads", "1", "--model", "tiny-bert",
           "--peers", "2", "--rounds", "1", "--local-steps", "1", "--insecure", "--eval-every", "1",
           "--batch-size", "8", "--max-length", "16", "--data", str(train), "--eval-data", str(dev),
           "--header", "no", "--text-columns", "3", "--label-column", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "ok" and summary["rounds_completed"] == 1
    config = json.loads((out / "config.json").read_text())
    assert (config["header"], config["text_columns"], config["label_column"]) == ("no", "3", "1")


def raw_mrpc(path: Path, n: int) -> Path:
    """MRPC's layout: Quality, #1 ID, #2 ID, #1 String, #2 String, with a header and raw quotes in the text."""
    rows = ["Quality\t#1 ID\t#2 ID\t#1 String\t#2 String"]
    for i in range(n):
        words = [WORDS[(i + j) % len(WORDS)] for j in range(5 + i % 4)]
        first = " ".join(words) + "."
        second = '"' + " ".join(words if i % 2 else reversed(words)) + '," he said.'
        rows.append(f"{i % 2}\t{1000 + i}\t{2000 + i}\t{first}\t{second}")
    path.write_text("\n".join(rows) + "\n")
    return path


def _simulate(tmp_path: Path, train: Path, dev: Path) -> tuple[subprocess.CompletedProcess, dict]:
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "declora.cli", "simulate", "--out", str(out), "--threads", "1", "--model", "tiny-bert",
           "--peers", "2", "--rounds", "2", "--local-steps", "1", "--eval-every", "1", "--batch-size", "8",
           "--max-length", "32", "--data", str(train), "--eval-data", str(dev)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=240, env=env, cwd=REPO)
    assert proc.returncode == 0, f"exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc, json.loads((out / "summary.json").read_text())


@pytest.mark.parametrize("layout, metric", [("paraphrase", "f1"), ("acceptability", "mcc")])
def test_glue_layouts_are_judged_by_their_glue_metric_with_no_flags(tmp_path, layout, metric):
    """The GLUE scores: F1 for a paraphrase task (MRPC's files), Matthews correlation for acceptability (CoLA's raw
    files): the loader finds the columns and the launcher the metric, with no data or metric flags."""
    write = raw_mrpc if layout == "paraphrase" else raw_cola
    train, dev = write(tmp_path / "train.tsv", 64), write(tmp_path / "dev.tsv", 16)
    proc, summary = _simulate(tmp_path, train, dev)
    final = summary["final"]
    assert final["metric"] == metric and final["metric_mean"] == final[f"{metric}_mean"]
    assert len(final["metric_per_peer"]) == 2 and "accuracy_mean" in final  # every metric is still recorded
    assert f"{metric} mean" in proc.stdout and "rounds heard in full" in proc.stdout
