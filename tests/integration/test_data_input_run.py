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
